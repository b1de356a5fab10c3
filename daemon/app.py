"""``livetomo serve``: the long-running daemon, built from its validated configuration.

It binds (loopback unless configured and keyed):

- ``frames`` (PULL): detectors push frames with the livetomo frame protocol;
- ``documents`` (PUB): the RunEngine's documents, msgpack, for outside consumers;
- ``documents_in`` (SUB, optional): documents of an outside RunEngine whose detectors
  push frames here;
- ``results`` (PUB): the pipeline's results (docs/results-stream.md) and status once a second;
- ``control`` (REP): the JSON control API and plan queue (``livetomo submit``, ``status``, …).

The daemon hosts a RunEngine in a worker thread driving the beamline that ``beamline.kind``
names; its detectors push their frames through the frames endpoint like any detector would.
docs/architecture.md shows the threads and queues. SIGTERM, SIGINT and ``livetomo shutdown``
end it cleanly: the running plan is aborted, every frame received is stored and processed,
the run files are closed; the queue and history stay in the storage directory.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import zmq

from ..devices.beamlines import beamline_module
from ..devices.measurements import MeasurementBoard
from .config import DaemonConfig, load_config
from .control import ControlAPI, ControlServer, PlanCatalog, PlanQueue, PlanRunner, QueueStore
from .monitoring import MonitorState, start_web_server
from .pipeline import Pipeline
from .storage import left_open, repair_run_file, run_catalog, run_file, stream_location
from .transport import (
    CurveSecurity,
    DocumentPublisher,
    DocumentReceiver,
    FrameReceiver,
    Limits,
    ResultsPublisher,
    StreamTracker,
    ZMQFrameSink,
    local_address,
)

log = logging.getLogger("livetomo.daemon")


class Daemon:
    """Everything ``livetomo serve`` runs, built from a ``DaemonConfig``; ``start`` / ``close``."""

    def __init__(self, config: DaemonConfig):
        self.config = config
        self.context = zmq.Context()
        curve = config.curve
        self.security = (
            CurveSecurity(curve.server_secret_key, self.context, curve.authorized_clients)
            if curve.server_secret_key
            else None
        )
        self.storage = Path(config.storage_directory)
        self.storage.mkdir(parents=True, exist_ok=True)
        limits = config.limits
        self.tracker = StreamTracker(
            require_announced_runs=True, window=limits.sequence_window, max_streams=limits.max_streams_per_run
        )
        self.receiver = FrameReceiver(
            config.endpoints.frames,
            maxsize=limits.ingest_queue,
            limits=Limits(max_frame_bytes=limits.max_message_bytes, require_finite=True),
            tracker=self.tracker,
            context=self.context,
            socket_setup=self.security,
            hold_unknown_s=limits.hold_unknown_run_s,
            max_held=limits.ingest_queue,
            max_bytes=limits.ingest_bytes,
            rcvhwm=max(1, min(4, limits.ingest_bytes // limits.max_message_bytes)),
        )
        self.results = ResultsPublisher(config.endpoints.results, self.context, self.security)
        self.monitor = MonitorState()
        self._boards: list[MeasurementBoard] = []  # set once the beamline is built
        self.tiled = run_catalog(config.tiled, self.storage)  # every run's documents to Tiled, or None
        self.pipeline = Pipeline(
            self.receiver.queue,
            storage_directory=self.storage,
            processing=config.processing,
            storage=config.storage,
            publish=self.publish,
            config=config.as_dict(),
            process_queue=limits.process_queue,
            process_bytes=limits.process_bytes,
        )
        self.documents = DocumentPublisher(
            config.endpoints.documents, bind=True, context=self.context, socket_setup=self.security
        )
        self.documents_in = None
        if config.endpoints.documents_in:
            self.documents_in = DocumentReceiver(
                config.endpoints.documents_in,
                callbacks=(self._on_document,),
                context=self.context,
                socket_setup=self.security,
            )
        self.sink = ZMQFrameSink(
            local_address(config.endpoints.frames),
            locate=stream_location(self.storage),
            metadata=self._frame_metadata,
            context=self.context,
            socket_setup=self._client_security(),
            max_piece_bytes=config.limits.frame_piece_bytes,
        )
        module = beamline_module(config.beamline.kind)
        self.beamline = module.build(config.beamline.settings, sink=self.sink)
        self._boards = [
            d.board
            for d in self.beamline.devices.values()
            if isinstance(getattr(d, "board", None), MeasurementBoard)
        ]
        self.catalog = PlanCatalog(
            self.beamline.devices, plan_defaults=self.beamline.plan_defaults, sized_for=self.beamline.presets
        )
        self.queue = PlanQueue(
            QueueStore(self.storage / QueueStore.FILE_NAME), on_interrupted=self._repair_files
        )
        if self.queue.recovered is not None:
            item = self.queue.recovered
            log.warning(
                "%s (%s) was interrupted: %s; it is back at the front of the queue",
                item.plan,
                item.uid,
                item.error,
            )
        self.files_repaired = self._repair_left_open()
        self.runner = PlanRunner(
            self.catalog,
            self.queue,
            subscribers=[self.sink, self._on_document, self.documents],
            run_file=lambda uid: run_file(self.storage, uid),
            suspenders=self.beamline.suspenders,
        )
        self.shutdown_requested = threading.Event()
        self.api = ControlAPI(
            self.runner,
            self.queue,
            self.catalog,
            status=self.status,
            config=config.as_dict(),
            shutdown=self.shutdown_requested.set,
            cancel_refinement=self.pipeline.cancel_refinement,
        )
        self.control = ControlServer(self.api, config.endpoints.control, self.context, self.security)
        self.web = None
        self._closing = threading.Event()
        self._status_thread = threading.Thread(target=self._status_loop, name="livetomo-status", daemon=True)

    # -- wiring helpers ----------------------------------------------------------------------
    @staticmethod
    def _repair_files(item) -> str:
        """Run files of a plan that was running when the daemon died: readable again, and marked."""
        notes = [repair_run_file(f, "the daemon stopped while this run was written") for f in item.files]
        for note in notes:
            log.warning("interrupted run file %s", note)
        return "; ".join(notes) or "no run file"

    def _repair_left_open(self) -> list[str]:
        """Run files still open for writing at start-up whose plan had ended: the daemon died
        during their run-end work (refinement, volumes, exports). Readable again, and marked."""
        notes = [
            repair_run_file(path, "the daemon stopped during the run-end work (refinement, volumes, exports)")
            for path in left_open(self.storage)
        ]
        for note in notes:
            log.warning("run file left open by a daemon that died during its run end: %s", note)
        return notes

    def _client_security(self):
        if self.security is None:
            return None
        server = self.security

        def setup(socket):
            # the daemon's own detectors are CURVE clients with the server's key pair
            socket.curve_serverkey = server.public
            socket.curve_publickey = server.public
            socket.curve_secretkey = server.secret

        return setup

    def _on_document(self, name: str, doc: dict) -> None:
        """Documents of the daemon's RunEngine or an outside one: into the pipeline, then announce
        a new run so the receiver admits (or releases) its frames, which must follow its start."""
        self.pipeline.on_document(name, doc)
        if self.tiled is not None:
            self.tiled(name, doc)
        if name == "start":
            self.tracker.announce_run(doc["uid"])

    def _frame_metadata(self, device: str, data_key: str) -> dict:
        return self.beamline.frame_metadata(device, data_key)

    def publish(self, topic: str, payload: dict) -> None:
        """Send a results message and fold it into the page's state (any thread; never raises)."""
        try:
            self.results.publish(topic, payload)
            self.monitor.update(topic, payload)  # the page's state, in process: no second decode
            for board in self._boards:  # the live-measurement devices plans read, in process
                board.on_message(topic, payload)
        except Exception as exc:  # a results problem must never stop processing
            log.warning("publishing %s failed: %s", topic, exc)

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict:
        """Ingest and pipeline counters for the control API's ``status`` (never blocks)."""
        receiver = self.receiver.status()
        rejected = receiver["rejected"]
        pipeline = self.pipeline.status()
        pipeline["stages"]["ingest"] = {
            "count": receiver["received_messages"],
            "mean_latency_ms": receiver["decode_seconds"] / max(receiver["received_messages"], 1) * 1e3,
            "queue_depth": receiver["queue_depth"],
            "last_error": receiver["last_error"],
        }
        errors = list(pipeline.pop("last_errors"))
        if receiver["last_error"]:
            errors.append(f"ingest: {receiver['last_error']}")
        return {
            "frames_received": receiver["accepted"].get("frame", 0),
            "frames_rejected": sum(rejected.values()),
            "frames_held_unknown_run": receiver["held_unknown_run"],
            "rejected_by_reason": rejected,
            "last_errors": errors,
            "storage_directory": str(self.storage.resolve()),
            "beamline": self.config.beamline.kind,
            "catalog": None if self.tiled is None else self.tiled.status(),
            "files_repaired_at_start": self.files_repaired[-20:],
            **pipeline,
        }

    def _status_loop(self) -> None:
        while not self._closing.wait(1.0):
            try:
                self.publish("status", self.api.status())
            except Exception as exc:
                log.warning("status: %s", exc)

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> Daemon:
        if self.tiled is not None:
            self.tiled.start()
        self.receiver.start()
        self.pipeline.start()
        if self.documents_in is not None:
            self.documents_in.start()
        self.runner.start()
        self.control.start()
        self._status_thread.start()
        if self.config.web.enabled:
            web = self.config.web
            self.web = start_web_server(
                self.monitor,
                web.host,
                web.port,
                allowed_hosts=web.allowed_hosts or None,
                views=self.pipeline.request_view,
            )
            log.info("monitoring page: %s", self.web.url)
        log.info(
            "livetomo daemon up: control %s, results %s", self.config.endpoints.control, self.results.endpoint
        )
        return self

    def close(self) -> None:
        """Abort what runs, store and process every frame received, close files and sockets."""
        self._closing.set()
        if self.web is not None:
            self.web.stop()
        self.runner.close()
        self.sink.close()
        self._drain()
        self.receiver.stop()
        if self.documents_in is not None:
            self.documents_in.stop()
        self.pipeline.close()
        if self.tiled is not None:
            self.tiled.close()
        self.control.close()
        self.queue.store.close()
        self.documents.close()
        self.results.close()
        if self.security is not None:
            self.security.close()
        self.context.term()

    def _drain(self, quiet_s: float = 0.3, limit_s: float = 10.0) -> None:
        """Wait until frames stop arriving (in flight from the sink) before the receiver stops."""
        t0, last, since = time.monotonic(), -1, time.monotonic()
        while time.monotonic() - t0 < limit_s:
            received = self.receiver.status()["received_messages"]
            if received != last:
                last, since = received, time.monotonic()
            elif time.monotonic() - since > quiet_s and self.receiver.queue.empty():
                return
            time.sleep(0.05)


def serve(config_path: str | None = None, overrides: dict | None = None) -> int:
    """Run the daemon until SIGTERM, SIGINT or ``livetomo shutdown``."""
    config = load_config(config_path, overrides)
    daemon = Daemon(config).start()
    stop = daemon.shutdown_requested

    def on_signal(signum, _frame):
        log.info("signal %s: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    e = config.endpoints
    print(f"livetomo serve: control {e.control}, frames {e.frames}, results {e.results}")
    print(f"documents {e.documents}; beamline: {config.beamline.kind}")
    print(f"storage: {daemon.storage.resolve()}")
    if daemon.web is not None:
        print(f"monitoring page: {daemon.web.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        daemon.close()
        print("livetomo serve: stopped; all received frames are on disk", flush=True)
    return 0
