"""``livetomo bench monitor``: what live monitoring adds to the per-frame time, with and without viewers.

The issue's target: two viewers connected add less than 10 % to the daemon's per-frame time.
Both sides run the same scan through the same chain — per-frame processing, results published
on the ZeroMQ PUB socket (``ResultsPublisher``), followed into a ``MonitorState`` by
``follow_results`` and served by the web page's server — once with no viewer and once with two
viewers (separate processes reading the server-sent events, as two browsers would). Repeats are
interleaved; the figures are medians of the per-frame times. Accuracy: each viewer must have
received every frame of its scan (and the final run_end with the right count).

The benchmark runs the real daemon (``daemon_chain`` starts ``livetomo serve`` in-process and
yields its page URL; ``daemon_frames`` runs an ``xrf_dpc_tomo`` scan through its queue and
returns the pipeline's per-frame times). ``local_chain`` with ``simulated_frames`` measures the
monitoring chain alone, with stand-in processing.

``SimulatedScan`` (``livetomo.daemon.testing``) is a scan's messages per frame with the
simulator's true stage runout as the shift trace.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import numpy as np
import zmq

from ..monitoring import MonitorState
from ..testing import SimulatedScan
from ..transport import ResultsPublisher

Sink = Callable[[str, dict], None]
FrameSource = Callable[[Sink, int], list[float]]  # (publish, n_frames) -> per-frame seconds


# -- the benchmark ---------------------------------------------------------------------------


def _stand_in_processing(scan: SimulatedScan, i: int, volume: np.ndarray) -> None:
    """Roughly the daemon's per-frame arithmetic: align (FFT cross-correlation of the raw against
    the previous aligned projection) and add one back-projection to the running reconstruction."""
    raw = scan.projection_image("dpc", i, shifted=True)
    reference = scan.projection_image("dpc", max(i - 1, 0), shifted=False)
    product = np.fft.rfft2(raw) * np.conj(np.fft.rfft2(reference))
    np.unravel_index(np.argmax(np.fft.irfft2(product, s=raw.shape)), raw.shape)
    t = np.deg2rad(scan.angles[i])
    n = volume.shape[1]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    u = np.clip(np.rint(xx * np.cos(t) + yy * np.sin(t) + (n - 1) / 2).astype(int), 0, n - 1)
    volume += raw[:, u]


def simulated_frames(scan: SimulatedScan) -> FrameSource:
    """The frame source: a simulated scan, stand-in processing, results published per frame."""

    def source(publish: Sink, n_frames: int) -> list[float]:
        volume = np.zeros((scan.size // 2, scan.size, scan.size), np.float32)
        publish("run_start", scan.run_start())
        times = []
        for i in range(n_frames):
            t0 = time.perf_counter()
            _stand_in_processing(scan, i, volume)
            for topic, payload in scan.frame_messages(i):
                publish(topic, payload)
            times.append(time.perf_counter() - t0)
        publish("run_end", scan.run_end())
        return times

    return source


_VIEWER = textwrap.dedent(
    """
    import json, sys, httpx
    count = 0  # frames of the run that started after the viewer connected
    with httpx.Client(timeout=httpx.Timeout(5.0, read=120.0)) as client:
        with client.stream("GET", sys.argv[1]) as response:
            print("connected", flush=True)
            event = None
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                    continue
                if not line.startswith("data:"):
                    continue
                delta = json.loads(line[5:])
                if event == "snapshot" or "reset" in delta:
                    count = len(delta.get("reset", delta)["frames"])
                    continue
                count += len(delta.get("append", {}).get("frames", []))
                run = delta.get("set", {}).get("run")
                if run and run.get("ended"):
                    result = {"frames": count, "frames_received": run["frames_received"]}
                    print(json.dumps(result), flush=True)
                    break
    """
)


def _start_viewers(url: str, n: int) -> list[subprocess.Popen]:
    viewers = [
        subprocess.Popen(
            [sys.executable, "-c", _VIEWER, url],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for _ in range(n)
    ]
    for viewer in viewers:  # the scan starts once every viewer holds its stream
        if viewer.stdout.readline().strip() != "connected":
            raise RuntimeError("a benchmark viewer could not connect to the monitor page")
    return viewers


def _finish_viewers(viewers: list[subprocess.Popen]) -> list[dict]:
    out = []
    for viewer in viewers:
        try:
            line, _ = viewer.communicate(timeout=60)
            out.append(json.loads(line.strip().splitlines()[-1]))
        except (subprocess.TimeoutExpired, IndexError, json.JSONDecodeError):
            viewer.kill()
            out.append({"frames": 0, "frames_received": None})
    return out


@contextlib.contextmanager
def local_chain():
    """The daemon's monitoring chain in this process: PUB socket, follower, state, page server.

    Yields ``(publish, page_url)``. For the real daemon, a chain that starts ``livetomo serve``
    and yields ``(None, its page URL)`` takes its place.
    """
    from ..monitoring import follow_results, start_web_server

    context = zmq.Context()
    publisher = ResultsPublisher("tcp://127.0.0.1:*", context)
    state = MonitorState()
    follower = follow_results(state, publisher.endpoint, context=context)
    server = start_web_server(state, host="127.0.0.1", port=0)
    for _ in range(500):  # zmq's slow joiner: the follower must read before the first run_start
        publisher.publish("hello", {})
        if follower.received:
            break
        time.sleep(0.01)
    try:
        yield publisher.publish, server.url
    finally:
        server.stop()
        follower.stop()
        publisher.close()
        context.term()


def measure(
    source_for: Callable[[], FrameSource], n_frames: int, repeats: int, *, chain=local_chain, log=print
) -> dict:
    """Per-frame medians of a frame source with 0 and 2 viewers, interleaved, and viewer counts."""
    per_frame: dict[str, list[float]] = {"no_viewers": [], "two_viewers": []}
    cpu_per_frame: dict[str, list[float]] = {"no_viewers": [], "two_viewers": []}
    viewer_cpu_s: list[float] = []
    received: list[dict] = []
    with chain() as (publish, page_url):
        for repeat in range(repeats + 1):  # the first round warms up and is not counted
            for mode in per_frame:
                source = source_for()
                viewers = _start_viewers(page_url + "events", 2) if mode == "two_viewers" else []
                children0, cpu0 = _children_cpu_s(), time.process_time()
                times = source(publish, n_frames)
                cpu = time.process_time() - cpu0  # every thread of this process: follower, web server
                counts = _finish_viewers(viewers)
                if repeat:
                    per_frame[mode].append(statistics.median(times))
                    cpu_per_frame[mode].append(cpu / n_frames)
                    received += counts
                    if viewers:
                        viewer_cpu_s.append(_children_cpu_s() - children0)
                log(f"  round {repeat} {mode:12s} median {statistics.median(times) * 1e3:7.2f} ms/frame")
    return {
        "per_frame": per_frame,
        "cpu_per_frame": cpu_per_frame,
        "viewers": received,
        "viewer_cpu_s": viewer_cpu_s,
    }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def frame_source(n_frames: int, size: int) -> FrameSource:
    """A simulated frame source (stand-in processing), for measuring the chain without the daemon."""
    return simulated_frames(SimulatedScan(n_angles=n_frames, size=size, seed=1))


@contextlib.contextmanager
def daemon_chain(size: int = 64):
    """``livetomo serve`` in this process (temporary ipc endpoints, page on a free port).

    Yields ``(daemon, page_url)``; ``daemon_frames`` runs scans on it.
    """
    import tempfile

    from ..app import Daemon
    from ..config import load_config

    with tempfile.TemporaryDirectory(prefix="livetomo-bench-monitor-") as tmp:
        endpoints = {k: f"ipc://{tmp}/{k}.sock" for k in ("frames", "documents", "results", "control")}
        config = load_config(
            overrides={
                "endpoints": endpoints,
                "storage_directory": f"{tmp}/data",
                "beamline": {"microprobe_shape": [size // 2, size, size]},
                "web": {"port": 0},
                "tiled": {"enabled": False},  # measured: the pipeline and the page, nothing else
            }
        )
        daemon = Daemon(config).start()
        try:
            yield daemon, daemon.web.url
        finally:
            daemon.close()


def daemon_frames(size: int) -> FrameSource:
    """A scan of ``n_frames`` angles run by the daemon; per-frame time = the pipeline's time per frame.

    The time of a frame is the sum of its stage latencies as the pipeline measured them (store,
    preprocess, align, reconstruct, publish — publishing includes updating the page's state), so
    whatever the page's server takes from the pipeline thread (CPU, the GIL) shows up in it.
    """
    from ..control import ControlClient

    def source(daemon, n_frames: int) -> list[float]:
        done = len(daemon.pipeline.finished_runs)
        latencies: list[float] = []
        original = daemon.publish

        def tap(topic, payload):
            if topic == "frame":
                latencies.append(sum(payload["latency_ms"].values()) / 1e3)
            original(topic, payload)

        daemon.pipeline.publish = tap
        try:
            client = ControlClient(daemon.config.endpoints.control)
            kwargs = {
                "start": 0,
                "stop": 180,
                "num": n_frames,
                "dwell_s": 0.003,
                "raster_shape": [size // 2, size],
            }
            client("queue_add", plan="xrf_dpc_tomo", kwargs=kwargs)
            client("queue_start")
            while len(daemon.pipeline.finished_runs) == done:
                time.sleep(0.05)
        finally:
            daemon.pipeline.publish = original
        return latencies

    return source


def run(*, quick: bool = False, log=print) -> dict:
    n_frames = 20 if quick else 60
    repeats = 2 if quick else 5
    size = 48 if quick else 64

    log(
        f"monitor: livetomo serve, xrf_dpc_tomo of {n_frames} angles, {size // 2}x{size} px rasters, "
        f"{repeats} interleaved repeats without and with two page viewers"
    )
    result = measure(
        lambda: daemon_frames(size), n_frames, repeats, chain=lambda: daemon_chain(size), log=log
    )
    base = statistics.median(result["per_frame"]["no_viewers"])
    watched = statistics.median(result["per_frame"]["two_viewers"])
    counts = result["viewers"]
    complete = all(c["frames"] == n_frames and c["frames_received"] == n_frames for c in counts)
    figures = {
        "benchmark": "monitor",
        "n_frames": n_frames,
        "image_size_px": [size // 2, size],
        "repeats": repeats,
        "no_viewers_per_frame_ms": base * 1e3,
        "two_viewers_per_frame_ms": watched * 1e3,
        "ratio_two_viewers_over_none": watched / base,
        "overhead_percent": (watched / base - 1.0) * 100.0,
        "target_overhead_percent": 10.0,
        "no_viewers_cpu_per_frame_ms": statistics.median(result["cpu_per_frame"]["no_viewers"]) * 1e3,
        "two_viewers_cpu_per_frame_ms": statistics.median(result["cpu_per_frame"]["two_viewers"]) * 1e3,
        "viewer_processes_cpu_s_per_run": statistics.median(result["viewer_cpu_s"]),
        "viewer_frame_counts": [c["frames"] for c in counts],
        "viewers_saw_every_frame": complete,
    }
    log(
        f"per frame: no viewers {figures['no_viewers_per_frame_ms']:.2f} ms, two viewers "
        f"{figures['two_viewers_per_frame_ms']:.2f} ms, ratio {figures['ratio_two_viewers_over_none']:.3f} "
        f"({figures['overhead_percent']:+.1f} %, target < 10 %)"
    )
    log(
        "daemon-process CPU per frame (all its threads): "
        f"no viewers {figures['no_viewers_cpu_per_frame_ms']:.2f} ms, "
        f"two viewers {figures['two_viewers_cpu_per_frame_ms']:.2f} ms; the two viewer processes used "
        f"{figures['viewer_processes_cpu_s_per_run']:.2f} s CPU per run on this machine"
    )
    log(f"viewers received {figures['viewer_frame_counts']} frames of {n_frames} each: complete={complete}")
    return figures
