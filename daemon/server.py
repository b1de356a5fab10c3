"""``livetomo serve``: the long-running daemon.

It binds (loopback unless configured and keyed):

- ``frames`` (PULL): detectors push frames with the livetomo frame protocol;
- ``documents`` (PUB): the RunEngine's documents, msgpack, for outside consumers;
- ``documents_in`` (SUB, optional): documents of an outside RunEngine whose detectors
  push frames here;
- ``results`` (PUB): the pipeline's results (docs/results-stream.md) and status once a second;
- ``control`` (REP): the JSON control API and plan queue (``livetomo submit``, ``status``, …).

The daemon hosts a RunEngine in a worker thread driving the simulated beamline; its
detectors push their frames through the frames endpoint like real detectors would.
SIGTERM and SIGINT shut it down cleanly: the running plan is aborted, every frame
received is processed and on disk, the run files are closed.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import zmq

from .beamline import simulated_beamline
from .config import DaemonConfig, load_config
from .control import ControlAPI, ControlServer
from .documents import DocumentPublisher, DocumentReceiver
from .ingest import FrameReceiver, StreamTracker
from .monitor_state import MonitorState
from .pipeline import Pipeline
from .processors import make_processor
from .protocol import Limits
from .queue import PlanQueue, PlanRunner
from .results import ResultsPublisher
from .security import CurveSecurity
from .web import start_web_server
from .zmq_sink import ZMQFrameSink

log = logging.getLogger("livetomo.server")

ANGLE_OF = {"dpc": "rotation", "xrf": "rotation", "k3": "tilt"}


class Daemon:
    """Everything ``livetomo serve`` runs, built from a ``DaemonConfig``; ``start`` / ``close``."""

    def __init__(self, config: DaemonConfig):
        self.config = config
        self.context = zmq.Context()
        self.security = CurveSecurity(config.curve, self.context) if config.curve.server_secret_key else None
        self.storage = Path(config.storage_directory)
        self.storage.mkdir(parents=True, exist_ok=True)
        limits = Limits(max_frame_bytes=config.limits.max_message_bytes, require_finite=True)
        self.tracker = StreamTracker()
        self.receiver = FrameReceiver(
            config.endpoints.frames,
            maxsize=config.limits.ingest_queue,
            limits=limits,
            tracker=self.tracker,
            context=self.context,
            socket_setup=self.security,
        )
        self.results = ResultsPublisher(config.endpoints.results, self.context, self.security)
        self.pipeline = Pipeline(
            self.receiver.queue,
            storage_directory=self.storage,
            processing=config.processing,
            publish=self._publish,
            make_processor=make_processor,
        )
        self.documents = DocumentPublisher(
            config.endpoints.documents, bind=True, context=self.context, socket_setup=self.security
        )
        self.documents_in = None
        if config.endpoints.documents_in:
            self.documents_in = DocumentReceiver(
                config.endpoints.documents_in,
                callbacks=(self._announce, self.pipeline.on_document),
                context=self.context,
                socket_setup=self.security,
            )
        self.queue = PlanQueue()
        self._sink_metadata_devices = {}
        self.sink = ZMQFrameSink(
            self._frames_connect_address(),
            directory=self.storage,
            metadata=self._frame_metadata,
            context=self.context,
            socket_setup=self._client_security(),
        )
        b = config.beamline
        self.beamline = simulated_beamline(
            self.sink, seed=b.seed, microprobe_shape=b.microprobe_shape, tem_shape=b.tem_shape
        )
        self.runner = PlanRunner(
            self.beamline,
            self.queue,
            subscribers=[self._announce, self.sink, self.pipeline.on_document, self.documents],
        )
        self.api = ControlAPI(self.runner, self.queue, status=self.status, config=config.as_dict())
        self.control = ControlServer(self.api, config.endpoints.control, self.context, self.security)
        self.monitor = MonitorState()
        self.web = None
        self._closing = threading.Event()
        self._status_thread = threading.Thread(target=self._status_loop, name="livetomo-status", daemon=True)

    # -- wiring helpers ----------------------------------------------------------------------
    def _frames_connect_address(self) -> str:
        return self.config.endpoints.frames.replace("tcp://*:", "tcp://127.0.0.1:").replace(
            "0.0.0.0", "127.0.0.1"
        )

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

    def _announce(self, name: str, doc: dict) -> None:
        if name == "start":
            self.tracker.announce_run(doc["uid"])

    def _frame_metadata(self, device: str, data_key: str) -> dict:
        devices = self.beamline.devices
        out = {"image_key": 0}
        axis = ANGLE_OF.get(device)
        if axis is not None:
            out["angle_deg"] = float(devices[axis].position)
        if device == "k3":
            out["exposure"], out["exposure_units"] = float(devices["k3"].exposure), "e/A^2"
        elif device in ("dpc", "xrf"):
            out["exposure"], out["exposure_units"] = float(devices["scan"].read()["scan_dwell"]["value"]), "s"
        return out

    def _publish(self, topic: str, payload: dict) -> None:
        try:
            self.results.publish(topic, payload)
            self.monitor.update(topic, payload)  # the page's state, in process: no second decode
        except Exception as exc:  # a results problem must never stop processing
            log.warning("publishing %s failed: %s", topic, exc)

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict:
        receiver = self.receiver.status()
        rejected = receiver["rejected"]
        pipeline = self.pipeline.status()
        pipeline["stages"]["ingest"] = {
            "count": receiver["received_messages"],
            "queue_depth": receiver["queue_depth"],
            "last_error": receiver["last_error"],
        }
        errors = list(pipeline.pop("last_errors"))
        if receiver["last_error"]:
            errors.append(f"ingest: {receiver['last_error']}")
        return {
            "frames_received": receiver["accepted"].get("frame", 0),
            "frames_rejected": sum(rejected.values()),
            "rejected_by_reason": rejected,
            "last_errors": errors,
            "storage_directory": str(self.storage.resolve()),
            **pipeline,
        }

    def _status_loop(self) -> None:
        while not self._closing.wait(1.0):
            try:
                self._publish("status", self.api.status())
            except Exception as exc:
                log.warning("status: %s", exc)

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> Daemon:
        self.receiver.start()
        self.pipeline.start()
        if self.documents_in is not None:
            self.documents_in.start()
        self.runner.start()
        self.control.start()
        self._status_thread.start()
        if self.config.web.enabled:
            self.web = start_web_server(self.monitor, self.config.web.host, self.config.web.port)
            log.info("monitoring page: %s", self.web.url)
        log.info(
            "livetomo daemon up: control %s, results %s", self.config.endpoints.control, self.results.endpoint
        )
        return self

    def close(self) -> None:
        """Abort what runs, process and store every frame received, close files and sockets."""
        self._closing.set()
        if self.web is not None:
            self.web.stop()
        self.runner.close()
        self.sink.close()
        self._drain()
        self.receiver.stop()
        self.pipeline.close()
        if self.documents_in is not None:
            self.documents_in.stop()
        self.control.close()
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
    """Run the daemon until SIGTERM or SIGINT."""
    config = load_config(config_path, overrides)
    daemon = Daemon(config).start()
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %s: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    e = config.endpoints
    print(f"livetomo serve: control {e.control}, frames {e.frames}, results {e.results}")
    print(f"documents {e.documents}")
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
