"""Helpers for tests (and benchmarks) of livetomo: RunEngines, daemons on temporary sockets,
a simulated scan's results messages, waiting with a reason.

Public: import them as ``from livetomo.daemon.testing import ...``. They use the public API
of the daemon's packages only.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bluesky import RunEngine
from scipy import ndimage

from ..processing.runout import fit_runout
from ..simulators.projector import project
from ..simulators.specimen import make_cell
from ..simulators.stages import RotationStageModel
from .pipeline import messages

ENDPOINTS = ("frames", "documents", "results", "control")


def make_run_engine() -> RunEngine:
    """A RunEngine that runs in any thread and leaves signal handling to the caller."""
    return RunEngine({}, call_returns_result=True, context_managers=[])


def xrf_dpc_plan(probe, angles=(0.0, 90.0), *, raster_shape=None, dwell_s: float = 0.003):
    """``xrf_dpc_tomo`` over ``angles`` on a simulated microprobe (``devices.sim.make_microprobe``);
    the raster covers the specimen unless ``raster_shape`` is given."""
    from ..plans import xrf_dpc_tomo

    nz, _, nx = probe.world.probe.specimen.shape
    return xrf_dpc_tomo(
        probe.dpc,
        probe.xrf,
        probe.rotation,
        probe.scan,
        list(angles),
        raster_shape=tuple(raster_shape or (nz, nx)),
        pixel_size_um=probe.world.probe.pixel_size_nm / 1000.0,
        dwell_s=dwell_s,
    )


def wait_until(predicate: Callable[[], object], timeout: float = 60.0, what: str = "the condition") -> object:
    """Poll ``predicate`` until it returns something true; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def daemon_overrides(directory: str | Path, **sections) -> dict:
    """Configuration overrides for a daemon confined to ``directory``: ipc endpoints there, its
    storage in ``directory/data``, the page on a free port, a small simulated beamline, no Tiled
    catalogue; then
    ``sections`` (e.g. ``processing={"refine": None}``), merged section by section."""
    directory = Path(directory)
    out = {
        "endpoints": {k: f"ipc://{directory}/{k}.sock" for k in ENDPOINTS},
        "storage_directory": str(directory / "data"),
        "beamline": {"microprobe_shape": [12, 32, 32], "tem_shape": [24, 8, 24]},
        "web": {"port": 0},
        "tiled": {"enabled": False},  # the run catalogue costs seconds at start-up: tests that need it ask
    }
    for key, value in sections.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


@contextlib.contextmanager
def running_daemon(directory: str | Path, **sections) -> Iterator:
    """A started ``Daemon`` confined to ``directory`` (see ``daemon_overrides``), closed afterwards."""
    from .app import Daemon
    from .config import load_config

    daemon = Daemon(load_config(overrides=daemon_overrides(directory, **sections))).start()
    try:
        yield daemon
    finally:
        daemon.close()


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
        return messages.run_start(
            self.run_uid,
            plan_name="xrf_dpc_tomo",
            method="xrf-dpc",
            frames_planned=self.n_angles,
            angles_planned=self.angles.tolist(),
            channels=self.channels,
            dose_per_frame=self.dose_per_frame,
            dose_units="MGy",
            time=self.t0,
        )[1]

    def frame(self, i: int, latency_ms: dict | None = None) -> dict:
        ok = bool(self.ok[i])
        return messages.frame(
            self.run_uid,
            stream="dpc_segments",
            seq=i + 1,
            angle=float(self.angles[i]),
            time=self.time_of(i),
            done=i + 1,
            planned=self.n_angles,
            dose_so_far=self.dose_per_frame * (i + 1),
            shift=self.measured_shifts[i],
            quality={
                "fwhm_px": [1.5, 1.6] if ok else [24.0, 26.0],
                "psr": 40.0 if ok else 2.5,
                "uncertainty_px": 0.05 if ok else 4.0,
                "ok": ok,
            },
            latency_ms=latency_ms or {"ingest": 0.4, "preprocess": 2.0, "align": 5.0, "reconstruct": 12.0},
        )[1]

    def projection_image(self, channel: str, i: int, *, shifted: bool) -> np.ndarray:
        """(nz, size) line integrals of ``channel`` at angle i, displaced by the true shift if ``shifted``."""
        image = project(self.volumes[channel], float(self.angles[i])).astype(np.float32)
        return ndimage.shift(image, self.true_shifts[i], order=1, mode="nearest") if shifted else image

    def projection(self, channel: str, i: int) -> dict:
        return messages.projection(
            self.run_uid,
            channel=channel,
            seq=i + 1,
            angle=float(self.angles[i]),
            raw=self.projection_image(channel, i, shifted=True),
            aligned=self.projection_image(channel, i, shifted=False),
        )[1]

    def runout(self, i: int) -> dict:
        """The fitted runout after frames 0..i (good frames only, as the pipeline would fit)."""
        good = self.ok[: i + 1]
        angles, shifts = self.angles[: i + 1], self.measured_shifts[: i + 1]
        if good.sum() < 5:
            return messages.runout(self.run_uid, angles=angles, shifts=shifts)[1]
        model = fit_runout(angles[good], shifts[good], robust=False)
        return messages.runout(
            self.run_uid,
            angles=angles,
            shifts=shifts,
            fit_angles=self.fit_angles,
            fit=model.evaluate(self.fit_angles),
            centre_px=model.centre_offset,
        )[1]

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
        point = [n // 2 for n in self.volumes[channel].shape]
        return messages.slices(self.run_uid, channel=channel, n_projections=i + 1, point=point, **images)[1]

    def status(self, i: int, *, rejected: int = 0, errors: tuple[str, ...] = ()) -> dict:
        """What the control API's ``status`` says after frame i (its ``run`` part as the pipeline's)."""
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
        return messages.run_end(
            self.run_uid,
            exit_status="success",
            frames_received=self.n_angles,
            frames_expected=self.n_angles,
            complete=True,
            file=file,
            pictures=pictures or [],
        )[1]

    def messages(self, *, previews: bool = True):
        """The whole run's messages: run_start, each frame's results and a status, run_end."""
        yield "run_start", self.run_start()
        for i in range(self.n_angles):
            yield from self.frame_messages(i, previews=previews)
            yield "status", self.status(i)
        yield "run_end", self.run_end()


# ------------------------------------------------------------------------------------ fuzzing

_JUNK_JSON = (
    b"{",
    b"[]",
    b"null",
    b'{"cmd": 1}',
    b'{"cmd": "status"',
    b'{"cmd": "\\ud800"}',
    b"\x00" * 16,
    b"\x93\xa4junk",
)
_READ_ONLY = ("ping", "status", "config", "plans", "devices", "queue_list", "history")
_GUARDED = ("pause", "resume", "abort", "stop", "halt", "queue_move", "queue_remove", "shutdown")


def _junk_value(rng, depth: int = 0):
    kind = rng.integers(0, 9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(0, 2))
    if kind == 2:
        return int(rng.integers(-(10**12), 10**12))
    if kind == 3:
        return float(rng.choice([0.0, -1.0, 1e308, -1e-308, 3.5]))
    if kind == 4:
        return "".join(chr(int(c)) for c in rng.integers(32, 0x2FF, int(rng.integers(0, 12))))
    if kind == 5:
        return "k3"
    if kind == 6:
        return [_junk_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    return {str(_junk_value(rng, 3)): _junk_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))}


def fuzz_control_request(rng) -> list[bytes]:
    """One malformed or harmless control request (message parts), from ``rng`` (numpy Generator).

    Read-only commands with junk arguments, commands that change state only with arguments
    they refuse (never a real pause or abort), junk JSON, several parts, plans with junk
    parameters.
    """
    kind = rng.integers(0, 6)
    if kind == 0:
        return [bytes(rng.choice(list(_JUNK_JSON)))]
    if kind == 1:
        return [b'{"cmd": "status"}', b'{"cmd": "abort"}']  # two parts: refused whole
    if kind == 2:
        body = {
            "cmd": str(rng.choice(_READ_ONLY)),
            **{f"x{i}": _junk_value(rng) for i in range(int(rng.integers(0, 2)))},
        }
    elif kind == 3:
        body = {"cmd": str(rng.choice(_GUARDED)), "uid": [], "position": "a", "defer": [1], "abort": "yes"}
    elif kind == 4:
        plans = ("tomo_scan", "xrf_dpc_tomo", "tilt_series", "mill_lamella", "nope")
        body = {
            "cmd": "queue_add",
            "plan": str(rng.choice(plans)),
            "kwargs": {"num": _junk_value(rng), "start": "x"},
        }
    else:
        body = {"cmd": _junk_value(rng)}
    return [json.dumps(body, default=str).encode()]


def fuzz_frame_message(rng, run: str, stream: str, shape: tuple[int, ...]) -> list[bytes]:
    """One bad frame message aimed at ``run``'s ``stream`` (or at nothing), from ``rng``.

    Never a valid frame in its turn: the frame socket trusts a sender that knows a run's uid
    and its next frame number (CURVE authenticates senders; docs/security.md).
    """
    from .transport import encode_end, encode_frame, encode_start

    good = np.ones(shape, np.float32)
    kind = rng.integers(0, 12)
    if kind == 0:
        return [bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))]
    if kind == 1:
        return [json.dumps({"protocol": "livetomo-frames", "version": 99, "kind": "frame"}).encode()]
    if kind == 2:
        header = json.loads(encode_frame(run, stream, 10**6, good)[0])
        return [json.dumps({**header, "dtype": "float16"}).encode(), good.tobytes()]
    if kind == 3:
        parts = encode_frame(run, stream, int(rng.integers(0, 10**9)), good)
        return [parts[0], bytes(parts[1])[:-4]]  # short by one value
    if kind == 4:
        bad = good.copy()
        bad.flat[0] = np.nan
        return encode_frame(run, stream, int(rng.integers(0, 5)), bad)  # NaN, maybe in its turn
    if kind == 5:
        return encode_frame(run, stream, int(rng.integers(10**6, 10**15)), good)  # far ahead
    if kind == 6:
        return encode_frame(uuid.uuid4().hex, stream, 0, good)  # a run nobody announced
    if kind == 7:
        return encode_frame(run, f"s{int(rng.integers(0, 10**6))}", 0, good)  # a stream never started
    if kind == 8:
        return encode_start(run, stream, device="x", dtype="float32", shape=shape)  # a second start
    if kind == 9:
        return encode_end(uuid.uuid4().hex, stream, int(rng.integers(0, 10**12)))
    if kind == 10:
        return encode_frame(run, stream, 0, np.ones((3, 3), np.float32))  # the wrong shape
    return [*encode_frame(run, stream, 10**7, good), b"extra"]  # one part too many


# ---------------------------------------------------------------------------- live figures


@dataclass
class RunRecording:
    """What a daemon published for one run, as a viewer of the results stream saw it.

    messages : ``(topic, payload)`` of the ``frame`` and ``runout`` messages, in order.
    summary : the run's ``run_end`` summary (file, pictures, completeness).
    volumes : frames done -> {channel: the live reconstruction at that moment (a copy)}.
    projections : frames done -> {channel: what the live reconstruction held then, for an
        iterative one of the same data: ``angles_deg``, ``projections``, ``dx`` (as
        ``IncrementalReconstructor.aligned_projections``), ``volume``, ``shape_yx``,
        ``center_offset``, ``voxel_size`` (copies)}.
    """

    summary: dict
    messages: list
    volumes: dict
    projections: dict = field(default_factory=dict)


def record_run(daemon, plan: str, params: dict, *, snapshot_at=(), timeout: float = 900.0) -> RunRecording:
    """Queue ``plan`` on a started daemon, record what it publishes, wait for the run's end.

    The live reconstruction is copied right after the frame that brings ``frames_done`` to each
    value of ``snapshot_at`` (in the processing thread, between two frames: a consistent volume).
    """
    messages_seen: list = []
    volumes: dict = {}
    held: dict = {}
    publish = daemon.pipeline.publish
    wanted = set(int(n) for n in snapshot_at)

    def spy(topic, payload):
        if topic in ("frame", "runout"):
            messages_seen.append((topic, payload))
        if topic == "frame" and payload.get("frames_done") in wanted:
            run = daemon.pipeline.current
            processor = getattr(run, "processor", None)
            out, data = {}, {}
            for channel, recon in getattr(processor, "live_reconstructions", dict)().items():
                out[channel] = np.array(recon.volume(), dtype=np.float32, copy=True)
                if not recon.n_projections:
                    continue
                angles, projections, dx = recon.aligned_projections()
                data[channel] = {
                    "angles_deg": np.array(angles, dtype=np.float64),
                    "projections": np.array(projections, dtype=np.float32),
                    "dx": np.array(dx, dtype=np.float64),
                    "volume": out[channel],
                    "shape_yx": tuple(recon.shape_yx),
                    "center_offset": float(recon.center_offset),
                    "voxel_size": float(recon.voxel_size),
                }
            volumes[int(payload["frames_done"])] = out
            held[int(payload["frames_done"])] = data
        publish(topic, payload)

    daemon.pipeline.publish = spy
    try:
        done = len(daemon.pipeline.finished_runs)
        daemon.api.queue_add(plan, params)
        daemon.api.handle(b'{"cmd": "queue_start"}')
        summary = wait_until(
            lambda: len(daemon.pipeline.finished_runs) > done and daemon.pipeline.finished_runs[-1],
            timeout,
            f"the end of {plan}",
        )
    finally:
        daemon.pipeline.publish = publish
    return RunRecording(summary, messages_seen, volumes, held)


def to_axis_frame(shifts, axis_deg: float):
    """(dy, dx) image shifts into (along, across) the tilt axis that makes ``axis_deg`` with x.

    ``axis_deg = 90`` (the axis along the image's vertical) leaves them as they are.
    """
    s = np.asarray(shifts, dtype=float).reshape(-1, 2)
    a = np.deg2rad(axis_deg)
    along = s[:, 0] * np.sin(a) + s[:, 1] * np.cos(a)  # component along the axis direction (y up the axis)
    across = -s[:, 0] * np.cos(a) + s[:, 1] * np.sin(a)
    return np.stack([along, across], axis=1)


def live_alignment_figures(
    recording: RunRecording,
    truth,
    *,
    axis_deg: float = 90.0,
    from_fraction: float = 0.25,
    file_shifts=None,
) -> dict:
    """The live-alignment figures of a recorded run against the simulator's truth.

    truth : (n, 2) true displacement (dy, dx) of the specimen per frame, in acquisition order
        (the frames' ``seq``); errors are ``shift + truth``, scored modulo what no alignment
        can observe (:func:`livetomo.processing.runout.gauge_errors`: vertical constant,
        horizontal ``c + a cos θ + b sin θ``; tilt series in the tilt axis's frame).
    file_shifts : the final (seq-ordered) shifts from the run file, if read by the caller.

    Returns first-published RMS and worst error, the worst RMS of the current estimates of
    all frames so far over every results message from ``from_fraction`` of the scan on, the
    final RMS, the centre term of the final errors, the flag figures (share of first-published
    shifts more than 1 px off that were flagged, share of those within 0.3 px that were) and
    the share of errors beyond three times the stated uncertainty (the error's length, in the
    gauge fitted with weights 1/σ²; ``beyond_3_sigma_equal_weights`` in the equal-weight one).
    """
    from ..processing.runout import gauge_errors

    truth = np.asarray(truth, dtype=float).reshape(-1, 2)
    frames = [p for t, p in recording.messages if t == "frame" and p.get("shift") is not None]
    seq = np.array([p["seq"] for p in frames], dtype=int)
    angle = np.array([p["angle"] for p in frames], dtype=float)
    first = np.array([p["shift"] for p in frames], dtype=float)
    quality = [p.get("quality") or {} for p in frames]
    ok = np.array([q.get("ok", True) is not False for q in quality], dtype=bool)
    unc = np.array([np.inf if q.get("uncertainty_px") is None else q["uncertainty_px"] for q in quality])
    n = int(seq.max()) + 1 if seq.size else 0
    angles_by_seq = np.full(n, np.nan)
    angles_by_seq[seq] = angle

    def errors(shifts, seqs, weights=None):
        s = to_axis_frame(shifts, axis_deg)
        t = to_axis_frame(truth[seqs], axis_deg)
        ev, eh, centre = gauge_errors(s, t, angles_by_seq[seqs], keep_centre=False, weights=weights)
        return np.hypot(ev, eh), centre

    e_first, _ = errors(first, seq)
    # The stated uncertainties are judged in the gauge they make most likely (weights 1/σ²):
    # in the equal-weight gauge two frames 1.4 px off (flagged) put a 0.09 px cos θ error on
    # every other frame of an interlaced scan, a quarter of which then exceeded 3σ.
    e_stated, _ = errors(first, seq, weights=1.0 / np.maximum(np.asarray(unc, float), 1e-6) ** 2)
    current_rms, checked = [], 0
    for topic, payload in recording.messages:
        if topic != "runout" or not payload.get("seqs"):
            continue
        seqs = np.asarray(payload["seqs"], dtype=int)
        if seqs.size < max(4, from_fraction * len(truth)):
            continue
        e, _ = errors(np.asarray(payload["shifts"], dtype=float), seqs)
        current_rms.append(float(np.sqrt(np.mean(e**2))))
        checked += 1
    out = {
        "frames": int(seq.size),
        "first_rms_px": float(np.sqrt(np.mean(e_first**2))),
        "first_max_px": float(e_first.max()),
        "current_worst_rms_px": max(current_rms) if current_rms else None,
        "current_checks": checked,
        "flagged_of_over_1px": _share(~ok, e_first > 1.0),
        "flagged_of_within_0p3px": _share(~ok, e_first <= 0.3),
        "n_over_1px": int((e_first > 1.0).sum()),
        "beyond_3_sigma": float(np.mean(e_stated > 3.0 * unc)),
        "beyond_3_sigma_equal_weights": float(np.mean(e_first > 3.0 * unc)),
        "flagged": int((~ok).sum()),
    }
    if file_shifts is not None:
        final = np.asarray(file_shifts, dtype=float).reshape(-1, 2)
        e_final, centre = errors(final, np.arange(len(final)))
        out["final_rms_px"] = float(np.sqrt(np.mean(e_final**2)))
        out["final_max_px"] = float(e_final.max())
        s = to_axis_frame(final, axis_deg)
        t = to_axis_frame(truth[: len(final)], axis_deg)
        out["final_centre_px"] = float(gauge_errors(s, t, angles_by_seq[: len(final)], keep_centre=True)[2])
    return out


def _share(flag, among) -> float | None:
    among = np.asarray(among, dtype=bool)
    return float(np.mean(np.asarray(flag)[among])) if among.any() else None


def volume_correlation(volume, truth, *, radius_fraction: float = 0.8, detail_sigma: float = 0.0) -> float:
    """Pearson correlation of a reconstruction with the true volume, after the best translation.

    Both are (z, y, x); the truth is cropped or padded (edge values) to the reconstruction's
    shape about its centre, the integer translation that maximises their cross-correlation is
    applied (alignment fixes the specimen's position only up to a translation), and the
    correlation is taken inside a cylinder of ``radius_fraction`` of the slice radius. With
    ``detail_sigma`` both lose their Gaussian-smoothed part first (the detail only: a field
    that cuts the specimen leaves slowly varying errors in any reconstruction).
    """
    vol = np.asarray(volume, dtype=np.float64)
    ref = _fit_shape(np.asarray(truth, dtype=np.float64), vol.shape)
    if detail_sigma > 0:
        vol = vol - ndimage.gaussian_filter(vol, detail_sigma)
        ref = ref - ndimage.gaussian_filter(ref, detail_sigma)
    a = vol - vol.mean()
    b = ref - ref.mean()
    corr = np.fft.irfftn(np.conj(np.fft.rfftn(b)) * np.fft.rfftn(a), s=a.shape, axes=tuple(range(a.ndim)))
    shift = np.unravel_index(int(np.argmax(corr)), corr.shape)
    shift = [s - n if s > n // 2 else s for s, n in zip(shift, corr.shape, strict=True)]
    aligned = np.roll(vol, [-s for s in shift], axis=(0, 1, 2))
    nz, ny, nx = vol.shape
    yy, xx = np.mgrid[:ny, :nx]
    mask = np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2) <= radius_fraction * min(ny, nx) / 2
    margin = max(abs(shift[0]), 1)
    x = aligned[margin : nz - margin][:, mask]
    y = ref[margin : nz - margin][:, mask]
    return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])


def _fit_shape(volume, shape):
    out = volume
    for axis, n in enumerate(shape):
        m = out.shape[axis]
        if m > n:
            start = (m - n) // 2
            out = np.take(out, np.arange(start, start + n), axis=axis)
        elif m < n:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((n - m) // 2, n - m - (n - m) // 2)
            out = np.pad(out, pad, mode="edge")
    return out
