"""The control API: JSON requests, one reply each, whatever the request holds.

A request is ``{"cmd": NAME, ...arguments}``; a reply is ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "what went wrong"}``. Only JSON is ever decoded. Every command is
quick: none waits for the pipeline, a run's end or the RunEngine, so abort and status are
answered while a run ends; ``handle`` never raises, so no request can stop the server.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable

from ._queue import PlanQueue, QueueItem
from ._submissions import PlanCatalog, SubmissionError
from ._worker import PlanRunner

log = logging.getLogger("livetomo.control")
MAX_REQUEST_BYTES = 1 << 20


class ControlAPI:
    """The commands, independent of the socket (testable without one).

    status : ``status() -> dict`` of the daemon's other parts (pipeline, ingest), merged into
        the ``status`` reply; it must not block.
    shutdown : called by the ``shutdown`` command to end the daemon.
    cancel_refinement : ``cancel_refinement(uid or None) -> list of run uids``: stops the run-end
        refinement of a run (default every run finishing); it must not block.
    """

    def __init__(
        self,
        runner: PlanRunner,
        queue: PlanQueue,
        catalog: PlanCatalog,
        *,
        status: Callable[[], dict] = dict,
        config: dict | None = None,
        shutdown: Callable[[], None] | None = None,
        cancel_refinement: Callable[[str | None], list[str]] | None = None,
    ):
        self.runner, self.queue, self.catalog = runner, queue, catalog
        self._status = status
        self._config = config or {}
        self._shutdown = shutdown
        self._cancel_refinement = cancel_refinement
        self.commands: dict[str, Callable[..., object]] = {
            "ping": lambda: "pong",
            "status": self.status,
            "config": lambda: self._config,
            "plans": catalog.describe_plans,
            "devices": lambda: {name: type(d).__name__ for name, d in catalog.devices.items()},
            "queue_add": self.queue_add,
            "queue_list": lambda: [item.as_dict() for item in queue.items()],
            "queue_move": lambda uid, position: queue.move(uid, position).as_dict(),
            "queue_remove": lambda uid: queue.remove(uid).as_dict(),
            "queue_clear": queue.clear,
            "queue_start": runner.start_queue,
            "queue_stop": runner.stop_queue,
            "pause": self.pause,
            "resume": lambda: runner.command("resume"),
            "abort": lambda: runner.command("abort"),
            "stop": lambda: runner.command("stop"),
            "halt": lambda: runner.command("halt"),
            "history": self.history,
            "history_clear": queue.clear_history,
            "shutdown": self.shutdown,
            "cancel_refinement": self.cancel_refinement,
        }

    def cancel_refinement(self, uid: str | None = None) -> dict:
        """Stop a run-end refinement (the run keeps its FBP volume); the plan queue is untouched."""
        if self._cancel_refinement is None:
            raise RuntimeError("this daemon has no pipeline whose refinement could be cancelled")
        if uid is not None and not isinstance(uid, str):
            raise ValueError(f"uid = {uid!r} must be a run uid (or a prefix of one) or null")
        return {"cancelled": self._cancel_refinement(uid)}

    def status(self) -> dict:
        return {**self.runner.status(), "queue_length": len(self.queue), **self._status()}

    def pause(self, defer: bool = False) -> str:
        if not isinstance(defer, bool):
            raise ValueError(f"defer = {str(defer)[:40]} must be true or false")
        return self.runner.pause(defer)

    def history(self, limit: int = 100) -> list[dict]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit = {limit!r} must be a positive integer")
        return [item.as_dict() for item in self.queue.history[-limit:]]

    def queue_add(self, plan: str, kwargs: dict | None = None, md: dict | None = None, position=None) -> dict:
        # a preset's name queues its plan with its parameters (devices.presets)
        plan, kwargs, md = self.catalog.expand_preset(plan, kwargs, md)
        kwargs, md = self.catalog.check(plan, kwargs, md)
        item = QueueItem(plan=plan, kwargs=kwargs, md=md)
        return self.queue.add(item, position).as_dict()

    def shutdown(self, abort: bool = False) -> str:
        if self._shutdown is None:
            raise RuntimeError("this daemon cannot be shut down through the control API")
        if self.runner.state != "idle" and not abort:
            item = self.runner.current
            name = f"{item.plan} ({item.uid[:8]})" if item else "a plan"
            raise RuntimeError(f"{name} is {self.runner.state}; abort it first, or shut down with abort=true")
        self._shutdown()
        return "shutting down" + (
            ": the running plan is aborted, every frame received is stored" if abort else ""
        )

    def handle(self, raw: bytes) -> dict:
        """One request in, one reply out; never raises."""
        try:
            return self._handle(raw)
        except Exception as exc:  # a bug in a command: the reply says so and the server lives on
            log.exception("control request failed")
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    def _handle(self, raw: bytes) -> dict:
        if len(raw) > MAX_REQUEST_BYTES:
            return {"ok": False, "error": f"request of {len(raw)} bytes exceeds {MAX_REQUEST_BYTES}"}
        try:
            request = json.loads(raw, parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            return {"ok": False, "error": f"request is not valid JSON: {str(exc)[:200]}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'a request is a JSON object with a "cmd" string'}
        cmd = request.pop("cmd")
        command = self.commands.get(cmd)
        if command is None:
            return {
                "ok": False,
                "error": f"unknown command {cmd[:64]!r}; commands: {', '.join(sorted(self.commands))}",
            }
        try:
            inspect.signature(command).bind(**request)
        except TypeError as exc:
            return {"ok": False, "error": f"{cmd}: {exc}; arguments: {_arguments(command)}"}
        try:
            return {"ok": True, "result": command(**request)}
        except (SubmissionError, KeyError, ValueError, RuntimeError, TypeError) as exc:
            return {"ok": False, "error": str(exc.args[0]) if exc.args else repr(exc)}


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _arguments(command) -> str:
    params = inspect.signature(command).parameters
    return ", ".join(params) or "none"
