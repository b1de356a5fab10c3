"""The source's own test of the learned shift estimator: pure translations of a clean image.

Part of ``livetomo bench learned``. The source trains and scores its CNN on pairs made from
one clean image: a copy shifted by a known sub-pixel offset, Poisson noise at the dose.
Here, on the benchmark's held-out lamellae (never seen in training): clean K3 images
(``K3Camera.expected_image``, its band-limited Fourier translation for the shift) at several
tilts, each paired with copies shifted by random offsets (uniform ±2.5 px per axis, as in
training), both frames with their own Poisson noise; each pair registered by plain
cross-correlation (``register`` with the settings of the benchmark's ``plain`` chain), by
the learned estimator (``learned_register``) and, to tell the network's part from that of
the binning that precedes it, by ``binned``: cross-correlation (the same settings) of the
frames binned as ``learned_register`` bins them (``choose_bin``), all on the contrast
``I / mean − 1`` that ``StreamingTiltAligner`` passes them.

Conditions, per frame size (pixel size):

- ``noise-free``: the expected counts, no Poisson draw;
- ``3 e/A2``, ``1 e/A2``: the benchmark's doses (at 2 nm pixels about 600 and 200 detected
  electrons per pixel; at 0.5 nm about 40 and 13);
- ``10 e/px``, ``3 e/px``, ``1 e/px``: the dose scaled per image so that the mean detected
  count is 10, 3 or 1 per pixel, the shot-noise regime of a K3 at high magnification (3
  e/Å² on pixels of about 1 Å). The image content (its band) stays that of the frame's
  pixel size; only the counting statistics are those of the small pixels.

Figures per condition: RMS, median and maximum error (px) of each estimator, the fraction of
pairs off by more than 1 px, the ratio learned / plain (RMS and median), the quantity the
source's 0.43 margin is about, and learned / binned.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ...processing.arrays import bin_image
from ...processing.register import register
from ...processing.shift_net import choose_bin, learned_register
from ...processing.streaming_align import StreamingTiltAligner
from ...simulators.k3 import K3Camera, make_specimen

TILTS = (-60.0, -40.0, -20.0, 0.0, 20.0, 40.0, 60.0)
SHIFTS_PER_TILT = 4
MAX_SHIFT_PX = 2.5  # per axis, uniform: the training draws' range
CLEAN_DOSE = 3.0  # e/Å² of the noise-free pairs' expected counts (the scale does not matter)
# (label, what the value is, value)
CONDITIONS = (
    ("noise-free", None, None),
    ("3 e/A2", "dose", 3.0),
    ("1 e/A2", "dose", 1.0),
    ("10 e/px", "counts", 10.0),
    ("3 e/px", "counts", 3.0),
    ("1 e/px", "counts", 1.0),
)
SOURCE_MARGIN = 0.43
ESTIMATORS = ("plain", "learned", "binned")
FIELDS = (*ESTIMATORS, "bin", "counts", "dose")


def _contrast(a: np.ndarray) -> np.ndarray:
    """What StreamingTiltAligner registers: ``I / mean − 1``."""
    a = np.asarray(a, dtype=np.float32)
    return a / float(a.mean()) - 1.0


def _camera(family, seed, thickness_nm, size, field_vox) -> K3Camera:
    """The benchmark's camera on one held-out lamella (same specimen as its tilt series)."""
    ny = int(math.ceil(thickness_nm / 2.0 / 0.9))
    potential = make_specimen(
        family, (field_vox, ny, field_vox), voxel_size_nm=2.0, thickness_nm=thickness_nm, seed=seed
    )
    pixel_A = 20.0 * field_vox / size
    return K3Camera(potential, voxel_size_nm=2.0, pixel_size_A=pixel_A, image_shape=(size, size), seed=seed)


def pair_errors(cam: K3Camera, rng, *, tilts=TILTS, shifts_per_tilt=SHIFTS_PER_TILT, conditions=CONDITIONS):
    """Errors (px) of both estimators on translated pairs of ``cam``'s clean images.

    Returns per condition label a dict of lists: ``plain``, ``learned`` and ``binned``
    (error vectors (dy, dx) of the registering shift, measured − true), ``bin`` (the
    binning factor), ``counts`` (mean counts per pixel of the reference) and ``dose``
    (e/Å² of the pair).
    """
    options = StreamingTiltAligner(stretch=False, n_references=1).options  # the plain chain's
    out = {label: {k: [] for k in FIELDS} for label, _, _ in conditions}
    for tilt in tilts:
        clean_ref = cam.expected_image(float(tilt), 1.0)  # expected counts per e/Å²
        for _ in range(shifts_per_tilt):
            d = rng.uniform(-MAX_SHIFT_PX, MAX_SHIFT_PX, 2)
            clean_mov = cam.expected_image(float(tilt), 1.0, tuple(d))
            truth = -d  # register's shift moves the moving frame back onto the reference
            for label, kind, value in conditions:
                if kind is None:
                    dose = CLEAN_DOSE
                    ref, mov = clean_ref * dose, clean_mov * dose
                else:
                    dose = value if kind == "dose" else value / float(clean_ref.mean())
                    ref = rng.poisson(clean_ref * dose).astype(np.float32)
                    mov = rng.poisson(clean_mov * dose).astype(np.float32)
                a, b = _contrast(ref), _contrast(mov)
                xc = register(a, b, **options)
                ln = learned_register(a, b)
                f = choose_bin(a)  # what learned_register bins by
                xb = register(bin_image(a, f, reduce="sum"), bin_image(b, f, reduce="sum"), **options)
                rec = out[label]
                rec["plain"].append(np.asarray(xc.shift) - truth)
                rec["learned"].append(np.asarray(ln.shift) - truth)
                rec["binned"].append(f * np.asarray(xb.shift) - truth)
                rec["bin"].append(f)
                rec["counts"].append(float(ref.mean()))
                rec["dose"].append(float(dose))
    return out


def _stats(errors) -> dict:
    e = np.hypot(*np.asarray(errors, dtype=float).T)
    return {
        "rms_px": float(np.sqrt(np.mean(e**2))),
        "median_px": float(np.median(e)),
        "max_px": float(e.max()),
        "over_1px": float(np.mean(e > 1.0)),
    }


def translation_pairs(specs, sizes, field_vox, *, log=print) -> dict:
    """The protocol on every held-out lamella of ``specs`` at every frame size; JSON-ready."""
    t0 = time.perf_counter()
    tilts = TILTS
    log(
        f"  the source's protocol: clean images of the held-out lamellae at {len(tilts)} tilts "
        f"({', '.join(f'{t:g}' for t in tilts)} deg), {SHIFTS_PER_TILT} known shifts each "
        f"(uniform +-{MAX_SHIFT_PX:g} px), Poisson noise per frame; plain XC, learned, binned XC"
    )
    pooled: dict = {}
    for family, seed, thickness in specs:
        for size in sizes:
            cam = _camera(family, seed, thickness, size, field_vox)
            rng = np.random.default_rng([seed, size, 16])
            res = pair_errors(cam, rng, tilts=tilts)
            for label, rec in res.items():
                p = pooled.setdefault((size, label), {k: [] for k in FIELDS})
                p["pixel_A"] = cam.pixel_size_A
                for k in FIELDS:
                    p[k].extend(rec[k])
    result: dict = {
        "what": "pure-translation pairs of clean K3 images (the source's protocol), per frame size and noise",
        "tilts_deg": list(tilts),
        "shifts_per_tilt": SHIFTS_PER_TILT,
        "max_shift_px": MAX_SHIFT_PX,
        "conditions": {},
    }
    log(
        "  size, condition (mean counts/px): RMS / median / max error px of plain XC, learned, "
        "binned XC; learned/plain RMS (median); learned/binned RMS"
    )
    for (size, label), p in pooled.items():
        stats = {e: _stats(p[e]) for e in ESTIMATORS}
        plain, learned, binned = stats["plain"], stats["learned"], stats["binned"]
        ratio_rms = learned["rms_px"] / max(plain["rms_px"], 1e-12)
        ratio_med = learned["median_px"] / max(plain["median_px"], 1e-12)
        ratio_bin = learned["rms_px"] / max(binned["rms_px"], 1e-12)
        key = f"{size}px_{label.replace(' ', '').replace('/', '_per_')}"
        result["conditions"][key] = {
            "size": size,
            "pixel_A": p["pixel_A"],
            "condition": label,
            "dose_e_per_A2": float(np.mean(p["dose"])),
            "mean_counts_per_px": float(np.mean(p["counts"])),
            "n_pairs": len(p["plain"]),
            "bin_factors": sorted({int(b) for b in p["bin"]}),
            **stats,
            "learned_over_plain_rms": ratio_rms,
            "learned_over_plain_median": ratio_med,
            "learned_over_binned_rms": ratio_bin,
            "source_margin_met": bool(ratio_rms <= SOURCE_MARGIN),
        }
        log(
            f"    {size}^2 ({p['pixel_A']:g} A px, bin {'/'.join(str(b) for b in sorted(set(p['bin'])))}), "
            f"{label:10s} ({np.mean(p['counts']):6.1f}): "
            + ", ".join(
                f"{stats[e]['rms_px']:.3f} / {stats[e]['median_px']:.3f} / {stats[e]['max_px']:.2f}"
                for e in ESTIMATORS
            )
            + f"; {ratio_rms:.2f} ({ratio_med:.2f}); {ratio_bin:.2f}"
        )
    result["time_s"] = time.perf_counter() - t0
    log(f"  source's protocol done in {result['time_s']:.0f} s")
    return result
