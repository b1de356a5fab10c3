"""Array-module plumbing: one code path for numpy and cupy."""

from __future__ import annotations

import numpy as np

from ..arrays import get_array_module, ndimage_for, to_numpy  # noqa: F401  (re-exported)

get_xp = get_array_module


def fft_for(xp):
    """``scipy.fft`` for numpy (keeps float32 in single precision), ``cupy.fft`` for cupy."""
    if xp is np:
        import scipy.fft

        return scipy.fft
    return xp.fft  # pragma: no cover - needs a GPU
