"""The daemon's pipeline: frames and documents in; stored, aligned, reconstructed and published.

```
frames, documents ─▶ writer ─▶ ProcessingInbox ─▶ processing ─▶ finishing queue ─▶ finisher
                     (store)     (bounded;          (preprocess,   (one run at a     (refine, volumes,
                                  never blocks)      align, recon,  time)             pictures, exports,
                                                     publish)                         run_end)
```

Three threads, none sharing a lock with the control plane (``status`` only copies counters):

- **writer**: takes protocol messages (from the frame receiver's bounded queue) and the
  RunEngine's documents (queued into the same queue, so a run's start document comes before
  its first frame), creates each run's NXtomo file, stores every frame and hands it on. It
  never waits for processing: it keeps the detector's pace.
- **processing**: runs each method's processor on documents and frames in order. When it
  falls behind, frames arrive without their pixels (re-read from the file) and previews are
  made for the newest frame of a backlog and at least every ``PREVIEW_EVERY_S``; no frame is
  skipped, and when the run's last frame is in, every reconstruction's slices go out.
- **finisher**: run-end work (refinement, volumes, pictures, exports), reported as it goes
  ("finishing: refining Zn (tv) 10/30"), then the ``run_end`` summary. The next run is
  stored and processed meanwhile.

A stage that fails on a frame records the error (status and log) and the pipeline goes on;
the raw frame is stored first, so a processing error never loses data.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..config import Processing, Storage
from ..storage import NXtomoWriter, run_file
from ..transport import End, Frame, Start
from . import _messages as messages
from ._inbox import ProcessingInbox
from ._memory import release_free_memory
from ._methods import method_of
from ._processor import FrameContext
from ._runs import RunContext

log = logging.getLogger("livetomo.pipeline")

STAGES = ("store", "preprocess", "align", "reconstruct", "publish", "finish", "export")
PREVIEW_EVERY_S = 0.5  # while processing is behind, previews still come this often
VIEW_TIMEOUT_S = 5.0  # a view request not answered by then is refused (the processing thread is busy)
VIEWS_IN_FLIGHT = 4  # at most this many view requests wait at once


class ViewError(Exception):
    """A view request that cannot be answered: ``status`` (HTTP-like) and a reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _ViewRequest:
    kind: str
    params: dict
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: dict | None = None
    error: ViewError | None = None


END_GRACE_S = 30.0  # after the stop document, how long to wait for missing end messages
FINISHING_PUBLISH_S = 0.25  # finishing progress goes out at most this often (and at every new step)


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


class Pipeline:
    """Bookkeeping and the writer, processing and finisher threads.

    inbox : the frame receiver's queue; documents are added to it by ``on_document``.
    publish : ``publish(topic, payload)`` sends a results message (thread-safe).
    config : the daemon's effective configuration, written into every run file.
    storage : how run files are written (compression, XRF spectra or only element maps).
    process_queue : frames that wait for processing with their pixels (``ProcessingInbox``).
    """

    def __init__(
        self,
        inbox: queue.Queue,
        *,
        storage_directory: str | Path,
        processing: Processing,
        storage: Storage | None = None,
        publish: Callable[[str, dict], None],
        config: dict | None = None,
        process_queue: int = 64,
        process_bytes: int | None = None,
        end_grace_s: float = END_GRACE_S,
        on_run_end: Callable[[RunContext, dict], None] | None = None,
    ):
        self.inbox = inbox
        self.directory = Path(storage_directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.processing = processing
        self.storage = storage or Storage()
        self.publish = publish
        self.config = config
        self.end_grace_s = float(end_grace_s)
        self.on_run_end = on_run_end
        self.work = ProcessingInbox(process_queue, process_bytes)
        self.finishing: queue.Queue = queue.Queue()
        self.stats = {name: StageStats() for name in STAGES}
        self.last_errors: deque[str] = deque(maxlen=20)
        self.runs: dict[str, RunContext] = {}  # runs not yet finished (writer's view)
        self.current: RunContext | None = None  # the newest run
        self._active: dict[str, RunContext] = {}  # every run not yet ended, in start order
        self.finished_runs: deque[dict] = deque(maxlen=50)
        self.previews_skipped = 0
        self._finishing_now = 0  # 1 while the finisher works on a run
        self._stats_lock = threading.Lock()  # counters only: held for microseconds
        self._views = threading.BoundedSemaphore(VIEWS_IN_FLIGHT)
        self.last_viewable: RunContext | None = None  # the newest run with a processor to view
        # what runs measured that later runs use (the last EELS thickness of a milling run)
        self.session: dict = {}
        # run-end refinement in slabs on Dask when configured (nothing of Dask imported otherwise)
        self.slab_runner = None
        if processing.dask is not None:
            from ._refine import SlabRunner

            self.slab_runner = SlabRunner(processing.dask)
        self._closing = threading.Event()
        self._threads = [
            threading.Thread(target=self._write_loop, name="livetomo-writer", daemon=True),
            threading.Thread(target=self._process_loop, name="livetomo-processing", daemon=True),
            threading.Thread(target=self._finish_loop, name="livetomo-finisher", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 60.0) -> None:
        """Store and process what is queued, finish open runs (flush, close files), stop the threads."""
        self._closing.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.1))
        if self.slab_runner is not None:
            self.slab_runner.close()

    def cancel_refinement(self, uid: str | None = None) -> list[str]:
        """Stop the run-end refinement of run ``uid`` (default: every run processing or
        finishing); the runs keep their FBP volumes. Returns the uids it applied to."""
        with self._stats_lock:
            active = [r for r in self._active.values() if r.state in ("processing", "finishing")]
        if uid is not None:
            active = [r for r in active if r.uid == uid or r.uid.startswith(str(uid))]
        if not active:
            which = f"run {uid!r}" if uid else "no run"
            raise ValueError(f"{which} is processing or finishing: there is no refinement to cancel")
        for run in active:
            run.cancel.set()
        return [r.uid for r in active]

    # -- views on request (the page's slice and sinogram viewers) ---------------------------------
    def request_view(self, kind: str, params: dict, timeout: float = VIEW_TIMEOUT_S) -> dict:
        """Compute a view of the newest run's reconstruction (``kind`` 'slice' or 'sinogram').

        Answered by the processing thread between two frames (the reconstruction is only ever
        touched there, or by the finisher once the run ends, when views wait for it to finish),
        bounded: at most ``VIEWS_IN_FLIGHT`` requests wait, each at most ``timeout`` seconds.
        Raises ViewError with a status and a reason.
        """
        if not self._views.acquire(blocking=False):
            raise ViewError(503, f"{VIEWS_IN_FLIGHT} view requests are already waiting; try again")
        try:
            request = _ViewRequest(kind, dict(params))
            self.work.put("view", None, request, first=True)
            if not request.done.wait(timeout):
                raise ViewError(504, f"the processing thread did not answer within {timeout:g} s")
            if request.error is not None:
                raise request.error
            return request.result
        finally:
            self._views.release()

    def _view(self, request: _ViewRequest) -> None:
        try:
            run = self.last_viewable
            if run is None:
                raise ViewError(404, "no run has been processed yet")
            if run.state == "finishing":
                raise ViewError(409, "the run is finishing (refinement, volumes); views return when it ends")
            view = getattr(run.processor, "view", None)
            if view is None:
                raise ViewError(404, f"{run.method.name} runs have no reconstruction to view")
            result = view(request.kind, request.params)
            request.result = {"run_uid": run.uid, **result}
        except ViewError as exc:
            request.error = exc
        except (KeyError, ValueError, IndexError) as exc:
            request.error = ViewError(400, str(exc))
        except Exception as exc:  # never let a view request take the processing thread down
            log.exception("view request failed")
            request.error = ViewError(500, f"{type(exc).__name__}: {exc}")
        finally:
            request.done.set()

    # -- documents ------------------------------------------------------------------------
    def on_document(self, name: str, doc: dict) -> None:
        """RunEngine callback: queue the document behind the frames already received."""
        if name in ("start", "descriptor", "event", "stop"):
            self.inbox.put(("document", name, doc))

    # -- writer thread ---------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            try:
                item = self.inbox.get(timeout=0.2)
            except queue.Empty:
                self._check_overdue()
                if self._closing.is_set():
                    break
                continue
            try:
                self._store(item)
            except Exception as exc:  # the thread must survive anything one message does
                self._error("store", f"{type(exc).__name__}: {exc}")
                log.exception("writer error")
        for run in list(self.runs.values()):  # shutting down: finish what is open
            self._run_stored(run, reason=run.end_reason or "daemon shut down")

    def _store(self, item) -> None:
        if isinstance(item, tuple):
            _, name, doc = item
            getattr(self, f"_doc_{name}")(doc)
            return
        run = self.runs.get(item.run)
        if run is None or run.forwarded_end:
            why = "unknown run" if run is None else "run already finished"
            self._error("store", f"{item.kind} of {item.stream!r} for {why} {item.run}")
            return
        limit = run.max_frames
        # a stream sent in pieces (docs/frame-protocol.md) numbers its messages, not its frames
        n = run.pieces.get(item.stream, 1)
        seq, count = getattr(item, "seq", -1), getattr(item, "count", 0)
        if limit is not None and (seq // n >= limit or count > limit * n):
            # a frame the plan cannot have made: refused, so no stream grows past the plan
            number = item.seq if isinstance(item, Frame) else item.count
            self._error(
                "store",
                f"{item.kind} {number} of {item.stream!r} is beyond the {limit} frames the run can have",
            )
            if isinstance(item, End):
                item = dataclasses.replace(item, count=limit * n)
            else:
                return
        with self._stage("store"):
            run.writer.write_message(item)
        if isinstance(item, Start):
            run.streams_open.add(item.stream)
            run.stream_device[item.stream] = item.device
            if item.stream not in run.writer.skipped and run.writer.pieces_per_frame(item.stream) > 1:
                run.pieces[item.stream] = run.writer.pieces_per_frame(item.stream)
        elif isinstance(item, Frame) and n > 1:
            # stored as the pieces arrive; the frame counts, and goes to processing, once its
            # last piece is in: without pixels, as a deferred frame, read back whole from the file
            if item.seq % n == n - 1:
                run.stored[item.stream] = run.stored.get(item.stream, 0) + 1
                run.stored_seqs.setdefault(item.stream, set()).add(item.seq // n)
                if run.processor.wants(item.stream):
                    self.work.put("frame", run, dataclasses.replace(item, seq=item.seq // n, data=None))
        elif isinstance(item, Frame):
            run.stored[item.stream] = run.stored.get(item.stream, 0) + 1
            run.stored_seqs.setdefault(item.stream, set()).add(item.seq)
            # a stream the configuration does not keep, or that processing does not take
            if item.stream not in run.writer.skipped and run.processor.wants(item.stream):
                self.work.put("frame", run, item)
        elif isinstance(item, End):
            run.ends[item.stream] = -(-item.count // n)
            if run.stop is not None and run.all_streams_ended:
                self._run_stored(run)

    def _doc_start(self, doc: dict) -> None:
        method = method_of(doc)
        keep_spectra = self.storage.xrf_spectra
        writer = NXtomoWriter(
            run_file(self.directory, doc["uid"]),
            run_uid=doc["uid"],
            primary_stream=method.primary_stream,
            title=doc.get("plan_name"),
            probe=method.probe,
            attrs={"plan_name": doc.get("plan_name", ""), "livetomo_method": method.name},
            config=self.config,
            start=doc,
            compression=self.storage.compression,
            flush_interval_s=self.storage.flush_interval_s,
            derived=dict(method.derived),
            skip_streams=None if keep_spectra else (lambda stream: stream.endswith("_spectra")),
        )
        processor = method.processor(doc, self.processing)
        if hasattr(processor, "session"):
            processor.session = self.session
        run = RunContext(doc["uid"], doc, method, writer, processor)
        run.slab_runner = self.slab_runner
        self.runs[run.uid] = run
        self.current = run
        with self._stats_lock:
            self._active[run.uid] = run
        self._publish(*run.start_message())

    def _doc_descriptor(self, doc: dict) -> None:
        run = self.runs.get(doc.get("run_start"))
        if run is not None:
            run.streams_expected |= {k for k, v in doc["data_keys"].items() if v.get("external") == "STREAM:"}
            with self._stage("store"):
                run.writer.add_descriptor(doc)  # device configuration, pixel sizes
            self.work.put("descriptor", run, doc)

    def _doc_event(self, doc: dict) -> None:
        run = self.current
        if run is not None and not run.forwarded_end:
            for key, value in doc["data"].items():  # which frame of each detector this event reads
                if key.endswith("_frames") and isinstance(value, int) and value > 0:
                    run.event_frames.setdefault(key[: -len("_frames")], set()).add(value - 1)
                elif key.endswith("_superseded_frame") and isinstance(value, int) and value >= 0:
                    run.reacquired.add(value)  # the plan takes this frame again (plans/tracking.py)
                    self.work.put("reacquired", run, value)
            self.work.put("event", run, doc)

    def _doc_stop(self, doc: dict) -> None:
        run = self.runs.get(doc["run_start"])
        if run is None:
            return
        run.stop = doc
        run.stopped_at = time.monotonic()
        if run.all_streams_ended:
            self._run_stored(run)

    def _check_overdue(self) -> None:
        now = time.monotonic()
        for run in list(self.runs.values()):
            if run.stopped_at is not None and now - run.stopped_at > self.end_grace_s:
                missing = sorted((run.streams_open | run.streams_expected) - set(run.ends))
                self._run_stored(run, reason=f"no end message for {', '.join(missing)}")

    def _run_stored(self, run: RunContext, reason: str | None = None) -> None:
        """Everything of ``run`` is stored (or will never come): processing may finish it."""
        if run.forwarded_end:
            return
        run.forwarded_end, run.end_reason = True, reason
        run.state = "processing"
        repeated = run.find_superseded()
        for stream, seqs in repeated.items():
            log.warning(
                "run %s: frames %s of %s were sent again after a pause; kept, marked invalid",
                run.uid,
                seqs,
                stream,
            )
        reacquired = run.find_reacquired()
        run.superseded = {
            s: sorted({*repeated.get(s, ()), *reacquired.get(s, ())}) for s in {*repeated, *reacquired}
        }
        for stream, seqs in run.superseded.items():
            run.writer.mark_superseded(stream, seqs)
            run.stored[stream] -= len(seqs)
        run.writer.flush()
        self.work.put("superseded", run, repeated)  # the re-acquired ones left processing already
        self.runs.pop(run.uid, None)
        self.work.put("end", run)

    # -- processing thread -----------------------------------------------------------------
    def _process_loop(self) -> None:
        while True:
            item = self.work.get(timeout=0.2)
            if item is None:
                if (
                    self._closing.is_set()
                    and not any(t.is_alive() for t in self._threads[:1])
                    and not len(self.work)
                ):
                    self.finishing.put(None)
                    return
                continue
            kind, run, payload = item
            try:
                self._process(kind, run, payload)
            except Exception as exc:
                self._error("processing", f"{kind}: {type(exc).__name__}: {exc}")
                log.exception("processing %s of run %s", kind, getattr(run, "uid", None))

    def _process(self, kind: str, run: RunContext, payload) -> None:
        if kind == "view":
            self._view(payload)
            return
        processor = run.processor
        if getattr(processor, "view", None) is not None:
            self.last_viewable = run
        if kind == "descriptor":
            processor.descriptor(run, payload)
        elif kind == "event":
            for message in processor.event(run, payload):
                self._publish(*message)
        elif kind == "frame":
            self._frame(run, payload)
        elif kind == "superseded":
            processor.superseded(payload)
        elif kind == "reacquired":
            processor.reacquired(payload)
        elif kind == "end":
            for message in processor.previews(run):  # previews of every frame, however many were coalesced
                self._publish(*message)
            run.state = "finishing"
            ahead = self.finishing.qsize() + self._finishing_now
            run.finishing = {
                "text": f"waiting for {ahead} earlier run(s) to finish" if ahead else "starting",
                "step": 0,
                "total": 1,
            }
            self._publish(*messages.finishing(run.uid, **run.finishing))
            self.finishing.put(run)

    def _frame(self, run: RunContext, frame: Frame) -> None:
        if frame.data is None:  # deferred while processing was behind: the file has it
            with self._stage("store"):
                frame = dataclasses.replace(frame, data=run.writer.read_frame(frame.stream, frame.seq))
        # previews for the newest frame of a backlog, and at least every PREVIEW_EVERY_S while behind
        now = time.monotonic()
        last = run.last_preview.get(frame.stream, 0.0)  # per stream: DPC and element maps alike
        previews = self.work.frames_waiting(run) == 0 or now - last >= PREVIEW_EVERY_S
        if previews:
            run.last_preview[frame.stream] = now
        else:
            with self._stats_lock:
                self.previews_skipped += 1
        ctx = FrameContext(stage=lambda name: self._stage(name, ctx.latency), previews=previews)
        results = run.processor.frame(run, frame, ctx)
        with self._stage("publish", ctx.latency):
            for topic, payload in results:
                self._publish(topic, payload)

    # -- finisher thread --------------------------------------------------------------------
    def _finish_loop(self) -> None:
        while True:
            run = self.finishing.get()
            if run is None:
                return
            self._finishing_now = 1
            try:
                self._finish(run)
            except Exception as exc:
                self._error("finish", f"{type(exc).__name__}: {exc}")
                log.exception("finishing run %s", run.uid)
            finally:
                self._finishing_now = 0

    def _finish(self, run: RunContext) -> None:
        last = {"t": 0.0, "text": None}

        def report(text: str, step: int, total: int) -> None:
            run.finishing = {"text": text, "step": int(step), "total": int(total)}
            now = time.monotonic()
            if text != last["text"] or now - last["t"] >= FINISHING_PUBLISH_S:
                last.update(t=now, text=text)
                self._publish(*messages.finishing(run.uid, **run.finishing))

        error, pictures, exports, end_messages = run.end_reason, [], [], []
        with self._stage("finish"):
            try:
                result = run.processor.finish(run, self.directory, report)
                pictures, end_messages = result.pictures, result.messages
            except Exception as exc:
                error = f"finishing failed: {type(exc).__name__}: {exc}"
                self._error("finish", error)
                log.exception("finishing run %s", run.uid)
            finally:
                run.writer.close()
        with self._stage("export"):  # its own stage: a large run's exports take as long as its end work
            try:
                exports = run.processor.export(run, self.directory, report)
            except Exception as exc:
                self._error("finish", f"export failed: {type(exc).__name__}: {exc}")
                log.exception("exporting run %s", run.uid)
        for message in end_messages:
            self._publish(*message)
        run.state = "ended"
        with self._stats_lock:
            self._active.pop(run.uid, None)
        done, planned = run.processor.progress()
        progress = run.progress()
        topic, summary = messages.run_end(
            run.uid,
            exit_status=(run.stop or {}).get("exit_status", "unknown"),
            frames_received=done,  # units of progress: frames, or stages for milling
            frames_expected=planned,
            complete=error is None and run.processor.complete(run),
            file=str(run.writer.path),
            pictures=pictures,
            exports=exports,
            error=error,
            plan_name=run.start.get("plan_name"),
            method=run.method.name,
            reason=(run.stop or {}).get("reason") or None,
            progress_unit=run.method.unit,
            frames_stored=sum(run.stored.values()),
            dose=progress["dose_so_far"],  # every exposure, replaced ones included
            dose_units=run.method.dose_units if progress["dose_so_far"] is not None else None,
            # per stream: what its sender's end message said it sent, and what is stored
            streams={
                s: {
                    "sent": run.ends.get(s),
                    "stored": run.stored.get(s, 0),
                    "superseded": len(run.superseded.get(s, ())),
                }
                for s in sorted(run.streams_open)
            },
        )
        self._publish(topic, summary)
        self.finished_runs.append(summary)
        if self.on_run_end is not None:
            self.on_run_end(run, summary)
        if not self.finishing.qsize():  # the run's buffers are gone: give their pages back
            release_free_memory()

    # -- shared ----------------------------------------------------------------------------
    def _publish(self, topic: str, payload: dict) -> None:
        if topic == "milling" and payload.get("thickness_nm") is not None:
            self.session["lamella_thickness_nm"] = float(payload["thickness_nm"])  # the last EELS reading
        try:
            self.publish(topic, payload)
        except Exception as exc:  # a results problem must never stop the pipeline
            self._error("publish", f"{topic}: {type(exc).__name__}: {exc}")

    @contextmanager
    def _stage(self, name: str, latency: dict | None = None):
        t0 = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self._error(name, f"{type(exc).__name__}: {exc}")
            log.warning("stage %s failed: %s", name, exc, exc_info=True)
        finally:
            dt = time.perf_counter() - t0
            with self._stats_lock:
                stats = self.stats[name]
                stats.count += 1
                stats.total_s += dt
            if latency is not None:
                latency[name] = latency.get(name, 0.0) + dt * 1e3

    def _error(self, stage: str, text: str) -> None:
        message = f"{time.strftime('%H:%M:%S')} {stage}: {text}"
        with self._stats_lock:
            self.last_errors.append(message)
            if stage in self.stats:
                self.stats[stage].errors += 1
                self.stats[stage].last_error = text

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict:
        """Counters and the runs in flight; never waits for the pipeline's threads."""
        with self._stats_lock:
            stages = {name: s.as_dict() for name, s in self.stats.items()}
            errors = list(self.last_errors)
            skipped = self.previews_skipped
            active = list(self._active.values())
        shown = [r for r in active if r.state == "acquiring"][-1:] or active[-1:]  # the run to show
        return {
            "stages": stages,
            "pipeline_queue_depth": self.inbox.qsize(),
            "processing_queue_depth": len(self.work),
            "finishing_queue_depth": self.finishing.qsize(),
            "frames_deferred": self.work.deferred,
            "previews_skipped": skipped,
            "last_errors": errors,
            "run": shown[0].status() if shown else None,
            "runs_finishing": [r.status() for r in active if r.state in ("processing", "finishing")],
            "finished_runs": list(self.finished_runs)[-5:],
            "refinement_on": "in-process"
            if self.slab_runner is None
            else (f"dask {self.slab_runner.address or '(not started)'}"),
        }
