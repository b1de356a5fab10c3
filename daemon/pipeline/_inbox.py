"""``ProcessingInbox``: the hand-off from the writer to processing, which never blocks the writer.

Up to ``maxsize`` frames (and ``max_bytes`` of pixels) wait with their pixels. Beyond that a
frame waits without them
(``deferred``) and processing reads it back from the run file, where the writer has just
stored it: the writer keeps the detector's pace, memory stays bounded, and processing sees
every frame, late. Documents and run-end markers are small and always queue.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter, deque

from ..transport import Frame


class ProcessingInbox:
    def __init__(self, maxsize: int = 64, max_bytes: int | None = None):
        if maxsize < 1:
            raise ValueError(f"maxsize = {maxsize}; at least one frame must fit")
        self.maxsize = int(maxsize)
        self.max_bytes = max_bytes
        self.pixel_bytes = 0
        self._items: deque = deque()
        self._with_pixels = 0
        self._frames: Counter[int] = Counter()  # id(run) -> frames queued
        self._cond = threading.Condition()
        self.deferred = 0  # frames that travelled without their pixels

    def put(self, kind: str, run, payload=None, *, first: bool = False) -> None:
        """Queue ``(kind, run, payload)``; never blocks (a frame beyond the bound loses its pixels here).

        ``first`` puts it at the front (a view request an operator waits for).
        """
        with self._cond:
            if first:
                self._items.appendleft((kind, run, payload))
                self._cond.notify()
                return
            if isinstance(payload, Frame) and payload.data is None:  # already without pixels
                self._frames[id(run)] += 1
            elif isinstance(payload, Frame):
                self._frames[id(run)] += 1
                size = payload.data.nbytes
                over = (
                    self.max_bytes is not None
                    and self._with_pixels
                    and self.pixel_bytes + size > self.max_bytes
                )
                if self._with_pixels >= self.maxsize or over:
                    payload = dataclasses.replace(payload, data=None)
                    self.deferred += 1
                else:
                    self._with_pixels += 1
                    self.pixel_bytes += size
            self._items.append((kind, run, payload))
            self._cond.notify()

    def get(self, timeout: float):
        """The next item, or None after ``timeout`` seconds."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: self._items, timeout):
                return None
            item = self._items.popleft()
            if isinstance(item[2], Frame):
                key = id(item[1])
                self._frames[key] -= 1
                if not self._frames[key]:
                    del self._frames[key]
                if item[2].data is not None:
                    self._with_pixels -= 1
                    self.pixel_bytes -= item[2].data.nbytes
            return item

    def frames_waiting(self, run) -> int:
        """Frames of ``run`` queued behind the one being processed (previews wait for the last)."""
        with self._cond:
            return self._frames[id(run)]

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
