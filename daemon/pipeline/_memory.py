"""Giving freed heap back to the operating system between runs.

A run allocates and frees hundreds of MiB (frames waiting, reconstructions, refinement
buffers, pictures, exports) from several threads. glibc keeps freed memory in its arenas,
so the daemon's resident memory climbs for the first several runs to the high-water mark of
their fragmentation, although nothing is kept (measured with ``livetomo bench soak``'s
``measure`` on 16 runs alternating a 61-tilt series and a 61-angle XRF-DPC scan: RSS rose from
503 MiB after the first XRF-DPC run to 555 MiB at run 12, then fell back to 530-546 MiB).
``malloc_trim(0)`` after each run hands the free pages back, so what is resident after a run
is what is in use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger("livetomo.pipeline")


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> bool:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim``); False where there is
    no such call (macOS, musl), which changes nothing but the resident figure."""
    libc = _libc()
    if libc is None:
        return False
    try:
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - a libc without the symbol
        return False
    return True
