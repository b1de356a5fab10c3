"""``livetomo bench tracking``, XRF-DPC part: does the cell stay inside the raster when the
raster follows the runout livetomo measures? Scored against the simulated microprobe's truth.

121 angles over 180°, a cell of 64 × 64 × 32 voxels of 300 nm (the cell about 34 px across, its
ice 64 px) rastered 72 px wide, on a rotation stage whose horizontal runout (4.5 µm first
harmonic) spans 29 % of that width. Before each scan the raster is centred on the specimen at
the first angle, as an operator does. Untracked and following (an outside RunEngine reading the
daemon's results socket, the raster's centre moved by ``raster_offset``) on the same stage (same
seeds). For each angle the truth gives where the specimen was in the raster; the projection of
the cell's mask says which share of the cell the raster held. The daemon's final shifts are
scored against the same truth, modulo what no alignment can observe (``gauge_errors``).

A raster narrower than the ice (48 px: it cuts the ice at every angle, followed or not) leaves
the alignment's absolute horizontal reference, the DPC phase's centre of mass, biased: followed
0.128 px RMS there (docs/tracking.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np

from ...devices.sim import make_microprobe
from ...plans import xrf_dpc_tomo
from ...processing.runout import gauge_errors
from ...simulators.projector import project
from ...simulators.stages import RotationStageModel
from ..testing import running_daemon
from ._outside import outside_run_engine

SHAPE = (32, 64, 64)
PIXEL_UM = 0.3
RASTER = (32, 72)
STAGE = {"wobble_amplitude_um": (0.9, 4.5), "seed": 7}


def _probe(seed: int, sink):
    stage = RotationStageModel(**STAGE)
    probe = make_microprobe(shape=SHAPE, seed=seed, sink=sink, save_spectra=False, rotation_model=stage)
    # the operator centres the specimen in the raster at the first angle (0°) before the scan
    centre = stage.runout_um(0.0)
    probe.raster_offset.set((float(centre[0]), float(centre[1]))).wait(5)
    return probe


def _plan(probe, n_angles, **follow):
    return xrf_dpc_tomo(
        probe.dpc, probe.xrf, probe.rotation, probe.scan, start=0, stop=180, num=n_angles,
        raster_shape=RASTER, pixel_size_um=PIXEL_UM, dwell_s=0.003, raster_offset=probe.raster_offset,
        **follow,
    )  # fmt: skip


def cell_inside(probe) -> np.ndarray:
    """Share of the cell's projected mask inside the raster at each raster of the run."""
    mask = (probe.world.probe.specimen.elements["K"] > 0).astype(float)
    out = []
    for raster in probe.world.history:
        p = project(mask, raster.angle_deg)
        dy, dx = raster.true_shift_px
        # a raster pixel sees the projection at (its offset from the centre) - shift (_sample)
        v = np.arange(p.shape[0]) - (p.shape[0] - 1) / 2 + dy
        u = np.arange(p.shape[1]) - (p.shape[1] - 1) / 2 + dx
        inside = (np.abs(v)[:, None] <= RASTER[0] / 2) & (np.abs(u)[None, :] <= RASTER[1] / 2)
        out.append(float(p[inside].sum() / p.sum()))
    return np.asarray(out)


def _file_shifts(path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        seq = f["entry/processing/alignment/seq"][()]
        shift = f["entry/processing/alignment/shift"][()]
    out = np.full((int(seq.max()) + 1, 2), np.nan)
    out[seq] = shift
    return out


def _describe(probe):
    named = {"dpc": probe.dpc, "xrf": probe.xrf, "rotation": probe.rotation}

    def dwell():
        return float(probe.scan.read()["scan_dwell"]["value"]), "s"

    return {"dpc": "rotation", "xrf": "rotation"}, {"dpc": dwell, "xrf": dwell}, named


def _final_rms(probe, summary) -> float:
    """The daemon's final shifts against the truth, modulo what no alignment can observe."""
    truth = np.array([r.true_shift_px for r in probe.world.history])
    angles = np.array([r.angle_deg for r in probe.world.history])
    ev, eh, _ = gauge_errors(_file_shifts(summary["file"]), truth, angles, keep_centre=False)
    return float(np.sqrt(np.mean(ev**2 + eh**2)))


def run_xrf(*, quick: bool = False, log=print, seed: int = 0) -> dict:
    n_angles = 31 if quick else 121
    figures: dict = {"angles": n_angles, "raster_px": list(RASTER)}
    with tempfile.TemporaryDirectory(prefix="livetomo-bench-follow-") as tmp:
        sections = {
            "endpoints": {"documents_in": f"ipc://{tmp}/documents_in.sock"},
            "web": {"enabled": False},
        }
        with running_daemon(Path(tmp), **sections) as daemon:  # the daemon's processing defaults
            # the same stage (same seeds) twice: untracked, then following, both processed live
            with outside_run_engine(daemon, lambda sink: _probe(seed, sink), _describe) as outside:
                plain = outside.devices
                outside.RE(_plan(plain, n_angles))
                plain_rms = _final_rms(plain, outside.run_end())
            with outside_run_engine(daemon, lambda sink: _probe(seed, sink), _describe) as outside:
                probe = outside.devices
                outside.RE(_plan(probe, n_angles, follow=True, measurements=outside.live))
                summary = outside.run_end()
                followed_rms = _final_rms(probe, summary)  # (the run file goes with the directory)
                docs = outside.docs
    runout = np.array([r.true_shift_px for r in plain.world.history])
    figures["runout_pp_of_raster_width"] = float(np.ptp(runout[:, 1]) / RASTER[1])
    untracked, followed = cell_inside(plain), cell_inside(probe)
    figures["untracked"] = {
        "cell_inside_min": float(untracked.min()),
        "angles_cut": int((untracked < 0.999).sum()),
        "final_alignment_rms_px": plain_rms,
    }
    statuses = docs.column("track_status", stream="tracking")
    figures["followed"] = {
        "cell_inside_min": float(followed.min()),
        "angles_cut": int((followed < 0.999).sum()),
        "final_alignment_rms_px": followed_rms,
        "corrected": sum(s.startswith("corrected") for s in statuses),
        "untrusted": sum("untrusted" in s for s in statuses),
        "fresh": int(sum(docs.column("live_fresh", stream="tracking"))),
        "offset_range_um": float(np.ptp(docs.column("raster_offset_x"))),
        "run_complete": bool(summary.get("complete")),
    }
    figures["cell_inside"] = {
        "untracked": untracked.round(4).tolist(),
        "followed": followed.round(4).tolist(),
    }
    u, f = figures["untracked"], figures["followed"]
    log(
        f"following XRF-DPC, {n_angles} angles, raster {RASTER[1]} px wide, runout "
        f"{100 * figures['runout_pp_of_raster_width']:.0f} % of it peak to peak: cell inside the raster "
        f"untracked min {100 * u['cell_inside_min']:.1f} % ({u['angles_cut']} angles cut), followed min "
        f"{100 * f['cell_inside_min']:.1f} % ({f['angles_cut']} cut); final alignment "
        f"untracked {u['final_alignment_rms_px']:.3f}, followed {f['final_alignment_rms_px']:.3f} px RMS; "
        f"{f['fresh']}/{len(statuses)} fresh, {f['corrected']} corrected, {f['untrusted']} untrusted"
    )
    return figures
