"""Projection alignment from the consistency of projection moments (no reconstruction).

For a parallel-beam projection p_θ(z, u) of a specimen that stays inside the field:

- the mass of every row, ``m(z) = Σ_u p_θ(z, u)``, is the same at every angle (it is the
  mass of slice z), so the vertical profiles of all projections must coincide: registering
  each profile on their aligned mean gives every projection's vertical shift, with no
  accumulation from one projection to the next;
- the centre of mass along u, ``Σ u p / Σ p``, is ``x_c cos θ + y_c sin θ`` (the specimen's
  centre of mass projected) plus the projection's horizontal displacement. Fitting
  ``c + a cos θ + b sin θ`` over the angles and keeping the residual plus ``c`` gives the
  horizontal displacement of every projection, the constant ``c`` being the rotation-axis
  offset (the centre). The fitted ``a cos θ + b sin θ`` is the specimen's own position:
  no alignment method can tell it apart from a runout of the same form (the gauge freedom
  of tomographic alignment).

These are the Helgason–Ludwig consistency conditions of orders 0 and 1. They need the whole
specimen inside the field of view at every angle (no truncation) and a linear projection
(phase, absorption, element counts). For DPC, the horizontal gradient is integrated along
each row from a border where the phase is flat (:func:`phase_from_dpc_rows`,
:func:`flat_border` finds it).

Shift sign: the returned shifts register each projection onto the aligned frame
(``ndimage.shift(projection, shift)``), as in :mod:`livetomo.processing.register`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import get_array_module, to_numpy
from .register import register, shift_image


class MomentAlignmentError(ValueError):
    """Bad input to the moment alignment (shapes, too few angles)."""


def phase_from_dpc_rows(horizontal, *, start: str = "left"):
    """Integrate horizontal DPC along rows: κ·phase, zero at the ``start`` border.

    The detector measures a central difference ``h(u) ≈ κ (φ(u+1) − φ(u−1)) / 2``; its
    running sum lands half a pixel off, ``Σ_{j≤u} h(j) ≈ κ φ(u + ½)``, so half the current
    sample is taken back to bring the result onto the pixel grid.

    Parameters
    ----------
    horizontal : (..., rows, cols) horizontal DPC (difference over sum), numpy or cupy.
    start : 'left' or 'right': the border where the phase is flat (vacuum or uniform).

    Returns
    -------
    phase : same shape, float32, in units of κ·rad (κ the DPC sensitivity per rad/pixel).
    """
    xp = get_array_module(horizontal)
    h = xp.asarray(horizontal, dtype=xp.float32)
    if start == "left":
        return (xp.cumsum(h, axis=-1) - 0.5 * h).astype(xp.float32)
    if start == "right":
        return (0.5 * h - xp.cumsum(h[..., ::-1], axis=-1)[..., ::-1]).astype(xp.float32)
    raise MomentAlignmentError(f"start must be 'left' or 'right', got {start!r}")


def border_flatness(horizontal, *, border: int = 2) -> dict[str, float]:
    """|mean| / noise of the outer ``border`` columns of a horizontal-DPC map, per side.

    The noise is estimated from differences between neighbouring rows there. Small values
    (a few) mean the phase does not change at that border.
    """
    h = np.asarray(to_numpy(horizontal), dtype=float)
    if h.ndim != 2 or h.shape[1] < 4 * border:
        raise MomentAlignmentError(f"horizontal must be (rows, cols) with >= {4 * border} columns")
    ratios = {}
    for side, cols in (("left", h[:, :border]), ("right", h[:, -border:])):
        noise = 1.4826 * np.median(np.abs(np.diff(cols, axis=0))) / np.sqrt(2.0) + 1e-12
        ratios[side] = float(abs(cols.mean()) / noise)
    return ratios


def flat_border(horizontal, *, border: int = 2, tolerance: float = 25.0) -> str | None:
    """The flatter border of a horizontal-DPC map: 'left', 'right', or None if neither is.

    Row integration needs one border where the phase does not change (outside the specimen
    and its ice). For each side the mean of the outer ``border`` columns is compared with
    the pixel noise (:func:`border_flatness`); the side with the smaller ratio is returned
    when the ratio is below ``tolerance``. A specimen whose blurred edge just touches the
    border, or that is cut by the other border, loses only the little mass outside the field.
    """
    ratios = border_flatness(horizontal, border=border)
    side = min(ratios, key=ratios.get)
    return side if ratios[side] <= tolerance else None


def centre_of_mass_u(projection, *, background: float = 0.0) -> tuple[float, float]:
    """(mass, centre of mass along columns) of one projection (rows, cols).

    The centre is in pixels from the centre column ``(cols - 1) / 2``; ``background`` is
    subtracted first (e.g. a uniform scatter level of an element map).
    """
    p = np.asarray(to_numpy(projection), dtype=np.float64) - background
    if p.ndim != 2:
        raise MomentAlignmentError(f"projection must be (rows, cols), got {p.shape}")
    u = np.arange(p.shape[1]) - (p.shape[1] - 1) / 2.0
    mass = float(p.sum())
    if mass == 0.0 or not np.isfinite(mass):
        return mass, float("nan")
    return mass, float((p.sum(axis=0) * u).sum() / mass)


@dataclass(frozen=True)
class MomentFit:
    """Horizontal alignment from centres of mass.

    Attributes
    ----------
    shifts_h : (n,) horizontal shift per projection, pixels (register onto a frame whose
        rotation axis is the centre column).
    centre_px : rotation-axis column in the projections' own pixel coordinates averaged
        over the scan (``(cols - 1) / 2 + c``); the raw frames' axis.
    gauge : (a, b), pixels: the specimen's centre of mass ``a cos θ + b sin θ``.
    residual_std : robust std of the fit residuals, pixels (runout beyond the first
        harmonic, jitter, noise).
    """

    shifts_h: np.ndarray
    centre_px: float
    gauge: tuple[float, float]
    residual_std: float


def fit_horizontal_moments(angles_deg, centres_u, n_cols: int, *, weights=None) -> MomentFit:
    """Horizontal shifts from the centres of mass of the projections (see module docstring).

    Parameters
    ----------
    angles_deg : (n,) angles, degrees; they must span enough of a half turn to separate
        ``1, cos θ, sin θ`` (about 30° or more).
    centres_u : (n,) centres of mass along u, pixels from the centre column.
    n_cols : width of the projections, pixels.
    weights : (n,) optional weights (e.g. projection masses); NaN centres are ignored.
    """
    a = np.deg2rad(np.asarray(angles_deg, dtype=float).ravel())
    com = np.asarray(centres_u, dtype=float).ravel()
    if a.size != com.size:
        raise MomentAlignmentError(f"{a.size} angles but {com.size} centres")
    ok = np.isfinite(com)
    if ok.sum() < 4:
        raise MomentAlignmentError("need at least 4 projections with a centre of mass")
    basis = np.stack([np.ones_like(a), np.cos(a), np.sin(a)], axis=1)
    if np.linalg.cond(basis[ok]) > 1e3:
        raise MomentAlignmentError("the angles do not span enough of a half turn to separate the moments")
    w = np.ones_like(com) if weights is None else np.asarray(weights, dtype=float).ravel()
    sw = np.sqrt(np.where(ok, w, 0.0))
    coef, *_ = np.linalg.lstsq(basis[ok] * sw[ok, None], com[ok] * sw[ok], rcond=None)
    resid = com - basis @ coef
    gauge = basis[:, 1:] @ coef[1:]
    shifts = -(com - gauge)  # displacement = com minus the specimen's own trace
    mad = 1.4826 * np.median(np.abs(resid[ok] - np.median(resid[ok])))
    return MomentFit(
        np.where(ok, shifts, np.nan), (n_cols - 1) / 2.0 + float(coef[0]), (coef[1], coef[2]), float(mad)
    )


def vertical_profile_shifts(profiles, *, iterations: int = 3, upsample_factor: int = 100) -> np.ndarray:
    """Vertical shifts from the row-mass profiles of all projections.

    Each profile (rows,) is registered on the mean of the aligned profiles (starting from
    the plain mean), a few times, and the shifts are made zero-mean.

    Parameters
    ----------
    profiles : (n, rows) row sums of the projections (for DPC, of the vertical DPC: the
        derivative of the row mass, equally invariant).

    Returns
    -------
    shifts_v : (n,) vertical shifts, pixels.
    """
    prof = np.asarray(to_numpy(profiles), dtype=np.float32)
    if prof.ndim != 2 or prof.shape[0] < 2 or prof.shape[1] < 8:
        raise MomentAlignmentError(f"profiles must be (n >= 2, rows >= 8), got {prof.shape}")
    shifts = np.zeros(prof.shape[0])
    for _ in range(max(1, iterations)):
        aligned = np.stack([_shift_1d(p, s) for p, s in zip(prof, shifts, strict=True)])
        reference = aligned.mean(axis=0)
        shifts = np.array([_register_1d(reference, p, upsample_factor) for p in prof])
        shifts -= shifts.mean()
    return shifts


def _register_1d(reference, moving, upsample_factor):
    """Vertical shift registering a 1-D profile onto another (as 8 identical columns)."""
    ref = np.repeat(reference[:, None], 8, axis=1)
    mov = np.repeat(moving[:, None], 8, axis=1)
    return register(ref, mov, window=None, upsample_factor=upsample_factor).shift[0]


def _shift_1d(profile, shift):
    return shift_image(np.repeat(profile[:, None], 4, axis=1), (shift, 0.0))[:, 0]
