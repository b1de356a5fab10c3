"""HDF5 compression filters of the run files, by name, and the chunk shape of a frame stream.

``bitshuffle-lz4`` is what Dectris (Eiger) files use; ``blosc-lz4`` and ``blosc-zstd`` are Blosc
with bit shuffling. All three are HDF5 plugin filters that ``hdf5plugin`` ships: a reader's h5py
decodes them after ``import hdf5plugin`` (silx, h5web, nxtomo and tomoscan do it themselves; the
HDF5 command-line tools find them through ``HDF5_PLUGIN_PATH=$(python -c "import hdf5plugin;
print(hdf5plugin.PLUGIN_PATH)")``). ``gzip`` is built into every HDF5 library: the choice for
readers without plugins. ``none`` stores the frames' bytes as they are.
"""

from __future__ import annotations

import hdf5plugin
import numpy as np

COMPRESSIONS = ("bitshuffle-lz4", "blosc-lz4", "blosc-zstd", "gzip", "none")
DEFAULT_COMPRESSION = "bitshuffle-lz4"
MAX_CHUNK_BYTES = 64 << 20  # a frame above this is split along its first axis into several chunks


def compression_options(name: str | None) -> dict:
    """``h5py.Group.create_dataset`` keyword arguments of the filter called ``name`` (None: no filter)."""
    if name in (None, "none"):
        return {}
    if name == "bitshuffle-lz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if name == "blosc-lz4":
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE))
    if name == "blosc-zstd":
        return dict(hdf5plugin.Blosc(cname="zstd", clevel=3, shuffle=hdf5plugin.Blosc.BITSHUFFLE))
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    allowed = ", ".join(repr(c) for c in COMPRESSIONS)
    raise ValueError(f"compression = {name!r} is not known; allowed: {allowed}")


def frame_chunks(shape: tuple[int, ...], dtype) -> tuple[int, ...]:
    """One frame per chunk; a frame over ``MAX_CHUNK_BYTES`` in pieces along its first axis."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if not shape or nbytes <= MAX_CHUNK_BYTES:
        return (1, *shape)
    per_row = max(nbytes // shape[0], 1)
    return (1, max(1, MAX_CHUNK_BYTES // per_row), *shape[1:])
