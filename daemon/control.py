"""The control API: JSON requests on a ZeroMQ REP socket, one reply each.

A request is ``{"cmd": NAME, ...arguments}``; a reply is ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "what went wrong"}``. Only JSON is ever decoded.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import zmq

from .beamline import SubmissionError
from .queue import PlanQueue, PlanRunner, QueueItem

log = logging.getLogger("livetomo.control")


class ControlAPI:
    """The commands, independent of the socket (so they are testable without one)."""

    def __init__(self, runner: PlanRunner, queue: PlanQueue, status: Callable[[], dict], config: dict):
        self.runner = runner
        self.queue = queue
        self._status = status
        self._config = config
        self.commands: dict[str, Callable[..., object]] = {
            "status": self.status,
            "config": lambda: self._config,
            "plans": runner.beamline.describe_plans,
            "devices": lambda: {name: type(d).__name__ for name, d in runner.beamline.devices.items()},
            "queue_add": self.queue_add,
            "queue_list": lambda: [item.as_dict() for item in queue.items()],
            "queue_move": lambda uid, position: queue.move(uid, int(position)),
            "queue_remove": lambda uid: queue.remove(uid).as_dict(),
            "queue_clear": queue.clear,
            "queue_start": runner.start_queue,
            "queue_stop": runner.stop_queue,
            "pause": lambda defer=False: runner.pause(bool(defer)),
            "resume": lambda: runner.command("resume"),
            "abort": lambda: runner.command("abort"),
            "stop": lambda: runner.command("stop"),
            "halt": lambda: runner.command("halt"),
            "history": lambda: [item.as_dict() for item in queue.history],
        }

    def status(self) -> dict:
        current = self.runner.current
        return {
            "re_state": str(self.runner.state),  # bluesky gives a ProxyString
            "queue_running": self.runner.running_queue.is_set(),
            "queue_length": len(self.queue.items()),
            "current": current.as_dict() if current else None,
            **self._status(),
        }

    def queue_add(self, plan: str, kwargs: dict | None = None, md: dict | None = None, position=None) -> dict:
        kwargs = dict(kwargs or {})
        self.runner.beamline.validate(plan, kwargs)
        item = QueueItem(plan=plan, kwargs=kwargs, md=dict(md or {}))
        return self.queue.add(item, None if position is None else int(position)).as_dict()

    def handle(self, raw: bytes) -> dict:
        """One request in, one reply out; never raises."""
        try:
            request = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return {"ok": False, "error": f"request is not JSON: {exc}"}
        if not isinstance(request, dict) or "cmd" not in request:
            return {"ok": False, "error": 'request must be a JSON object with a "cmd" field'}
        cmd = request.pop("cmd")
        if cmd not in self.commands:
            return {
                "ok": False,
                "error": f"unknown command {cmd!r}; commands: {', '.join(sorted(self.commands))}",
            }
        try:
            return {"ok": True, "result": self.commands[cmd](**request)}
        except TypeError as exc:
            return {"ok": False, "error": f"{cmd}: bad arguments: {exc}"}
        except (SubmissionError, KeyError, ValueError, RuntimeError) as exc:
            return {"ok": False, "error": str(exc.args[0]) if exc.args else repr(exc)}


class ControlServer:
    """Serves a ControlAPI on a REP socket in a thread."""

    def __init__(self, api: ControlAPI, endpoint: str, context: zmq.Context, secure=None):
        self.api = api
        self.socket = context.socket(zmq.REP)
        if secure is not None:
            secure(self.socket)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="livetomo-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self._closing.is_set():
            if not poller.poll(100):
                continue
            raw = self.socket.recv()
            reply = self.api.handle(raw)
            if not reply["ok"]:
                log.warning("control request refused: %s", reply["error"])
            self.socket.send(json.dumps(reply, default=_jsonable).encode())

    def close(self) -> None:
        self._closing.set()
        self._thread.join(2.0)
        self.socket.close()


def _jsonable(value):
    """numpy scalars and arrays in replies."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


from .client import ControlClient  # noqa: E402,F401  (re-exported: the client is light to import)
