"""Run bookkeeping on the document stream: collect a run, show progress while it goes."""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import event_model


class RunCollector:
    """A RunEngine callback keeping one run's documents, optionally validating each one.

    ``events[stream]`` lists event documents, ``stream_resources`` maps uid to document,
    ``stream_datums[resource_uid]`` lists stream_datum documents in arrival order.
    """

    def __init__(self, *, validate: bool = False):
        self.validate = validate
        self.start: dict | None = None
        self.stop: dict | None = None
        self.descriptors: dict[str, dict] = {}
        self.events: dict[str, list[dict]] = defaultdict(list)
        self.stream_resources: dict[str, dict] = {}
        self.stream_datums: dict[str, list[dict]] = defaultdict(list)
        self.names: list[str] = []

    def __call__(self, name: str, doc: dict) -> None:
        if self.validate:
            event_model.schema_validators[event_model.DocumentNames(name)].validate(doc)
        self.names.append(name)
        if name == "start":
            self.start = doc
        elif name == "stop":
            self.stop = doc
        elif name == "descriptor":
            self.descriptors[doc["uid"]] = doc
        elif name == "event":
            self.events[self.descriptors[doc["descriptor"]]["name"]].append(doc)
        elif name == "stream_resource":
            self.stream_resources[doc["uid"]] = doc
        elif name == "stream_datum":
            self.stream_datums[doc["stream_resource"]].append(doc)

    def column(self, key: str, stream: str = "primary") -> list:
        return [event["data"][key] for event in self.events[stream]]

    def resource_for(self, data_key: str) -> dict:
        for doc in self.stream_resources.values():
            if doc["data_key"] == data_key:
                return doc
        raise KeyError(f"no stream_resource for data key {data_key!r}")


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
