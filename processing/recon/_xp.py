"""Array-module plumbing: one code path for numpy (CPU) and cupy (GPU).

The array module is inferred from the data; on numpy the heavy loops run in compiled
numba kernels when numba is importable (``backend="auto"``), otherwise in the generic
array code that cupy also runs.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from ..arrays import get_array_module, to_numpy  # noqa: F401  (re-exported)
from .errors import ReconstructionError

BACKENDS = ("auto", "numba", "xp")


get_xp = get_array_module


@lru_cache(maxsize=1)
def numba_available() -> bool:
    """True when numba imports (the compiled CPU kernels can be used)."""
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - numba is installed in CI
        return False
    return True


def use_numba(xp, backend: str) -> bool:
    """Whether to run the compiled CPU kernels for arrays of module ``xp``."""
    if backend not in BACKENDS:
        raise ReconstructionError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numba":
        if xp is not np:
            raise ReconstructionError(
                "backend='numba' runs on numpy arrays only; use 'xp' or 'auto' for cupy"
            )
        if not numba_available():
            raise ReconstructionError("backend='numba' requested but numba is not installed")
        return True
    return backend == "auto" and xp is np and numba_available()


def fft_workers() -> int:
    """Threads for scipy.fft on the CPU: every core this process may use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def rfft(x, xp, axis=-1):
    """Real FFT along ``axis`` (scipy.fft with all cores on numpy, cupy.fft on GPU)."""
    if xp is np:
        import scipy.fft

        return scipy.fft.rfft(x, axis=axis, workers=fft_workers())
    return xp.fft.rfft(x, axis=axis)


def irfft(x, n: int, xp, axis=-1):
    """Inverse real FFT of length ``n`` along ``axis``."""
    if xp is np:
        import scipy.fft

        return scipy.fft.irfft(x, n=n, axis=axis, workers=fft_workers())
    return xp.fft.irfft(x, n=n, axis=axis)


def next_fast_len(n: int) -> int:
    """Smallest even length >= n that FFTs quickly (products of 2, 3, 5)."""
    import scipy.fft

    m = scipy.fft.next_fast_len(int(n), real=True)
    while m % 2:
        m = scipy.fft.next_fast_len(m + 1, real=True)
    return m
