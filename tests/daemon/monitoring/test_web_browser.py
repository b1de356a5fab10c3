"""End-to-end: the monitor page in headless Chromium follows a scan streamed by a fake publisher.

The publisher uses the real results encoding and ZeroMQ socket; the page is served by the real
server. Skipped when Chromium (Debian's ``chromium``; ``LIVETOMO_CHROMIUM`` names another binary)
or Playwright for Python is missing. The screenshot is saved under ``LIVETOMO_TEST_ARTIFACTS``
(a directory) when set, else under pytest's tmp dir; its path is printed.
"""

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import zmq

from livetomo.daemon.monitoring import MonitorState, follow_results, start_web_server
from livetomo.daemon.testing import SimulatedScan
from livetomo.daemon.transport import ResultsPublisher

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
CHROMIUM = os.environ.get("LIVETOMO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
N_ANGLES = 30


@pytest.fixture
def artifacts(tmp_path_factory) -> Path:
    directory = os.environ.get("LIVETOMO_TEST_ARTIFACTS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        return Path(directory)
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture
def live():
    context = zmq.Context()
    publisher = ResultsPublisher("tcp://127.0.0.1:*", context)
    state = MonitorState()
    follower = follow_results(state, publisher.endpoint, context=context)
    server = start_web_server(state, port=0)
    for _ in range(300):  # zmq's slow joiner: probe until the follower reads
        publisher.publish("hello", {})
        if follower.received:
            break
        time.sleep(0.01)
    yield state, publisher, server
    server.stop()
    follower.stop()
    publisher.close()
    context.term()


@pytest.fixture
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        yield page
        browser.close()


def _stream(publisher, scan, seconds_per_frame):
    publisher.publish("run_start", scan.run_start())
    for i in range(scan.n_angles):
        for topic, payload in scan.frame_messages(i):
            publisher.publish(topic, payload)
        publisher.publish("status", scan.status(i))
        time.sleep(seconds_per_frame)
    publisher.publish("run_end", scan.run_end(file="/data/livetomo/run.h5"))


def _readings(page):
    return page.evaluate(
        """() => ({
            frames: document.getElementById("progress-frames").textContent,
            trace: +document.getElementById("trace").dataset.points,
            slices: +(document.getElementById("slice-xy").dataset.nprojections || 0),
        })"""
    )


def test_page_follows_a_streamed_scan(live, page, artifacts):
    state, publisher, server = live
    scan = SimulatedScan(n_angles=N_ANGLES, size=48, low_quality=(9, 20), seed=7)
    page.goto(server.url)
    page.wait_for_function("document.getElementById('connection').textContent === 'live'")
    streamer = threading.Thread(target=_stream, args=(publisher, scan, 0.08), daemon=True)
    streamer.start()
    seen = []
    while streamer.is_alive():
        seen.append(_readings(page))
        time.sleep(0.1)
    streamer.join()
    page.wait_for_function(
        "document.getElementById('run-end-text').textContent.includes('complete')", timeout=15000
    )
    final = _readings(page)
    # progress, the shift trace and the slices updated while the scan ran, never going back
    done = [int(r["frames"].split("/")[0]) for r in seen]
    assert len({d for d in done if 0 < d < N_ANGLES}) >= 3 and done == sorted(done)
    traces = [r["trace"] for r in seen]
    assert len({t for t in traces if 0 < t < 2 * N_ANGLES}) >= 3 and traces == sorted(traces)
    slices = [r["slices"] for r in seen]
    assert len({s for s in slices if 0 < s < N_ANGLES}) >= 3 and slices == sorted(slices)
    # the final counts match the run: every frame on both traces and in the quality plot
    assert final == {"frames": f"{N_ANGLES} / {N_ANGLES}", "trace": 2 * N_ANGLES, "slices": N_ANGLES}
    assert page.get_attribute("#quality", "data-points") == str(4 * N_ANGLES)  # FWHM y, x, PSR, uncertainty
    assert page.text_content("#run-end-text") == (
        f"ended: completed; {N_ANGLES} of {N_ANGLES} frames received (complete)"
    )
    assert page.text_content("#progress-low") == "2"
    assert "frames 10, 21" in page.text_content("#quality-caption")
    # another channel's previews
    page.select_option("#channel", "Zn")
    page.wait_for_function("document.getElementById('projection-caption').textContent.startsWith('Zn')")
    shot = artifacts / "monitor_page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"monitor page screenshot: {shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.errors == []
    assert state.snapshot()["progress"]["frames_done"] == N_ANGLES


@pytest.fixture
def daemon(tmp_path):
    from livetomo.daemon.app import Daemon
    from livetomo.daemon.config import load_config

    endpoints = {k: f"ipc://{tmp_path}/{k}.sock" for k in ("frames", "documents", "results", "control")}
    config = load_config(
        overrides={
            "endpoints": endpoints,
            "storage_directory": str(tmp_path / "data"),
            "beamline": {"microprobe_shape": [16, 40, 40]},
            "web": {"port": 0},
        }
    )
    daemon = Daemon(config).start()
    yield daemon
    daemon.close()


def test_page_follows_a_scan_run_by_the_daemon(daemon, page, artifacts):
    """The real chain: queue -> RunEngine -> simulated detectors -> ZeroMQ -> pipeline -> page."""
    from livetomo.daemon.control import ControlClient

    n_angles = 40
    page.goto(daemon.web.url)
    page.wait_for_function("document.getElementById('connection').textContent === 'live'")
    client = ControlClient(daemon.config.endpoints.control)
    client(
        "queue_add",
        plan="xrf_dpc_tomo",
        kwargs={"start": 0, "stop": 180, "num": n_angles, "dwell_s": 0.003, "raster_shape": [16, 40]},
    )
    client("queue_start")
    seen, states = [], []
    t0 = time.monotonic()
    paused = False
    while not daemon.pipeline.finished_runs and time.monotonic() - t0 < 120:
        seen.append(_readings(page))
        states.append(page.text_content("#run-state"))
        if not paused and seen[-1]["frames"].strip()[:2] not in ("", "0 ", "–"):
            client("pause")  # an operator pauses: the page says so, then resumes
            page.wait_for_function(
                "document.getElementById('run-state').textContent === 'paused'", timeout=15000
            )
            states.append(page.text_content("#run-state"))
            client("resume")
            paused = True
        time.sleep(0.05)
    summary = daemon.pipeline.finished_runs[-1]
    page.wait_for_function(
        "document.getElementById('run-end-text').textContent.includes('complete')", timeout=15000
    )
    final = _readings(page)
    done = [int(r["frames"].split("/")[0]) for r in seen if r["frames"].strip()[:1].isdigit()]
    assert len({d for d in done if 0 < d < n_angles}) >= 3 and done == sorted(done), seen
    traces = [r["trace"] for r in seen]
    assert len({t for t in traces if 0 < t < 2 * n_angles}) >= 3, seen
    slices = [r["slices"] for r in seen]
    assert len({s for s in slices if 0 < s < n_angles}) >= 3, seen
    # running, paused, running again, then run-end work shown as such, then the end
    assert "running" in states and "paused" in states
    assert states.index("running", states.index("paused")) > states.index("paused")
    assert [s for s in states if s.startswith("finishing: ")], (
        states
    )  # e.g. "finishing: refining ... (tv) 10/30"
    # the final counts on the page are the run's
    assert summary["frames_received"] == n_angles and summary["complete"]
    assert final == {"frames": f"{n_angles} / {n_angles}", "trace": 2 * n_angles, "slices": n_angles}
    assert (
        page.text_content("#run-end-text")
        == f"ended: completed; {n_angles} of {n_angles} frames received (complete)"
    )
    shot = artifacts / "monitor_page_daemon.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"monitor page screenshot (real daemon): {shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.errors == []


def test_operator_steers_the_slice_view_and_the_daemon_computes_it(daemon, page, artifacts):
    """The page asks the daemon for a slice where the operator puts it; the image follows."""
    import h5py
    import httpx
    import numpy as np

    from livetomo.daemon.transport import decode_image

    summary = _run_xrf(daemon, n_angles=24)
    page.goto(daemon.web.url + "#channel=phase")
    page.wait_for_function(
        "document.getElementById('viewer-slice').dataset.index !== undefined", timeout=20000
    )
    before = page.eval_on_selector("#viewer-slice", "c => [c.dataset.index, c.dataset.checksum]")
    size = int(page.eval_on_selector("#viewer-index", "e => e.max")) + 1
    target = (int(before[0]) + size // 3) % size
    page.eval_on_selector(  # the operator drags the position slider
        "#viewer-index", "(e, v) => { e.value = String(v); e.dispatchEvent(new Event('input')); }", target
    )
    page.wait_for_function(
        f"document.getElementById('viewer-slice').dataset.index === '{target}'", timeout=20000
    )
    after = page.eval_on_selector("#viewer-slice", "c => c.dataset.checksum")
    assert after != before[1]  # another slice is shown
    # ... and it is the daemon's reconstruction at that position (the run's final volume)
    view = httpx.get(
        f"{daemon.web.url}view/slice", params={"channel": "phase", "axis": "xy", "index": target}
    )
    assert view.status_code == 200
    with h5py.File(summary["file"], "r") as f:
        volume = f["entry/processing/reconstruction/phase/data"][()]
    np.testing.assert_allclose(decode_image(view.json()["image"]), volume[target], rtol=1e-4, atol=1e-6)
    # another orientation, manual contrast limits, a colour bar and a sinogram
    page.select_option("#viewer-axis", "xz")
    page.wait_for_function("document.getElementById('viewer-slice').dataset.axis === 'xz'", timeout=20000)
    shown = page.eval_on_selector("#viewer-slice", "c => c.dataset.checksum")
    for field, value in (("#viewer-min", "-0.01"), ("#viewer-max", "0.02")):  # the operator types limits
        page.eval_on_selector(field, f"e => {{ e.value = '{value}'; e.dispatchEvent(new Event('input')); }}")
    assert page.eval_on_selector("#viewer-auto", "e => e.checked") is False
    assert page.eval_on_selector("#viewer-colorbar", "c => c.dataset.range") == "-0.01,0.02"
    assert page.eval_on_selector("#viewer-slice", "c => c.dataset.checksum") != shown
    assert page.eval_on_selector("#viewer-sinogram", "c => c.dataset.row") is not None
    assert "rad/voxel" in page.text_content("#viewer-caption")
    # bad requests are refused with the reason, and nothing changes
    bad = httpx.get(f"{daemon.web.url}view/slice", params={"channel": "phase", "axis": "ab"})
    assert bad.status_code == 400 and "axis" in bad.json()["error"]
    far = httpx.get(f"{daemon.web.url}view/slice", params={"channel": "phase", "index": 99999})
    assert far.status_code == 400 and "outside" in far.json()["error"]
    page.screenshot(path=str(artifacts / "monitor_page_viewer.png"), full_page=True)
    assert page.errors == []


def _run_xrf(daemon, n_angles: int) -> dict:
    from livetomo.daemon.control import ControlClient

    client = ControlClient(daemon.config.endpoints.control)
    client(
        "queue_add",
        plan="xrf_dpc_tomo",
        kwargs={"start": 0, "stop": 180, "num": n_angles, "dwell_s": 0.003, "raster_shape": [16, 40]},
    )
    client("queue_start")
    t0 = time.monotonic()
    while not daemon.pipeline.finished_runs and time.monotonic() - t0 < 120:
        time.sleep(0.1)
    return daemon.pipeline.finished_runs[-1]
