"""``livetomo bench learned``: the learned shift estimator against cross-correlation on tilt series.

Held-out data only (the network was trained on 'particles' lamellae with seeds from 1000
up): 'particles' lamellae with seeds below 1000 and lamellae of the 'filaments' family,
which training never saw; ±70° in 2° steps, dose-symmetric order, the stage model's
eucentric error and drift, 3 and 1 e/Å² per tilt; frames of 256² (2 nm pixels) and 1024²
(0.5 nm pixels) of the same lamellae.

Methods, each on the same frames and cores, scored against the simulator's true drift
(``K3Frame.true_shift_px``) with the gauge removed (vertical mean; horizontal
``c + a cos α + b sin α``, the eucentric height and axis position):

- ``plain``: plain cross-correlation (the source's baseline): each tilt registered on the
  nearest aligned tilt, no stretch, chained;
- ``learned``: the learned estimator in the same chain (``LEARNED_STRETCH`` says whether
  the higher tilt of a pair is cosine-stretched first): the source's method, and the only
  difference from ``plain`` is the estimator;
- ``classical``: livetomo's classical aligner: stretch, three references solved jointly,
  drift-model outliers, slab re-projection refinement (``StreamingTiltAligner`` defaults);
- ``combined``: the classical pipeline with the learned estimator measuring each new
  tilt on its references (``estimator='learned'``), refinement as classical;
- ``auto``: the same with ``estimator='auto'`` (both estimators per pair, the better
  quality kept).

Figures: RMS and maximum error (px) per method, size and dose (over all series), time per
tilt (streaming + refinement, wall clock), and the ratios the issue sets as targets.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ...plans.tilt_order import tilt_order
from ...processing.runout import gauge_errors
from ...processing.shift_net import load_shift_net
from ...processing.streaming_align import StreamingTiltAligner
from ...simulators.k3 import K3Camera, make_specimen
from ...simulators.stages import TiltStageModel
from .timing import jsonable

METHODS = ("plain", "learned", "classical", "combined", "auto")
LEARNED_STRETCH = False
OFF = {"outlier_sigma": 1e9, "min_outlier_px": 1e9}


def _specs(quick: bool):
    """(family, lamella seed, thickness nm) of the held-out series."""
    if quick:
        return [("particles", 0, 150.0), ("filaments", 1, 200.0)]
    return [("particles", 0, 200.0), ("filaments", 1, 200.0)]


# Full run: 1024² frames for the first lamella only, without 'auto' (it runs both
# estimators on every pair): the 2-core machine would otherwise need about an hour.
LARGE_SPECS = 1
LARGE_METHODS = ("plain", "learned", "classical", "combined")


def simulate_series(family, seed, thickness_nm, sizes, doses, *, field_vox=256, max_tilt=70.0, step=2.0):
    """One lamella, one stage trajectory, frames at every (size, dose).

    Returns dict with ``tilts``, and per (size, dose): ``frames`` (n, size, size) float32
    counts, ``truth`` (n, 2) true displacement in pixels of that size; ``pixel_A`` per size.
    """
    ny = int(math.ceil(thickness_nm / 2.0 / 0.9))
    shape = (field_vox, ny, field_vox)
    potential = make_specimen(family, shape, voxel_size_nm=2.0, thickness_nm=thickness_nm, seed=seed)
    cams = {}
    for size in sizes:
        pixel_A = 20.0 * field_vox / size
        cams[size] = K3Camera(potential, voxel_size_nm=2.0, pixel_size_A=pixel_A, image_shape=(size, size),
                              seed=seed + 100 + size)  # fmt: skip
    stage = TiltStageModel(seed=seed + 2)
    rng = np.random.default_rng(seed + 3)
    tilts = tilt_order(-max_tilt, max_tilt, step, order="dose-symmetric")
    out = {"tilts": np.asarray(tilts, float), "pixel_A": {s: c.pixel_size_A for s, c in cams.items()}}
    for size in sizes:
        for dose in doses:
            out[size, dose] = {"frames": [], "truth": []}
    for tilt in tilts:
        stage.move(float(tilt))
        offset_nm = stage.true_offset_nm
        for size, cam in cams.items():
            shift = tuple(offset_nm / (cam.pixel_size_A / 10.0))
            expected = cam.expected_image(float(tilt), 1.0, shift)
            for dose in doses:
                counts = rng.poisson(expected * dose).astype(np.float32)
                out[size, dose]["frames"].append(counts)
                out[size, dose]["truth"].append(shift)
    for size in sizes:
        for dose in doses:
            d = out[size, dose]
            d["frames"] = np.asarray(d["frames"])
            d["truth"] = np.asarray(d["truth"])
    return out


def _aligners(thickness_px: float, size: int, quick: bool):
    refine_bin = max(1, size // 256)
    iterations = 3 if quick else 6
    common = {"thickness_px": int(round(thickness_px)), "refine_bin": refine_bin,
              "reproject_iterations": iterations}  # fmt: skip
    return {
        "plain": (StreamingTiltAligner(stretch=False, n_references=1, **OFF), False),
        "learned": (
            StreamingTiltAligner(stretch=LEARNED_STRETCH, n_references=1, estimator="learned", **OFF),
            False,
        ),
        "classical": (StreamingTiltAligner(**common), True),
        "combined": (StreamingTiltAligner(estimator="learned", **common), True),
        "auto": (StreamingTiltAligner(estimator="auto", **common), True),
    }


def align_series(frames, tilts, truth, thickness_px, size, quick, methods=METHODS):
    """Every method on one series; per method: RMS, max error (px), seconds per tilt."""
    out = {}
    for name, (aligner, refine) in _aligners(thickness_px, size, quick).items():
        if name not in methods:
            continue
        t0 = time.perf_counter()
        for k in range(len(tilts)):
            aligner.add(frames[k], tilts[k])
        shifts = aligner.refine() if refine else aligner.shifts
        elapsed = time.perf_counter() - t0
        ev, eh, _ = gauge_errors(shifts, truth, tilts, keep_centre=False)
        err = np.hypot(ev, eh)
        out[name] = {
            "rms_px": float(np.sqrt(np.mean(err**2))),
            "max_px": float(err.max()),
            "s_per_tilt": elapsed / len(tilts),
            "sq_sum": float(np.sum(err**2)),
            "n": len(tilts),
        }
        if name == "auto":
            out[name]["learned_picked"] = aligner.estimator_counts["learned"] / max(
                1, sum(aligner.estimator_counts.values())
            )
    return out


def run(*, quick: bool = False, log=print) -> dict:
    """Run the comparison; prints figures through ``log`` and returns them (JSON-ready)."""
    t_start = time.perf_counter()
    net = load_shift_net()
    sizes = (128,) if quick else (256, 1024)
    field = 128 if quick else 256
    doses = (3.0, 1.0)
    specs = _specs(quick)
    log(
        f"learned shift estimator vs cross-correlation: {len(specs)} held-out lamellae "
        f"({', '.join(f'{f} seed {s} {t:.0f} nm' for f, s, t in specs)}), +-70 deg / 2 deg dose-symmetric, "
        f"{' and '.join(f'{d:g}' for d in doses)} e/A^2, frames {' and '.join(f'{s}^2' for s in sizes)}"
    )
    rec = net.record or {}
    log(
        f"  network: {sum(w.size + b.size for w, b in net.params.values())} parameters, trained "
        f"{rec.get('steps', '?')} steps in {rec.get('train_time_s', '?')} s on seeds "
        f"{rec.get('data', {}).get('training_lamella_seeds', '?')} ('particles' family)"
    )
    per = {}  # (size, dose) -> method -> accumulated
    per_family = {}  # (size, dose, family) -> method -> squared errors
    series_rows = []
    for n_spec, (family, seed, thickness) in enumerate(specs):
        t0 = time.perf_counter()
        spec_sizes = sizes if n_spec < LARGE_SPECS else tuple(s for s in sizes if s <= 256)
        data = simulate_series(family, seed, thickness, spec_sizes, doses, field_vox=field)
        log(f"  simulated {family} seed {seed} ({thickness:.0f} nm) in {time.perf_counter() - t0:.0f} s")
        for size in spec_sizes:
            thickness_px = thickness / (data["pixel_A"][size] / 10.0)
            methods = LARGE_METHODS if size > 256 else METHODS
            for dose in doses:
                d = data[size, dose]
                res = align_series(d["frames"], data["tilts"], d["truth"], thickness_px, size, quick, methods)
                row = {"family": family, "seed": seed, "thickness_nm": thickness, "size": size, "dose": dose}
                row.update(
                    {m: {k: v for k, v in r.items() if k not in ("sq_sum", "n")} for m, r in res.items()}
                )
                series_rows.append(row)
                log(
                    f"    {size}^2 {dose:g} e/A^2: "
                    + ", ".join(f"{m} {r['rms_px']:.3f}" for m, r in res.items())
                    + " px RMS"
                )
                acc = per.setdefault((size, dose), {})
                acc_f = per_family.setdefault((size, dose, family), {})
                for m, r in res.items():
                    b = acc_f.setdefault(m, {"sq": 0.0, "n": 0})
                    b["sq"] += r["sq_sum"]
                    b["n"] += r["n"]
                    a = acc.setdefault(m, {"sq": 0.0, "n": 0, "max": 0.0, "t": [], "picked": []})
                    a["sq"] += r["sq_sum"]
                    a["n"] += r["n"]
                    a["max"] = max(a["max"], r["max_px"])
                    a["t"].append(r["s_per_tilt"])
                    if "learned_picked" in r:
                        a["picked"].append(r["learned_picked"])
    figures: dict = {"benchmark": "learned", "quick": quick, "series": series_rows, "summary": {}}
    log("  summary over all series (RMS / max error in px of that frame size, ms per tilt):")
    for (size, dose), acc in per.items():
        summary = {}
        for m, a in acc.items():
            summary[m] = {
                "rms_px": math.sqrt(a["sq"] / a["n"]),
                "max_px": a["max"],
                "ms_per_tilt": 1e3 * float(np.median(a["t"])),
            }
            if a["picked"]:
                summary[m]["learned_picked"] = float(np.mean(a["picked"]))
        ratios = {
            "learned_over_plain": summary["learned"]["rms_px"] / summary["plain"]["rms_px"],
            "combined_over_classical": summary["combined"]["rms_px"] / summary["classical"]["rms_px"],
            "learned_over_classical": summary["learned"]["rms_px"] / summary["classical"]["rms_px"],
        }
        if "auto" in summary:
            ratios["auto_over_classical"] = summary["auto"]["rms_px"] / summary["classical"]["rms_px"]
        fam = {
            f: {m: math.sqrt(a["sq"] / a["n"]) for m, a in acc_f.items()}
            for (sz, ds, f), acc_f in per_family.items()
            if (sz, ds) == (size, dose)
        }
        figures["summary"][f"{size}px_{dose:g}e"] = {
            "methods": summary,
            "ratios": ratios,
            "by_family_rms_px": fam,
        }
        log(f"  {size}^2, {dose:g} e/A^2:")
        for m, s in summary.items():
            extra = f" (learned picked {s['learned_picked']:.0%})" if "learned_picked" in s else ""
            log(
                f"    {m:12s} RMS {s['rms_px']:.3f}  max {s['max_px']:.3f}  "
                f"{s['ms_per_tilt']:.0f} ms/tilt{extra}"
            )
        log(
            f"    learned / plain XC = {ratios['learned_over_plain']:.2f} (target <= 0.43 at 3 e/A^2); "
            f"combined / classical = {ratios['combined_over_classical']:.2f}"
            + (
                f", auto / classical = {ratios['auto_over_classical']:.2f}"
                if "auto_over_classical" in ratios
                else ""
            )
            + " (target < 1 at 1 e/A^2)"
        )
        for f, rms in fam.items():
            log(f"    {f}: " + ", ".join(f"{m} {v:.3f}" for m, v in rms.items()) + " px RMS")
    figures["targets"] = {"learned_over_plain_at_3e": 0.43, "combined_or_learned_over_classical_at_1e": 1.0}
    figures["total_time_s"] = time.perf_counter() - t_start
    log(f"learned benchmark done in {figures['total_time_s']:.0f} s")
    return jsonable(figures)
