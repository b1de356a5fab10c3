"""Array-module plumbing shared by all of ``processing``: one code path for numpy and cupy."""

from __future__ import annotations

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
