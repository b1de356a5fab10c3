"""The daemon end to end: queue a plan, frames over ZeroMQ, NXtomo file, results stream, CLI, restart."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from livetomo.daemon.control import ControlClient
from livetomo.daemon.pipeline import RunCollector
from livetomo.daemon.testing import daemon_overrides, running_daemon, wait_until
from livetomo.daemon.transport import ResultsSubscriber


@pytest.fixture
def daemon(tmp_path):
    with running_daemon(tmp_path, limits={"hold_unknown_run_s": 0.5}) as daemon:
        daemon.collector = RunCollector(validate=True)
        daemon.runner.RE.subscribe(daemon.collector)
        yield daemon


def _wait(predicate, timeout=60.0):
    return wait_until(predicate, timeout)


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
        stored = f["entry/instrument/dpc_segments/data"][()]
        # NXtomo's projections: the transmitted intensity, the sum of the four segments
        np.testing.assert_allclose(f["entry/instrument/detector/data"][()], stored.sum(axis=1), rtol=1e-6)
        np.testing.assert_array_equal(stored, np.stack([r.segments for r in world.history]))
        np.testing.assert_allclose(f["entry/sample/rotation_angle"][()], doc_angles)
        assert (f["entry/instrument/detector/image_key"][()] == 0).all()
        roi = f["entry/instrument/xrf_roi/data"][()]
        assert roi.shape == (8, len(daemon.beamline.devices["xrf"].elements), 12, 32)
        spectra = f["entry/instrument/xrf_spectra/data"]
        np.testing.assert_array_equal(spectra[3], world.history[3].spectra)
        assert f["entry/processing/alignment/shift"].shape == (8, 2)
        assert f["entry/processing/reconstruction/phase/data"].shape == (12, 32, 32)
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

    from livetomo.daemon import transport as protocol

    context = zmq.Context.instance()
    push = context.socket(zmq.PUSH)
    push.connect(daemon.config.endpoints.frames)
    push.send_multipart([b"{not json", b"x"])
    push.send_multipart(protocol.encode_start("no-such-run", "s", dtype="float32", shape=(2, 2), device="d"))
    push.send_multipart(protocol.encode_frame("no-such-run", "s", 0, np.full((2, 2), np.nan, np.float32)))
    push.close(linger=1000)
    _wait(lambda: daemon.status()["frames_rejected"] >= 3)
    client = ControlClient(daemon.config.endpoints.control)
    client("queue_add", plan="tilt_series", kwargs={"min_deg": -3, "max_deg": 3, "step_deg": 3})
    client("queue_start")
    _wait(lambda: daemon.pipeline.finished_runs)
    status = client("status")
    assert status["rejected_by_reason"].get("malformed_header", 0) >= 1
    assert status["rejected_by_reason"]["non_finite"] == 1  # refused on its own, whatever its run
    assert status["rejected_by_reason"]["unknown_run"] == 1  # held for a start document, then refused
    assert "no start document announced that run" in " ".join(status["last_errors"])
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
    assert "1 refused, 1 missing (seq 1)" in status["last_errors"][-1]  # its slot is a placeholder
    run = status["finished_runs"][-1]
    assert run["frames_received"] == 4 and not run["complete"]  # 5 planned, 1 rejected: reported, not hidden
    with h5py.File(run["file"], "r") as f:
        keys = f["entry/instrument/detector/image_key"][()]
        assert list(keys) == [0, 3, 0, 0, 0]  # the rejected slot is marked invalid, the rest kept


def _cli(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "livetomo.daemon.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def _serve(tmp_path, **sections):
    """``livetomo serve`` in a subprocess with a YAML configuration confined to ``tmp_path``."""
    config = tmp_path / "daemon.yaml"
    config.write_text(yaml.safe_dump(daemon_overrides(tmp_path, **sections)))
    server = subprocess.Popen(
        [sys.executable, "-m", "livetomo.daemon.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    control = ["--control", daemon_overrides(tmp_path)["endpoints"]["control"]]
    _wait(lambda: _cli("status", *control, "--timeout", "1").returncode == 0, timeout=60)
    return server, control


def test_cli_submits_watches_aborts_and_shuts_the_daemon_down(tmp_path):
    server, control = _serve(tmp_path, processing={"refine": None})
    try:
        args = ["start=0", "stop=180", "num=30", "dwell_s=0.003", "raster_shape=[12, 32]"]
        out = _cli("submit", "xrf_dpc_tomo", *args, "--start", "--watch", *control)
        assert out.returncode == 0, out.stdout + out.stderr
        assert re.search(r"xrf_dpc_tomo \(\w{8}\) completed", out.stdout), out.stdout
        assert re.search(r"run \w{8}: 30/30 frames, complete; .*run-.*\.h5", out.stdout), out.stdout
        assert [line for line in out.stdout.splitlines() if "/30 frames" in line and "[running]" in line]
        refused = _cli("submit", "xrf_dpc_tomo", "angles=[0, 400]", "dwell_s=0.003", *control)
        assert (
            refused.returncode == 1 and "angles[1] = 400 deg is outside the allowed range" in refused.stderr
        )
        for params, message in [
            (
                ["start=0", "stop=180", "num=61.5", "dwell_s=0.003"],
                "xrf_dpc_tomo: num = 61.5 is not an integer",
            ),
            (
                ["start=zero", "stop=180", "num=61", "dwell_s=0.003"],
                "xrf_dpc_tomo: start = 'zero' is not a number",
            ),
            (
                ["start=0", "stop=180", "num=abc", "dwell_s=0.003"],
                "xrf_dpc_tomo: num = 'abc' is not an integer",
            ),
        ]:
            bad = _cli("submit", "xrf_dpc_tomo", *params, *control)
            assert bad.returncode == 1 and message in bad.stderr, bad.stderr
        bad = _cli("submit", "mill_lamella", "recipe=standard_lamelle", *control)
        assert "unknown recipe 'standard_lamelle'; known recipes: standard_lamella" in bad.stderr
        started = _cli("submit", "xrf_dpc_tomo", *args[:2], "num=600", *args[3:], "--start", *control)
        assert started.returncode == 0, started.stderr
        _wait(lambda: json.loads(_cli("status", "--json", *control).stdout)["re_state"] == "running")
        assert "RunEngine running" in _cli("status", *control).stdout
        refused = _cli("shutdown", *control)
        assert refused.returncode == 1 and "abort it first" in refused.stderr
        aborted = _cli("abort", *control)
        assert aborted.returncode == 0 and aborted.stdout.startswith("aborting xrf_dpc_tomo"), aborted.stdout
        _wait(lambda: "aborted" in _cli("history", *control).stdout)
        history = _cli("history", *control).stdout
        assert re.search(r"xrf_dpc_tomo\s+aborted", history) and re.search(
            r"xrf_dpc_tomo\s+completed", history
        )
        assert "xrf_dpc_tomo" in _cli("queue", "list", *control).stdout  # aborted: back at the front
        assert "the queue is not running" in _cli("queue", "stop", *control).stdout
        assert _cli("shutdown", *control).stdout.strip() == "shutting down"
        output, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, output
    assert "all received frames are on disk" in output
    files = [p for p in os.listdir(tmp_path / "data") if p.startswith("run-") and p.endswith(".h5")]
    assert len(files) == 2


def test_after_sigkill_the_queue_and_history_come_back_and_the_run_is_marked_interrupted(tmp_path):
    server, control = _serve(tmp_path, processing={"refine": None})
    scan = ["start=0", "stop=180", "num=600", "dwell_s=0.003", "raster_shape=[12, 32]"]
    try:
        first = _cli("submit", "tomo_scan", "angles=[0, 90]", "--json", *control)
        queued = [json.loads(first.stdout)]
        for args in (scan, ["angles=[0, 45]"]):
            out = _cli("submit", "xrf_dpc_tomo" if args is scan else "tomo_scan", *args, "--json", *control)
            queued.append(json.loads(out.stdout))
        assert _cli("queue", "start", *control).returncode == 0
        status = lambda: json.loads(_cli("status", "--json", *control).stdout)  # noqa: E731
        _wait(lambda: (status().get("run") or {}).get("frames_done", 0) >= 5, timeout=120)
        on_disk = status()["run"]["frames_on_disk"]  # what the daemon says a crash now keeps
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    server, control = _serve(tmp_path, processing={"refine": None})
    try:
        history = json.loads(_cli("history", "--json", *control).stdout)
        assert [(h["uid"], h["state"]) for h in history] == [
            (queued[0]["uid"], "completed"),
            (queued[1]["uid"], "interrupted"),
        ]
        interrupted = history[-1]
        assert interrupted["files"] and interrupted["files"][0] in interrupted["error"]
        assert Path(interrupted["files"][0]).exists()
        # the restarted daemon repaired the file: plain readers open it, and it says it was interrupted
        assert "repaired, frames stored:" in interrupted["error"]
        with h5py.File(interrupted["files"][0], "r") as f:
            assert f["entry/instrument/detector/data"].shape[0] >= 1
            note = f["entry/processing/completeness"].attrs
            assert note["interrupted"] and not note["complete"] and note["dpc_segments_frames"] >= 1
            for stream, n in on_disk.items():  # every frame reported on disk is there and readable
                group = f[f"entry/instrument/{stream}"]
                assert (group["image_key"][:n] == 0).all() and np.isfinite(group["data"][:n]).all()
        items = json.loads(_cli("queue", "list", "--json", *control).stdout)
        assert [i["plan"] for i in items] == ["xrf_dpc_tomo", "tomo_scan"]
        assert items[0]["requeued_from"] == queued[1]["uid"] and items[1]["uid"] == queued[2]["uid"]
        assert not json.loads(_cli("status", "--json", *control).stdout)[
            "queue_running"
        ]  # waits for the operator
        assert "interrupted" in _cli("history", *control).stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)


def test_correlative_run_is_registered_and_published(daemon):
    client = ControlClient(daemon.config.endpoints.control)
    client("queue_add", plan="correlative_acquire", kwargs={})
    client("queue_start")
    _wait(lambda: daemon.pipeline.finished_runs)
    summary = daemon.pipeline.finished_runs[-1]
    assert summary["complete"] and summary["error"] is None, summary
    fused = [p for p in summary["pictures"] if "correlation" in p and p.endswith(".png")]
    assert fused and all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in fused)
    state = daemon.monitor.snapshot()["correlative"]
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


def test_after_sigkill_during_run_end_the_file_is_repaired_and_marked(tmp_path):
    # refinement bounded by time only: the run-end work lasts long enough to be killed in
    slow_end = {"refine": "tv", "refine_iterations": 10_000, "refine_seconds": 30.0}
    server, control = _serve(tmp_path, processing=slow_end)
    try:
        scan = _cli("submit", "xrf_dpc_tomo", "start=0", "stop=180", "num=21", "dwell_s=0.003", "raster_shape=[12, 32]",
                    "--start", "--json", *control)  # fmt: skip
        item = json.loads(scan.stdout)
        client = ControlClient(control[1])  # polls faster than the CLI: the run end lasts seconds
        finishing = _wait(
            lambda: [r for r in client("status")["runs_finishing"] if r["state"] == "finishing"], 120
        )
        assert any(h["uid"] == item["uid"] for h in client("history"))  # the plan itself has ended
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    path = finishing[0]["file"]
    with pytest.raises(OSError):  # left open for writing: plain readers refuse it until it is repaired
        h5py.File(path, "r").close()
    server, control = _serve(tmp_path, processing={"refine": None})
    try:
        history = json.loads(_cli("history", "--json", *control).stdout)
        assert [(h["uid"], h["state"]) for h in history] == [(item["uid"], "completed")]
        repaired = json.loads(_cli("status", "--json", *control).stdout)["files_repaired_at_start"]
        assert len(repaired) == 1 and Path(path).name in repaired[0] and "21 dpc_segments" in repaired[0]
        with h5py.File(path, "r") as f:
            assert (f["entry/instrument/dpc_segments/image_key"][()] == 0).sum() == 21
            note = f["entry/processing/completeness"].attrs
            assert note["interrupted"] and "run-end work" in note["reason"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
