"""Which code runs the heavy loops: on numpy the compiled numba kernels when numba is importable
(``backend="auto"``), otherwise the generic array code that cupy also runs. The array and FFT
helpers themselves are ``processing.arrays``."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .errors import ReconstructionError

BACKENDS = ("auto", "numba", "xp")


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
