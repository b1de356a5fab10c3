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
tilt (streaming + refinement, wall clock), and the ratios the issue sets as targets; the
RMS per axis (along the tilt axis, ``v``, there is no parallax) and, for the two chains,
the RMS error per link (per registered pair of neighbouring tilts).

Decomposition of the errors (what limits the chains: counting noise or the series'
geometry), in the same run:

- ``noise_free``: the same series (specimens, tilts, drift) as noise-free frames, the
  simulator's expected counts at 3 e/Å² with no Poisson draw, through ``plain``,
  ``learned`` and ``classical``;
- ``noise_realisations``: ``plain`` and ``learned`` on other Poisson draws of the same
  expected frames at 3 e/Å² (smallest frame size), the spread that noise alone gives;
- ``translation_pairs``: the source's own protocol, clean images shifted by known
  sub-pixel offsets with Poisson noise (:mod:`.learned_protocol`), at the benchmark's
  pixel sizes and doses and at 10, 3 and 1 detected electrons per pixel.
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
CHAINS = ("plain", "learned")  # one reference per tilt, no refinement: each tilt is one link
CLEAN = "noise-free"
CLEAN_DOSE = 3.0  # e/Å² of the noise-free frames' expected counts
DECOMPOSITION_METHODS = ("plain", "learned", "classical")
NOISE_REALISATIONS = 3  # Poisson draws at CLEAN_DOSE for the chains, the main run's included
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


def simulate_series(
    family, seed, thickness_nm, sizes, doses, *, field_vox=256, max_tilt=70.0, step=2.0, clean_sizes=()
):
    """One lamella, one stage trajectory, frames at every (size, dose).

    Returns dict with ``tilts``, and per (size, dose): ``frames`` (n, size, size) float32
    counts, ``truth`` (n, 2) true displacement in pixels of that size; ``pixel_A`` per size.
    For each size in ``clean_sizes`` also (size, CLEAN): the noise-free frames, the
    simulator's expected counts (``K3Camera.expected_image``) at ``CLEAN_DOSE`` with no
    Poisson draw; the same specimen, tilts and drift (a Poisson draw of them is a frame at
    ``CLEAN_DOSE``).
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
    keys = [(size, dose) for size in sizes for dose in doses] + [(size, CLEAN) for size in clean_sizes]
    for key in keys:
        out[key] = {"frames": [], "truth": []}
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
            if size in clean_sizes:
                out[size, CLEAN]["frames"].append((expected * CLEAN_DOSE).astype(np.float32))
                out[size, CLEAN]["truth"].append(shift)
    for key in keys:
        d = out[key]
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


INTERNAL = ("sq_sum", "n", "sq_v", "sq_h", "link_sq_v", "link_sq_h", "n_links")  # for pooling only


def align_series(frames, tilts, truth, thickness_px, size, quick, methods=METHODS):
    """Every method on one series; per method: RMS, max error (px), seconds per tilt.

    Also the RMS per axis (``rms_v_px`` along the tilt axis, where there is no parallax;
    ``rms_h_px`` across it) and, for the chains (``CHAINS``: each tilt registered on one
    aligned tilt, so its shift is that tilt's shift plus one pair measurement), the error of
    each link: the increment of the gauge-removed error from the reference tilt to the new
    one (``link_rms_v_px``, ``link_rms_h_px``). Along the axis that is the pair's own
    error; across it, up to the smooth increment of the removed gauge.
    """
    out = {}
    for name, (aligner, refine) in _aligners(thickness_px, size, quick).items():
        if name not in methods:
            continue
        t0 = time.perf_counter()
        refs = [aligner.add(frames[k], tilts[k]).reference_index for k in range(len(tilts))]
        shifts = aligner.refine() if refine else aligner.shifts
        elapsed = time.perf_counter() - t0
        ev, eh, _ = gauge_errors(shifts, truth, tilts, keep_centre=False)
        err = np.hypot(ev, eh)
        out[name] = {
            "rms_px": float(np.sqrt(np.mean(err**2))),
            "max_px": float(err.max()),
            "rms_v_px": float(np.sqrt(np.mean(ev**2))),
            "rms_h_px": float(np.sqrt(np.mean(eh**2))),
            "s_per_tilt": elapsed / len(tilts),
            "sq_sum": float(np.sum(err**2)),
            "sq_v": float(np.sum(ev**2)),
            "sq_h": float(np.sum(eh**2)),
            "n": len(tilts),
        }
        if name in CHAINS:
            links = [(k, r) for k, r in enumerate(refs) if r is not None]
            lv = np.array([ev[k] - ev[r] for k, r in links])
            lh = np.array([eh[k] - eh[r] for k, r in links])
            out[name].update(
                link_rms_v_px=float(np.sqrt(np.mean(lv**2))),
                link_rms_h_px=float(np.sqrt(np.mean(lh**2))),
                link_max_px=float(np.hypot(lv, lh).max()),
                link_sq_v=float(np.sum(lv**2)),
                link_sq_h=float(np.sum(lh**2)),
                n_links=len(links),
            )
        if name == "auto":
            out[name]["learned_picked"] = aligner.estimator_counts["learned"] / max(
                1, sum(aligner.estimator_counts.values())
            )
    return out


def _accumulate(acc: dict, res: dict) -> None:
    """Add one series' results (``align_series``) to per-method pooled sums."""
    for m, r in res.items():
        zero = {"sq": 0.0, "n": 0, "max": 0.0, "t": [], "picked": [], "sq_v": 0.0, "sq_h": 0.0,
                "link_sq_v": 0.0, "link_sq_h": 0.0, "n_links": 0, "link_max": 0.0}  # fmt: skip
        a = acc.setdefault(m, zero)
        a["sq"] += r["sq_sum"]
        a["n"] += r["n"]
        a["max"] = max(a["max"], r["max_px"])
        a["t"].append(r["s_per_tilt"])
        a["sq_v"] += r["sq_v"]
        a["sq_h"] += r["sq_h"]
        if "n_links" in r:
            a["link_sq_v"] += r["link_sq_v"]
            a["link_sq_h"] += r["link_sq_h"]
            a["n_links"] += r["n_links"]
            a["link_max"] = max(a["link_max"], r["link_max_px"])
        if "learned_picked" in r:
            a["picked"].append(r["learned_picked"])


def _pooled(a: dict) -> dict:
    """RMS / max over the pooled series, per axis, per link (chains), time per tilt."""
    out = {
        "rms_px": math.sqrt(a["sq"] / a["n"]),
        "max_px": a["max"],
        "ms_per_tilt": 1e3 * float(np.median(a["t"])),
        "rms_v_px": math.sqrt(a["sq_v"] / a["n"]),
        "rms_h_px": math.sqrt(a["sq_h"] / a["n"]),
    }
    if a["n_links"]:
        out["link_rms_v_px"] = math.sqrt(a["link_sq_v"] / a["n_links"])
        out["link_rms_h_px"] = math.sqrt(a["link_sq_h"] / a["n_links"])
        out["link_max_px"] = a["link_max"]
    if a["picked"]:
        out["learned_picked"] = float(np.mean(a["picked"]))
    return out


def _row(family, seed, thickness, size, dose, res) -> dict:
    row = {"family": family, "seed": seed, "thickness_nm": thickness, "size": size, "dose": dose}
    row.update({m: {k: v for k, v in r.items() if k not in INTERNAL} for m, r in res.items()})
    return row


def _spread(values) -> dict:
    v = [float(x) for x in values]
    return {"values": v, "median": float(np.median(v)), "min": min(v), "max": max(v)}


def run(*, quick: bool = False, log=print) -> dict:
    """Run the comparison; prints figures through ``log`` and returns them (JSON-ready).

    Besides the comparison (``series``, ``summary``), a decomposition of the errors:

    - ``noise_free``: the same series (specimens, tilts, drift) as noise-free frames
      (``CLEAN``), through ``plain``, ``learned`` and ``classical``: what remains without
      counting noise is what no better handling of the noise can remove;
    - ``noise_realisations``: the chains on ``NOISE_REALISATIONS`` Poisson draws of the
      same expected frames at 3 e/Å² (the smallest frame size), how much the figures at
      that dose move with the noise alone;
    - ``translation_pairs``: the source's own protocol, pure translations of clean images
      (:mod:`.learned_protocol`).
    """
    from .learned_protocol import translation_pairs

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
    per_family = {}  # (size, dose, family) -> method -> accumulated
    per_clean = {}  # size -> method -> accumulated, noise-free frames
    per_real = {}  # realisation -> method -> accumulated, smallest size at CLEAN_DOSE
    series_rows, clean_rows = [], []
    t_decomp = 0.0
    for n_spec, (family, seed, thickness) in enumerate(specs):
        t0 = time.perf_counter()
        spec_sizes = sizes if n_spec < LARGE_SPECS else tuple(s for s in sizes if s <= 256)
        data = simulate_series(
            family, seed, thickness, spec_sizes, doses, field_vox=field, clean_sizes=spec_sizes
        )
        log(f"  simulated {family} seed {seed} ({thickness:.0f} nm) in {time.perf_counter() - t0:.0f} s")
        for size in spec_sizes:
            thickness_px = thickness / (data["pixel_A"][size] / 10.0)
            methods = LARGE_METHODS if size > 256 else METHODS
            at_dose = {}
            for dose in doses:
                d = data[size, dose]
                res = align_series(d["frames"], data["tilts"], d["truth"], thickness_px, size, quick, methods)
                at_dose[dose] = res
                series_rows.append(_row(family, seed, thickness, size, dose, res))
                log(
                    f"    {size}^2 {dose:g} e/A^2: "
                    + ", ".join(f"{m} {r['rms_px']:.3f}" for m, r in res.items())
                    + " px RMS"
                )
                _accumulate(per.setdefault((size, dose), {}), res)
                _accumulate(per_family.setdefault((size, dose, family), {}), res)
            # Decomposition (a): the same series without counting noise.
            t1 = time.perf_counter()
            d = data[size, CLEAN]
            res = align_series(d["frames"], data["tilts"], d["truth"], thickness_px, size, quick,
                               DECOMPOSITION_METHODS)  # fmt: skip
            clean_rows.append(_row(family, seed, thickness, size, CLEAN, res))
            _accumulate(per_clean.setdefault(size, {}), res)
            log(
                f"    {size}^2 noise-free: "
                + ", ".join(f"{m} {r['rms_px']:.3f}" for m, r in res.items())
                + " px RMS"
            )
            # ... and other Poisson draws of the same frames at CLEAN_DOSE (the smallest size).
            if size == sizes[0] and CLEAN_DOSE in at_dose:
                _accumulate(per_real.setdefault(0, {}), {m: at_dose[CLEAN_DOSE][m] for m in CHAINS})
                rng = np.random.default_rng([seed, 16])
                for r in range(1, NOISE_REALISATIONS):
                    frames = rng.poisson(d["frames"]).astype(np.float32)
                    res = align_series(frames, data["tilts"], d["truth"], thickness_px, size, quick, CHAINS)
                    _accumulate(per_real.setdefault(r, {}), res)
                    log(
                        f"    {size}^2 {CLEAN_DOSE:g} e/A^2, noise draw {r}: "
                        + ", ".join(f"{m} {x['rms_px']:.3f}" for m, x in res.items())
                        + " px RMS"
                    )
            t_decomp += time.perf_counter() - t1
        del data
    figures: dict = {"benchmark": "learned", "quick": quick, "series": series_rows, "summary": {}}
    log("  summary over all series (RMS / max error in px of that frame size, ms per tilt):")
    for (size, dose), acc in per.items():
        summary = {m: _pooled(a) for m, a in acc.items()}
        ratios = {
            "learned_over_plain": summary["learned"]["rms_px"] / summary["plain"]["rms_px"],
            # along the tilt axis (no parallax): the chain and its links
            "learned_over_plain_v": summary["learned"]["rms_v_px"] / summary["plain"]["rms_v_px"],
            "learned_over_plain_link_v": (
                summary["learned"]["link_rms_v_px"] / summary["plain"]["link_rms_v_px"]
            ),
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
        log(
            "    along the tilt axis (no parallax): learned / plain XC = "
            f"{ratios['learned_over_plain_v']:.2f} (chain RMS), "
            f"{ratios['learned_over_plain_link_v']:.2f} (per link)"
        )
        for f, rms in fam.items():
            log(f"    {f}: " + ", ".join(f"{m} {v:.3f}" for m, v in rms.items()) + " px RMS")
    figures["noise_free"] = _noise_free_summary(per_clean, per, clean_rows, log)
    figures["noise_realisations"] = _realisation_summary(per_real, per_clean, sizes[0], log)
    figures["translation_pairs"] = translation_pairs(specs, sizes, field, log=log)
    figures["decomposition_time_s"] = t_decomp + figures["translation_pairs"]["time_s"]
    figures["targets"] = {"learned_over_plain_at_3e": 0.43, "combined_or_learned_over_classical_at_1e": 1.0}
    figures["total_time_s"] = time.perf_counter() - t_start
    log(
        f"learned benchmark done in {figures['total_time_s']:.0f} s "
        f"(decomposition {figures['decomposition_time_s']:.0f} s)"
    )
    return jsonable(figures)


def _noise_free_summary(per_clean, per, rows, log) -> dict:
    """Noise-free chains against the same series at CLEAN_DOSE: what the noise adds."""
    out = {
        "what": (
            f"the same series as noise-free frames (expected counts at {CLEAN_DOSE:g} e/A^2, no Poisson draw)"
        ),
        "series": rows,
        "summary": {},
    }
    log(
        "  decomposition (a): noise-free frames, same series (RMS / max px; per axis v / h; "
        "chains: per-link RMS v / h px)"
    )
    for size, acc in per_clean.items():
        clean = {m: _pooled(a) for m, a in acc.items()}
        noisy = {m: _pooled(a) for m, a in per.get((size, CLEAN_DOSE), {}).items() if m in clean}
        entry = {
            "methods": clean,
            f"at_{CLEAN_DOSE:g}e": noisy,
            "noise_free_over_noisy": {
                m: clean[m]["rms_px"] / noisy[m]["rms_px"] for m in clean if m in noisy
            },
            "learned_over_plain": clean["learned"]["rms_px"] / clean["plain"]["rms_px"],
        }
        out["summary"][f"{size}px"] = entry
        log(f"  {size}^2:")
        for m, c in clean.items():
            links = (
                f"; links {c['link_rms_v_px']:.3f} / {c['link_rms_h_px']:.3f}" if "link_rms_v_px" in c else ""
            )
            nz = noisy.get(m)
            at = ""
            if nz:
                nz_links = ""
                if "link_rms_v_px" in nz:
                    nz_links = f"; links {nz['link_rms_v_px']:.3f} / {nz['link_rms_h_px']:.3f}"
                at = (
                    f"   | {CLEAN_DOSE:g} e/A^2: {nz['rms_px']:.3f} / {nz['max_px']:.2f} "
                    f"(v {nz['rms_v_px']:.3f}, h {nz['rms_h_px']:.3f}){nz_links}"
                )
            log(
                f"    {m:10s} noise-free {c['rms_px']:.3f} / {c['max_px']:.2f} "
                f"(v {c['rms_v_px']:.3f}, h {c['rms_h_px']:.3f}){links}{at}"
            )
        log(
            f"    noise-free / {CLEAN_DOSE:g} e/A^2: "
            + ", ".join(f"{m} {v:.2f}" for m, v in entry["noise_free_over_noisy"].items())
            + f"; noise-free learned / plain {entry['learned_over_plain']:.2f}"
        )
    return out


def _realisation_summary(per_real, per_clean, size, log) -> dict:
    """The chains' pooled RMS over Poisson draws of the same frames (draw 0: the main run's)."""
    pooled = {r: {m: _pooled(a) for m, a in acc.items()} for r, acc in sorted(per_real.items())}
    out = {"size": size, "dose": CLEAN_DOSE, "n": len(pooled), "methods": {}}
    if not pooled:
        return out
    for m in CHAINS:
        out["methods"][m] = {
            k: _spread(p[m][k] for p in pooled.values())
            for k in ("rms_px", "rms_v_px", "rms_h_px", "link_rms_v_px", "link_rms_h_px")
        }
        if size in per_clean and m in per_clean[size]:
            out["methods"][m]["noise_free_rms_px"] = _pooled(per_clean[size][m])["rms_px"]
    out["learned_over_plain"] = _spread(
        p["learned"]["rms_px"] / p["plain"]["rms_px"] for p in pooled.values()
    )
    log(
        f"  {size}^2 at {CLEAN_DOSE:g} e/A^2 over {len(pooled)} noise draws of the same frames "
        "(median, range):"
    )
    for m, f in out["methods"].items():
        log(
            f"    {m:10s} RMS {f['rms_px']['median']:.3f} "
            f"({f['rms_px']['min']:.3f}-{f['rms_px']['max']:.3f}), "
            f"v {f['rms_v_px']['median']:.3f}, h {f['rms_h_px']['median']:.3f}; links v "
            f"{f['link_rms_v_px']['median']:.3f}, h {f['link_rms_h_px']['median']:.3f}"
            + (f"; noise-free {f['noise_free_rms_px']:.3f}" if "noise_free_rms_px" in f else "")
        )
    r = out["learned_over_plain"]
    log(f"    learned / plain: {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})")
    return out
