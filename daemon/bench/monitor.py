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

``SimulatedScan`` also feeds the monitor tests: a scan's messages per frame with the simulator's
true stage runout as the shift trace.
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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq
from scipy import ndimage

from ...simulators.projector import project
from ...simulators.specimen import make_cell
from ...simulators.stages import RotationStageModel
from ..monitor_state import MonitorState
from ..results import ResultsPublisher, encode_image

Sink = Callable[[str, dict], None]
FrameSource = Callable[[Sink, int], list[float]]  # (publish, n_frames) -> per-frame seconds


def _runout_basis(angles_deg: np.ndarray, harmonics: int) -> np.ndarray:
    t = np.deg2rad(angles_deg)
    columns = [np.ones_like(t)]
    for k in range(1, harmonics + 1):
        columns += [np.sin(k * t), np.cos(k * t)]
    return np.stack(columns, axis=1)


def fit_runout(angles_deg, shifts_px, *, harmonics: int = 2) -> np.ndarray:
    """Least-squares sinusoidal runout model of measured shifts.

    Parameters
    ----------
    angles_deg : (n,) angles, degrees.
    shifts_px : (n, 2) measured (dy, dx) shifts, px.
    harmonics : number of harmonics of the rotation frequency in the model.

    Returns
    -------
    coefficients : (1 + 2·harmonics, 2): constant, then (sin kθ, cos kθ) pairs, per axis (dy, dx);
        the constant of dx is the rotation-centre offset.
    """
    basis = _runout_basis(np.asarray(angles_deg, float), harmonics)
    coefficients, *_ = np.linalg.lstsq(basis, np.asarray(shifts_px, float), rcond=None)
    return coefficients


@dataclass
class SimulatedScan:
    """A simulated XRF-DPC rotation scan as the results stream would carry it.

    The shifts are the simulated rotation stage's true specimen displacement (runout, axis
    offset and jitter, ``RotationStageModel``) in pixels; the "measured" shift is that plus a
    small estimation error, except on ``low_quality`` frames, where the measurement failed
    (broad peak, low PSR, ``ok: false``) and is off by several pixels.

    Parameters
    ----------
    n_angles : number of angles over [0, 180) degrees.
    size : projection width, px (the phantom is (size/2, size, size) voxels).
    pixel_nm : projection pixel size, nm.
    low_quality : 0-based indices of frames whose alignment fails.
    channels : channels with projection and slice previews.
    seed : seed of the phantom, the stage jitter and the estimation error.
    """

    n_angles: int = 60
    size: int = 32
    pixel_nm: float = 300.0
    low_quality: tuple[int, ...] = ()
    channels: tuple[str, ...] = ("dpc", "Zn")
    seed: int = 0
    run_uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    t0: float = 1.7e9

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        self.angles = np.linspace(0.0, 180.0, self.n_angles, endpoint=False)
        stage = RotationStageModel(seed=self.seed)
        offsets_um = []
        for angle in self.angles:
            stage.move(float(angle))
            offsets_um.append(stage.true_offset_um)
        self.true_shifts = np.asarray(offsets_um) * 1e3 / self.pixel_nm  # (n, 2) px, (dy, dx)
        self.ok = np.ones(self.n_angles, bool)
        self.ok[list(self.low_quality)] = False
        error = rng.normal(0.0, 0.05, (self.n_angles, 2))
        error[~self.ok] = rng.normal(0.0, 4.0, (int((~self.ok).sum()), 2))
        self.measured_shifts = self.true_shifts + error
        specimen = make_cell((self.size // 2, self.size, self.size), seed=self.seed)
        self.volumes = {"dpc": specimen.delta, **specimen.elements}
        self.dose_per_frame = 0.5  # MGy per angle at the low dwell of dose fractionation
        self.fit_angles = np.linspace(0.0, 180.0, 61)

    def time_of(self, i: int) -> float:
        return self.t0 + 2.0 * (i + 1)  # one angle every 2 s

    def run_start(self) -> dict:
        return {
            "run_uid": self.run_uid,
            "plan_name": "xrf_dpc_tomo",
            "method": "xrf-dpc",
            "frames_planned": self.n_angles,
            "angles_planned": self.angles.tolist(),
            "channels": list(self.channels),
            "dose_per_frame": self.dose_per_frame,
            "dose_units": "MGy",
            "time": self.t0,
        }

    def frame(self, i: int, latency_ms: dict | None = None) -> dict:
        ok = bool(self.ok[i])
        return {
            "run_uid": self.run_uid,
            "stream": "dpc_segments",
            "seq": i + 1,
            "angle": float(self.angles[i]),
            "time": self.time_of(i),
            "frames_done": i + 1,
            "frames_planned": self.n_angles,
            "dose_so_far": self.dose_per_frame * (i + 1),
            "shift": self.measured_shifts[i].tolist(),
            "quality": {
                "fwhm_px": [1.5, 1.6] if ok else [24.0, 26.0],
                "psr": 40.0 if ok else 2.5,
                "uncertainty_px": 0.05 if ok else 4.0,
                "ok": ok,
            },
            "latency_ms": latency_ms or {"ingest": 0.4, "preprocess": 2.0, "align": 5.0, "reconstruct": 12.0},
        }

    def projection_image(self, channel: str, i: int, *, shifted: bool) -> np.ndarray:
        """(nz, size) line integrals of ``channel`` at angle i, displaced by the true shift if ``shifted``."""
        image = project(self.volumes[channel], float(self.angles[i])).astype(np.float32)
        return ndimage.shift(image, self.true_shifts[i], order=1, mode="nearest") if shifted else image

    def projection(self, channel: str, i: int) -> dict:
        return {
            "run_uid": self.run_uid,
            "channel": channel,
            "seq": i + 1,
            "angle": float(self.angles[i]),
            "raw": encode_image(self.projection_image(channel, i, shifted=True)),
            "aligned": encode_image(self.projection_image(channel, i, shifted=False)),
        }

    def runout(self, i: int) -> dict:
        """The fitted runout after frames 0..i (good frames only, as the pipeline would fit)."""
        good = self.ok[: i + 1]
        angles, shifts = self.angles[: i + 1], self.measured_shifts[: i + 1]
        fit, centre = [], None
        if good.sum() >= 5:
            coefficients = fit_runout(angles[good], shifts[good])
            fit = (_runout_basis(self.fit_angles, 2) @ coefficients).tolist()
            centre = float(coefficients[0, 1])
        return {
            "run_uid": self.run_uid,
            "angles": angles.tolist(),
            "shifts": shifts.tolist(),
            "fit_angles": self.fit_angles.tolist() if fit else [],
            "fit": fit,
            "centre_px": centre,
        }

    def slice_images(self, channel: str, i: int) -> dict[str, np.ndarray]:
        """Stand-in reconstruction after i+1 projections: the true volume's central slices plus
        noise that falls as more projections arrive (the pipeline sends its real ones)."""
        volume = np.asarray(self.volumes[channel], np.float32)
        noise = np.random.default_rng(i).normal(0, 1, volume.shape).astype(np.float32)
        volume = volume + noise * float(volume.std()) * 2.0 / np.sqrt(i + 1)
        z, y, x = (n // 2 for n in volume.shape)
        return {"xy": volume[z], "xz": volume[:, y, :], "yz": volume[:, :, x]}

    def slices(self, channel: str, i: int) -> dict:
        images = self.slice_images(channel, i)
        z, y, x = (n // 2 for n in self.volumes[channel].shape)
        return {
            "run_uid": self.run_uid,
            "channel": channel,
            "n_projections": i + 1,
            "point": [z, y, x],
            **{plane: encode_image(image) for plane, image in images.items()},
        }

    def status(self, i: int, *, rejected: int = 0, errors: tuple[str, ...] = ()) -> dict:
        done = i + 1
        elapsed = self.time_of(i) - self.t0
        return {
            "re_state": "running",
            "queue_length": 0,
            "current": {"plan": "xrf_dpc_tomo", "uid": "queue-item-1"},
            "frames_received": done + rejected,
            "frames_rejected": rejected,
            "rejected_by_reason": {"non-finite values": rejected} if rejected else {},
            "stages": {
                name: {"count": done, "mean_latency_ms": ms, "queue_depth": q, "last_error": None}
                for name, ms, q in (("ingest", 0.4, 0), ("align", 5.0, 1), ("reconstruct", 12.0, 2))
            },
            "last_errors": list(errors),
            "run": {
                "uid": self.run_uid,
                "frames_done": done,
                "frames_planned": self.n_angles,
                "elapsed_s": elapsed,
                "eta_s": elapsed / done * (self.n_angles - done),
                "dose_so_far": self.dose_per_frame * done,
            },
        }

    def frame_messages(self, i: int, *, previews: bool = True) -> list[tuple[str, dict]]:
        """Everything the pipeline publishes after frame i, in order."""
        out = [("frame", self.frame(i)), ("runout", self.runout(i))]
        if previews:
            out += [("projection", self.projection(c, i)) for c in self.channels]
            out += [("slices", self.slices(c, i)) for c in self.channels]
        return out

    def run_end(self, file: str | None = None, pictures: list[str] | None = None) -> dict:
        return {
            "run_uid": self.run_uid,
            "exit_status": "success",
            "frames_received": self.n_angles,
            "frames_expected": self.n_angles,
            "complete": True,
            "file": file,
            "pictures": pictures or [],
        }

    def messages(self, *, previews: bool = True):
        """The whole run's messages: run_start, each frame's results and a status, run_end."""
        yield "run_start", self.run_start()
        for i in range(self.n_angles):
            yield from self.frame_messages(i, previews=previews)
            yield "status", self.status(i)
        yield "run_end", self.run_end()


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
    from ..web import follow_results, start_web_server

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

    from ..config import load_config
    from ..server import Daemon

    with tempfile.TemporaryDirectory(prefix="livetomo-bench-monitor-") as tmp:
        endpoints = {k: f"ipc://{tmp}/{k}.sock" for k in ("frames", "documents", "results", "control")}
        config = load_config(
            overrides={
                "endpoints": endpoints,
                "storage_directory": f"{tmp}/data",
                "beamline": {"microprobe_shape": [size // 2, size, size]},
                "web": {"port": 0},
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
    from ..client import ControlClient

    def source(daemon, n_frames: int) -> list[float]:
        done = len(daemon.pipeline.finished_runs)
        latencies: list[float] = []
        original = daemon._publish

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
