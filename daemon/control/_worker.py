"""The worker: the thread that owns the RunEngine and runs the queue, as queueserver's worker does.

The queue runs while it is started (``start_queue``). An item that ends in anything but
``completed`` stops the queue: after an abort, a halt, a stop or a failure the next item
waits for the operator's ``queue start`` (queueserver's rule; the aborted or failed item is
back at the front of the queue). ``stop_queue`` lets the running item finish and starts no
other. Pause, resume, abort, stop and halt act on the running plan the way bluesky's
RunEngine does; they are requested from any thread and carried out by the worker.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from bluesky import RunEngine
from bluesky.utils import FailedStatus, RunEngineInterrupted

from ._queue import PlanQueue, QueueItem
from ._submissions import PlanCatalog

log = logging.getLogger("livetomo.worker")
OUTCOME = {"abort": "aborted", "stop": "stopped", "halt": "halted"}
DOING = {"abort": "aborting", "stop": "stopping", "halt": "halting"}


def reason(exc: BaseException) -> str:
    """Why a plan failed, in words: a failed status names the device's own error."""
    status = exc.args[0] if isinstance(exc, FailedStatus) and exc.args else None
    cause = status.exception() if hasattr(status, "exception") else None
    if cause is not None:
        device = getattr(getattr(status, "obj", None), "name", None)
        return f"{device + ': ' if device else ''}{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}"


class PlanRunner:
    """Runs queued plans in its own thread with a RunEngine made there for it.

    ``subscribers`` receive every document; ``run_files(run_uid) -> path`` names the file a run
    is stored in (recorded with the queue item, so an interrupted run can be found).
    """

    def __init__(
        self,
        catalog: PlanCatalog,
        queue: PlanQueue,
        subscribers=(),
        *,
        run_file: Callable[[str], object] | None = None,
    ):
        self.catalog = catalog
        self.queue = queue
        self.RE = RunEngine({}, context_managers=[])  # no signal handlers: not the main thread
        for callback in subscribers:
            self.RE.subscribe(callback)
        self.RE.subscribe(self._track_run)
        self._run_file = run_file
        self.current: QueueItem | None = None
        self.running_queue = threading.Event()
        self.stop_pending = False  # queue_stop asked while an item runs
        self._commands: deque[str] = deque()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="livetomo-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _track_run(self, name, doc):
        item = self.current
        if name == "start" and item is not None:
            item.run_uids.append(doc["uid"])
            if self._run_file is not None:
                item.files.append(str(self._run_file(doc["uid"])))
            self.queue.update_running(item)

    # -- control, from any thread ---------------------------------------------------------
    @property
    def state(self) -> str:
        return str(self.RE.state)  # bluesky gives a ProxyString

    def start_queue(self) -> str:
        if self.running_queue.is_set():
            return "the queue is already running"
        if not len(self.queue) and self.current is None:
            raise RuntimeError("the queue is empty: nothing to start")
        self.running_queue.set()
        self.stop_pending = False
        with self.queue.changed:
            self.queue.changed.notify_all()
        return "queue started"

    def stop_queue(self) -> str:
        """Let the running plan finish, then start no other."""
        if not self.running_queue.is_set():
            return "the queue is not running"
        self.running_queue.clear()
        if self.current is not None:
            self.stop_pending = True
            return f"the queue stops after {self.current.plan} ({self.current.uid[:8]}) ends"
        return "queue stopped"

    def pause(self, defer: bool = False) -> str:
        if self.RE.state != "running":
            raise RuntimeError(f"nothing to pause: the RunEngine is {self.RE.state}")
        self.RE.request_pause(defer=defer)
        item = self.current
        what = f"{item.plan} ({item.uid[:8]})" if item else "the plan"
        return f"pausing {what} {'at its next checkpoint' if defer else 'now'}"

    def command(self, what: str) -> str:
        """resume, abort, stop or halt a paused plan (abort, stop and halt also act on a running one)."""
        if what not in ("resume", "abort", "stop", "halt"):
            raise ValueError(f"unknown command {what!r}; allowed: resume, abort, stop, halt")
        state = self.RE.state
        if what == "resume" and state != "paused":
            raise RuntimeError(f"nothing to resume: the RunEngine is {state}")
        if what != "resume" and state == "idle":
            raise RuntimeError(f"nothing to {what}: the RunEngine is idle")
        self._commands.append(what)
        if state == "running":
            self.RE.request_pause(defer=False)  # bluesky aborts, stops or halts a plan once it is paused
        self._wake.set()
        item = self.current
        name = f"{item.plan} ({item.uid[:8]})" if item else "the plan"
        if what == "resume":
            return f"resuming {name}"
        return f"{DOING[what]} {name}; the queue stops (start it again with 'queue start')"

    def close(self, timeout: float = 10.0) -> None:
        """Abort what runs (the item is recorded as aborted) and end the thread."""
        self._closing.set()
        self.running_queue.clear()
        if self.RE.state in ("running", "paused"):
            self._commands.append("abort")
            if self.RE.state == "running":
                self.RE.request_pause(defer=False)
        self._wake.set()
        with self.queue.changed:
            self.queue.changed.notify_all()
        self._thread.join(timeout)

    def status(self) -> dict:
        item = self.current
        return {
            "re_state": self.state,
            "queue_running": self.running_queue.is_set(),
            "queue_stop_pending": self.stop_pending,
            "current": item.summary() if item else None,
        }

    # -- the worker thread ---------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closing.is_set():
            if not self.running_queue.is_set():
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            item = self.queue.pop(timeout=0.1, allowed=self.running_queue.is_set)
            if item is not None:
                self._run(item)

    def _run(self, item: QueueItem) -> None:
        self.current = item
        state, error = "failed", None
        try:
            plan = self.catalog.make_plan(item.plan, item.kwargs, md={"queue_item_uid": item.uid, **item.md})
            state = self._execute(lambda: self.RE(plan), item)
        except Exception as exc:  # the worker survives a failing plan; the reason goes to history
            state, error = "failed", reason(exc)
            log.error("plan %s failed: %s", item.plan, error)
        finally:
            if state != "completed" or self.stop_pending or self._closing.is_set():
                self.running_queue.clear()  # only a completed plan lets the next one start
            self.stop_pending = False
            self.queue.finish(item, state, error)
            self.current = None

    def _execute(self, call, item: QueueItem) -> str:
        while True:
            try:
                call()
                return "completed"
            except RunEngineInterrupted:
                item.state = "paused"
                self.queue.update_running(item)
                call, outcome = self._await_command(item)
                if call is None:
                    return outcome

    def _await_command(self, item: QueueItem):
        while not self._commands:
            self._wake.wait(0.1)
            self._wake.clear()
        what = self._commands.popleft()
        if what == "resume":
            item.state = "running"
            self.queue.update_running(item)
            return self.RE.resume, None
        getattr(self.RE, what)()
        return None, OUTCOME[what]
