"""Where detectors put their frames.

A detector never writes files or opens sockets itself: it is given a ``FrameSink``.
The daemon supplies the HDF5 file sink (``livetomo.daemon.storage.HDF5FrameSink``) and,
for live processing, a ZeroMQ sender; tests and notebooks may use ``MemorySink``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class StreamTarget:
    """Where a stream of frames goes, as stream_resource documents describe it."""

    uri: str
    mimetype: str
    parameters: dict = field(default_factory=dict)


class FrameSink(Protocol):
    def open_stream(
        self, device: str, data_key: str, dtype: np.dtype, shape: tuple[int, ...]
    ) -> StreamTarget:
        """Prepare to receive frames of ``shape`` and ``dtype`` for ``device.data_key``."""

    def write(self, device: str, data_key: str, frame: np.ndarray) -> int:
        """Store one frame; return its 0-based index in the stream."""

    def close_stream(self, device: str, data_key: str) -> None:
        """No more frames for this stream (flush, close files)."""


class MemorySink:
    """Keeps frames in memory: for tests, notebooks and the demo's processing."""

    _ids = itertools.count()

    def __init__(self) -> None:
        self.frames: dict[tuple[str, str], list[np.ndarray]] = {}
        self._id = next(self._ids)

    def open_stream(self, device, data_key, dtype, shape) -> StreamTarget:
        self.frames[(device, data_key)] = []
        return StreamTarget(
            uri=f"memory://livetomo/{self._id}/{device}/{data_key}",
            mimetype="application/x-livetomo-memory",
            parameters={"device": device, "data_key": data_key},
        )

    def write(self, device, data_key, frame) -> int:
        stream = self.frames[(device, data_key)]
        stream.append(frame.copy())
        return len(stream) - 1

    def close_stream(self, device, data_key) -> None:
        pass

    def stack(self, device: str, data_key: str) -> np.ndarray:
        """All frames of one stream as one array (n_frames, *frame_shape)."""
        return np.stack(self.frames[(device, data_key)])
