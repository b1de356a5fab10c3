"""Sub-pixel bead localisation: quadratic peak fit, Gaussian fit, radial symmetry.

Each bead is refined in a window of about 2.5 blob scales around its detection; every method
returns centres ``(x, y[, z])`` in pixels and a per-bead, per-axis standard deviation
estimated from the data itself (no ground truth):

* ``"gaussian"``: least-squares fit of an axis-aligned Gaussian on a planar background;
  the standard deviation is the fit's ``s^2 (J^T J)^-1`` (residual variance times the
  inverse normal matrix).
* ``"quadratic"``: the source method: a quadratic surface fitted to the 3x3(x3) neighbourhood
  of the maximum of the matched-filtered image; vertex = ``-H^-1 g``.
* ``"radial"``: radial symmetry (Parthasarathy, Nat. Methods 9, 724, 2012), generalised to
  n dimensions: the point closest, in weighted least squares, to every gradient line.

For the quadratic and radial methods the standard deviation comes from a noise-replica
bootstrap: the window is re-localised after adding noise at the level the Gaussian fit's
residuals show (linearised, the spread of those changes equals the estimator's own spread).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from ..arrays import to_numpy
from .detect import bead_signal
from .errors import CorrelationError

METHODS = ("gaussian", "quadratic", "radial")


@dataclass(frozen=True)
class Localisation:
    """Sub-pixel bead centres and their estimated precision.

    Attributes
    ----------
    positions : (n, ndim) float64 centres (x, y[, z]) in pixels.
    sigma_px : (n, ndim) float64 standard deviation of each coordinate, pixels.
    width_px : (n, ndim) Gaussian width of each bead (from the Gaussian fit), pixels.
    amplitude : (n,) fitted peak height above background, signal units.
    ok : (n,) bool, False where the fit failed or the spot does not look like a bead
        (centre left its window, width outside 0.3-3 times the expected blob scale).
    method : the method used.
    """

    positions: np.ndarray
    sigma_px: np.ndarray
    width_px: np.ndarray
    amplitude: np.ndarray
    ok: np.ndarray
    method: str

    def select(self, mask) -> Localisation:
        """The beads where ``mask`` (n,) is True."""
        mask = np.asarray(mask)
        return Localisation(
            self.positions[mask],
            self.sigma_px[mask],
            self.width_px[mask],
            self.amplitude[mask],
            self.ok[mask],
            self.method,
        )


def _window(shape, centre_xyz, half) -> tuple[slice, ...]:
    """Array-order slices of the window of half-widths ``half`` (x, y[, z]) around a centre."""
    c = np.round(np.asarray(centre_xyz)[::-1]).astype(int)
    h = np.asarray(half)[::-1]
    return tuple(slice(max(ci - hi, 0), min(ci + hi + 1, n)) for ci, hi, n in zip(c, h, shape, strict=True))


def _grid(win: tuple[slice, ...]) -> np.ndarray:
    """(npix, ndim) pixel coordinates (x, y[, z]) of a window, array-order raveling."""
    axes = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float64) for s in win], indexing="ij")
    return np.stack([a.ravel() for a in axes[::-1]], axis=1)


# --------------------------------------------------------------------------- Gaussian


def _gauss_model(p, xyz, d):
    amp, c, s, b0, b = p[0], p[1 : 1 + d], p[1 + d : 1 + 2 * d], p[1 + 2 * d], p[2 + 2 * d :]
    u = (xyz - c) / s
    g = np.exp(-0.5 * (u**2).sum(axis=1))
    return amp * g + b0 + (xyz - c) @ b, g, u


def _gauss_residual(p, xyz, values, d):
    return _gauss_model(p, xyz, d)[0] - values


def _gauss_jac(p, xyz, values, d):
    amp, c, s, b = p[0], p[1 : 1 + d], p[1 + d : 1 + 2 * d], p[2 + 2 * d :]
    _, g, u = _gauss_model(p, xyz, d)
    jac = np.empty((len(values), len(p)))
    jac[:, 0] = g
    jac[:, 1 : 1 + d] = amp * g[:, None] * u / s - b  # background is centred on c
    jac[:, 1 + d : 1 + 2 * d] = amp * g[:, None] * u**2 / s
    jac[:, 1 + 2 * d] = 1.0
    jac[:, 2 + 2 * d :] = xyz - c
    return jac


def _fit_gaussian(xyz, values, start, sigma0):
    """Fit; returns (params, per-axis std of the centre, residual std) or None."""
    d = xyz.shape[1]
    bg = float(np.percentile(values, 20))
    amp0 = max(float(values.max()) - bg, 1e-12)
    p0 = np.concatenate([[amp0], start, sigma0, [bg], np.zeros(d)])
    try:
        fit = optimize.least_squares(_gauss_residual, p0, jac=_gauss_jac, args=(xyz, values, d), method="lm")
    except (ValueError, np.linalg.LinAlgError):
        return None
    dof = len(values) - len(p0)
    s2 = float(fit.fun @ fit.fun) / max(dof, 1)
    try:
        cov = np.linalg.inv(fit.jac.T @ fit.jac) * s2
    except np.linalg.LinAlgError:
        return None
    std = np.sqrt(np.clip(np.diag(cov)[1 : 1 + d], 0.0, None))
    return fit.x, std, np.sqrt(s2)


# --------------------------------------------------------------------------- quadratic


def _quadratic_vertex(smooth: np.ndarray, peak_idx: tuple[int, ...]) -> np.ndarray | None:
    """Vertex (array order, absolute) of a quadratic fitted to the 3^d neighbourhood of ``peak_idx``."""
    d = smooth.ndim
    if any(i < 1 or i > n - 2 for i, n in zip(peak_idx, smooth.shape, strict=True)):
        return None
    offs = np.stack(np.meshgrid(*[np.arange(-1, 2)] * d, indexing="ij"), -1).reshape(-1, d).astype(float)
    vals = smooth[tuple(np.asarray(peak_idx)[:, None] + offs.T.astype(int))]
    cols = [np.ones(len(offs))] + [offs[:, i] for i in range(d)]
    pairs = [(i, j) for i in range(d) for j in range(i, d)]
    cols += [offs[:, i] * offs[:, j] for i, j in pairs]
    coef = np.linalg.lstsq(np.stack(cols, 1), vals, rcond=None)[0]
    g = coef[1 : 1 + d]
    h = np.zeros((d, d))
    for (i, j), c in zip(pairs, coef[1 + d :], strict=True):
        h[i, j] += c if i != j else 2 * c
        if i != j:
            h[j, i] += c
    try:
        step = -np.linalg.solve(h, g)
    except np.linalg.LinAlgError:
        return None
    if np.any(np.abs(step) > 1.0) or np.any(np.linalg.eigvalsh(h) >= 0):
        return None
    return np.asarray(peak_idx, dtype=float) + step


def _locate_quadratic(patch: np.ndarray, sigma_px: np.ndarray, origin: np.ndarray) -> np.ndarray | None:
    """Centre (x, y[, z]) by the source's quadratic fit on the matched-filtered window."""
    smooth = ndimage.gaussian_filter(patch, np.asarray(sigma_px)[::-1] * 0.5, mode="nearest")
    centre = tuple(np.asarray(patch.shape) // 2)
    # The peak nearest to the window centre: climb from the centre.
    idx = centre
    for _ in range(max(patch.shape)):
        lo = [max(i - 1, 0) for i in idx]
        sub = smooth[tuple(slice(a, i + 2) for a, i in zip(lo, idx, strict=True))]
        step = np.unravel_index(np.argmax(sub), sub.shape)
        nxt = tuple(a + s for a, s in zip(lo, step, strict=True))
        if nxt == idx:
            break
        idx = nxt
    vertex = _quadratic_vertex(smooth, idx)
    return None if vertex is None else origin + vertex[::-1]


# --------------------------------------------------------------------------- radial symmetry


def _locate_radial(patch: np.ndarray, origin: np.ndarray) -> np.ndarray | None:
    """Centre (x, y[, z]) as the weighted least-squares meeting point of the gradient lines."""
    d = patch.ndim
    grads = np.gradient(ndimage.uniform_filter(patch, 3, mode="nearest"))
    g = np.stack([gr.ravel() for gr in grads[::-1]], 1)  # (npix, d) in (x, y[, z])
    mag2 = (g**2).sum(1)
    good = mag2 > 1e-12 * max(float(mag2.max()), 1e-300)
    if good.sum() < 3 * d:
        return None
    pos = _grid(tuple(slice(0, n) for n in patch.shape))[good]
    g, mag2 = g[good], mag2[good]
    n = g / np.sqrt(mag2)[:, None]
    centre = (mag2 @ pos) / mag2.sum()
    for _ in range(2):  # Parthasarathy's 1/distance weighting, refined once from the first solution
        w = mag2 / np.maximum(np.linalg.norm(pos - centre, axis=1), 0.5)
        proj = np.eye(d)[None] - n[:, :, None] * n[:, None, :]
        a = np.einsum("k,kij->ij", w, proj)
        b = np.einsum("k,kij,kj->i", w, proj, pos)
        try:
            centre = np.linalg.solve(a, b)
        except np.linalg.LinAlgError:
            return None
    if np.any(centre < -0.5) or np.any(centre > np.asarray(patch.shape[::-1]) - 0.5):
        return None
    return origin + centre


def _plane_free(patch: np.ndarray) -> np.ndarray:
    """Window minus the plane fitted to its border pixels (beads sit on sloping backgrounds)."""
    border = np.ones(patch.shape, bool)
    border[tuple(slice(1, -1) for _ in patch.shape)] = False
    xyz = _grid(tuple(slice(0, n) for n in patch.shape))
    basis = np.column_stack([np.ones(len(xyz)), xyz])
    coef = np.linalg.lstsq(basis[border.ravel()], patch.ravel()[border.ravel()], rcond=None)[0]
    return patch - (basis @ coef).reshape(patch.shape)


# --------------------------------------------------------------------------- driver


def _bootstrap_std(locate, patch, noise_std, rng, n_rep: int) -> np.ndarray:
    """Spread of ``locate`` under added noise of ``noise_std`` (linearised estimator spread)."""
    base = locate(patch)
    if base is None:
        return np.full(patch.ndim, np.nan)
    moves = []
    for _ in range(n_rep):
        p = locate(patch + rng.normal(0.0, noise_std, patch.shape))
        if p is not None:
            moves.append(p - base)
    if len(moves) < n_rep // 2:
        return np.full(patch.ndim, np.nan)
    return np.sqrt(np.mean(np.square(moves), axis=0))


def localize_beads(
    image,
    positions,
    *,
    sigma_px,
    polarity: str = "bright",
    method: str = "gaussian",
    n_bootstrap: int = 12,
    seed: int = 0,
) -> Localisation:
    """Refine bead centres to sub-pixel precision and estimate each one's precision.

    Parameters
    ----------
    image : (ny, nx) image or (nz, ny, nx) stack (numpy or cupy; windows are fitted on the host).
    positions : (n, ndim) starting centres (x, y[, z]) in pixels, e.g. ``detect_beads(...).positions``.
    sigma_px : (ndim,) expected blob scale per axis (x, y[, z]), pixels (``BeadDetections.sigma_px``).
    polarity : "bright", "dark" or "absorbing", as in :func:`detect_beads`.
    method : "gaussian" (default), "quadratic" (the source method) or "radial".
    n_bootstrap : noise replicas per bead for the quadratic and radial precision estimates.
    seed : seed of those replicas.

    Returns
    -------
    localisation : :class:`Localisation` with one row per input position (check ``ok``).
    """
    if method not in METHODS:
        raise CorrelationError(f"unknown localisation method {method!r}; allowed: {', '.join(METHODS)}")
    signal = to_numpy(bead_signal(image, polarity)).astype(np.float64)
    d = signal.ndim
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, d)
    sig = np.asarray(sigma_px, dtype=np.float64)
    half = np.maximum(np.ceil(2.5 * sig).astype(int), 2)
    rng = np.random.default_rng(seed)
    out_pos = np.full(pos.shape, np.nan)
    out_std = np.full(pos.shape, np.nan)
    width = np.full(pos.shape, np.nan)
    amp = np.full(len(pos), np.nan)
    ok = np.zeros(len(pos), bool)
    for k, start in enumerate(pos):
        win = _window(signal.shape, start, half)
        patch = signal[win]
        origin = np.array([s.start for s in win][::-1], dtype=np.float64)
        xyz = _grid(win)
        fit = _fit_gaussian(xyz, patch.ravel(), start, sig)
        if fit is None:
            continue
        params, std, resid = fit
        amp[k], width[k] = params[0], np.abs(params[1 + d : 1 + 2 * d])
        centre = params[1 : 1 + d]
        if method == "quadratic":
            locate = lambda p, o=origin: _locate_quadratic(p, sig, o)  # noqa: E731
        elif method == "radial":
            locate = lambda p, o=origin: _locate_radial(_plane_free(p), o)  # noqa: E731
        if method != "gaussian":
            centre = locate(patch)
            std = _bootstrap_std(locate, patch, resid, rng, n_bootstrap) if centre is not None else None
            if centre is None:
                continue
        inside = np.all(np.abs(centre - start) <= half)
        shaped = np.all((width[k] > 0.3 * sig) & (width[k] < 3.0 * sig)) and amp[k] > 0
        out_pos[k], out_std[k] = centre, std
        ok[k] = bool(inside and shaped and np.all(np.isfinite(std)))
    return Localisation(out_pos, out_std, width, amp, ok, method)
