"""``RunContext``: everything the pipeline knows about one run while it is stored, processed and finished."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..storage import NXtomoWriter
from . import _messages as messages
from ._methods import Method
from ._processor import Processor

STATES = ("acquiring", "processing", "finishing", "ended")


@dataclass
class RunContext:
    """One run. The writer thread fills the storage fields, the processing thread the
    processor; ``progress`` and ``summary`` are read from any thread (plain values only)."""

    uid: str
    start: dict
    method: Method
    writer: NXtomoWriter
    processor: Processor
    t0: float = field(default_factory=time.monotonic)
    state: str = "acquiring"
    stop: dict | None = None
    stopped_at: float | None = None
    streams_open: set = field(default_factory=set)
    streams_expected: set = field(default_factory=set)  # external data keys the descriptors announced
    ends: dict = field(default_factory=dict)  # stream -> frame count its end message states
    stored: dict = field(default_factory=dict)  # stream -> frames stored
    end_reason: str | None = None  # why the run was finished without every end message
    finishing: dict = field(default_factory=dict)  # run-end work: text, step, total
    stream_device: dict = field(default_factory=dict)  # stream -> the device that sends it
    stored_seqs: dict = field(default_factory=dict)  # stream -> sequence numbers stored
    pieces: dict = field(default_factory=dict)  # stream -> messages per frame, for streams sent in pieces
    event_frames: dict = field(default_factory=dict)  # device -> frame indices its events read
    superseded: dict = field(default_factory=dict)  # stream -> frames whose step was repeated
    reacquired: set = field(default_factory=set)  # frames the plan took again (flagged untrusted)
    forwarded_end: bool = False
    last_preview: dict = field(default_factory=dict)  # stream -> monotonic time of its last previews
    cancel: threading.Event = field(default_factory=threading.Event)  # set: stop its run-end refinement
    slab_runner: object = None  # where its refinement's slabs run (processing.dask), None: in the finisher

    @property
    def all_streams_ended(self) -> bool:
        """Every stream that opened, or that a descriptor announced, has sent its end message.

        The stop document can overtake frames still in flight on the frame socket, so the
        descriptors (not the start messages received so far) say which streams to wait for.
        """
        return (self.streams_open | self.streams_expected) <= set(self.ends)

    @property
    def max_frames(self) -> int | None:
        """Frames any one stream of this run may hold: the plan's points and a margin."""
        planned = self.start.get("num_points")
        return None if not isinstance(planned, int) else planned + max(16, planned // 10)

    @property
    def dose_per_frame(self) -> float | None:
        return self.method.dose_per_frame(self.start)

    @property
    def streams_complete(self) -> bool:
        """Every stream's end message counts exactly the frames stored (superseded ones included)."""
        return self.all_streams_ended and all(
            self.stored.get(s, 0) + len(self.superseded.get(s, ())) == n for s, n in self.ends.items()
        )

    def find_superseded(self) -> dict[str, list[int]]:
        """Frames stored that no event reads: their step was cut by a pause after the frame was
        sent and before its event was saved, then repeated. Needs the devices' frame counters
        (``<device>_frames`` in the events); streams of devices without them are left alone."""
        out = {}
        for stream, seqs in self.stored_seqs.items():
            read = self.event_frames.get(self.stream_device.get(stream))
            if read:
                extra = sorted(seqs - read)
                if extra:
                    out[stream] = extra
        return out

    def find_reacquired(self) -> dict[str, list[int]]:
        """Frames stored that the plan took again (a step's frames share their number across
        streams, so each stream that stored one has it replaced)."""
        out = {}
        for stream, seqs in self.stored_seqs.items():
            replaced = sorted(seqs & self.reacquired)
            if replaced:
                out[stream] = replaced
        return out

    def progress(self) -> dict:
        """Units done and planned (frames, or stages for milling), times, dose so far."""
        done, planned = self.processor.progress()
        elapsed = time.monotonic() - self.t0
        eta = (
            elapsed / done * max(planned - done, 0)
            if planned and done and self.state == "acquiring"
            else None
        )
        # every exposure doses the specimen, including frames replaced by a re-acquisition
        exposures = done + getattr(self.processor, "replaced_exposures", 0)
        dose = self.dose_per_frame * exposures if self.dose_per_frame is not None else None
        return {
            "done": done,
            "planned": planned,
            "unit": self.method.unit,
            "elapsed_s": elapsed,
            "eta_s": eta,
            "dose_so_far": dose,
        }

    def start_message(self) -> tuple[str, dict]:
        start = self.start
        return messages.run_start(
            self.uid,
            plan_name=start.get("plan_name"),
            method=self.method.name,
            frames_planned=self.progress()["planned"],
            progress_unit=self.method.unit,
            angles_planned=start.get("rotation_angles") or start.get("tilt_angles") or [],
            channels=self.processor.channels,
            dose_per_frame=self.dose_per_frame,
            dose_units=self.method.dose_units,
            time=start.get("time"),
        )

    def status(self) -> dict:
        """What ``livetomo status`` shows of this run."""
        p = self.progress()
        return {
            "uid": self.uid,
            "plan_name": self.start.get("plan_name"),
            "method": self.method.name,
            "state": self.state,
            "frames_done": p["done"],
            "frames_planned": p["planned"],
            "progress_unit": p["unit"],
            "frames_stored": sum(self.stored.values()),
            # flushed to the file (at most storage's flush interval behind): survives kill -9
            "frames_on_disk": dict(self.writer.frames_on_disk),
            "elapsed_s": p["elapsed_s"],
            "eta_s": p["eta_s"],
            "dose_so_far": p["dose_so_far"],
            "dose_units": self.method.dose_units if p["dose_so_far"] is not None else None,
            "finishing": dict(self.finishing) or None,
            # binned frames or live volume, when the frames are too large to process at full size
            "degraded": getattr(self.processor, "degraded", dict)(),
            "file": str(self.writer.path),
        }
