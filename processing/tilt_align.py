"""Tilt-series alignment pieces: cosine stretch, choice of reference, drift prediction.

A specimen tilted by α about the image's vertical axis shows its features compressed
horizontally by cos α (for a thin specimen). Two neighbouring tilts are therefore compared
after stretching the image at the higher tilt by ``cos α_low / cos α_high`` perpendicular
to the tilt axis, about the axis (IMOD ``tiltxcorr``'s cosine stretch). Tilts may arrive in
any order (dose-symmetric, bidirectional, continuous); each new tilt is registered on the
already-aligned tilt nearest to it in angle, which is the cumulative reference of a
dose-symmetric series (every new tilt is the next one out on its side).

The streaming aligner that uses these is
:class:`~livetomo.processing.streaming_align.StreamingTiltAligner`.
"""

from __future__ import annotations

import math

import numpy as np

from .arrays import get_array_module


class TiltAlignmentError(ValueError):
    """Bad input to the tilt-series alignment (angle out of range, shapes)."""


def check_tilt(tilt_deg: float, limit_deg: float = 85.0) -> float:
    """The tilt as a float, or TiltAlignmentError when |tilt| >= ``limit_deg``."""
    t = float(tilt_deg)
    if not math.isfinite(t) or abs(t) >= limit_deg:
        raise TiltAlignmentError(f"tilt {tilt_deg} deg outside (-{limit_deg}, {limit_deg}) deg")
    return t


def stretch_columns(image, factor: float, *, centre: float | None = None):
    """Resample ``image`` along columns: ``out(x) = image(c + (x - c) · factor)``.

    ``factor < 1`` expands the image about column ``c`` (what the higher tilt of a pair
    needs: ``factor = cos α_high / cos α_low``). Cubic convolution (Keys, a = -0.5) along
    the rows, edge values continued.

    Parameters
    ----------
    image : (..., rows, cols) real array, numpy or cupy; not modified.
    factor : sampling factor, > 0.
    centre : column of the tilt axis; default the centre column ``(cols - 1) / 2``.

    Returns
    -------
    stretched : same shape, float32.
    """
    if not factor > 0:
        raise TiltAlignmentError(f"stretch factor must be > 0, got {factor}")
    xp = get_array_module(image)
    a = xp.asarray(image, dtype=xp.float32)
    n = a.shape[-1]
    c = (n - 1) / 2.0 if centre is None else float(centre)
    x = c + (np.arange(n) - c) * float(factor)
    i0 = np.floor(x).astype(np.int64)
    t = x - i0
    out = xp.zeros(a.shape, dtype=xp.float32)
    for offset, w in zip((-1, 0, 1, 2), _keys_weights(t), strict=True):
        idx = xp.asarray(np.clip(i0 + offset, 0, n - 1))
        out += a[..., idx] * xp.asarray(w.astype(np.float32))
    return out


def _keys_weights(t: np.ndarray, a: float = -0.5):
    """Cubic-convolution weights of the 4 samples at offsets -1, 0, 1, 2 for fraction t."""

    def k(d):
        d = np.abs(d)
        return np.where(
            d <= 1,
            (a + 2) * d**3 - (a + 3) * d**2 + 1,
            np.where(d < 2, a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a, 0.0),
        )

    return k(t + 1), k(t), k(1 - t), k(2 - t)


def nearest_aligned(tilts_deg, aligned: list[int], tilt_deg: float) -> int:
    """Index (into ``tilts_deg``) of the aligned tilt nearest to ``tilt_deg``.

    Ties go to the lower |tilt| (closer to 0°: less dose, less stretch, sharper).
    """
    if not aligned:
        raise TiltAlignmentError("no aligned tilt to compare with")
    t = np.asarray(tilts_deg, dtype=float)
    return min(aligned, key=lambda j: (abs(t[j] - tilt_deg), abs(t[j]), j))


def stretch_factor(tilt_from: float, tilt_to: float) -> float:
    """``cos(tilt_from) / cos(tilt_to)``: the sampling factor that maps an image taken at
    ``tilt_from`` onto the geometry of ``tilt_to`` with :func:`stretch_columns`."""
    return math.cos(math.radians(tilt_from)) / math.cos(math.radians(tilt_to))


def drift_basis(tilts_deg, order_index) -> np.ndarray:
    """Columns of the smooth drift model used to predict the next tilt's shift.

    ``[1, sin α, cos α, i, i²]`` with i the acquisition index scaled to [0, 1]: eucentric
    error (sin α, cos α), steady drift and its slow change over the series.
    """
    a = np.deg2rad(np.asarray(tilts_deg, dtype=float))
    i = np.asarray(order_index, dtype=float)
    i = i / max(i.max(), 1.0)
    return np.stack([np.ones_like(a), np.sin(a), np.cos(a), i, i * i], axis=1)


def predict_drift(tilts_deg, shifts, order_index, tilt_new: float, index_new: int):
    """Robust prediction of the shift of a new tilt from the shifts aligned so far.

    A Huber-weighted fit of :func:`drift_basis` per axis; needs at least 7 aligned tilts.

    Returns
    -------
    prediction : (2,) shift (dy, dx), pixels, or None with fewer than 7 tilts.
    scale : (2,) robust standard deviation of the fit residuals, pixels.
    """
    t = np.asarray(tilts_deg, dtype=float)
    s = np.asarray(shifts, dtype=float).reshape(-1, 2)
    if t.size < 7:
        return None, None
    idx = np.append(np.asarray(order_index, dtype=float), index_new)
    basis_all = drift_basis(np.append(t, tilt_new), idx)
    basis, row = basis_all[:-1], basis_all[-1]
    pred, scale = np.zeros(2), np.zeros(2)
    for axis in range(2):
        w = np.ones(t.size)
        for _ in range(6):
            sw = np.sqrt(w)
            coef, *_ = np.linalg.lstsq(basis * sw[:, None], s[:, axis] * sw, rcond=None)
            r = s[:, axis] - basis @ coef
            mad = 1.4826 * np.median(np.abs(r - np.median(r))) + 1e-6
            w = np.minimum(1.0, 1.5 * mad / np.maximum(np.abs(r), 1e-12))
        pred[axis], scale[axis] = row @ coef, mad
    return pred, scale
