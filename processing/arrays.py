"""Array and FFT helpers shared by all of ``processing``: one code path for numpy and cupy.

``get_array_module`` picks numpy or cupy from the data; the FFT helpers use ``scipy.fft`` with
every core of this process on the CPU (single precision stays single) and ``cupy.fft`` on a
GPU; ``single_thread_blas`` keeps small matrix products off OpenBLAS's thread pool;
``bin_image`` reduces blocks of pixels.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def _cupy():
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def get_array_module(*arrays):
    """cupy if any of ``arrays`` is a cupy array, else numpy (also when cupy is not installed)."""
    cupy = _cupy()
    if cupy is not None and any(isinstance(a, cupy.ndarray) for a in arrays):
        return cupy
    return np


def to_numpy(array) -> np.ndarray:
    """A host (numpy) copy or view of ``array`` (cupy arrays are transferred)."""
    get = getattr(array, "get", None)
    return np.asarray(get() if get is not None else array)


def ndimage_for(xp):
    """``scipy.ndimage`` for numpy, ``cupyx.scipy.ndimage`` for cupy."""
    if xp is np:
        from scipy import ndimage

        return ndimage
    from cupyx.scipy import ndimage  # pragma: no cover - needs a GPU

    return ndimage


def fft_module(xp):
    """``scipy.fft`` for numpy (keeps float32 in single precision), ``cupy.fft`` for cupy."""
    if xp is np:
        import scipy.fft

        return scipy.fft
    return xp.fft  # pragma: no cover - needs a GPU


def fft_workers() -> int:
    """Threads for scipy.fft on the CPU: every core this process may use.

    At 1024² this halves the three FFTs of a registration on 2 cores (10.8 -> 5.7 ms;
    ``livetomo bench align``, part d).
    """
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def rfft(x, xp, axis=-1):
    """Real FFT along ``axis``."""
    if xp is np:
        return fft_module(xp).rfft(x, axis=axis, workers=fft_workers())
    return xp.fft.rfft(x, axis=axis)


def irfft(x, n: int, xp, axis=-1):
    """Inverse real FFT of length ``n`` along ``axis``."""
    if xp is np:
        return fft_module(xp).irfft(x, n=n, axis=axis, workers=fft_workers())
    return xp.fft.irfft(x, n=n, axis=axis)


def rfft2(x, xp, workers=None):
    """Real 2-D FFT over the last two axes; may overwrite ``x`` (``workers`` None: every core)."""
    if xp is np:
        return fft_module(xp).rfft2(x, workers=workers or fft_workers(), overwrite_x=True)
    return xp.fft.rfft2(x)


def irfft2(x, shape, xp, workers=None, overwrite: bool = True):
    """Inverse of :func:`rfft2` to ``shape`` (rows, cols); ``overwrite`` lets it reuse ``x``."""
    if xp is np:
        return fft_module(xp).irfft2(x, s=shape, workers=workers or fft_workers(), overwrite_x=overwrite)
    return xp.fft.irfft2(x, s=shape)


def next_fast_len(n: int) -> int:
    """Smallest even length >= n that FFTs quickly (products of 2, 3, 5)."""
    import scipy.fft

    m = scipy.fft.next_fast_len(int(n), real=True)
    while m % 2:
        m = scipy.fft.next_fast_len(m + 1, real=True)
    return m


@lru_cache(maxsize=1)
def _blas_controller():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl.ThreadpoolController()


def single_thread_blas():
    """Context that runs BLAS on one thread (when threadpoolctl is installed).

    Small matrix products (tens of rows) spend longer waking and waiting for OpenBLAS's
    threads than computing, and on a busy machine far longer: measured on the shared 2-core
    box, one 21-row DFT stage of a registration at 1024 x 1024 took 60 ms with OpenBLAS
    threads against 1.6 ms on one thread.
    """
    controller = _blas_controller()
    return nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


def bin_image(image, factor: int, *, reduce: str = "mean"):
    """Blocks of ``factor`` × ``factor`` pixels of the last two axes (rows, columns) reduced to
    one pixel: their ``'mean'`` or ``'sum'``. Rows and columns beyond a multiple of ``factor``
    are dropped; leading axes (a stack of frames) are kept; numpy or cupy, the dtype kept;
    ``image`` itself when ``factor`` is 1. Shape (..., rows // factor, cols // factor)."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    if factor == 1:
        return image
    rows, cols = image.shape[-2] // factor, image.shape[-1] // factor
    blocks = image[..., : rows * factor, : cols * factor].reshape(
        *image.shape[:-2], rows, factor, cols, factor
    )
    return blocks.mean(axis=(-3, -1)) if reduce == "mean" else blocks.sum(axis=(-3, -1))
