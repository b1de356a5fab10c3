"""The control API's client: one JSON request, one reply (imports only pyzmq, so CLIs start fast)."""

from __future__ import annotations

import json
from collections.abc import Callable

import zmq


class ControlClient:
    """Send one command and get its result; raises RuntimeError with the daemon's reason.

    Each call uses a socket of its own, so one client may be shared by threads.
    ``socket_options``: called with each socket before it connects, e.g. CURVE keys for a
    daemon beyond loopback (``functools.partial(transport.client_socket_options, ...)``).
    """

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5580",
        *,
        timeout_s: float = 10.0,
        context=None,
        socket_options: Callable[[zmq.Socket], None] | None = None,
    ):
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_s * 1000)
        self._context = context or zmq.Context.instance()
        self._socket_options = socket_options

    def __call__(self, cmd: str, **arguments):
        socket = self._context.socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        socket.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        try:
            if self._socket_options is not None:
                self._socket_options(socket)
            socket.connect(self.endpoint)
            try:
                # a REQ socket with no peer (none listening, or a CURVE handshake refused) cannot
                # even send: the send timeout is the same "no answer"
                socket.send(json.dumps({"cmd": cmd, **arguments}).encode())
                reply = json.loads(socket.recv())
            except zmq.Again as exc:
                raise TimeoutError(
                    f"no answer from the daemon at {self.endpoint} within {self.timeout_ms} ms"
                ) from exc
        finally:
            socket.close()
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        return reply["result"]
