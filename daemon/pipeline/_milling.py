"""Cryo-FIB milling: every EELS thickness reading against its stage's target; progress in stages."""

from __future__ import annotations

from . import _messages as messages
from ._processor import BaseProcessor


class MillingProcessor(BaseProcessor):
    """A milling run has no frames: its events carry the EELS thickness, one stream per stage.

    A stage counts as done once an EELS reading is within tolerance of its target (the plan
    moves on only then) or a later stage has begun; the run is complete when every stage of
    the recipe is done.
    """

    def __init__(self, start: dict, processing):
        super().__init__(start, processing)
        self.stages = list(start.get("stages", []))
        self.targets = dict(zip(self.stages, start.get("targets_nm", []), strict=False))
        self.tolerances = dict(zip(self.stages, start.get("tolerances_nm", []), strict=False))
        self.streams: dict[str, str] = {}  # descriptor uid -> stage name
        self.reached: set[str] = set()
        self.last_thickness: dict[str, float] = {}

    def descriptor(self, run, doc):
        self.streams[doc["uid"]] = doc["name"]
        if doc["name"] in self.stages:  # a later stage began: the earlier ones are done
            index = self.stages.index(doc["name"])
            self.reached |= set(self.stages[:index])

    def event(self, run, doc):
        stage = self.streams.get(doc["descriptor"])
        data = doc["data"]
        if stage is None or "fib_eels_thickness" not in data:
            return []
        thickness = self.last_thickness[stage] = float(data["fib_eels_thickness"])
        target = self.targets.get(stage)
        if target is not None and thickness <= target + self.tolerances.get(stage, 0.0):
            self.reached.add(stage)
        return [
            messages.milling(
                run.uid,
                stage=stage,
                target_nm=self.targets.get(stage),
                thickness_nm=data["fib_eels_thickness"],
                current_A=data.get("fib_current"),
                elapsed_s=data.get("fib_pattern_time"),
            )
        ]

    def progress(self) -> tuple[int, int | None]:
        return len(self.reached), len(self.stages) or None

    def complete(self, run) -> bool:
        return bool(self.stages) and self.reached >= set(self.stages)
