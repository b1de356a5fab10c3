"""The daemon end to end: queue a plan, frames over ZeroMQ, NXtomo file, results stream, CLI."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from livetomo.daemon.client import ControlClient
from livetomo.daemon.config import load_config
from livetomo.daemon.results import ResultsSubscriber
from livetomo.daemon.runs import RunCollector
from livetomo.daemon.server import Daemon


def _endpoints(tmp_path):
    return {k: f"ipc://{tmp_path}/{k}.sock" for k in ("frames", "documents", "results", "control")}


@pytest.fixture
def daemon(tmp_path):
    config = load_config(
        overrides={
            "endpoints": _endpoints(tmp_path),
            "storage_directory": str(tmp_path / "data"),
            "beamline": {"microprobe_shape": [12, 32, 32], "tem_shape": [24, 8, 24]},
            "web": {"port": 0},
        }
    )
    daemon = Daemon(config).start()
    daemon.collector = RunCollector(validate=True)
    daemon.runner.RE.subscribe(daemon.collector)
    yield daemon
    daemon.close()


def _wait(predicate, timeout=60.0):
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.05)


def test_queued_scan_is_stored_bit_exact_in_order_with_document_angles(daemon):
    client = ControlClient(daemon.config.endpoints.control)
    results = ResultsSubscriber(daemon.config.endpoints.results, topics=("run_end", "frame"))
    time.sleep(0.3)  # let the subscription reach the publisher
    angles = [0, 30, 60, 90, 120, 150, 180, 10]
    client(
        "queue_add",
        plan="xrf_dpc_tomo",
        kwargs={"angles": angles, "dwell_s": 0.003, "raster_shape": [12, 32]},
    )
    client("queue_start")
    _wait(lambda: daemon.pipeline.finished_runs)
    summary = daemon.pipeline.finished_runs[-1]
    assert summary["complete"] and summary["exit_status"] == "success" and summary["frames_received"] == 8
    world = daemon.beamline.truth["microprobe"]
    doc_angles = daemon.collector.column("rotation")
    assert doc_angles == pytest.approx(angles)
    with h5py.File(summary["file"], "r") as f:
        stored = f["entry/instrument/detector/data"][()]  # the primary stream: DPC segments
        np.testing.assert_array_equal(stored, np.stack([r.segments for r in world.history]))
        np.testing.assert_allclose(f["entry/sample/rotation_angle"][()], doc_angles)
        assert (f["entry/instrument/detector/image_key"][()] == 0).all()
        roi = f["entry/instrument/xrf_roi/data"][()]
        assert roi.shape == (8, len(daemon.beamline.devices["xrf"].elements), 12, 32)
        spectra = f["entry/instrument/xrf_spectra/data"]
        np.testing.assert_array_equal(spectra[3], world.history[3].spectra)
        assert f["entry/processing/alignment/shift"].shape == (8, 2)
        assert f["entry/processing/reconstruction/phase"].shape == (12, 32, 32)
    seen = []
    while (message := results.recv(timeout_s=2.0)) is not None:
        seen.append(message)
        if message[0] == "run_end":
            break
    frames = [p for t, p in seen if t == "frame"]
    assert [p["seq"] for p in frames] == list(range(8))
    assert [p["angle"] for p in frames] == pytest.approx(angles)
    results.close()


def test_file_is_valid_nxtomo_for_an_independent_reader(daemon):
    nexus = pytest.importorskip("nexusformat.nexus")
    client = ControlClient(daemon.config.endpoints.control)
    client("queue_add", plan="tilt_series", kwargs={"min_deg": -9, "max_deg": 9, "step_deg": 3})
    client("queue_start")
    _wait(lambda: daemon.pipeline.finished_runs)
    summary = daemon.pipeline.finished_runs[-1]
    root = nexus.nxload(summary["file"])
    entry = root.entry
    assert str(entry.definition) == "NXtomo"
    assert entry["instrument/detector/data"].shape == (7, 24, 24)
    np.testing.assert_allclose(entry.sample.rotation_angle.nxvalue, [0, 3, 6, -3, -6, 9, -9])
    assert entry.data.nxsignal.shape == (7, 24, 24)
    mrc = [p for p in summary["exports"] if p.endswith(".mrc")]
    assert mrc, "the tilt series was exported as MRC + mdoc"
    mrcfile = pytest.importorskip("mrcfile")
    order = np.argsort(entry.sample.rotation_angle.nxvalue)  # IMOD stacks run from low to high tilt
    with mrcfile.open(mrc[0]) as stack:
        np.testing.assert_array_equal(stack.data, entry["instrument/detector/data"].nxvalue[order])
    mdoc = Path(mrc[0] + ".mdoc").read_text()
    assert mdoc.count("TiltAngle") == 7 and "ExposureDose = 3" in mdoc


def test_bad_frames_are_counted_and_the_next_run_is_stored_completely(daemon):
    import zmq

    from livetomo.daemon import protocol

    context = zmq.Context.instance()
    push = context.socket(zmq.PUSH)
    push.connect(daemon.config.endpoints.frames)
    push.send_multipart([b"{not json", b"x"])
    push.send_multipart(protocol.encode_start("no-such-run", "s", dtype="float32", shape=(2, 2), device="d"))
    push.send_multipart(protocol.encode_frame("no-such-run", "s", 0, np.full((2, 2), np.nan, np.float32)))
    push.close(linger=1000)
    _wait(lambda: daemon.status()["frames_rejected"] >= 2)
    client = ControlClient(daemon.config.endpoints.control)
    client("queue_add", plan="tilt_series", kwargs={"min_deg": -3, "max_deg": 3, "step_deg": 3})
    client("queue_start")
    _wait(lambda: daemon.pipeline.finished_runs)
    status = client("status")
    assert status["rejected_by_reason"].get("malformed_header", 0) >= 1
    assert status["finished_runs"][-1]["complete"]
    with h5py.File(status["finished_runs"][-1]["file"], "r") as f:
        assert f["entry/instrument/detector/data"].shape[0] == 3


def test_nan_frame_from_a_faulty_detector_is_rejected_and_the_run_goes_on(daemon):
    from livetomo.simulators.faults import FaultInjector

    daemon.beamline.truth["tem"].camera.faults = FaultInjector(schedule={"nan_frame": [1]})
    client = ControlClient(daemon.config.endpoints.control)
    client("queue_add", plan="tilt_series", kwargs={"min_deg": -6, "max_deg": 6, "step_deg": 3})
    client("queue_start")
    _wait(lambda: daemon.pipeline.finished_runs)
    status = client("status")
    assert status["rejected_by_reason"]["non_finite"] == 1
    assert "frame 1 of stream 'k3_image' contains NaN" in status["last_errors"][-1]
    run = status["finished_runs"][-1]
    assert run["frames_received"] == 4 and not run["complete"]  # 5 planned, 1 rejected: reported, not hidden
    with h5py.File(run["file"], "r") as f:
        keys = f["entry/instrument/detector/image_key"][()]
        assert list(keys) == [0, 3, 0, 0, 0]  # the rejected slot is marked invalid, the rest kept


def _cli(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "livetomo.daemon.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_cli_submits_watches_and_aborts_a_plan_on_a_running_daemon(tmp_path):
    endpoints = _endpoints(tmp_path)
    config = tmp_path / "daemon.yaml"
    config.write_text(
        "endpoints:\n" + "".join(f"  {k}: {v}\n" for k, v in endpoints.items())
        + f"storage_directory: {tmp_path / 'data'}\nbeamline:\n  microprobe_shape: [12, 32, 32]\nweb:\n  port: 0\n"
    )  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "livetomo.daemon.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    control = ["--control", endpoints["control"]]
    try:
        _wait(lambda: _cli("status", *control, "--timeout", "1").returncode == 0, timeout=60)
        out = _cli(
            "submit",
            "xrf_dpc_tomo",
            "start=0",
            "stop=180",
            "num=90",
            "dwell_s=0.003",
            "raster_shape=[12, 32]",
            "--start",
            "--watch",
            *control,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "xrf_dpc_tomo finished: success" in out.stdout
        progress = [line for line in out.stdout.splitlines() if "frames" in line and "/90" in line]
        assert progress, out.stdout  # progress lines while it ran
        refused = _cli("submit", "xrf_dpc_tomo", "angles=[0, 400]", "dwell_s=0.003", *control)
        assert (
            refused.returncode != 0 and "angles[1] = 400 deg is outside the allowed range" in refused.stderr
        )
        started = _cli(
            "submit",
            "xrf_dpc_tomo",
            "start=0",
            "stop=180",
            "num=600",
            "dwell_s=0.003",
            "raster_shape=[12, 32]",
            "--start",
            *control,
        )
        assert started.returncode == 0, started.stderr
        _wait(lambda: '"re_state": "running"' in _cli("status", *control).stdout)
        assert _cli("abort", *control).returncode == 0
        watched = _cli("watch", *control)
        history = _cli("history", *control).stdout
        assert '"state": "abort"' in history, history + watched.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output
    assert "all received frames are on disk" in output
    files = [p for p in os.listdir(tmp_path / "data") if p.startswith("run-") and p.endswith(".h5")]
    assert len(files) == 2


def test_correlative_run_is_registered_and_published(daemon):
    client = ControlClient(daemon.config.endpoints.control)
    client("queue_add", plan="correlative_acquire", kwargs={})
    client("queue_start")
    _wait(lambda: daemon.pipeline.finished_runs)
    summary = daemon.pipeline.finished_runs[-1]
    assert summary["complete"] and summary["error"] is None, summary
    fused = [p for p in summary["pictures"] if "correlation" in p and p.endswith(".png")]
    assert fused and all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in fused)
    correlative = (
        daemon.monitor.snapshot()["runs"][-1]["correlative"] if "runs" in daemon.monitor.snapshot() else None
    )
    state = correlative or daemon.monitor.snapshot().get("correlative")
    assert (
        state is not None and state["sigma_t_nm"] <= 60.0
    )  # the target, against the simulator's truth below
    scene = daemon.beamline.truth["correlative"]
    with h5py.File(next(p for p in Path(summary["file"]).parent.glob("correlation-*.h5")), "r") as f:
        matrix = f["entry/correlation/matrix_px"][()]
    fm_points = scene.beads_fm_px[scene.pairs[:, 1]]
    mapped = (matrix @ np.c_[fm_points, np.ones(len(fm_points))].T).T[:, :2]
    error_nm = (
        np.sqrt(np.mean(np.sum((mapped - scene.beads_sxt_px[scene.pairs[:, 0]]) ** 2, axis=1)))
        * scene.sxt_pixel_nm
    )
    assert error_nm < 60.0
