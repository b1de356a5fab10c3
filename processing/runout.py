"""Rotation-stage runout over angle, and the rotation centre.

Runout model: each axis (vertical, horizontal) of the measured shift is
``c0 + Σ_h (a_h cos hθ + b_h sin hθ)``, h = 1..harmonics, fitted by iteratively reweighted
least squares with Huber weights (robust to the odd failed registration) and the
registrations' own uncertainties. The model predicts where the next projection will be
(a search window and a starting guess for the registration) and flags projections whose
measured shift disagrees with it.

Note that in the horizontal direction the first harmonic ``a cos θ + b sin θ`` of a
*tomographic* alignment is indistinguishable from placing the specimen off the axis (it is
the projection of a translation in the slice plane), so it is physically meaningful only
when the shifts come from something other than the projections themselves (a reference
at the same angle, a stage encoder); the constant term is the rotation centre.

Rotation centre:

- :func:`mirror_centre`: the projection at θ + 180° is the mirror image (u → −u about the
  axis) of the one at θ; registering one on the flipped other gives the axis column.
- :func:`refine_centre`: the column that makes the projections most consistent with one
  reconstruction (least leave-one-out re-projection residual of the filtered
  back-projection), sampled around a starting value, with trial shifts that move the axis
  but not the reconstructed slice; reconstruction-based, needs no 180° pair (see
  docs/alignment.md for the measured error).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import get_array_module
from .register import register

_HUBER_K = 1.5  # Huber threshold in robust standard deviations (95 % efficiency)


class RunoutError(ValueError):
    """Bad input to a runout or centre function."""


@dataclass(frozen=True)
class RunoutModel:
    """Fitted runout: shifts (pixels) as a truncated Fourier series in the angle.

    Attributes
    ----------
    harmonics : number of harmonics h = 1..harmonics.
    coefficients : (2, 1 + 2 harmonics) for (vertical, horizontal):
        [c0, a_1, b_1, a_2, b_2, ...] of ``c0 + Σ a_h cos hθ + b_h sin hθ``, pixels.
    residual_std : (2,) robust standard deviation of the residuals, pixels.
    n_used : number of projections with non-zero final weight.
    inliers : (n,) bool, projections within 3 robust standard deviations of the model
        (both axes).
    """

    harmonics: int
    coefficients: np.ndarray
    residual_std: np.ndarray
    n_used: int
    inliers: np.ndarray

    def evaluate(self, angles_deg) -> np.ndarray:
        """Model shifts (n, 2) (vertical, horizontal), pixels, at ``angles_deg``."""
        basis = _basis(np.atleast_1d(np.asarray(angles_deg, dtype=float)), self.harmonics)
        return basis @ self.coefficients.T

    @property
    def centre_offset(self) -> float:
        """Constant horizontal term c0, pixels."""
        return float(self.coefficients[1, 0])

    def as_dict(self) -> dict:
        """Plain lists and floats, for publishing."""
        return {
            "harmonics": self.harmonics,
            "coefficients_v": self.coefficients[0].tolist(),
            "coefficients_h": self.coefficients[1].tolist(),
            "residual_std_px": self.residual_std.tolist(),
            "n_used": self.n_used,
        }


def _basis(angles_deg: np.ndarray, harmonics: int) -> np.ndarray:
    t = np.deg2rad(angles_deg)[:, None]
    cols = [np.ones_like(t)]
    for h in range(1, harmonics + 1):
        cols += [np.cos(h * t), np.sin(h * t)]
    return np.hstack(cols)


def fit_runout(
    angles_deg,
    shifts,
    *,
    harmonics: int = 2,
    uncertainties=None,
    robust: bool = True,
    iterations: int = 10,
) -> RunoutModel:
    """Fit a runout model to measured shifts.

    Parameters
    ----------
    angles_deg : (n,) angles, degrees.
    shifts : (n, 2) measured shifts (vertical, horizontal), pixels (any sign convention;
        the model follows it).
    harmonics : highest harmonic. Needs ``n >= 1 + 2 harmonics`` projections; with fewer,
        the number of harmonics is reduced to what the data support.
    uncertainties : (n,) or (n, 2) 1-sigma errors, pixels (infinite = ignore); default 1.
    robust : Huber reweighting of outliers.
    iterations : reweighting iterations.

    Returns
    -------
    RunoutModel
    """
    a = np.asarray(angles_deg, dtype=float).ravel()
    s = np.asarray(shifts, dtype=float).reshape(-1, 2)
    if a.size != s.shape[0]:
        raise RunoutError(f"{a.size} angles but {s.shape[0]} shifts")
    if harmonics < 0:
        raise RunoutError(f"harmonics must be >= 0, got {harmonics}")
    sigma = np.ones_like(s) if uncertainties is None else np.broadcast_to(
        np.asarray(uncertainties, dtype=float).reshape(a.size, -1), s.shape
    )  # fmt: skip
    valid = np.isfinite(s).all(axis=1) & np.isfinite(sigma).all(axis=1) & (sigma > 0).all(axis=1)
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise RunoutError("no projection with a finite shift and uncertainty to fit")
    harmonics = int(min(harmonics, max((n_valid - 1) // 2, 0)))
    basis = _basis(a, harmonics)
    coef = np.zeros((2, basis.shape[1]))
    scale = np.zeros(2)
    weight_final = np.zeros_like(s)
    for axis in range(2):
        w0 = np.where(valid, 1.0 / np.where(valid, sigma[:, axis], 1.0) ** 2, 0.0)
        w = w0.copy()
        for _ in range(iterations if robust else 1):
            c = _weighted_lstsq(basis, s[:, axis], w)
            r = s[:, axis] - basis @ c
            z = r[valid] / sigma[valid, axis]
            mad = 1.4826 * np.median(np.abs(z - np.median(z))) if z.size > 2 else 0.0
            if not robust or mad <= 0:
                break
            u = np.abs(r / sigma[:, axis]) / (_HUBER_K * mad)
            w = w0 * np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1e-12))
        coef[axis] = c
        r = s[:, axis] - basis @ c
        scale[axis] = 1.4826 * np.median(np.abs(r[valid] - np.median(r[valid]))) if n_valid > 2 else 0.0
        weight_final[:, axis] = w
    resid = np.abs(s - basis @ coef.T)
    inliers = valid & (resid <= 3.0 * np.maximum(scale, 1e-9)).all(axis=1)
    return RunoutModel(harmonics, coef, scale, int((weight_final > 0).all(axis=1).sum()), inliers)


def _weighted_lstsq(basis, y, w):
    sw = np.sqrt(w)
    ok = sw > 0
    coef, *_ = np.linalg.lstsq(basis[ok] * sw[ok, None], y[ok] * sw[ok], rcond=None)
    return coef


# --------------------------------------------------------------------------- rotation centre


def mirror_centre(image_0, image_180, *, channel_signs=None, **register_options):
    """Rotation-axis column from a projection and the one 180° away.

    Parameters
    ----------
    image_0, image_180 : (rows, cols) or (channels, rows, cols) projections, already
        corrected for runout (the same shifts applied to both as to the rest of the stack).
    channel_signs : per-channel factors applied to the mirrored image (e.g. ``(-1, 1)`` for
        horizontal and vertical DPC: mirroring u flips the sign of d/du); default all +1.
    register_options : passed to :func:`~livetomo.processing.register.register`
        (roi, window, band, upsample_factor, ...). A ROI must be symmetric about the image
        centre column to be valid for both images.

    Returns
    -------
    centre : float, axis column (0 = first column, (cols - 1) / 2 = centre of the image).
    registration : the Registration of image_0 and the flipped image_180; its vertical
        shift is the relative vertical offset of the two.
    """
    xp = get_array_module(image_180)
    flipped = xp.asarray(image_180)[..., ::-1]
    if channel_signs is not None:
        signs = xp.asarray(np.asarray(channel_signs, dtype=np.float32))
        if flipped.ndim != 3 or signs.size != flipped.shape[0]:
            raise RunoutError(f"channel_signs {channel_signs} do not match the image {flipped.shape}")
        flipped = flipped * signs[:, None, None]
    n_cols = flipped.shape[-1]
    reg = register(image_0, xp.ascontiguousarray(flipped), **register_options)
    # flipped(u) = p0(u - d) with d = n - 1 - 2c; register returns -d.
    return (n_cols - 1 + reg.shift[1]) / 2.0, reg


def reconstruction_total_variation(projector, projections, *, kind: str = "ramp",
                                   radius_fraction: float = 0.9) -> float:  # fmt: skip
    """Total variation Σ|∇f| of the filtered back-projection inside a central disc.

    A wrong rotation centre turns every feature into a doubled arc whose extra edges raise
    the total variation; it is smallest at the right centre only for a specimen that lies
    inside the field at every angle (a container cut by the field edge, an ice cylinder,
    dominates it: see :func:`refine_centre`).

    Parameters
    ----------
    projector : Projector for the projections' angles (axis at the centre column).
    projections : (n_angles, nz, n_u) runout-corrected projections (a few rows suffice);
        horizontal DPC with ``kind='hilbert'``.
    radius_fraction : disc radius over the slice radius.
    """
    from .align_tomo import fbp

    xp = projector.xp
    rec = fbp(projector, projections, kind=kind)
    ny, nx = projector.shape_yx
    gy, gx = xp.gradient(rec, axis=(1, 2))
    yy, xx = np.mgrid[:ny, :nx]
    disc = np.hypot(yy - (ny - 1) / 2.0, xx - (nx - 1) / 2.0) <= radius_fraction * min(ny, nx) / 2.0
    return float(xp.sum(xp.sqrt(gx * gx + gy * gy)[:, xp.asarray(disc)]))


def reprojection_residual(projector, projections, *, kind: str = "ramp",
                          columns_fraction: float = 0.9) -> float:  # fmt: skip
    """Leave-one-out re-projection residual of a projection stack: its inconsistency.

    Every projection is compared with the re-projection, at its angle, of the filtered
    back-projection of all the others
    (:func:`~livetomo.processing.align_tomo.leave_one_out_reprojection`); the squared
    difference is summed over the central columns. Data that are the projections of one
    object about the assumed axis give the least residual; a wrong axis makes the
    projections on either side of the 0°/180° seam disagree.

    Parameters
    ----------
    projector : Projector for the projections' angles (axis at the centre column).
    projections : (n_angles, nz, n_u) runout-corrected projections; horizontal DPC
        (d p / du) with ``kind='hilbert'``, compared in that form (the re-projected p is
        differentiated along u).
    kind : 'ramp' or 'hilbert', see :func:`~livetomo.processing.align_tomo.ramp_filter`.
    columns_fraction : the residual is summed over ``|u - (n_u - 1) / 2| <= columns_fraction
        n_u / 2``; the outermost columns, where a field edge cuts the specimen or its
        container and a runout-corrected stack holds padded values, are left out.

    Returns
    -------
    residual : float, Σ (re-projection - projection)² in the projections' unit squared.
    """
    from .align_tomo import leave_one_out_reprojection

    xp = projector.xp
    p = xp.asarray(projections, dtype=xp.float32)
    reprojected, _ = leave_one_out_reprojection(projector, p, kind=kind)
    if kind == "hilbert":
        reprojected = xp.gradient(reprojected, axis=-1)
    n_u = p.shape[-1]
    cols = np.abs(np.arange(n_u) - (n_u - 1) / 2.0) <= columns_fraction * n_u / 2.0
    r = (reprojected - p)[..., xp.asarray(cols)]
    return float(xp.sum(r * r))


def _pure_centre_gain(angles_deg) -> np.ndarray:
    """g(θ) = 1 - (a cos θ + b sin θ), least squares over the angles (angle-weighted).

    Shifting projection θ by δ g(θ) moves the axis by δ but does not translate the
    reconstructed slice (the translation part a cos θ + b sin θ of a constant is removed),
    so the specimen stays where the evaluation region is.
    """
    from .align_tomo import angle_weights

    t = np.deg2rad(np.asarray(angles_deg, dtype=float))
    basis = np.stack([np.cos(t), np.sin(t)], axis=1)
    w = np.sqrt(angle_weights(angles_deg))
    coef, *_ = np.linalg.lstsq(basis * w[:, None], w, rcond=None)
    return 1.0 - basis @ coef


def _shift_columns(p, shifts, xp):
    """Shift each projection p[k] (nz, n_u) along u by shifts[k] pixels (edge-padded, Fourier)."""
    n_u = p.shape[-1]
    pad = int(np.ceil(np.max(np.abs(shifts)))) + 8
    a = xp.pad(p, [(0, 0), (0, 0), (pad, pad)], mode="edge")
    n = a.shape[-1]
    k = np.fft.rfftfreq(n)
    ramp = np.exp(-2j * np.pi * np.asarray(shifts, dtype=float)[:, None] * k[None, :]).astype(np.complex64)
    spec = xp.fft.rfft(a, axis=-1) * xp.asarray(ramp)[:, None, :]
    return xp.fft.irfft(spec, n=n, axis=-1)[..., pad : pad + n_u].astype(xp.float32)


_CRITERIA = {"reprojection": reprojection_residual, "total_variation": reconstruction_total_variation}


def refine_centre(
    projector,
    projections,
    *,
    start: float | None = None,
    search: float = 2.0,
    tolerance: float = 0.25,
    kind: str = "ramp",
    criterion: str = "reprojection",
    columns_fraction: float = 0.9,
) -> tuple[float, float]:
    """Axis column that makes the projections most consistent with one reconstruction.

    For trial axis columns ``c`` every ``tolerance`` pixels in ``start ± search``, the
    projection at angle θ is shifted along u by ``((n_u - 1) / 2 - c) g(θ)`` with
    ``g = 1 - (a cos θ + b sin θ)`` (a, b the least-squares fit of a constant over the
    angles): this moves the axis to the centre column without translating the
    reconstructed slice, so the specimen does not slide across the evaluated region as
    the trial centre changes (with a plain shift it does, and a container such as an ice
    cylinder filling the field then sets the minimum, up to the edge of the search). The
    cost, by default :func:`reprojection_residual` (leave-one-out re-projection of the
    filtered back-projection), is evaluated at each trial; the minimum is located between
    the samples by a parabola through the five samples around the lowest one.

    Accuracy on ``livetomo bench align`` (horizontal DPC of a cell in an ice cylinder that
    the field edge cuts, runout-corrected by the streaming aligner, 0-180° inclusive):
    errors +0.07 px (181 angles, 128 columns) and +0.18 px (``--quick``: 61 angles, 64
    columns); -0.13 to -0.22 px on five other such scans. The estimate still leans on the
    container wall near the field edge (it moves by tenths of a pixel with
    ``columns_fraction``); the 0°/180° mirror and moment estimates are more accurate where
    they apply. ``criterion='total_variation'`` (least Σ|∇f|) is kept for comparison: on
    the same data it errs by 0.8-2 px.

    Parameters
    ----------
    projector : Projector for the projections' angles (axis at the centre column).
    projections : (n_angles, nz, n_u) projections, runout-corrected (a few rows suffice);
        not modified.
    start : first guess of the axis column, pixels; default the centre column.
    search : half-width of the searched interval, pixels.
    tolerance : spacing of the sampled trial columns, pixels.
    kind : 'ramp', or 'hilbert' for horizontal DPC (derivative) projections.
    criterion : 'reprojection' (:func:`reprojection_residual`) or 'total_variation'
        (:func:`reconstruction_total_variation`).
    columns_fraction : see :func:`reprojection_residual`.

    Returns
    -------
    centre : axis column, pixels (0 = first column); cost there.
    """
    xp = projector.xp
    p = xp.asarray(projections, dtype=xp.float32)
    n_u = p.shape[-1]
    mid = (n_u - 1) / 2.0
    start = mid if start is None else float(start)
    if search <= 0 or tolerance <= 0:
        raise RunoutError(f"search and tolerance must be > 0 pixels, got {search}, {tolerance}")
    if criterion not in _CRITERIA:
        raise RunoutError(f"criterion must be one of {sorted(_CRITERIA)}, got {criterion!r}")
    gain = _pure_centre_gain(projector.angles_deg)

    def cost(c: float) -> float:
        shifted = _shift_columns(p, (mid - c) * gain, xp)
        if criterion == "reprojection":
            return reprojection_residual(projector, shifted, kind=kind, columns_fraction=columns_fraction)
        return reconstruction_total_variation(projector, shifted, kind=kind)

    n_half = max(int(np.ceil(search / tolerance)), 2)
    trials = start + tolerance * np.arange(-n_half, n_half + 1)
    costs = np.array([cost(float(c)) for c in trials])
    i = int(np.argmin(costs))
    if 2 <= i <= trials.size - 3:
        x = (trials[i - 2 : i + 3] - trials[i]) / tolerance
        a2, a1, a0 = np.polyfit(x, costs[i - 2 : i + 3], 2)
        if a2 > 0:
            v = float(np.clip(-a1 / (2.0 * a2), -1.0, 1.0))
            return float(trials[i] + v * tolerance), float(a0 + a1 * v + a2 * v * v)
    return float(trials[i]), float(costs[i])


def gauge_errors(shifts, true_shift, angles_deg, *, keep_centre: bool = True, weights=None):
    """Alignment errors against known displacements, with what no alignment can observe removed.

    A shift ``s`` aligns a projection whose specimen was displaced by ``d`` when ``s + d`` is
    the same for every projection, up to a common vertical offset and a horizontal
    ``c + a cos θ + b sin θ`` (the specimen's own position about the axis; ``c`` is the
    rotation-centre error).

    Parameters
    ----------
    shifts : (n, 2) measured (dy, dx) shifts, pixels.
    true_shift : (n, 2) true displacements, pixels (the simulator's truth).
    angles_deg : (n,) rotation angles, degrees.
    keep_centre : add the centre error ``c`` back into the horizontal errors.
    weights : (n,) weights of the fit of the unobservable terms (default equal: the gauge that
        minimises the RMS error), e.g. 1/σ² of stated uncertainties (the most likely gauge
        under them: a few frames far off then do not spread their error over all others).

    Returns
    -------
    err_v, err_h : (n,) vertical and horizontal errors, pixels.
    centre : the centre error ``c``, pixels.
    """
    e = np.asarray(shifts, float) + np.asarray(true_shift, float)
    t = np.deg2rad(np.asarray(angles_deg, float))
    w = np.ones_like(t) if weights is None else np.nan_to_num(np.asarray(weights, float), posinf=0.0)
    root = np.sqrt(np.clip(w, 0.0, None))
    basis = np.stack([np.ones_like(t), np.cos(t), np.sin(t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis * root[:, None], e[:, 1] * root, rcond=None)
    err_h = e[:, 1] - basis @ coef
    err_v = e[:, 0] - np.average(e[:, 0], weights=w if w.sum() > 0 else None)
    return err_v, err_h + (coef[0] if keep_centre else 0.0), float(coef[0])


def validate_pair(angle_0: float, angle_180: float, tolerance_deg: float = 0.5) -> None:
    """Raise RunoutError unless the two angles are 180° apart (mod 360) within tolerance."""
    d = abs(((angle_180 - angle_0) % 360.0) - 180.0)
    if d > tolerance_deg:
        raise RunoutError(f"angles {angle_0} and {angle_180} deg are not 180 deg apart (off by {d:.3f} deg)")
