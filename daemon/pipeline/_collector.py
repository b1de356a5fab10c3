"""``RunCollector``: one run's documents, kept for steps that follow the run (and for tests)."""

from __future__ import annotations

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
