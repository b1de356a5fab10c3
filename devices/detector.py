"""The shape every livetomo image detector shares: frames to a sink, summaries in events."""

from __future__ import annotations

from collections.abc import Iterator

from .base import ExternalFrames, number_key, reading, run_as_status, waits_on_hardware
from .sinks import FrameSink


class FrameDetector:
    """Base of image detectors: Triggerable, Readable, Stageable, WritesStreamAssets.

    Subclasses implement ``_acquire() -> dict[str, ndarray] | None`` (``None`` when the
    hardware dropped the frame) and ``_summaries(frames) -> dict[str, float]``. Pixels go
    to the sink and are referenced by stream_datum documents; events carry only
    summaries, a frame counter and a count of dropped frames. Frames from real hardware
    go to the same sink as simulated ones (a file, memory, or the daemon over ZeroMQ).
    """

    summary_units: dict[str, str] = {}

    def __init__(self, sink: FrameSink, *, name: str, parent=None):
        self.name = name
        self.parent = parent
        self.frames = ExternalFrames(name, sink)
        self.dropped = 0
        self._last: dict[str, float] = {}

    # bluesky Stageable: every run starts new streams. A backend may have ``start_run()``, called
    # here: a simulator starts its record of the truth afresh, a microscope may centre its target
    # (as SerialEM's "Realign to Item" before a tilt series).
    def stage(self) -> list:
        start_run = getattr(getattr(self, "backend", None), "start_run", None)
        if start_run is not None:
            start_run()
        self.frames.reset()
        self.dropped = 0
        self._last = {key: float("nan") for key in self.summary_units}
        return [self]

    def unstage(self) -> list:
        self.frames.reset()
        return [self]

    def _acquire(self):
        raise NotImplementedError

    def _summaries(self, frames) -> dict[str, float]:
        raise NotImplementedError

    def _trigger_now(self) -> None:
        frames = self._acquire()
        if frames is None:
            self.dropped += 1
            self._last = {key: float("nan") for key in self.summary_units}
            return
        self.frames.write(frames)
        self._last = self._summaries(frames)

    def trigger(self):
        # a backend on real hardware acquires in a worker thread: the RunEngine stays responsive
        return run_as_status(
            self, self._trigger_now, thread=waits_on_hardware(getattr(self, "backend", None))
        )

    def read(self) -> dict:
        out = {f"{self.name}_{k}": reading(v) for k, v in self._last.items()}
        out[f"{self.name}_frames"] = reading(self.frames.index)
        out[f"{self.name}_dropped"] = reading(self.dropped)
        return out

    def describe(self) -> dict:
        source = type(self).__name__
        out = self.frames.describe(source)
        for key, units in self.summary_units.items():
            out[f"{self.name}_{key}"] = number_key(f"{source}:{key}", units)
        out[f"{self.name}_frames"] = number_key(f"{source}:frames")
        out[f"{self.name}_dropped"] = number_key(f"{source}:dropped")
        return out

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        yield from self.frames.collect()

    def get_index(self) -> int:
        return self.frames.index

    def read_configuration(self) -> dict:
        return {}

    def describe_configuration(self) -> dict:
        return {}

    @property
    def hints(self) -> dict:
        return {"fields": [f"{self.name}_{k}" for k in self.summary_units]}
