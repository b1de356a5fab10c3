"""A RunEngine outside a running daemon, as under bluesky-queueserver: its documents go to the
daemon's ``documents_in``, its detectors' frames to the frames endpoint, and a measurements
device reads the daemon's results socket."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ...devices.beamlines import Beamline
from ...devices.measurements import LiveMeasurements
from ...devices.results_stream import ResultsStreamBoard
from ..pipeline import RunCollector
from ..storage import stream_location
from ..testing import make_run_engine, wait_until
from ..transport import DocumentPublisher, ZMQFrameSink


@dataclass
class Outside:
    RE: object
    docs: RunCollector
    live: LiveMeasurements
    devices: object
    daemon: object

    def run_end(self, timeout: float = 600.0) -> dict:
        """The daemon's summary of the last run this RunEngine made, once it has finished it."""
        uid = self.docs.start["uid"]
        return wait_until(
            lambda: next((r for r in self.daemon.pipeline.finished_runs if r.get("run_uid") == uid), None),
            timeout,
            f"the end of run {uid}",
        )


@contextlib.contextmanager
def outside_run_engine(daemon, build: Callable, describe: Callable) -> Iterator[Outside]:
    """``build(sink)`` makes the devices; ``describe(devices)`` returns ``(angle_axis, exposure)``
    for their frames' headers (as a beamline module's ``Beamline`` has them)."""
    endpoints = daemon.config.endpoints
    holder: dict = {}
    sink = ZMQFrameSink(
        endpoints.frames,
        locate=stream_location(daemon.storage),
        metadata=lambda device, key: holder["beamline"].frame_metadata(device, key),
    )
    devices = build(sink)
    angle_axis, exposure, named = describe(devices)
    holder["beamline"] = Beamline(devices=named, angle_axis=angle_axis, exposure=exposure)
    board = ResultsStreamBoard(endpoints.results)
    publisher = DocumentPublisher(endpoints.documents_in)
    docs = RunCollector()
    RE = make_run_engine()
    for callback in (sink, publisher, docs):
        RE.subscribe(callback)
    try:
        wait_until(lambda: publisher.wait_for_subscribers(1, timeout=0.1), 10, "the daemon's documents_in")
        yield Outside(RE, docs, LiveMeasurements(board), devices, daemon)
    finally:
        board.close()
        publisher.close()
        sink.close()
