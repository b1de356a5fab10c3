"""Ramp-type filters of filtered back-projection and the filtering of projection rows.

Each detector row is padded (to at least twice its length, so the circular convolution of
the FFT does not wrap the filter's long 1/n² tails back onto the data), Fourier
transformed, multiplied by the filter response and transformed back. With
``oversample > 1`` the inverse transform is taken on a grid ``oversample`` times finer
(zero-padded spectrum: band-limited, i.e. exact, interpolation of the filtered
projection), so the back-projector can look values up by nearest neighbour with a
position error of at most 1/(2·oversample) pixel. That is both faster and more accurate
than linear interpolation on the original grid (``livetomo bench recon``, 512² Shepp-Logan
from 360 angles: RMSE 0.0148 with 4x oversampling against 0.0187 for linear interpolation).

The ramp is built as in scikit-image's ``iradon``: the Fourier transform of the
spatially sampled, band-limited ramp kernel (Ram-Lak: h[0] = 1/4, h[odd n] = -1/(πn)²),
which gets the zero-frequency term right instead of forcing it to zero. The windows
multiply it: Shepp-Logan (sinc), cosine, Hann, Hamming, each reaching Nyquist at
``cutoff = 1``; above ``cutoff`` × Nyquist the response is zero.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..arrays import irfft, rfft
from .errors import ReconstructionError

FILTERS = ("ramp", "shepp-logan", "cosine", "hann", "hamming", "none")
PADDINGS = ("edge", "zeros")


def check_filter(filter_name: str, cutoff: float) -> None:
    """Raise ReconstructionError unless the filter name and cutoff are allowed."""
    if filter_name not in FILTERS:
        raise ReconstructionError(f"filter_name must be one of {FILTERS}, got {filter_name!r}")
    if not (np.isfinite(cutoff) and 0.0 < cutoff <= 1.0):
        raise ReconstructionError(f"cutoff must be in (0, 1] (fraction of Nyquist), got {cutoff}")


@lru_cache(maxsize=64)
def _response(n_padded: int, filter_name: str, cutoff: float) -> np.ndarray:
    n = int(n_padded)
    if filter_name == "none":
        return np.ones(n // 2 + 1)
    pos = np.arange(n)
    dist = np.minimum(pos, n - pos)
    kernel = np.zeros(n)
    kernel[0] = 0.25
    odd = dist % 2 == 1
    kernel[odd] = -1.0 / (np.pi * dist[odd]) ** 2
    h = np.real(np.fft.rfft(kernel))  # ≈ |ν|, ν in cycles/pixel
    nu = np.arange(n // 2 + 1) / n
    x = nu / cutoff  # window argument: 0.5 at the cutoff frequency
    if filter_name == "shepp-logan":
        h = h * np.sinc(x)
    elif filter_name == "cosine":
        h = h * np.cos(np.pi * x)
    elif filter_name == "hann":
        h = h * (0.5 + 0.5 * np.cos(2 * np.pi * x))
    elif filter_name == "hamming":
        h = h * (0.54 + 0.46 * np.cos(2 * np.pi * x))
    h[nu > 0.5 * cutoff + 1e-12] = 0.0
    h.flags.writeable = False
    return h


def fourier_filter(n_padded: int, filter_name: str = "ramp", *, cutoff: float = 1.0) -> np.ndarray:
    """Frequency response of a reconstruction filter at the real-FFT frequencies.

    Parameters
    ----------
    n_padded : even length of the padded detector row, pixels.
    filter_name : one of :data:`FILTERS`; ``"none"`` gives an all-pass (plain back-projection).
    cutoff : fraction of the Nyquist frequency where the window reaches its end (0, 1].

    Returns
    -------
    response : ndarray, shape (n_padded // 2 + 1,), float64 (read-only), at frequencies
        k / n_padded cycles/pixel, k = 0 .. n_padded/2; the ramp is ≈ |ν| (0.5 at Nyquist).
    """
    check_filter(filter_name, cutoff)
    if n_padded < 2 or n_padded % 2:
        raise ReconstructionError(f"n_padded must be an even length >= 2, got {n_padded}")
    return _response(int(n_padded), filter_name, float(cutoff))


def filter_rows(
    rows,
    *,
    n_padded: int,
    pad_left: int,
    response,
    padding: str = "edge",
    oversample: int = 1,
    scale=None,
    xp=np,
):
    """Pad, filter and (optionally) up-sample detector rows.

    Parameters
    ----------
    rows : array, shape (..., n_u), float; not modified.
    n_padded : even padded length >= n_u + pad_left.
    pad_left : index of the first detector pixel in the padded row.
    response : filter response, shape (n_padded // 2 + 1,) (see :func:`fourier_filter`).
    padding : "edge" (repeat the outermost detector values: suppresses the cupping of
        projections truncated by the field of view, e.g. a lamella slab at high tilt) or
        "zeros".
    oversample : integer >= 1; the filtered row is returned on a grid this much finer.
    scale : optional array broadcastable to ``rows.shape[:-1]`` multiplying each row
        (angular weight, tilt weight, 1/voxel size).
    xp : array module of ``rows``.

    Returns
    -------
    filtered : array, shape (..., n_padded * oversample), float32; sample m sits at
        padded-row position m / oversample.
    """
    if padding not in PADDINGS:
        raise ReconstructionError(f"padding must be one of {PADDINGS}, got {padding!r}")
    rows = xp.asarray(rows, dtype=xp.float32)
    n_u = rows.shape[-1]
    if pad_left < 0 or pad_left + n_u > n_padded:
        raise ReconstructionError(f"padded length {n_padded} cannot hold {n_u} pixels from offset {pad_left}")
    x = xp.zeros(rows.shape[:-1] + (n_padded,), dtype=xp.float32)
    x[..., pad_left : pad_left + n_u] = rows
    if padding == "edge":
        x[..., :pad_left] = rows[..., :1]
        x[..., pad_left + n_u :] = rows[..., -1:]
    spectrum = rfft(x, xp)
    h = xp.asarray(response, dtype=xp.float32)
    if oversample > 1:
        # The Nyquist bin stands for one real cosine; on a finer grid it would count twice.
        h = h.copy()
        h[-1] *= 0.5
    spectrum *= h
    if scale is not None:
        spectrum *= xp.asarray(scale, dtype=xp.float32)[..., None]
    out = irfft(spectrum, n_padded * oversample, xp)
    if oversample > 1:
        out *= oversample
    return out.astype(xp.float32, copy=False)
