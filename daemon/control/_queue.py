"""The plan queue and its history, persisted (``QueueStore``), in bluesky-queueserver's terms.

An item is a checked submission (plan name, parameters with devices by name, metadata).
Finished items go to the history with their outcome: ``completed``, ``stopped`` (ended
early by the operator, data kept: a success, as in queueserver), ``aborted``, ``halted``,
``failed`` or ``interrupted`` (the daemon died while it ran). As in queueserver, an item
that did not succeed is pushed back to the front of the queue under a new uid, so it can be
run again or removed, and the queue stops: nothing starts until ``queue start``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, fields

from ._store import QueueStore

FINISHED = ("completed", "stopped", "aborted", "halted", "failed", "interrupted")
REQUEUED = ("aborted", "halted", "failed", "interrupted")  # pushed back to the front of the queue


@dataclass
class QueueItem:
    plan: str
    kwargs: dict
    md: dict = field(default_factory=dict)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "queued"  # queued, running, paused, then one of FINISHED
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    run_uids: list = field(default_factory=list)
    files: list = field(default_factory=list)  # the run files of its runs
    error: str | None = None
    requeued_from: str | None = None  # uid of the attempt this item repeats

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self, max_list: int = 8) -> dict:
        """``as_dict`` with long lists shortened (``status`` is polled often: its replies stay small)."""
        out = self.as_dict()
        out["kwargs"] = {k: _short(v, max_list) for k, v in self.kwargs.items()}
        out["md"] = {k: _short(v, max_list) for k, v in self.md.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> QueueItem:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def again(self) -> QueueItem:
        """A fresh queued copy of this item (a new uid, as queueserver gives a re-queued plan)."""
        return QueueItem(plan=self.plan, kwargs=dict(self.kwargs), md=dict(self.md), requeued_from=self.uid)


def _short(value, max_list: int):
    if isinstance(value, list) and len(value) > max_list:
        return [*value[: max_list - 1], f"... ({len(value)} in all)"]
    return value


class PlanQueue:
    """Thread-safe ordered queue of QueueItems, the running item and the history, all persisted.

    On construction the store's state comes back; an item the store still shows as running
    belonged to a daemon that died: it is recorded as ``interrupted`` (with its run files)
    and pushed back to the front of the queue.
    """

    def __init__(self, store: QueueStore | None = None):
        self.store = store or QueueStore(None)
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        queued, running, history = self.store.load()
        self._items: deque[QueueItem] = deque(QueueItem.from_dict(d) for d in queued)
        self._history: list[QueueItem] = [QueueItem.from_dict(d) for d in history]
        self.recovered: QueueItem | None = None
        if running is not None:
            item = QueueItem.from_dict(running)
            item.state, item.finished = "interrupted", time.time()
            files = ", ".join(item.files) or "no run file yet"
            item.error = f"the daemon stopped while this plan ran ({files})"
            self.recovered = item
            self._history.append(item)
            self.store.add_history(item.as_dict())
            self._items.appendleft(item.again())
            self._save()

    def _save(self) -> None:
        self.store.save_queue([item.as_dict() for item in self._items])

    # -- the queue
    def add(self, item: QueueItem, position: int | None = None) -> QueueItem:
        with self.changed:
            if position is None:
                self._items.append(item)
            else:
                self._items.insert(self._position(position, len(self._items) + 1), item)
            self._save()
            self.changed.notify_all()
        return item

    @staticmethod
    def _position(position, n: int) -> int:
        if isinstance(position, bool) or not isinstance(position, int):
            raise ValueError(f"position = {position!r} must be an integer (0 is the front, -1 the back)")
        if not -n <= position < n:
            raise ValueError(
                f"position {position} is outside the queue (0 .. {n - 1}, or negative from the back)"
            )
        return position if position >= 0 else n + position

    def items(self) -> list[QueueItem]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _index(self, uid: str) -> int:
        for i, item in enumerate(self._items):
            if item.uid == uid:
                return i
        raise KeyError(f"no queued item with uid {uid!r}")

    def move(self, uid: str, position: int) -> QueueItem:
        with self._lock:
            item = self._items[self._index(uid)]
            self._items.remove(item)
            self._items.insert(self._position(position, len(self._items) + 1), item)
            self._save()
            return item

    def remove(self, uid: str) -> QueueItem:
        with self._lock:
            item = self._items[self._index(uid)]
            self._items.remove(item)
            self._save()
            return item

    def clear(self) -> int:
        with self._lock:
            n = len(self._items)
            self._items.clear()
            self._save()
            return n

    def pop(self, timeout: float, allowed=lambda: True) -> QueueItem | None:
        """The next item, now running (persisted as such), or None after ``timeout`` seconds or
        when ``allowed()`` says no (checked after waiting: the queue may have been stopped)."""
        with self.changed:
            if not self._items:
                self.changed.wait(timeout)
            if not self._items or not allowed():
                return None
            item = self._items.popleft()
            item.state, item.started = "running", time.time()
            self._save()
            self.store.set_running(item.as_dict())
            return item

    # -- the running item and the history
    def update_running(self, item: QueueItem) -> None:
        """Persist what changed about the running item (its state, runs and files)."""
        self.store.set_running(item.as_dict())

    def finish(self, item: QueueItem, state: str, error: str | None = None) -> QueueItem | None:
        """Record the running item's outcome; returns the re-queued copy when it did not succeed."""
        if state not in FINISHED:
            raise ValueError(f"state {state!r} is not a final state; allowed: {', '.join(FINISHED)}")
        item.state, item.error, item.finished = state, error, time.time()
        again = None
        with self.changed:
            self._history.append(item)
            self.store.add_history(item.as_dict())
            if state in REQUEUED:
                again = item.again()
                self._items.appendleft(again)
                self._save()
            self.changed.notify_all()
        return again

    @property
    def history(self) -> list[QueueItem]:
        with self._lock:
            return list(self._history)

    def clear_history(self) -> int:
        with self._lock:
            self._history.clear()
            return self.store.clear_history()
