import os

import pytest

from livetomo.daemon.pipeline import RunCollector

profile_ops = pytest.importorskip("bluesky_queueserver.manager.profile_ops")


def test_queueserver_loads_the_startup_module_and_runs_its_plans(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVETOMO_DATA", str(tmp_path))
    nspace = profile_ops.load_worker_startup_code(startup_module_name="livetomo.daemon.qserver_startup")
    plans, devices, plans_in_ns, devices_in_ns = profile_ops.existing_plans_and_devices_from_nspace(
        nspace=nspace
    )
    assert set(plans) == {"tomo_scan", "xrf_dpc_tomo", "tilt_series", "mill_lamella", "correlative_acquire"}
    assert set(devices) == {
        "rotation",
        "scan",
        "dpc",
        "xrf",
        "txm",
        "raster_offset",
        "tilt",
        "k3",
        "image_shift",
        "live",
        "fib",
        "sxt",
        "fm",
        "beam_current",
        "stage_temperature",
    }
    collector = RunCollector(validate=True)
    RE = nspace["RE"]
    RE(
        plans_in_ns["tilt_series"](devices_in_ns["k3"], devices_in_ns["tilt"], min_deg=-6, max_deg=6),
        collector,
    )
    assert collector.stop["exit_status"] == "success"
    assert len(collector.events["primary"]) == 5
    files = [p for p in os.listdir(tmp_path) if p.endswith(".h5")]
    assert files, "the K3 frames were written as HDF5 beside the documents"
