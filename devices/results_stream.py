"""A :class:`~livetomo.devices.measurements.MeasurementBoard` fed from the daemon's results
socket (ZeroMQ SUB, docs/results-stream.md), for plans run by a RunEngine outside the daemon.

Only plain JSON is read; a malformed message is skipped. The socket lives in its own thread
(zmq sockets are not thread-safe); ``close()`` ends it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import zmq

from .measurements import MeasurementBoard

log = logging.getLogger(__name__)

TOPICS = ("run_start", "frame", "runout")


class ResultsStreamBoard(MeasurementBoard):
    """Subscribes to ``endpoint`` (the daemon's ``endpoints.results``) at once; ``secure``
    optionally sets CURVE client options on the socket before it connects."""

    def __init__(self, endpoint: str, *, secure: Callable | None = None, context: zmq.Context | None = None):
        super().__init__()
        self.endpoint = endpoint
        self.skipped = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._context = context or zmq.Context.instance()
        self._secure = secure
        self._thread = threading.Thread(target=self._follow, name="livetomo-measurements", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def _follow(self) -> None:
        socket = self._context.socket(zmq.SUB)
        try:
            if self._secure is not None:
                self._secure(socket)
            socket.setsockopt(zmq.LINGER, 0)
            for topic in TOPICS:
                socket.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
            socket.connect(self.endpoint)
            self._ready.set()
            while not self._stop.is_set():
                if not socket.poll(100):
                    continue
                frames = socket.recv_multipart()
                try:
                    topic = frames[0].decode("ascii")
                    payload = json.loads(frames[1])
                    if topic not in TOPICS or not isinstance(payload, dict):
                        continue  # zmq matches topic prefixes
                    self.on_message(topic, payload)
                except (IndexError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
                    self.skipped += 1
                    log.warning("results message skipped: %s", exc)
        finally:
            self._ready.set()
            socket.close()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
