"""The plan queue and the worker thread that owns the RunEngine.

Clients add plans by name with parameters; each is checked against the plan's signature
and its own parameter checks before it is accepted. The worker runs the queue in order;
pause, resume, abort and stop act on the running plan the way bluesky's RunEngine does.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field

from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted

from .beamline import Beamline

log = logging.getLogger("livetomo.queue")


@dataclass
class QueueItem:
    plan: str
    kwargs: dict
    md: dict = field(default_factory=dict)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "queued"  # queued, running, paused, success, fail, abort, stop
    submitted: float = field(default_factory=time.time)
    finished: float | None = None
    run_uids: list = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class PlanQueue:
    """Thread-safe ordered queue of QueueItems plus the history of finished ones."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: deque[QueueItem] = deque()
        self.history: list[QueueItem] = []
        self.changed = threading.Condition(self._lock)

    def add(self, item: QueueItem, position: int | None = None) -> QueueItem:
        with self.changed:
            if position is None:
                self._items.append(item)
            else:
                self._items.insert(position, item)
            self.changed.notify_all()
        return item

    def items(self) -> list[QueueItem]:
        with self._lock:
            return list(self._items)

    def _index(self, uid: str) -> int:
        for i, item in enumerate(self._items):
            if item.uid == uid:
                return i
        raise KeyError(f"no queued item with uid {uid}")

    def move(self, uid: str, position: int) -> None:
        with self._lock:
            item = self._items[self._index(uid)]
            self._items.remove(item)
            self._items.insert(position, item)

    def remove(self, uid: str) -> QueueItem:
        with self._lock:
            item = self._items[self._index(uid)]
            self._items.remove(item)
            return item

    def clear(self) -> int:
        with self._lock:
            n = len(self._items)
            self._items.clear()
            return n

    def pop(self, timeout: float) -> QueueItem | None:
        with self.changed:
            if not self._items:
                self.changed.wait(timeout)
            return self._items.popleft() if self._items else None


class PlanRunner:
    """Runs queued plans in its own thread with a RunEngine built there for it.

    ``subscribers`` receive every document (the daemon's bookkeeping, the publisher).
    """

    def __init__(self, beamline: Beamline, queue: PlanQueue, subscribers=()):
        self.beamline = beamline
        self.queue = queue
        self.RE = RunEngine({}, context_managers=[])  # no signal handlers: not the main thread
        for callback in subscribers:
            self.RE.subscribe(callback)
        self.RE.subscribe(self._track_run)
        self.current: QueueItem | None = None
        self.running_queue = threading.Event()
        self._commands: deque[str] = deque()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="livetomo-plans", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _track_run(self, name, doc):
        if name == "start" and self.current is not None:
            self.current.run_uids.append(doc["uid"])

    # -- control, from any thread ---------------------------------------------------------
    def start_queue(self) -> None:
        self.running_queue.set()
        with self.queue.changed:
            self.queue.changed.notify_all()

    def stop_queue(self) -> None:
        """Finish the running plan, then start no other."""
        self.running_queue.clear()

    def pause(self, defer: bool = False) -> None:
        if self.RE.state != "running":
            raise RuntimeError(f"nothing to pause: the RunEngine is {self.RE.state}")
        self.RE.request_pause(defer=defer)

    def command(self, what: str) -> None:
        """resume, abort, stop or halt a paused plan (abort/stop/halt also act on a running one)."""
        if what not in ("resume", "abort", "stop", "halt"):
            raise ValueError(f"unknown command {what!r}; allowed: resume, abort, stop, halt")
        state = self.RE.state
        if what == "resume" and state != "paused":
            raise RuntimeError(f"nothing to resume: the RunEngine is {state}")
        if what != "resume" and state == "idle":
            raise RuntimeError(f"nothing to {what}: the RunEngine is idle")
        self._commands.append(what)
        if state == "running":
            self.RE.request_pause(defer=False)  # it must be paused before bluesky can abort or stop it
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        self._closing.set()
        self.running_queue.clear()
        if self.RE.state == "running":
            self._commands.append("abort")
            self.RE.request_pause(defer=False)
        self._wake.set()
        with self.queue.changed:
            self.queue.changed.notify_all()
        self._thread.join(timeout)

    @property
    def state(self) -> str:
        return str(self.RE.state)

    # -- the worker thread ---------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closing.is_set():
            if not self.running_queue.is_set():
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            item = self.queue.pop(timeout=0.1)
            if item is not None:
                self._run(item)

    def _run(self, item: QueueItem) -> None:
        self.current = item
        item.state = "running"
        try:
            plan = self.beamline.make_plan(item.plan, item.kwargs, md={"queue_item_uid": item.uid, **item.md})
            self._execute(lambda: self.RE(plan), item)
        except Exception as exc:  # the queue survives a failing plan; the reason goes to history and status
            item.state, item.error = "fail", f"{type(exc).__name__}: {exc}"
            log.error("plan %s failed: %s", item.plan, item.error)
        finally:
            item.finished = time.time()
            self.queue.history.append(item)
            self.current = None

    def _execute(self, call, item: QueueItem) -> None:
        while True:
            try:
                call()
                if item.state == "running":
                    item.state = "success"
                return
            except RunEngineInterrupted:
                item.state = "paused"
                call = self._await_command(item)
                if call is None:
                    return

    def _await_command(self, item: QueueItem):
        while not self._commands:
            self._wake.wait(0.1)
            self._wake.clear()
        what = self._commands.popleft()
        if what == "resume":
            item.state = "running"
            return self.RE.resume
        getattr(self.RE, what)()
        item.state = {"abort": "abort", "stop": "stop", "halt": "abort"}[what]
        return None
