"""``livetomo bench live``: what the operator sees during the scan, scored against the truth.

Each part runs a plan on an in-process daemon (``livetomo serve`` with its defaults, except
the sockets and the storage directory), records every ``frame`` and ``runout`` message the
results stream carries, and scores them against the simulators' truth:

- the first shift published for each frame;
- from the first quarter of the scan on, after every frame, the current estimates of all the
  frames so far (the daemon re-estimates earlier frames as the scan grows);
- the final shifts in the run file;
- the quality flag (share of frames more than 1 px off that were flagged, share of frames
  within 0.3 px that were) and the stated uncertainty (share of errors beyond 3 sigma);
- XRF-DPC: the live phase reconstruction at half of the angles against the true phase, as a
  fraction of what the final one reaches;
- tilt series: the in-plane tilt-axis angle.

Errors are scored modulo what no alignment can observe (vertical constant; horizontal
``c + a cos θ + b sin θ``, the constant being the rotation centre, reported on its own).
"""

from __future__ import annotations

import tempfile
import time

import h5py
import numpy as np

from ..testing import live_alignment_figures, record_run, running_daemon, volume_correlation

XRF_CASES = ((61, 0.183), (121, 0.363))  # angles over 0-180 deg, total dwell (3 ms per angle)
DETAIL_SIGMA = 2.0  # voxels: the reconstructions are compared on their detail (see volume_correlation)


def _file_alignment(path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        seq = f["entry/processing/alignment/seq"][()]
        shift = f["entry/processing/alignment/shift"][()]
    out = np.full((int(seq.max()) + 1, 2), np.nan)
    out[seq] = shift
    return out, seq


def bench_xrf(
    n_angles: int, total_dwell_s: float, *, order: str = "sequential", log=print, overrides=None
) -> dict:
    """XRF-DPC at the daemon's default scan size (``xrf_dpc_tomo`` defaults, simulated beamline)."""
    with tempfile.TemporaryDirectory(prefix="livetomo-bench-live-") as tmp:
        sections = {"web": {"enabled": False}, "beamline": {"microprobe_shape": [32, 64, 64]}}
        for key, value in (overrides or {}).items():
            sections[key] = {**sections.get(key, {}), **value}
        with running_daemon(tmp, **sections) as daemon:
            params = {
                "start": 0,
                "stop": 180,
                "num": n_angles,
                "total_dwell_s": total_dwell_s,
                "order": order,
            }
            t0 = time.perf_counter()
            recording = record_run(daemon, "xrf_dpc_tomo", params, snapshot_at=(n_angles // 2,))
            elapsed = time.perf_counter() - t0
            world = daemon.beamline.truth["microprobe"]
            truth = np.array([r.true_shift_px for r in world.history])
            specimen = world.probe.specimen
            final_shifts, _ = _file_alignment(recording.summary["file"])
            with h5py.File(recording.summary["file"], "r") as f:
                final_phase = f["entry/processing/reconstruction/phase"][()]
                units = f["entry/processing/reconstruction/phase"].attrs.get("units")
    figures = live_alignment_figures(recording, truth, file_shifts=final_shifts)
    # the phase is -(2π/λ)∫δ: its volume correlates with -δ
    true_phase = -np.asarray(specimen.delta, dtype=np.float64)
    half = recording.volumes.get(n_angles // 2, {}).get("phase")
    r_final = volume_correlation(final_phase, true_phase, detail_sigma=DETAIL_SIGMA)
    r_half = volume_correlation(half, true_phase, detail_sigma=DETAIL_SIGMA) if half is not None else np.nan
    figures.update(
        n_angles=n_angles,
        order=order,
        seconds=round(elapsed, 1),
        phase_units=None if units is None else str(units),
        recon_corr_half=r_half,
        recon_corr_final=r_final,
        recon_ratio=r_half / r_final if r_final else float("nan"),
        recon_corr_final_whole=volume_correlation(final_phase, true_phase),
        recon_corr_half_whole=volume_correlation(half, true_phase) if half is not None else np.nan,
    )
    log(
        f"XRF-DPC {n_angles} angles ({order}): first published {figures['first_rms_px']:.3f} px RMS "
        f"(worst {figures['first_max_px']:.2f}), current from the first quarter on "
        f"{figures['current_worst_rms_px']:.3f} px RMS at worst, final {figures['final_rms_px']:.3f} px "
        f"(centre {figures['final_centre_px']:+.3f} px); flagged: {figures['flagged']} frames, "
        f"{_pct(figures['flagged_of_over_1px'])} of {figures['n_over_1px']} > 1 px, "
        f"{_pct(figures['flagged_of_within_0p3px'])} of those within 0.3 px; beyond 3 sigma "
        f"{_pct(figures['beyond_3_sigma'])}; live phase at half the angles: correlation {r_half:.3f} "
        f"= {figures['recon_ratio']:.2f} of the final {r_final:.3f} ({elapsed:.0f} s)"
    )
    return figures


def _pct(x) -> str:
    return "n/a" if x is None else f"{100.0 * x:.1f} %"


def run(*, quick: bool = False, log=print) -> dict:
    figures: dict = {"benchmark": "live", "quick": quick}
    cases = XRF_CASES[:1] if quick else XRF_CASES
    for n_angles, dwell in cases:
        figures[f"xrf_{n_angles}"] = bench_xrf(n_angles, dwell, log=log)
    return figures
