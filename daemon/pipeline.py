"""The daemon's pipeline: frames and documents in; stored, aligned, reconstructed and published.

```
frames ─▶ ingest/validate (FrameReceiver) ─▶ store ─▶ preprocess ─▶ align ─▶ reconstruct ─▶ publish
documents ─▶ run bookkeeping (method, planned angles and frames, dose, end of run)
```

One worker thread takes accepted protocol messages from the receiver's bounded queue and
runs every stage on them; the RunEngine's documents go into the same queue, so a run's
start document is always handled before its first frame (it is emitted before any frame
is sent) and the stop document after the frames queued before it. A stage that fails on
a frame records the error (status and log) and the pipeline goes on with the next frame:
the raw frame is stored first, so a processing error never loses data. What each method
needs (DPC, alignment, reconstruction channels) lives in ``processors``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .config import Processing
from .protocol import End, Frame, Start
from .storage import NXtomoWriter, run_file

log = logging.getLogger("livetomo.pipeline")

STAGES = ("store", "preprocess", "align", "reconstruct", "publish")
PRIMARY_STREAM = {"xrf-dpc": "dpc_segments", "cryo-et": "k3_image", "correlative-sxt-fm": "sxt_image"}
PROBE = {"xrf-dpc": "x-ray", "tomography": "x-ray", "correlative-sxt-fm": "x-ray", "cryo-et": "electron"}
END_GRACE_S = 30.0  # after the stop document, how long to wait for missing end messages


@dataclass
class StageStats:
    count: int = 0
    total_s: float = 0.0
    errors: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict:
        mean = self.total_s / self.count * 1e3 if self.count else 0.0
        return {
            "count": self.count,
            "mean_latency_ms": mean,
            "errors": self.errors,
            "last_error": self.last_error,
        }


@dataclass
class RunContext:
    """Everything the pipeline knows about one run."""

    uid: str
    start: dict
    writer: NXtomoWriter
    processor: object
    t0: float = field(default_factory=time.monotonic)
    frames_done: int = 0
    stop: dict | None = None
    stopped_at: float | None = None
    streams_open: set = field(default_factory=set)
    streams_expected: set = field(default_factory=set)  # external data keys the descriptors announced
    streams_ended: set = field(default_factory=set)
    finished: bool = False

    @property
    def all_streams_ended(self) -> bool:
        """Every stream that opened, or that a descriptor announced, has sent its end message.

        The stop document can overtake frames still in flight on the frame socket, so the
        descriptors (not the start messages received so far) say which streams to wait for.
        """
        return (self.streams_open | self.streams_expected) <= self.streams_ended

    @property
    def method(self) -> str:
        return self.start.get("livetomo_method", "tomography")

    @property
    def frames_planned(self) -> int | None:
        return self.start.get("num_points")

    @property
    def dose_per_frame(self) -> float | None:
        return self.start.get("dose_per_tilt_e_per_A2") or (
            self.start["dose_gy"] / self.start["num_points"] if self.start.get("dose_gy") else None
        )

    def progress(self) -> dict:
        elapsed = time.monotonic() - self.t0
        planned = self.frames_planned
        done = self.frames_done
        eta = elapsed / done * (planned - done) if planned and done else None
        dose = self.dose_per_frame * done if self.dose_per_frame else None
        return {
            "uid": self.uid,
            "plan_name": self.start.get("plan_name"),
            "frames_done": done,
            "frames_planned": planned,
            "elapsed_s": elapsed,
            "eta_s": eta,
            "dose_so_far": dose,
        }


class Pipeline:
    """Bookkeeping and the processing thread. ``publish(topic, payload)`` sends results."""

    def __init__(
        self,
        inbox: queue.Queue,
        *,
        storage_directory: str | Path,
        processing: Processing,
        publish: Callable[[str, dict], None],
        make_processor: Callable[[dict, Processing], object],
        on_run_end: Callable[[RunContext, dict], None] | None = None,
    ):
        self.inbox = inbox
        self.directory = Path(storage_directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.processing = processing
        self.publish = publish
        self.make_processor = make_processor
        self.on_run_end = on_run_end
        self.stats = {name: StageStats() for name in STAGES}
        self.last_errors: deque[str] = deque(maxlen=20)
        self.runs: dict[str, RunContext] = {}
        self.current: RunContext | None = None
        self.finished_runs: deque[dict] = deque(maxlen=50)
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="livetomo-pipeline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Process what is queued, finish open runs (flush files), stop the thread."""
        self._closing.set()
        self._thread.join(timeout)
        with self._lock:
            for run in list(self.runs.values()):
                self._finish(run, reason="daemon shut down")

    # -- documents ------------------------------------------------------------------------
    def on_document(self, name: str, doc: dict) -> None:
        """RunEngine callback: queue the document behind the frames already received."""
        if name in ("start", "descriptor", "event", "stop"):
            self.inbox.put(("document", name, doc))

    def _doc_start(self, doc: dict) -> None:
        method = doc.get("livetomo_method", "tomography")
        writer = NXtomoWriter(
            run_file(self.directory, doc["uid"]),
            run_uid=doc["uid"],
            primary_stream=PRIMARY_STREAM.get(method),
            title=doc.get("plan_name"),
            probe=PROBE.get(method),
            attrs={"plan_name": doc.get("plan_name", ""), "livetomo_method": method},
        )
        run = RunContext(doc["uid"], doc, writer, self.make_processor(doc, self.processing))
        self.runs[run.uid] = run
        self.current = run
        self.publish(
            "run_start",
            {
                "run_uid": run.uid,
                "plan_name": doc.get("plan_name"),
                "method": method,
                "frames_planned": run.frames_planned,
                "angles_planned": doc.get("rotation_angles") or doc.get("tilt_angles") or [],
                "channels": list(getattr(run.processor, "channels", ())),
                "dose_per_frame": run.dose_per_frame,
                "dose_units": "e/A^2" if method == "cryo-et" else ("Gy" if run.dose_per_frame else None),
                "time": doc["time"],
            },
        )

    def _doc_event(self, doc: dict) -> None:
        run = self.current
        if run is None:
            return
        for topic, payload in run.processor.event(run, doc):
            self.publish(topic, payload)

    def _doc_descriptor(self, doc: dict) -> None:
        run = self.runs.get(doc.get("run_start"))
        if run is not None:
            run.streams_expected |= {k for k, v in doc["data_keys"].items() if v.get("external") == "STREAM:"}
            run.processor.descriptor(run, doc)

    def _doc_stop(self, doc: dict) -> None:
        run = self.runs.get(doc["run_start"])
        if run is None:
            return
        run.stop = doc
        run.stopped_at = time.monotonic()
        if run.all_streams_ended:
            self._finish(run)

    # -- the pipeline thread ---------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                item = self.inbox.get(timeout=0.2)
            except queue.Empty:
                if self._closing.is_set():
                    return
                self._check_overdue()
                continue
            try:
                with self._lock:
                    self._dispatch(item)
            except Exception as exc:  # the thread must survive anything one message does
                self._error("pipeline", f"{type(exc).__name__}: {exc}")
                log.exception("pipeline error")

    def _dispatch(self, item) -> None:
        if isinstance(item, tuple):
            _, name, doc = item
            try:
                getattr(self, f"_doc_{name}")(doc)
            except Exception as exc:  # a bookkeeping error must not stop the frames
                self._error("documents", f"{name}: {type(exc).__name__}: {exc}")
                log.exception("document %s", name)
            return
        run = self.runs.get(item.run)
        if run is None:
            self._error("store", f"message for unknown run {item.run}")
            return
        if isinstance(item, Start):
            with self._stage("store"):
                run.writer.write_message(item)
            run.streams_open.add(item.stream)
        elif isinstance(item, Frame):
            self._frame(run, item)
        elif isinstance(item, End):
            with self._stage("store"):
                run.writer.write_message(item)
            run.streams_ended.add(item.stream)
            if run.stop is not None and run.all_streams_ended:
                self._finish(run)

    def _frame(self, run: RunContext, frame: Frame) -> None:
        with self._stage("store"):
            run.writer.write_message(frame)
        latency: dict[str, float] = {}
        results = run.processor.frame(run, frame, self._stage, latency)
        if frame.stream == PRIMARY_STREAM.get(run.method, frame.stream):
            run.frames_done += 1
        with self._stage("publish"):
            for topic, payload in results:
                self.publish(topic, payload)

    @contextmanager
    def _stage(self, name: str, latency: dict | None = None):
        stats = self.stats[name]
        t0 = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self._error(name, f"{type(exc).__name__}: {exc}")
            log.warning("stage %s failed: %s", name, exc, exc_info=True)
        finally:
            dt = time.perf_counter() - t0
            stats.count += 1
            stats.total_s += dt
            if latency is not None:
                latency[name] = latency.get(name, 0.0) + dt * 1e3

    def _error(self, stage: str, text: str) -> None:
        message = f"{time.strftime('%H:%M:%S')} {stage}: {text}"
        self.last_errors.append(message)
        if stage in self.stats:
            self.stats[stage].errors += 1
            self.stats[stage].last_error = text

    def _check_overdue(self) -> None:
        with self._lock:
            for run in list(self.runs.values()):
                if run.stopped_at is not None and time.monotonic() - run.stopped_at > END_GRACE_S:
                    missing = sorted((run.streams_open | run.streams_expected) - run.streams_ended)
                    self._finish(run, reason=f"no end message for {', '.join(missing)}")

    def _finish(self, run: RunContext, reason: str | None = None) -> None:
        if run.finished:
            return
        run.finished = True
        pictures, error = [], reason
        try:
            pictures = run.processor.finish(run, self.directory)
            for topic, payload in getattr(run.processor, "messages", ()):
                self.publish(topic, payload)
        except Exception as exc:
            error = f"finishing failed: {type(exc).__name__}: {exc}"
            self._error("reconstruct", error)
            log.exception("finishing run %s", run.uid)
        finally:
            run.writer.close()
        exports = []
        try:
            exports = run.processor.export(run, self.directory)
        except Exception as exc:
            self._error("store", f"export failed: {type(exc).__name__}: {exc}")
            log.exception("exporting run %s", run.uid)
        expected = run.frames_planned
        summary = {
            "run_uid": run.uid,
            "exit_status": (run.stop or {}).get("exit_status", "unknown"),
            "frames_received": run.frames_done,
            "frames_expected": expected,
            "complete": reason is None and expected is not None and run.frames_done >= expected,
            "file": str(run.writer.path),
            "pictures": [str(p) for p in pictures],
            "exports": [str(p) for p in exports],
            "error": error,
        }
        self.publish("run_end", summary)
        self.finished_runs.append(summary)
        if self.on_run_end is not None:
            self.on_run_end(run, summary)
        self.runs.pop(run.uid, None)
        if self.current is run:
            self.current = None

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            stages = {name: s.as_dict() for name, s in self.stats.items()}
            return {
                "stages": stages,
                "pipeline_queue_depth": self.inbox.qsize(),
                "last_errors": list(self.last_errors),
                "run": self.current.progress() if self.current else None,
                "finished_runs": list(self.finished_runs)[-5:],
            }
