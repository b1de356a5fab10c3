"""Array-module plumbing: one code path for numpy and cupy."""

from __future__ import annotations

import numpy as np


def get_xp(array):
    """The array module (numpy or cupy) that ``array`` belongs to."""
    try:
        import cupy

        return cupy.get_array_module(array)
    except ImportError:
        return np


def ndimage_for(xp):
    """``scipy.ndimage`` for numpy, ``cupyx.scipy.ndimage`` for cupy."""
    if xp is np:
        from scipy import ndimage

        return ndimage
    from cupyx.scipy import ndimage  # pragma: no cover - needs a GPU

    return ndimage


def to_numpy(array) -> np.ndarray:
    """A host (numpy) copy of ``array``; small arrays only (fits and point sets run on the host)."""
    get = getattr(array, "get", None)
    return np.asarray(get() if get is not None else array)


def fft_for(xp):
    """``scipy.fft`` for numpy (keeps float32 in single precision), ``cupy.fft`` for cupy."""
    if xp is np:
        import scipy.fft

        return scipy.fft
    return xp.fft  # pragma: no cover - needs a GPU
