"""Startup module for bluesky-queueserver: the same devices and plans as ``livetomo serve``.

Start a queueserver RE Manager with it (a Redis on 127.0.0.1:6379; the plan/device list and
the user-group permissions ship in ``livetomo.daemon.qserver_profile``; README: bluesky-queueserver)::

    start-re-manager --startup-module livetomo.daemon.qserver_startup \
        --existing-plans-devices "$(python -m livetomo.daemon.qserver_profile)" \
        --user-group-permissions "$(python -m livetomo.daemon.qserver_profile)" \
        --update-existing-plans-devices NEVER --redis-addr 127.0.0.1:6379 \
        --zmq-control-addr tcp://127.0.0.1:60615 --zmq-info-addr tcp://127.0.0.1:60625 \
        --zmq-publish-console ON

Two modes, chosen by the manager's environment:

- by default, the simulated beamline; image detectors write their frames as HDF5 files under
  ``$LIVETOMO_DATA`` (default ``./livetomo_data``), referenced by stream_resource documents;
- with ``LIVETOMO_CONFIG`` naming a running ``livetomo serve``'s configuration file, the
  beamline that file configures (``beamline.kind``: simulated or epics), and if it sets
  ``endpoints.documents_in``, live processing by that daemon: detectors push their frames to
  its ``frames`` endpoint (``ZMQFrameSink``, stream_resource pointing into the daemon's run
  files under its ``storage_directory``) and the RunEngine publishes its documents to its
  ``documents_in`` endpoint, so the daemon stores, aligns and reconstructs queueserver's
  scans as it does its own.
"""

import logging
import os

from bluesky import RunEngine

from livetomo.daemon.config import load_config
from livetomo.daemon.storage import HDF5FrameSink, stream_location
from livetomo.daemon.transport import DocumentPublisher, ZMQFrameSink
from livetomo.devices.beamlines import beamline_module
from livetomo.devices.results_stream import ResultsStreamBoard
from livetomo.plans import correlative_acquire, mill_lamella, tilt_series, tomo_scan, xrf_dpc_tomo  # noqa: F401

logger = logging.getLogger("livetomo.qserver")


class _ToDaemon:
    """Documents to the daemon's ``documents_in``: at each run's start, wait (up to ``wait_s``)
    until the daemon has subscribed, since a PUB socket drops what it sends before that."""

    def __init__(self, address: str, wait_s: float = 10.0):
        self.publisher = DocumentPublisher(address)
        self.wait_s = wait_s

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start" and not self.publisher.wait_for_subscribers(1, timeout=self.wait_s):
            logger.warning(
                "livetomo serve is not subscribed at %s: run %s goes unprocessed",
                self.publisher.address,
                doc["uid"],
            )
        self.publisher(name, doc)


def _daemon_config():
    path = os.environ.get("LIVETOMO_CONFIG")
    return load_config(path) if path else None


_config = _daemon_config()
RE = RunEngine({})
if _config is not None and _config.endpoints.documents_in:
    if _config.curve.server_secret_key:
        raise RuntimeError(
            "LIVETOMO_CONFIG: a daemon with CURVE keys is not reachable from the queueserver startup "
            "module; serve on loopback endpoints (ipc:// or tcp://127.0.0.1)"
        )
    _sink = ZMQFrameSink(
        _config.endpoints.frames,
        locate=stream_location(os.path.abspath(_config.storage_directory)),
        metadata=lambda device, key: _beamline.frame_metadata(device, key),
    )
    RE.subscribe(_sink)  # the run uid of the frames
    RE.subscribe(_ToDaemon(_config.endpoints.documents_in))
else:
    _sink = HDF5FrameSink(os.environ.get("LIVETOMO_DATA", "livetomo_data"))
_kind = _config.beamline.kind if _config is not None else "simulated"
_module = beamline_module(_kind)
_settings = _config.beamline.settings if _config is not None else _module.Settings()
_beamline = _module.build(_settings, sink=_sink)
if _config is not None and "live" in _beamline.devices:
    # tracking reads the daemon's measurements over its results stream (nothing feeds the board
    # in this process); without a daemon, tracking finds every measurement stale and says so
    _beamline.devices["live"].board = ResultsStreamBoard(_config.endpoints.results)
globals().update(
    _beamline.devices
)  # simulated: rotation, scan, dpc, xrf, txm, tilt, k3, image_shift, live, fib, sxt, fm
