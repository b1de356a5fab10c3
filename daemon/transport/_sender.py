"""``ZMQFrameSink``: a detector's ``FrameSink`` that pushes frames to the daemon over ZeroMQ.

Give it to the detectors instead of a file sink and subscribe it to the RunEngine, which
tells it the run uid::

    sink = ZMQFrameSink("tcp://127.0.0.1:5577", locate=stream_location("/data/livetomo"))
    RE.subscribe(sink)
    beamline = make_microprobe(sink=sink)

``open_stream`` sends a start message, ``write`` a frame (zero-copy), ``close_stream`` an
end message with the frame count. The ``StreamTarget`` it returns (hence the
stream_resource document) points at where the daemon stores the frames, as ``locate(uid,
data_key) -> (file, dataset)`` says (``livetomo.daemon.storage.stream_location(directory)``
for the daemon's run files); frame index = sequence number.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zmq

from ...devices.sinks import StreamTarget
from ._frames import encode_end, encode_frame, encode_start

logger = logging.getLogger(__name__)


class FrameSendTimeout(TimeoutError):
    """The daemon did not take a frame in time (not running, or its queues are full)."""


def piece_rows(shape, dtype, max_piece_bytes: int) -> int:
    """Rows of the first axis per message for frames of ``shape``: all of them when the frame fits
    in ``max_piece_bytes``, else the largest divisor of the rows whose block fits (at least 1)."""
    shape = tuple(int(n) for n in shape)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    if len(shape) < 2 or shape[0] * row_bytes <= max_piece_bytes:
        return shape[0] if shape else 1
    fitting = [r for r in range(1, shape[0] + 1) if shape[0] % r == 0 and r * row_bytes <= max_piece_bytes]
    return max(fitting, default=1)


class ZMQFrameSink:
    """Pushes frames with the livetomo frame protocol (docs/frame-protocol.md).

    address : the daemon's frame endpoint (the sink connects; the daemon binds).
    locate : ``locate(run_uid, data_key) -> (file, dataset)``, where the receiving daemon stores
        the stream (it goes into the stream_resource document).
    metadata : ``metadata(device, data_key) -> dict`` called at each frame for per-frame
        header fields the sink cannot know: ``angle_deg``, ``exposure``,
        ``exposure_units``, ``image_key``, ``channels`` (e.g. read the rotation stage's
        readback); also at ``open_stream``, whose start message takes ``exposure_units``
        and ``channels`` from it.
    send_timeout_s : how long ``write`` waits when the daemon does not take frames (it
        exerts backpressure through ZeroMQ's high-water marks: at most ``sndhwm`` messages
        wait in this process); then ``FrameSendTimeout``, so the plan fails visibly
        instead of hanging. None waits forever.
    copy : copy each frame before sending. Frames are sent zero-copy by default: do not
        modify an array after handing it to ``write`` (detectors give a new array per frame).
    socket_setup : called with the PUSH socket before ``connect`` (e.g. CURVE client keys).
    max_piece_bytes : a frame larger than this goes as several messages, each a block of
        whole rows of its first axis (a raster's lines), as a microprobe streams a raster line
        by line; the start message's ``md`` says ``pieces_per_frame`` and the daemon assembles
        the frame in the run file (docs/frame-protocol.md, "Frames in pieces"). Rows per
        piece: the most that fit, dividing the frame's rows evenly (every message of a stream
        has one shape).
    """

    def __init__(
        self,
        address: str,
        *,
        locate: Callable[[str, str], tuple[str | Path, str]],
        metadata: Callable[[str, str], dict] | None = None,
        fmt: str = "json",
        sndhwm: int = 8,
        send_timeout_s: float | None = 30.0,
        linger_s: float = 10.0,
        copy: bool = False,
        context: zmq.Context | None = None,
        socket_setup=None,
        max_piece_bytes: int = 16 * 1024**2,
    ):
        self.address = address
        self.max_piece_bytes = int(max_piece_bytes)
        self._locate = locate
        self.metadata = metadata
        self.fmt = fmt
        self.copy = copy
        self.send_timeout_s = send_timeout_s
        self._lock = threading.Lock()
        self._socket = (context or zmq.Context.instance()).socket(zmq.PUSH)
        self._socket.sndhwm = sndhwm
        self._socket.linger = int(linger_s * 1000)
        self._socket.sndtimeo = -1 if send_timeout_s is None else int(send_timeout_s * 1000)
        if socket_setup is not None:
            socket_setup(self._socket)
        self._socket.connect(address)
        self.run_uid: str | None = None
        self._streams: dict[tuple[str, str], dict] = {}
        self.sent = 0

    # -- RunEngine document callback
    def __call__(self, name: str, doc: dict) -> None:
        """Subscribe to the RunEngine: the start document gives the run uid of the streams that
        open until its stop document (open streams keep their uid until their end message)."""
        if name == "start":
            self.run_uid = doc["uid"]
        elif name == "stop" and doc.get("run_start") == self.run_uid:
            self.run_uid = None

    # -- FrameSink
    def open_stream(self, device: str, data_key: str, dtype, shape) -> StreamTarget:
        if self.run_uid is None:
            raise RuntimeError(
                "ZMQFrameSink has no run uid: subscribe it to the RunEngine (RE.subscribe(sink)) "
                "so it sees the start document"
            )
        uid = self.run_uid
        extra = self.metadata(device, data_key) if self.metadata is not None else {}
        channels = extra.get("channels")
        rows = piece_rows(shape, dtype, self.max_piece_bytes)
        pieces = int(shape[0]) // rows
        wire_shape = (rows, *shape[1:]) if pieces > 1 else tuple(shape)
        if channels is not None and len(channels) != shape[0]:
            channels = None  # names that do not fit the first axis would get the stream refused
        md = None
        if pieces > 1:  # the names belong to the whole frame's first axis, not to a piece's
            md = {"pieces_per_frame": pieces, **({"frame_channels": list(channels)} if channels else {})}
            channels = None
        start = encode_start(
            uid,
            data_key,
            device=device,
            dtype=dtype,
            shape=wire_shape,
            channels=channels,
            exposure_units=extra.get("exposure_units"),
            md=md,
            fmt=self.fmt,
        )
        self._send(start, what=f"start of {data_key}")
        self._streams[(device, data_key)] = {"uid": uid, "seq": 0, "pieces": pieces, "rows": rows}
        path, dataset = self._locate(uid, data_key)
        return StreamTarget(
            uri=Path(path).resolve().as_uri(),
            mimetype="application/x-hdf5",
            parameters={
                "dataset": dataset,
                "chunk_shape": [1, rows, *(int(n) for n in shape[1:])],
                # the daemon's run file is written in SWMR mode without file locks: readers such as
                # Tiled's HDF5 adapter open it the same way, also in the writer's own process
                "swmr": True,
                "locking": False,
                "transport": self.address,
            },
        )

    def write(self, device: str, data_key: str, frame: np.ndarray) -> int:
        stream = self._streams[(device, data_key)]
        seq = stream["seq"]
        extra = self.metadata(device, data_key) if self.metadata is not None else {}
        data = np.array(frame, copy=True) if self.copy else frame
        pieces, rows = stream["pieces"], stream["rows"]
        if pieces == 1:
            parts = encode_frame(stream["uid"], data_key, seq, data, device=device, fmt=self.fmt, **extra)
            self._send(parts, what=f"frame {seq} of {data_key}")
            stream["seq"] = seq + 1
            return seq
        data = np.ascontiguousarray(data)  # each block of rows is then a contiguous, zero-copy view
        extra.pop("channels", None)
        for k in range(pieces):
            block = data[k * rows : (k + 1) * rows]
            parts = encode_frame(
                stream["uid"], data_key, seq + k, block, device=device, fmt=self.fmt, **extra
            )
            self._send(parts, what=f"piece {k + 1}/{pieces} of frame {seq // pieces} of {data_key}")
        stream["seq"] = seq + pieces
        return seq // pieces

    def close_stream(self, device: str, data_key: str) -> None:
        stream = self._streams.pop((device, data_key), None)
        if stream is None:
            return
        self._send(
            encode_end(stream["uid"], data_key, stream["seq"], device=device, fmt=self.fmt),
            what=f"end of {data_key}",
        )

    def _send(self, parts, *, what: str) -> None:
        with self._lock:
            try:
                # zero-copy: ZeroMQ keeps a reference to the array until it is sent
                self._socket.send_multipart(parts, copy=False)
            except zmq.Again:
                raise FrameSendTimeout(
                    f"the daemon at {self.address} did not take the {what} within {self.send_timeout_s} s "
                    "(is `livetomo serve` running, or are its queues full?)"
                ) from None
            self.sent += 1

    def close(self) -> None:
        """Close the socket, waiting up to ``linger_s`` for queued frames to go out."""
        with self._lock:
            self._socket.close()
