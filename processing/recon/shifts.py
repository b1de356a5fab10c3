"""Alignment shifts of projections.

Convention (that of :func:`livetomo.processing.register.register` and scikit-image): the
shift (dy, dx) of a projection, pixels, is the one that *aligns* it,
``aligned = scipy.ndimage.shift(projection, (dy, dx))``. For simulator data, where
``observed = ndimage.shift(ideal, true_shift_px)``, the aligning shift is ``-true_shift_px``.

The horizontal part never resamples the data: it moves the detector centre of that
projection inside the back-projector (exact, free). The vertical part resamples the rows
(linear interpolation along z, edge rows continued, as ice continues above and below the
field of view).
"""

from __future__ import annotations

import numpy as np

from .errors import ReconstructionError


def as_shifts(shifts, n: int) -> np.ndarray:
    """Shifts as an (n, 2) float64 array of (dy, dx), pixels; None gives zeros."""
    if shifts is None:
        return np.zeros((n, 2))
    s = np.asarray(shifts, dtype=np.float64)
    if s.shape == (2,) and n == 1:
        s = s[None]
    if s.shape != (n, 2):
        raise ReconstructionError(f"shifts must have shape ({n}, 2) of (dy, dx) pixels, got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ReconstructionError("shifts must be finite pixels (dy, dx)")
    return s


def shift_rows(projection, dy: float, xp=np):
    """Projection moved by ``dy`` pixels along z (axis -2): ``out[z] = projection[z - dy]``.

    Parameters
    ----------
    projection : array, shape (..., nz, n_u); not modified.
    dy : vertical aligning shift, pixels (any real number).
    xp : array module of ``projection``.

    Returns
    -------
    shifted : array, same shape, float32; linear interpolation, rows beyond the edges repeat
        the edge rows. ``dy == 0`` returns the input as float32 without resampling.
    """
    p = xp.asarray(projection, dtype=xp.float32)
    if dy == 0.0:
        return p
    if p.ndim < 2:
        raise ReconstructionError("a vertical shift needs projections with a z axis (shape (..., nz, n_u))")
    nz = p.shape[-2]
    if nz == 1:
        return p
    z = np.clip(np.arange(nz) - float(dy), 0.0, nz - 1.0)
    i0 = np.minimum(np.floor(z).astype(np.int64), nz - 2)
    f = xp.asarray((z - i0).astype(np.float32))[:, None]
    i0 = xp.asarray(i0)
    lower = xp.take(p, i0, axis=-2)
    upper = xp.take(p, i0 + 1, axis=-2)
    return lower + f * (upper - lower)
