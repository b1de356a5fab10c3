"""``livetomo bench tracking``: does the area of interest stay in the field when livetomo's live
measurements steer the tilt series? Scored against the simulated TEM's truth.

One run of ``livetomo serve`` (in-process, its own sockets) and one outside RunEngine, as under
bluesky-queueserver: the RunEngine sends its documents to the daemon's ``documents_in`` and the
K3's frames to its frames endpoint, and the plan's measurements device reads the daemon's
results socket. The same dose-symmetric series (±60°, 3°) on the same simulated stage (same
seeds: the same eucentric error, steady drift and random walk) runs twice, in the same run of
the benchmark: untracked, then tracked (image shift). For each tilt the simulator says where
the area of interest really was on the camera; the figures are its RMS and largest distance from
the field centre, in nm and as a share of the field width (the target: within 5 % at every
tilt with tracking), and what tracking did at each tilt.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ...devices.sim import make_tem
from ...plans import tilt_series
from ...simulators.k3 import make_lamella
from ...simulators.stages import ImageShiftModel, TiltStageModel
from ..testing import running_daemon
from ._outside import outside_run_engine
from .tracking_xrf import run_xrf

# A 192-px K3 field of 4 nm pixels (768 nm wide; the simulated lamella's contrast vanishes at
# coarser pixels) with as many particles per area as the simulator's default 64-px window. The
# stage: 100 nm off the eucentric height, a steady drift of (0.3, 0.6) nm/s over 20 s per tilt
# (537 nm from the first tilt to the last) and a random walk of 1.5 nm per tilt and axis.
SHAPE = (192, 16, 192)
VOXEL_NM = 4.0
LAMELLA = {"n_particles": 360, "n_gold": 27}
STAGE = {"eucentric_error_nm": 100.0, "drift_rate_nm_per_s": (0.3, 0.6), "drift_step_nm": 1.5}
TARGET = 0.05  # of the field width


def _stage(seed: int) -> TiltStageModel:
    return TiltStageModel(**STAGE, seed=seed)


def _devices(seed: int, sink):
    return make_tem(
        shape=SHAPE,
        voxel_size_nm=VOXEL_NM,
        seed=seed,
        sink=sink,
        tilt_model=_stage(seed + 2),
        image_shift_model=ImageShiftModel(),
        **LAMELLA,
    )


def _describe(tem):
    named = {"k3": tem.k3, "tilt": tem.tilt}
    return {"k3": "tilt"}, {"k3": lambda: (float(tem.k3.exposure), "e/A^2")}, named


def _plan(tem, max_deg, step_deg, **tracking):
    return tilt_series(
        tem.k3, tem.tilt, min_deg=-max_deg, max_deg=max_deg, step_deg=step_deg, dose_per_tilt=3.0, **tracking
    )


def _figures(tem, field_nm: float) -> dict:
    p = tem.world.pixel_size_nm
    true = np.array([f.true_shift_px for f in tem.world.history]) * p
    off = np.hypot(*true.T)
    # tracking holds the specimen where the first exposure saw it (the daemon's reference); the
    # drift before that exposure is beyond its reach, so the distance from there is reported too
    from_first = np.hypot(*(true - true[0]).T)
    return {
        "from_first_rms_nm": float(np.sqrt(np.mean(from_first**2))),
        "from_first_max_nm": float(from_first.max()),
        "displacement_nm": off.round(2).tolist(),
        "rms_nm": float(np.sqrt(np.mean(off**2))),
        "max_nm": float(off.max()),
        "rms_of_field": float(np.sqrt(np.mean(off**2)) / field_nm),
        "max_of_field": float(off.max() / field_nm),
        "worst_tilt_index": int(off.argmax()),
    }


def _lamella(seed: int) -> np.ndarray:
    """The potential ``_devices(seed)`` images (make_tem builds it from the same seed)."""
    return make_lamella(SHAPE, voxel_size_nm=VOXEL_NM, seed=seed, **LAMELLA)


def recon_correlation(path, potential: np.ndarray, sigma_px: float = 1.5) -> float:
    """How well the daemon's tomogram of a run (the run file's FBP volume) matches the true
    lamella: the peak of their normalised cross-correlation over every translation (the
    alignment's origin is arbitrary), both low-passed by a Gaussian of ``sigma_px`` voxels (the
    counting noise at 3 e/Å² per tilt). ``potential`` (nz, ny, nx), V, the simulator's
    lamella; the volume (rows, beam, columns) with the tilt axis along the rows."""
    import h5py
    from scipy import ndimage

    with h5py.File(path, "r") as f:
        volume = f["entry/processing/reconstruction/k3/data"][()].astype(np.float64)
    truth = np.zeros_like(volume)
    nz, ny, nx = potential.shape
    z0, y0, x0 = ((a - b) // 2 for a, b in zip(volume.shape, potential.shape, strict=True))
    v_ice = np.median(potential[potential > 0])  # the ice's potential carries no contrast (simulators.k3)
    excess = potential - v_ice * np.clip(potential / v_ice, 0.0, 1.0)
    truth[z0 : z0 + nz, y0 : y0 + ny, x0 : x0 + nx] = excess
    a, b = (ndimage.gaussian_filter(v, sigma_px) for v in (volume, truth))
    a, b = a - a.mean(), b - b.mean()
    xc = np.fft.irfftn(np.fft.rfftn(a) * np.conj(np.fft.rfftn(b)), s=a.shape, axes=(0, 1, 2))
    return float(np.abs(xc).max() / (np.linalg.norm(a) * np.linalg.norm(b)))


def run(*, quick: bool = False, log=print, seed: int = 0) -> dict:
    max_deg, step_deg = (30.0, 3.0) if quick else (60.0, 3.0)
    field_nm = SHAPE[2] * VOXEL_NM
    figures: dict = {
        "benchmark": "tracking",
        "quick": quick,
        "series": f"dose-symmetric ±{max_deg:g}°/{step_deg:g}°",
        "field_nm": field_nm,
        "stage": STAGE,
    }
    sections = {"web": {"enabled": False}}
    with tempfile.TemporaryDirectory(prefix="livetomo-bench-tracking-") as tmp:
        sections["endpoints"] = {"documents_in": f"ipc://{tmp}/documents_in.sock"}
        # the same series on the same stage (same seeds) untracked, then tracked, both
        # reconstructed by the daemon; an outside RunEngine reads its results socket
        with running_daemon(Path(tmp), processing={"refine": None}, **sections) as daemon:
            with outside_run_engine(daemon, lambda sink: _devices(seed, sink), _describe) as outside:
                plain = outside.devices
                outside.RE(_plan(plain, max_deg, step_deg))
                plain_corr = recon_correlation(outside.run_end()["file"], _lamella(seed))
            with outside_run_engine(daemon, lambda sink: _devices(seed, sink), _describe) as outside:
                tem = outside.devices
                outside.RE(
                    _plan(
                        tem,
                        max_deg,
                        step_deg,
                        track=True,
                        measurements=outside.live,
                        image_shift=tem.image_shift,
                    )
                )
                summary = outside.run_end()
                tracked_corr = recon_correlation(summary["file"], _lamella(seed))
                docs = outside.docs
    stage_only = np.array([f.true_shift_px for f in plain.world.history]) * plain.world.pixel_size_nm
    angles = np.deg2rad([f.tilt_deg for f in plain.world.history])
    drift = stage_only - np.stack([0 * angles, STAGE["eucentric_error_nm"] * np.sin(angles)], 1)
    figures["drift_over_series_nm"] = float(np.hypot(*(drift - drift[0]).T).max())
    figures["untracked"] = _figures(plain, field_nm)
    figures["untracked"]["recon_correlation"] = plain_corr
    tracked = _figures(tem, field_nm)
    statuses = docs.column("track_status", stream="tracking")
    tracked["statuses"] = {}
    for s in statuses:
        key = "untrusted" if "flagged untrusted" in s else s.split(",")[0].split(":")[0]
        tracked["statuses"][key] = tracked["statuses"].get(key, 0) + 1
    tracked["fresh"] = int(sum(docs.column("live_fresh", stream="tracking")))
    tracked["image_shift_range_nm"] = float(
        np.ptp(np.hypot(docs.column("image_shift_y"), docs.column("image_shift_x")))
    )
    tracked["run_complete"] = bool(summary.get("complete"))
    tracked["within_target"] = bool(tracked["max_of_field"] <= TARGET)
    tracked["recon_correlation"] = tracked_corr
    figures["tracked"] = tracked
    for name in ("untracked", "tracked"):
        f = figures[name]
        log(
            f"tracking {figures['series']}, field {field_nm:g} nm, drift over the series "
            f"{figures['drift_over_series_nm']:.0f} nm, eucentric error {STAGE['eucentric_error_nm']:g} nm: "
            f"{name}: RMS {f['rms_nm']:.1f} nm ({100 * f['rms_of_field']:.1f} % of the field), "
            f"max {f['max_nm']:.1f} nm ({100 * f['max_of_field']:.1f} %) at tilt #{f['worst_tilt_index']}; "
            f"from the first exposure's position RMS {f['from_first_rms_nm']:.1f} nm, "
            f"max {f['from_first_max_nm']:.1f} nm; tomogram vs the true lamella: correlation "
            f"{f['recon_correlation']:.3f}"
        )
    log(
        f"tracking: {tracked['fresh']}/{len(statuses)} measurements fresh; decisions {tracked['statuses']}; "
        f"within {100 * TARGET:g} % at every tilt: {'yes' if tracked['within_target'] else 'NO'}"
    )
    figures["xrf"] = run_xrf(quick=quick, log=log, seed=seed)
    return figures
