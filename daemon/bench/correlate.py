"""``livetomo bench correlate``: correlative registration against ground truth, with naive peers.

Fiducial route, at the source's conditions (200 nm FluoSpheres; SXT pixels 10-30 nm, wide-field
FM pixels 100-200 nm; FM grid rotated 7°, per-axis scale jitter 2 %, offset 1.5 um), on
simulated scenes without and with 20 % spurious or missing beads:

* livetomo: LoG detection, Gaussian sub-pixel fit, similar triangles + consensus (RANSAC)
  pairing, affine least squares;
* peer ("source-style"): the source's recipe without consensus: quadratic peak fit, pairs
  voted by similar triangles, plain least squares on every voted pair.

Both get the same detections; errors against the truth are radial RMS in nm: σ_X and σ_F over
the paired beads, σ_A over the SXT field (the transform's own error), σ_T = √(σ_X² + σ_F² + σ_A²).
A scene fails when σ_T,true > 60 nm or the registration raises.

Intensity route, on stacks shaped like the source's (LM 1024 x 1024 x 16 at 0.22/0.6 um, EM
666 x 903 x 247 at 0.14/0.05 um) with a known 3D affine: livetomo (NCC pre-alignment + MI rigid
on structure density + MI affine on LoG) against SimpleITK MI without pre-alignment (stacks'
centres overlaid, same stages) and against the source's histogram-descriptor pre-alignment.
Registration error: RMS over the EM ROI (where LM covers it) of |T_est(p) - T_true(p)|, in um,
EM pixels (0.14 um) and LM pixels (0.22 um).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from ...processing.correlate import (
    CorrelationError,
    apply_transform,
    detect_beads,
    estimate_transform,
    localize_beads,
    register_fiducial,
    register_stacks,
)
from ...processing.correlate.match import _invariants, _triangles
from ...simulators.correlative import make_correlative_scene
from ...simulators.correlative3d import make_correlative_stacks
from .timing import interleaved_medians

TARGET_SIGMA_T_NM = 60.0
TARGET_INTENSITY_PX = 3.0
TARGET_INTENSITY_S = 30.0
SCENARIOS = {"clean": (0.0, 0.0), "spurious20": (0.2, 0.0), "missing20": (0.0, 0.2), "both20": (0.2, 0.2)}
PIXELS = ((10.0, 100.0), (20.0, 150.0), (30.0, 200.0))  # (SXT, FM) nm
SMALL_STACKS = {
    "lm_shape": (16, 384, 384),
    "lm_spacing_um": (0.22, 0.22, 0.6),
    "em_shape": (48, 200, 200),
    "em_spacing_um": (0.3, 0.3, 0.2),
}


# --------------------------------------------------------------------------- fiducial


def _scene(sxt_px, fm_px, spurious, missing, seed):
    return make_correlative_scene(
        sxt_pixel_nm=sxt_px,
        fm_pixel_nm=fm_px,
        n_beads=12,
        scale_jitter=0.02,
        offset_um=(1.3, -0.8),
        spurious_fraction=spurious,
        missing_fraction=missing,
        seed=seed,
    )


def _locate(image, px, polarity, psf, method):
    det = detect_beads(image, pixel_size_nm=px, polarity=polarity, psf_fwhm_nm=psf)
    loc = localize_beads(image, det.positions, sigma_px=det.sigma_px, polarity=polarity, method=method)
    return loc.positions[loc.ok]


def source_style(scene) -> np.ndarray:
    """The peer: quadratic fits, similar-triangle votes, plain affine least squares on all votes.

    Returns
    -------
    matrix : (3, 3) FM pixel -> SXT pixel.
    """
    f_px = _locate(scene.sxt, scene.sxt_pixel_nm, "absorbing", 30.0, "quadratic")
    m_px = _locate(scene.fm, scene.fm_pixel_nm, "bright", 350.0, "quadratic")
    f_nm, m_nm = f_px * scene.sxt_pixel_nm, m_px * scene.fm_pixel_nm
    tri_f, inv_f, _ = _invariants(f_nm, _triangles(f_nm), 100.0)
    tri_m, inv_m, _ = _invariants(m_nm, _triangles(m_nm), 100.0)
    from scipy.spatial import cKDTree

    votes = np.zeros((len(f_nm), len(m_nm)))
    for a, row in enumerate(cKDTree(inv_m).query_ball_point(inv_f, 0.03)):
        for b in row:
            votes[tri_f[a], tri_m[b]] += 1.0  # vertex k of one triangle <-> vertex k of the other
    pairs = []
    while votes.max() > 0 and len(pairs) < min(votes.shape):
        i, j = np.unravel_index(np.argmax(votes), votes.shape)
        pairs.append((i, j))
        votes[i, :] = votes[:, j] = 0.0
    pairs = np.array(pairs)
    m_nm_to_f_nm = estimate_transform(m_nm[pairs[:, 1]], f_nm[pairs[:, 0]], model="affine")
    return np.diag([1 / scene.sxt_pixel_nm] * 2 + [1]) @ m_nm_to_f_nm @ np.diag([scene.fm_pixel_nm] * 2 + [1])


def _budget(sx: float, sf: float, sa: float) -> dict:
    """The error budget against the truth, nm: σ_T = √(σ_X² + σ_F² + σ_A²)."""
    return {
        "sigma_x_nm": sx,
        "sigma_f_nm": sf,
        "sigma_a_nm": sa,
        "sigma_t_nm": float(np.sqrt(sx**2 + sf**2 + sa**2)),
    }


def _nearest_error(found_px, true_px, px_nm, limit_px):
    """RMS distance (nm) from each found bead to its true centre (those within ``limit_px``)."""
    if len(found_px) == 0:
        return float("nan")
    d = np.min(np.linalg.norm(found_px[:, None] - true_px[None], axis=2), axis=1)
    d = d[d <= limit_px]
    return float(np.sqrt(np.mean((d * px_nm) ** 2))) if len(d) else float("nan")


def _field_error(scene, matrix_px) -> float:
    """σ_A,true: RMS over the SXT field of |T_est(q) - T_true(q)|, nm."""
    ny, nx = scene.sxt.shape
    yy, xx = np.mgrid[0 : ny : max(ny // 40, 1), 0 : nx : max(nx // 40, 1)]
    p = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
    q = apply_transform(np.linalg.inv(scene.true_fm_to_sxt), p)
    return (
        float(np.sqrt(np.mean(np.sum((apply_transform(matrix_px, q) - p) ** 2, axis=1)))) * scene.sxt_pixel_nm
    )


def _pairing(scene, reg) -> tuple[int, int]:
    """(correct, wrong) pairs of a livetomo registration, against the scene's true pairs."""
    f = reg.fixed.localisation.positions[reg.pairs[:, 0]]
    m = reg.moving.localisation.positions[reg.pairs[:, 1]]
    ti = np.argmin(np.linalg.norm(f[:, None] - scene.beads_sxt_px[None], axis=2), axis=1)
    tj = np.argmin(np.linalg.norm(m[:, None] - scene.beads_fm_px[None], axis=2), axis=1)
    truth = {tuple(p) for p in scene.pairs}
    got = set(zip(ti.tolist(), tj.tolist(), strict=True))
    return len(got & truth), len(got - truth)


def _fiducial_case(scene) -> dict:
    out: dict = {}
    t0 = time.perf_counter()
    try:
        reg = register_fiducial(
            scene.sxt, scene.fm, fixed_pixel_nm=scene.sxt_pixel_nm, moving_pixel_nm=scene.fm_pixel_nm
        )
    except CorrelationError as exc:
        out["livetomo"] = {"failed": str(exc)}
    else:
        i, j = reg.pairs.T
        sx = _nearest_error(reg.fixed.localisation.positions[i], scene.beads_sxt_px, scene.sxt_pixel_nm, 3.0)
        sf = _nearest_error(reg.moving.localisation.positions[j], scene.beads_fm_px, scene.fm_pixel_nm, 1.0)
        sa = _field_error(scene, reg.matrix_px)
        correct, wrong = _pairing(scene, reg)
        out["livetomo"] = {
            "seconds": time.perf_counter() - t0,
            "true": _budget(sx, sf, sa),
            "estimated": {
                k: reg.summary()[k]
                for k in ("sigma_x_nm", "sigma_f_nm", "sigma_a_nm", "sigma_t_nm", "tre_loo_rms_nm")
            },
            "pairs_correct": correct,
            "pairs_wrong": wrong,
            "pairs_true": len(scene.pairs),
        }
    t0 = time.perf_counter()
    try:
        m = source_style(scene)
    except (CorrelationError, IndexError) as exc:
        out["peer"] = {"failed": str(exc) or type(exc).__name__}
    else:
        f_px = _locate(scene.sxt, scene.sxt_pixel_nm, "absorbing", 30.0, "quadratic")
        m_px = _locate(scene.fm, scene.fm_pixel_nm, "bright", 350.0, "quadratic")
        sx = _nearest_error(f_px, scene.beads_sxt_px, scene.sxt_pixel_nm, 3.0)
        sf = _nearest_error(m_px, scene.beads_fm_px, scene.fm_pixel_nm, 1.0)
        sa = _field_error(scene, m)
        out["peer"] = {
            "seconds": time.perf_counter() - t0,
            "true": _budget(sx, sf, sa),
        }
    return out


def _median(values):
    values = [v for v in values if np.isfinite(v)]
    return float(statistics.median(values)) if values else float("nan")


def _summarise(cases: list[dict], side: str) -> dict:
    ok = [c[side] for c in cases if "failed" not in c[side]]
    sig_t = [c["true"]["sigma_t_nm"] for c in ok]
    summary = {
        "scenes": len(cases),
        "raised": len(cases) - len(ok),
        "within_target": sum(1 for s in sig_t if s <= TARGET_SIGMA_T_NM),
        **{
            f"true_{k}_median": _median([c["true"][k] for c in ok])
            for k in ("sigma_x_nm", "sigma_f_nm", "sigma_a_nm", "sigma_t_nm")
        },
        "true_sigma_t_nm_max": float(max(sig_t)) if sig_t else float("nan"),
    }
    if side == "livetomo" and ok:
        summary.update(
            {f"estimated_{k}_median": _median([c["estimated"][k] for c in ok]) for k in ok[0]["estimated"]}
        )
        summary["pairs_wrong_total"] = int(sum(c["pairs_wrong"] for c in ok))
        summary["pairs_missed_total"] = int(sum(c["pairs_true"] - c["pairs_correct"] for c in ok))
    return summary


def run_fiducial(*, quick: bool, log=print) -> dict:
    seeds = range(2) if quick else range(6)
    pixels = PIXELS[1:2] if quick else PIXELS
    figures: dict = {"target_sigma_t_nm": TARGET_SIGMA_T_NM, "scenarios": {}}
    for name, (spurious, missing) in SCENARIOS.items():
        cases = []
        for sxt_px, fm_px in pixels:
            for seed in seeds:
                cases.append(_fiducial_case(_scene(sxt_px, fm_px, spurious, missing, seed)))
        ours, peer = _summarise(cases, "livetomo"), _summarise(cases, "peer")
        figures["scenarios"][name] = {"livetomo": ours, "source_style_peer": peer}
        log(
            f"  {name:<11} livetomo: σT true median {ours['true_sigma_t_nm_median']:6.1f} nm (max "
            f"{ours['true_sigma_t_nm_max']:6.1f}), within 60 nm {ours['within_target']}/{ours['scenes']}, "
            f"wrong pairs {ours.get('pairs_wrong_total', 0)} | peer: σT median "
            f"{peer['true_sigma_t_nm_median']:8.1f} nm, within 60 nm "
            f"{peer['within_target']}/{peer['scenes']}, raised {peer['raised']}"
        )
        if "estimated_sigma_t_nm_median" in ours:
            true = "/".join(f"{ours[f'true_sigma_{k}_nm_median']:.1f}" for k in "xfa")
            est = "/".join(f"{ours[f'estimated_sigma_{k}_nm_median']:.1f}" for k in "xfat")
            log(
                f"              livetomo true σX/σF/σA {true} nm; estimated from the data "
                f"σX/σF/σA/σT {est} nm, leave-one-out {ours['estimated_tre_loo_rms_nm_median']:.1f} nm"
            )
    scene = _scene(20.0, 150.0, 0.2, 0.2, 0)
    times = interleaved_medians(
        {
            "livetomo": lambda: register_fiducial(
                scene.sxt, scene.fm, fixed_pixel_nm=20.0, moving_pixel_nm=150.0
            ),
            "peer": lambda: source_style(scene),
        },
        3 if quick else 7,
    )
    figures["median_seconds"] = times
    figures["ratio_livetomo_over_peer_time"] = times["livetomo"] / times["peer"]
    log(
        f"  time per registration (600x600 SXT, 80x80 FM): livetomo {times['livetomo'] * 1e3:.0f} ms, "
        f"peer {times['peer'] * 1e3:.0f} ms, ratio {figures['ratio_livetomo_over_peer_time']:.2f}"
    )
    return figures


# --------------------------------------------------------------------------- intensity


def intensity_error_um(stacks, matrix_um, roi) -> float:
    """RMS over the EM ROI, where the LM stack covers it, of |T_est(p) - T_true(p)| in um."""
    x0, y0, z0, x1, y1, z1 = roi
    axes = [np.linspace(x0, x1 - 1, 10), np.linspace(y0, y1 - 1, 10), np.linspace(z0, z1 - 1, 40)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3) * stacks.em_spacing_um
    true = apply_transform(stacks.true_em_to_lm, grid)
    depth = (stacks.lm.shape[0] - 1) * stacks.lm_spacing_um[2]
    inside = (true[:, 2] >= 0) & (true[:, 2] <= depth)
    return float(
        np.sqrt(np.mean(np.sum((apply_transform(matrix_um, grid[inside]) - true[inside]) ** 2, axis=1)))
    )


def run_intensity(*, quick: bool, log=print) -> dict:
    seeds = range(1) if quick else range(3)
    kwargs = SMALL_STACKS if quick else {}
    sides = {
        "livetomo": {"prealign": True, "descriptor": "ncc"},
        "source_histogram_prealign": {"prealign": True, "descriptor": "histogram"},
        "sitk_mi_without_prealign": {"prealign": False},
    }
    rows: dict[str, list] = {name: [] for name in sides}
    shape_info = {}
    for seed in seeds:
        t0 = time.perf_counter()
        stacks = make_correlative_stacks(seed=seed, **kwargs)
        # Small stacks: the default ROI (central 60 %) would hold about one cell.
        roi = (0, 0, 0, *stacks.em.shape[::-1]) if quick else None
        shape_info = {
            "lm_shape_zyx": list(stacks.lm.shape),
            "em_shape_zyx": list(stacks.em.shape),
            "lm_spacing_um_xyz": stacks.lm_spacing_um.tolist(),
            "em_spacing_um_xyz": stacks.em_spacing_um.tolist(),
        }
        log(
            f"  stacks seed {seed}: LM {stacks.lm.shape}, EM {stacks.em.shape} simulated in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        for name, opts in sides.items():
            t0 = time.perf_counter()
            try:
                reg = register_stacks(
                    stacks.lm,
                    stacks.em,
                    lm_spacing_um=stacks.lm_spacing_um,
                    em_spacing_um=stacks.em_spacing_um,
                    roi=roi,
                    **opts,
                )
            except CorrelationError as exc:
                rows[name].append({"failed": str(exc), "seconds": time.perf_counter() - t0})
                log(f"    {name:<27} raised: {exc}")
                continue
            seconds = time.perf_counter() - t0
            err = intensity_error_um(stacks, reg.matrix_um, reg.roi_em)
            row = {
                "seconds": seconds,
                "error_um": err,
                "error_em_px": err / float(stacks.em_spacing_um[0]),
                "error_lm_px": err / float(stacks.lm_spacing_um[0]),
                "initial_error_um": intensity_error_um(stacks, reg.initial_um, reg.roi_em),
                "timings_s": reg.timings_s,
            }
            rows[name].append(row)
            log(
                f"    {name:<27} error {err:6.2f} um = {row['error_em_px']:6.1f} EM px = "
                f"{row['error_lm_px']:6.1f} LM px (start {row['initial_error_um']:.1f} um), {seconds:5.1f} s"
            )
    figures: dict = {
        "target_error_px": TARGET_INTENSITY_PX,
        "target_seconds": TARGET_INTENSITY_S,
        **shape_info,
    }
    for name, items in rows.items():
        ok = [r for r in items if "failed" not in r]
        figures[name] = {
            "runs": len(items),
            "raised": len(items) - len(ok),
            "median_error_um": _median([r["error_um"] for r in ok]),
            "median_error_em_px": _median([r["error_em_px"] for r in ok]),
            "median_error_lm_px": _median([r["error_lm_px"] for r in ok]),
            "max_error_em_px": float(max((r["error_em_px"] for r in ok), default=float("nan"))),
            "median_seconds": _median([r["seconds"] for r in items]),
            "max_seconds": float(max((r["seconds"] for r in items), default=float("nan"))),
            "within_3_em_px": sum(1 for r in ok if r["error_em_px"] <= TARGET_INTENSITY_PX),
        }
    ours, peer = figures["livetomo"], figures["sitk_mi_without_prealign"]
    figures["ratio_time_livetomo_over_sitk"] = ours["median_seconds"] / peer["median_seconds"]
    log(
        f"  intensity: livetomo median {ours['median_error_em_px']:.1f} EM px "
        f"({ours['median_error_lm_px']:.1f} LM px), max {ours['max_error_em_px']:.1f} EM px, median "
        f"{ours['median_seconds']:.1f} s (max {ours['max_seconds']:.1f} s); "
        f"SimpleITK MI without pre-alignment median {peer['median_error_em_px']:.1f} EM px, "
        f"{peer['median_seconds']:.1f} s"
    )
    return figures


def run(*, quick: bool = False, log=print) -> dict:
    """Both routes; every figure in one dict (``livetomo bench correlate --json``)."""
    log(f"correlate benchmark ({'quick' if quick else 'full'}); machine shared, timings are noisy")
    log(
        "fiducial route (SXT/FM pixel sizes "
        + ", ".join(f"{a:g}/{b:g}" for a, b in (PIXELS[1:2] if quick else PIXELS))
        + " nm):"
    )
    fiducial = run_fiducial(quick=quick, log=log)
    log("intensity route" + (" (small stacks)" if quick else " (source-shaped stacks)") + ":")
    intensity = run_intensity(quick=quick, log=log)
    return {"benchmark": "correlate", "quick": quick, "fiducial": fiducial, "intensity": intensity}
