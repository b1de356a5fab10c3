"""The plan queue and history on disk: one SQLite file in the storage directory.

bluesky-queueserver keeps its queue and history in Redis so they survive a restart of the
manager; livetomo keeps them in SQLite (standard library, nothing to run) for the same
reason. Every change is committed at once (WAL journal), so a daemon killed at any moment
comes back with the queue as it was; the item that was running is found in state
``running`` and recorded as interrupted.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (uid TEXT PRIMARY KEY, position INTEGER NOT NULL, item TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history
    (seq INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL, item TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS running (uid TEXT PRIMARY KEY, item TEXT NOT NULL);
"""


class QueueStore:
    """Queue items (in order), the running item and the history, as JSON rows in SQLite.

    ``path`` None keeps everything in memory (tests, ``livetomo demo``).
    """

    FILE_NAME = "livetomo-queue.sqlite"

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False)
        with self._lock, self._db:
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a daemon crash
            self._db.executescript(SCHEMA)

    def load(self) -> tuple[list[dict], dict | None, list[dict]]:
        """(queued items in order, the item that was running or None, history oldest first)."""
        with self._lock:
            queued = [json.loads(r[0]) for r in self._db.execute("SELECT item FROM queue ORDER BY position")]
            running = [json.loads(r[0]) for r in self._db.execute("SELECT item FROM running")]
            history = [json.loads(r[0]) for r in self._db.execute("SELECT item FROM history ORDER BY seq")]
        return queued, (running[0] if running else None), history

    def save_queue(self, items: list[dict]) -> None:
        """Replace the queued items (the queue is short: rewriting it keeps positions simple)."""
        rows = [(item["uid"], i, json.dumps(item)) for i, item in enumerate(items)]
        with self._lock, self._db:
            self._db.execute("DELETE FROM queue")
            self._db.executemany("INSERT INTO queue (uid, position, item) VALUES (?, ?, ?)", rows)

    def set_running(self, item: dict | None) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM running")
            if item is not None:
                self._db.execute(
                    "INSERT INTO running (uid, item) VALUES (?, ?)", (item["uid"], json.dumps(item))
                )

    def add_history(self, item: dict) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT INTO history (uid, item) VALUES (?, ?)", (item["uid"], json.dumps(item)))
            self._db.execute("DELETE FROM running WHERE uid = ?", (item["uid"],))

    def clear_history(self) -> int:
        with self._lock, self._db:
            return self._db.execute("DELETE FROM history").rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
