"""``HDF5FrameSink``: what area detectors write when no daemon receives their frames.

One file per detector and run, one dataset per data key at ``/entry/data/<key>`` with one
chunk per frame, flushed after every frame; ``read_stream`` reads frames back through the
stream_resource / stream_datum documents that point at them.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from urllib.parse import urlparse

import h5py
import numpy as np

from ...devices.sinks import StreamTarget


class HDF5FrameSink:
    """A ``FrameSink`` writing each detector's frames into HDF5 files under ``directory``.

    ``compression`` ("gzip", "lzf" or None) applies to integer data (MCA spectra are
    mostly zeros and shrink tenfold); float frames are stored as they are.
    """

    def __init__(self, directory: str | Path, *, compression: str | None = "lzf"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.compression = compression
        self._files: dict[str, h5py.File] = {}
        self._open_keys: dict[str, set[str]] = {}
        self._counter = itertools.count()

    def _file(self, device: str) -> h5py.File:
        if device not in self._files:
            path = self.directory / f"{device}_{next(self._counter):04d}.h5"
            f = h5py.File(path, "w")
            f.attrs["default"] = "entry"
            f.require_group("entry").attrs["NX_class"] = "NXentry"
            f["entry"].require_group("data").attrs["NX_class"] = "NXdata"
            self._files[device] = f
            self._open_keys[device] = set()
        return self._files[device]

    def open_stream(self, device, data_key, dtype, shape) -> StreamTarget:
        f = self._file(device)
        dtype = np.dtype(dtype)
        compression = self.compression if dtype.kind in "iu" else None
        f["entry/data"].create_dataset(
            data_key,
            shape=(0, *shape),
            maxshape=(None, *shape),
            chunks=(1, *shape),
            dtype=dtype,
            compression=compression,
        )
        self._open_keys[device].add(data_key)
        return StreamTarget(
            uri=Path(f.filename).resolve().as_uri(),
            mimetype="application/x-hdf5",
            parameters={"dataset": f"/entry/data/{data_key}", "chunk_shape": [1, *shape]},
        )

    def write(self, device, data_key, frame) -> int:
        f = self._files[device]
        dataset = f["entry/data"][data_key]
        index = dataset.shape[0]
        dataset.resize(index + 1, axis=0)
        dataset[index] = frame
        f.flush()
        return index

    def close_stream(self, device, data_key) -> None:
        keys = self._open_keys.get(device)
        if keys is None:
            return
        keys.discard(data_key)
        if not keys:
            self._files.pop(device).close()
            del self._open_keys[device]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._open_keys.clear()


def read_stream(stream_resource: dict, stream_datums: list[dict]) -> np.ndarray:
    """Frames a stream_resource and its stream_datum documents point at, in datum order."""
    path = urlparse(stream_resource["uri"]).path
    with h5py.File(path, "r") as f:
        dataset = f[stream_resource["parameters"]["dataset"]]
        return np.stack([dataset[d["indices"]["start"] : d["indices"]["stop"]][0] for d in stream_datums])
