"""Startup module for bluesky-queueserver: the same simulated devices and plans as ``livetomo serve``.

Start a queueserver RE Manager with it::

    start-re-manager --startup-module livetomo.daemon.qserver_startup --keep-re

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
globals().update(_beamline.devices)  # rotation, scan, dpc, xrf, tilt, k3, fib, sxt, fm

RE = RunEngine({})
