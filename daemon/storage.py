"""HDF5 storage: the detectors' frame files and the NXtomo result file.

Frame files follow what area detectors write: one file per detector and run, one
dataset per data key at ``/entry/data/<key>`` with one chunk per frame, flushed after
every frame so a reader sees each frame as soon as it is written.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from urllib.parse import urlparse

import h5py
import numpy as np

from ..devices.sinks import StreamTarget


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


def write_nxtomo(
    path: str | Path, *, data, rotation_angle, image_key=None, processed=None, attrs=None
) -> Path:
    """Write an NXtomo file.

    Parameters
    ----------
    data : (n_frames, rows, cols) projections, stored at /entry/instrument/detector/data.
    rotation_angle : (n_frames,) degrees, at /entry/sample/rotation_angle.
    image_key : (n_frames,) NXtomo keys (0 projection, 1 flat, 2 dark); zeros by default.
    processed : mapping of name -> array stored under /entry/processing (nested by '/').
    attrs : extra attributes of /entry (run metadata).
    """
    path = Path(path)
    data = np.asarray(data)
    image_key = np.zeros(len(data), np.int32) if image_key is None else np.asarray(image_key, np.int32)
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "data"})
        entry["definition"] = "NXtomo"
        for key, value in (attrs or {}).items():
            entry.attrs[key] = value
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        detector = instrument.create_group("detector")
        detector.attrs["NX_class"] = "NXdetector"
        detector.create_dataset("data", data=data, chunks=(1, *data.shape[1:]))
        detector["image_key"] = image_key
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample["rotation_angle"] = np.asarray(rotation_angle, np.float64)
        sample["rotation_angle"].attrs["units"] = "degree"
        nxdata = entry.create_group("data")
        nxdata.attrs.update({"NX_class": "NXdata", "signal": "data", "axes": ["rotation_angle", ".", "."]})
        nxdata["data"] = h5py.SoftLink("/entry/instrument/detector/data")
        nxdata["rotation_angle"] = h5py.SoftLink("/entry/sample/rotation_angle")
        nxdata["image_key"] = h5py.SoftLink("/entry/instrument/detector/image_key")
        if processed:
            group = entry.create_group("processing")
            group.attrs["NX_class"] = "NXprocess"
            for name, value in processed.items():
                group.create_dataset(name, data=np.asarray(value))
    return path
