"""``ControlServer``: the control API on a ZeroMQ REP socket, served by one thread.

Every request gets exactly one reply, whatever it holds (several parts, not JSON, a reply
that cannot be encoded): the socket never falls out of step and the thread never dies.
"""

from __future__ import annotations

import json
import logging
import threading

import zmq

from ..transport import dumps
from ._api import ControlAPI

log = logging.getLogger("livetomo.control")


class ControlServer:
    """Serves ``api`` on a bound REP socket in a thread; ``secure`` applies CURVE options."""

    def __init__(self, api: ControlAPI, endpoint: str, context: zmq.Context, secure=None):
        self.api = api
        self.socket = context.socket(zmq.REP)
        if secure is not None:
            secure(self.socket)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.served = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="livetomo-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self._closing.is_set():
            try:
                if not poller.poll(100):
                    continue
                parts = self.socket.recv_multipart()
            except zmq.ZMQError as exc:
                if self._closing.is_set():
                    return
                log.error("control socket: %s", exc)
                continue
            reply = self._reply(parts)
            try:
                self.socket.send(reply)
            except zmq.ZMQError as exc:
                log.error("control reply not sent: %s", exc)
            self.served += 1

    def _reply(self, parts: list[bytes]) -> bytes:
        if len(parts) != 1:
            reply = {"ok": False, "error": f"a request is one message part; got {len(parts)}"}
        else:
            reply = self.api.handle(parts[0])
        if not reply["ok"]:
            log.warning("control request refused: %s", str(reply["error"])[:500])
        try:
            return dumps(reply)  # strict JSON: numpy values as numbers, NaN as null
        except (TypeError, ValueError) as exc:
            log.exception("control reply could not be encoded")
            return json.dumps({"ok": False, "error": f"internal error: reply not encodable ({exc})"}).encode()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(2.0)
        self.socket.close()
