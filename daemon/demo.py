"""``livetomo demo``: a short XRF-DPC nanotomography scan on simulated hardware, end to end.

The whole chain runs in this process exactly as ``livetomo serve`` runs it: the plan is
queued on the daemon, its RunEngine drives the simulated microprobe (rotation stage with
runout, raster stage, segmented DPC detector, Vortex XRF), the detectors push their frames
over ZeroMQ, and the pipeline stores them (NXtomo), computes DPC and phase, aligns every
projection as it arrives, reconstructs phase and every element incrementally and writes
the pictures. At the end the demo scores the alignment against the simulator's true runout.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (the run file's compression filter)
import numpy as np

from ..processing.dpc import dpc_from_segments
from ..processing.runout import gauge_errors
from .monitoring import ProgressPrinter


@dataclass
class DemoResult:
    nxtomo: Path
    pictures: list[Path]
    exports: list[Path]
    n_angles: int
    uid: str
    alignment_rms_px: float
    centre_error_px: float
    unaligned_rms_px: float


def _rms(v, h) -> float:
    return float(np.sqrt(np.mean(np.asarray(v) ** 2 + np.asarray(h) ** 2)))


def run_demo(
    out_dir: str | Path = "livetomo_demo",
    *,
    n_angles: int = 61,
    size: int = 48,
    dwell_ms: float = 3.0,
    seed: int = 0,
    quiet: bool = False,
) -> DemoResult:
    """Scan ``n_angles`` angles over 0–180° of a ``size``-pixel-wide cell at ``dwell_ms`` per pixel."""
    from .app import Daemon

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="livetomo-demo-") as sockets:
        config = _demo_config(sockets, out, {"seed": seed, "microprobe_shape": [size // 2, size, size]})
        daemon = Daemon(config).start()
        try:
            if not quiet:
                daemon.runner.RE.subscribe(ProgressPrinter(fields=("rotation", "xrf_Zn", "dpc_mean_sum")))
            daemon.api.queue_add(
                "xrf_dpc_tomo",
                {
                    "start": 0.0,
                    "stop": 180.0,
                    "num": n_angles,
                    "raster_shape": [size // 2, size],
                    "pixel_size_um": daemon.beamline.truth["microprobe"].probe.pixel_size_nm / 1000.0,
                    "total_dwell_s": dwell_ms * 1e-3 * n_angles,
                },
            )
            summary = _run_queue(daemon, poll_s=0.05)
            world = daemon.beamline.truth["microprobe"]
        finally:
            daemon.close()
    if summary["error"]:
        raise RuntimeError(f"processing the scan failed: {summary['error']}")
    return _report(out, summary, world, quiet)


def _run_queue(daemon, *, poll_s: float) -> dict:
    """Start the daemon's queue and wait for the run's end; its ``run_end`` summary. A plan that
    fails before the run ends raises with the queue's error."""
    daemon.runner.start_queue()
    while not daemon.pipeline.finished_runs:
        history = daemon.queue.history
        if history and history[-1].state != "completed":
            raise RuntimeError(f"the scan failed: {history[-1].error}")
        time.sleep(poll_s)
    return daemon.pipeline.finished_runs[-1]


def _report(out: Path, summary: dict, world, quiet: bool) -> DemoResult:
    path = Path(summary["file"])
    with h5py.File(path, "r") as f:
        angles = f["entry/processing/alignment/rotation_angle"][()]
        shifts = f["entry/processing/alignment/shift"][()]
        segments = f["entry/instrument/dpc_segments/data"][()]
        phase = f["entry/processing/reconstruction/phase/data"][()]
    horizontal, _, _ = dpc_from_segments(segments)
    truth = np.array([r.true_shift_px for r in world.history])
    err_v, err_h, centre = gauge_errors(shifts, truth, angles, keep_centre=False)
    raw_v, raw_h, _ = gauge_errors(np.zeros_like(shifts), truth, angles, keep_centre=False)
    # the truth as an aligner can know it: plus the unobservable parts it is free to choose
    expected = -truth + (shifts + truth) - np.stack([err_v, err_h], axis=1)
    picture = _picture(out / f"{summary['run_uid']}_demo.png", angles, horizontal, shifts, expected, phase)
    result = DemoResult(
        nxtomo=path,
        pictures=[*map(Path, summary["pictures"]), picture],
        exports=[Path(p) for p in summary.get("exports", [])],
        n_angles=len(angles),
        uid=summary["run_uid"],
        alignment_rms_px=_rms(err_v, err_h),
        centre_error_px=centre,
        unaligned_rms_px=_rms(raw_v, raw_h),
    )
    if not quiet:
        print(
            f"run {result.uid[:8]}: {summary['frames_received']}/{summary['frames_expected']} frames stored"
        )
        print(
            f"alignment against the simulator's true runout: RMS error {result.alignment_rms_px:.3f} px "
            f"(unaligned {result.unaligned_rms_px:.2f} px), rotation-centre error {centre:+.3f} px"
        )
        print(f"wrote {path}")
        for p in result.pictures:
            print(f"wrote {p}")
        if result.exports:
            print(f"wrote {len(result.exports)} PyXRF files under {result.exports[0].parent}")
    return result


def _picture(path: Path, angles, horizontal, shifts, expected, phase) -> Path:
    from matplotlib.figure import Figure

    by_angle = np.argsort(angles, kind="stable")  # acquisition order is interlaced by default
    angles, horizontal, shifts, expected = (
        np.asarray(a)[by_angle] for a in (angles, horizontal, shifts, expected)
    )
    fig = Figure(figsize=(12, 7), layout="constrained")
    axes = fig.subplots(2, 3)
    row = horizontal.shape[1] // 2
    z = phase.shape[0] // 2
    panels = [
        (horizontal[0], "DPC horizontal, first angle"),
        (horizontal[:, row], f"DPC sinogram, row {row}"),
        (phase[z], f"phase reconstruction, slice {z}"),
        (phase[:, phase.shape[1] // 2], "phase reconstruction, xz"),
    ]
    for ax, (image, title) in zip(axes.flat, panels, strict=False):
        ax.imshow(image, cmap="gray", aspect="auto")
        ax.set_title(title)
    for ax, axis, name in ((axes.flat[4], 1, "horizontal"), (axes.flat[5], 0, "vertical")):
        ax.plot(angles, expected[:, axis], "k-", label="true (−runout, up to the unobservable)")
        ax.plot(angles, shifts[:, axis], "o", ms=3, label="measured")
        ax.set(xlabel="angle (deg)", ylabel="aligning shift (px)", title=f"{name} alignment shift")
        ax.legend()
    fig.savefig(path, dpi=90)
    return path


@dataclass
class PresetDemoResult:
    preset: str
    nxtomo: Path
    uid: str
    frames: int
    complete: bool
    seconds: float  # the whole run, submission to its end (simulated acquisition, processing, run end)
    stage_ms_per_frame: dict
    frame_interval_s: float
    alignment_rms_px: float | None  # against the simulator's truth, up to what no alignment can observe
    unaligned_rms_px: float | None  # the same for zero shifts: what the specimen really moved
    pictures: list[Path]


def _demo_config(sockets: str, out: Path, beamline: dict, extra: dict | None = None):
    """The demo daemon's configuration: ipc sockets in ``sockets``, storage in ``out``, no page and
    no Tiled, the simulated ``beamline`` settings, and ``extra`` sections."""
    from .config import load_config

    endpoints = {k: f"ipc://{sockets}/{k}" for k in ("frames", "documents", "results", "control")}
    return load_config(
        overrides={
            "endpoints": endpoints,
            "storage_directory": str(out),
            "beamline": beamline,
            "web": {"enabled": False},
            "tiled": {"enabled": False},
            **(extra or {}),
        }
    )


def _frames_kwargs(preset, frames: int | None) -> dict:
    """Parameters that make ``preset`` take ``frames`` frames: rotation presets keep their angular
    range (sparser); tilt series keep their step and narrow their range about 0°."""
    if frames is None:
        return {}
    p = preset.parameters
    if "num" in p:
        return {"num": int(frames)}
    half = max(0, (int(frames) - 1) // 2)
    return {"min_deg": -half * p["step_deg"], "max_deg": half * p["step_deg"]}


def _stage_totals(status: dict) -> dict[str, float]:
    return {k: v.get("count", 0) * v.get("mean_latency_ms", 0.0) for k, v in status["stages"].items()}


def run_preset_demo(
    preset_name: str,
    out_dir: str | Path = "livetomo_demo",
    *,
    frames: int | None = None,
    seed: int = 0,
    quiet: bool = False,
    processing: dict | None = None,
) -> PresetDemoResult:
    """A realistic scan preset (``devices.presets``) end to end, as ``livetomo serve`` runs it
    with ``beamline: {preset: NAME}``: the preset submitted by name, every frame stored,
    processed and reconstructed live, the run end; then each stage's time per frame against
    the instrument's frame interval and the alignment against the simulator's truth.
    ``frames`` runs fewer frames (rotation: fewer angles over the same range; tilt series:
    the same step over a narrower range). ``processing``: configuration overrides of that section."""
    from ..devices.presets import get_preset
    from .app import Daemon

    preset = get_preset(preset_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = {"xrf_dpc_tomo": ("rotation", "xrf_Zn"), "tilt_series": ("tilt", "k3_mean"),
              "tomo_scan": ("rotation", "txm_mean")}.get(preset.plan, ())  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="livetomo-demo-") as sockets:
        extra = {"processing": processing} if processing else {}
        config = _demo_config(sockets, out, {"seed": seed, "preset": preset_name}, extra)
        daemon = Daemon(config).start()
        try:
            if not quiet:
                print(f"{preset.name}: {preset.description}")
                daemon.runner.RE.subscribe(ProgressPrinter(fields=fields))
            t0 = time.monotonic()
            daemon.api.queue_add(preset_name, _frames_kwargs(preset, frames))
            summary = _run_queue(daemon, poll_s=0.1)
            seconds = time.monotonic() - t0
            totals = _stage_totals(daemon.api.status())
            truth = daemon.beamline.truth
        finally:
            daemon.close()
    if summary["error"]:
        raise RuntimeError(f"processing the scan failed: {summary['error']}")
    n = max(int(summary["frames_received"]), 1)
    errors = _alignment_error(preset.plan, summary["file"], truth)
    stages = {
        k: totals.get(k, 0.0) / n
        for k in ("ingest", "store", "preprocess", "align", "reconstruct", "publish")
    }
    result = PresetDemoResult(
        preset=preset_name,
        nxtomo=Path(summary["file"]),
        uid=summary["run_uid"],
        frames=int(summary["frames_received"]),
        complete=bool(summary["complete"]),
        seconds=seconds,
        stage_ms_per_frame=stages,
        frame_interval_s=preset.frame_interval_s,
        alignment_rms_px=errors[0],
        unaligned_rms_px=errors[1],
        pictures=[Path(p) for p in summary["pictures"]],
    )
    if not quiet:
        total = sum(stages.values()) / 1e3
        print(
            f"run {result.uid[:8]}: {summary['frames_received']}/{summary['frames_expected']} frames stored "
            f"and "
            f"processed in {seconds:.0f} s (the instrument: {preset.frame_interval_s * n:.0f} s at "
            f"{preset.frame_interval_s:g} s per frame)"
        )
        print(
            "per frame: "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in stages.items())
            + f"; all stages {total:.2f} s = {total / preset.frame_interval_s:.3f} of the frame interval"
        )
        if result.alignment_rms_px is not None:
            print(
                f"alignment against the simulator's truth: RMS error {result.alignment_rms_px:.3f} px "
                f"(unaligned {result.unaligned_rms_px:.2f} px)"
            )
        print(f"wrote {result.nxtomo}")
        for p in result.pictures:
            print(f"wrote {p}")
    return result


def _alignment_error(plan: str, path, truth) -> tuple[float | None, float | None]:
    """RMS (px) of the stored shifts against the simulator's true displacements, less what no
    alignment can observe (a constant; for rotation also the specimen's a·cos θ + b·sin θ), and
    the same for no alignment at all."""
    with h5py.File(path, "r") as f:
        if "entry/processing/alignment/shift" not in f:
            return None, None
        shifts = f["entry/processing/alignment/shift"][()]
        angles = f["entry/processing/alignment/rotation_angle"][()] if plan != "tilt_series" else None
    if plan == "tilt_series":
        true = np.array([fr.true_shift_px for fr in truth["tem"].history])

        def rms(e):
            return float(np.sqrt(np.mean((e - e.mean(axis=0)) ** 2) * 2))

        return rms(shifts + true), rms(true)
    world = truth["microprobe"]
    if plan == "xrf_dpc_tomo":
        true = np.array([r.true_shift_px for r in world.history])
    else:
        true = np.array([s for _, s in world.camera_history])
    if len(true) != len(shifts):
        return None, None
    err_v, err_h, _ = gauge_errors(shifts, true, angles, keep_centre=False)
    raw_v, raw_h, _ = gauge_errors(np.zeros_like(shifts), true, angles, keep_centre=False)
    return _rms(err_v, err_h), _rms(raw_v, raw_h)
