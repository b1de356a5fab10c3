"""``ProgressPrinter``: a RunEngine callback printing one progress line per event."""

from __future__ import annotations

import sys
import time


class ProgressPrinter:
    """Prints one line per event: step n/N, elapsed and estimated time left."""

    def __init__(self, fields=(), stream=None):
        self.fields = tuple(fields)
        self._stream = stream
        self._t0 = 0.0
        self._total = None
        self._done = 0

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout  # late: follows redirection

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self._t0 = time.monotonic()
            self._total = doc.get("num_points")
            self._done = 0
            print(
                f"run {doc['uid'][:8]} started: {doc.get('plan_name')}, {self._total} steps", file=self.stream
            )
        elif name == "event":
            self._done += 1
            elapsed = time.monotonic() - self._t0
            left = elapsed / self._done * (self._total - self._done) if self._total else float("nan")
            values = " ".join(f"{f}={doc['data'][f]:.4g}" for f in self.fields if f in doc["data"])
            total = self._total or "?"
            print(
                f"  step {self._done}/{total}  {values}  elapsed {elapsed:5.1f} s, left ~{left:5.1f} s",
                file=self.stream,
                flush=True,
            )
        elif name == "stop":
            print(
                f"run finished: {doc['exit_status']} after {time.monotonic() - self._t0:.1f} s",
                file=self.stream,
            )
