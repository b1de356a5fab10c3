"""Startup module for bluesky-queueserver: the same simulated devices and plans as ``livetomo serve``.

Start a queueserver RE Manager with it (a Redis on 127.0.0.1:6379; the plan/device list and
the user-group permissions ship in ``livetomo.daemon.qserver_profile``; README: bluesky-queueserver)::

    start-re-manager --startup-module livetomo.daemon.qserver_startup \
        --existing-plans-devices "$(python -m livetomo.daemon.qserver_profile)" \
        --user-group-permissions "$(python -m livetomo.daemon.qserver_profile)" \
        --update-existing-plans-devices NEVER --redis-addr 127.0.0.1:6379 \
        --zmq-control-addr tcp://127.0.0.1:60615 --zmq-info-addr tcp://127.0.0.1:60625 \
        --zmq-publish-console ON

Image detectors write their frames as HDF5 files under ``$LIVETOMO_DATA`` (default
``./livetomo_data``), referenced by stream_resource documents.
"""

import os

from bluesky import RunEngine

from livetomo.daemon.storage import HDF5FrameSink
from livetomo.devices.beamlines import beamline_module
from livetomo.plans import correlative_acquire, mill_lamella, tilt_series, tomo_scan, xrf_dpc_tomo  # noqa: F401

_simulated = beamline_module("simulated")
_beamline = _simulated.build(
    _simulated.Settings(), sink=HDF5FrameSink(os.environ.get("LIVETOMO_DATA", "livetomo_data"))
)
globals().update(_beamline.devices)  # rotation, scan, dpc, xrf, txm, tilt, k3, fib, sxt, fm

RE = RunEngine({})
