"""Two parts of ``livetomo bench align`` measured the way their sources measure them.

(e) **The XRF/DPC source's FWHM protocol.** Two rasters at the same stage position and angle
(nothing moves in between: the second differs by its counting noise only), at 3 ms and 30 ms
dwell; the raw cross-correlation |F⁻¹{F(a) F(b)*}| of a sub-region inside the cell (the source
took a 96 × 96 region inside the oocyte), no window and no band-pass (only each image's mean is
removed), up-sampled 6× by embedding the spectra in a 6× larger array (as the source did);
the width at half maximum of the horizontal and vertical profiles through the peak, for the
horizontal, vertical and diagonal DPC (the source's: upper-right against lower-left segment,
difference over sum) and for the zinc Kα window of the spectra; and zinc's width over DPC's.

(f) **The registration's quality flag and stated uncertainty on varied content.** Pairs cut
from scikit-image's sample images (natural textures, text, a clock, coins, cells, star fields,
blobs) and from a sparse-spot image, shifted by known sub-pixel amounts, with Poisson noise at
several doses (and none), plus pairs of unrelated content: how many registrations more than
1 px off are flagged, how many within 0.3 px are, and how many errors exceed three times the
stated uncertainty.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ...processing.dpc import dpc_from_segments
from ...processing.register import register
from ...simulators.microprobe import XRFMicroprobe
from ...simulators.specimen import make_cell

UPSAMPLE = 6


def raw_correlation_fwhm(a, b, *, upsample: int = UPSAMPLE, detrend: str = "mean") -> tuple[float, float]:
    """(y, x) FWHM, pixels, of the peak of |F⁻¹{F(a) F(b)*}| up-sampled by embedding.

    ``detrend``: 'mean' removes each image's mean only; 'plane' its best-fitting plane (a
    phase ramp across the region, e.g. the ice cylinder's, turns into a constant DPC offset
    and a linear trend that put the peak on a broad pedestal). NaN where the profile does not
    fall to half the peak inside the region.
    """
    a, b = _detrend(a, detrend), _detrend(b, detrend)
    n_r, n_c = a.shape
    cross = np.fft.fftshift(np.fft.fft2(a) * np.conj(np.fft.fft2(b)))
    big = np.zeros((upsample * n_r, upsample * n_c), dtype=complex)
    r0, c0 = (upsample * n_r - n_r) // 2, (upsample * n_c - n_c) // 2
    big[r0 : r0 + n_r, c0 : c0 + n_c] = cross
    surface = np.abs(np.fft.ifft2(np.fft.ifftshift(big)))
    surface = np.fft.fftshift(surface)
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    peak = surface[iy, ix]
    return _half_width(surface[:, ix], iy, peak) / upsample, _half_width(surface[iy, :], ix, peak) / upsample


def _detrend(image, how: str) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    if how == "mean":
        return x - x.mean()
    yy, xx = np.mgrid[: x.shape[0], : x.shape[1]]
    basis = np.stack([np.ones(x.size), yy.ravel(), xx.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x.ravel(), rcond=None)
    return x - (basis @ coef).reshape(x.shape)


def _half_width(profile, centre: int, peak: float) -> float:
    half = 0.5 * peak
    left = centre
    while left > 0 and profile[left] >= half:
        left -= 1
    right = centre
    while right < len(profile) - 1 and profile[right] >= half:
        right += 1
    if profile[left] >= half or profile[right] >= half:
        return float("nan")
    lo = left + (half - profile[left]) / (profile[left + 1] - profile[left])
    hi = right - 1 + (profile[right - 1] - half) / (profile[right - 1] - profile[right])
    return float(hi - lo)


def diagonal_dpc(segments) -> np.ndarray:
    """The source's diagonal DPC: upper-right (2) against lower-left (4) segment, difference over sum."""
    s = np.asarray(segments, dtype=np.float64)
    t2, t4 = s[0], s[2]
    return (t2 - t4) / np.maximum(t2 + t4, 1e-6)


def bench_fwhm_protocol(quick: bool, log=print) -> dict:
    """Part (e): the source's protocol (see the module docstring)."""
    shape = (32, 64, 64) if quick else (64, 128, 128)
    specimen = make_cell(shape, voxel_size_nm=300.0, seed=0)
    probe = XRFMicroprobe(specimen, seed=5)
    window = probe.detector.roi_channels("Zn")
    n_rows, n_cols = probe.default_shape()
    half = (24 if quick else 48) // 2  # the sub-region inside the cell (the source: 96 × 96 in the oocyte)
    sub = (slice(n_rows // 2 - half, n_rows // 2 + half), slice(n_cols // 2 - half, n_cols // 2 + half))
    angles = (0.0,) if quick else (0.0, 45.0, 90.0, 135.0)
    out: dict = {"sub_region_px": [2 * half, 2 * half], "upsample": UPSAMPLE, "angles_deg": list(angles)}
    # (the widths are NaN where the peak does not fall to half inside the region)
    pairs = {}
    for dwell in (3e-3, 30e-3):
        pairs[dwell] = []
        for angle in angles:
            first, second = (probe.raster(angle, dwell_s=dwell) for _ in range(2))  # same position and angle
            images = []
            for r in (first, second):
                h, v, _ = dpc_from_segments(r.segments)
                zn = r.spectra[..., window].sum(-1).astype(np.float64)
                images.append({"dpc_h": h, "dpc_v": v, "dpc_diagonal": diagonal_dpc(r.segments), "Zn": zn})
            pairs[dwell].append(images)
    for detrend in ("mean", "plane"):
        out[detrend] = _protocol_widths(pairs, sub, detrend, half, angles, log)
    sigma = np.asarray(probe.spot_fwhm_nm) / 2.3548 / probe.pixel_size_nm  # (y, x) probe sigma, px
    out["probe_sigma_px"] = sigma.tolist()
    out["dpc_floor_px"] = _derivative_of_gaussian_floor(sigma).tolist()
    log(
        f"    the floor set by the probe: its {probe.spot_fwhm_nm[0]:g} × {probe.spot_fwhm_nm[1]:g} nm "
        f"Gaussian spot on {probe.pixel_size_nm:g} nm pixels (σ = {sigma[0]:.2f}, {sigma[1]:.2f} px) makes "
        f"even white-noise phase give diagonal-DPC correlation peaks {out['dpc_floor_px'][0]:.2f} (y) × "
        f"{out['dpc_floor_px'][1]:.2f} (x) px wide"
    )
    return out


def _protocol_widths(pairs, sub, detrend: str, half: int, angles, log) -> dict:
    out = {}
    for dwell, per_angle in pairs.items():
        widths: dict[str, list] = {"dpc_h": [], "dpc_v": [], "dpc_diagonal": [], "Zn": []}
        for images in per_angle:
            for key in widths:
                widths[key].append(
                    raw_correlation_fwhm(images[0][key][sub], images[1][key][sub], detrend=detrend)
                )
        with np.errstate(all="ignore"):
            med = {k: np.nanmedian(np.asarray(v, float), axis=0) for k, v in widths.items()}
        figures = {k: {"y": float(m[0]), "x": float(m[1])} for k, m in med.items()}
        for key in ("dpc_h", "dpc_v", "dpc_diagonal"):
            figures[f"ratio_Zn_over_{key}"] = {
                "y": float(med["Zn"][0] / med[key][0]),
                "x": float(med["Zn"][1] / med[key][1]),
            }
        ms = f"{dwell * 1e3:g} ms"
        out[ms] = figures
        ratio = figures["ratio_Zn_over_dpc_diagonal"]
        log(
            f"(e) source's FWHM protocol, {ms}, {detrend} removed: two rasters at the same position and "
            f"angle, raw correlation of a {2 * half}² sub-region, median of {len(angles)} angles (y, x px): "
            f"DPC horizontal {_w(med['dpc_h'])}; vertical {_w(med['dpc_v'])}; "
            f"diagonal {_w(med['dpc_diagonal'])}; "
            f"Zn {_w(med['Zn'], 1)}; Zn / diagonal DPC {ratio['y']:.1f}x (y), {ratio['x']:.1f}x (x) "
            f"(source: 1.5 px DPC, 25 px Zn at 3 ms)"
        )
    return out


def _w(pair, digits: int = 2) -> str:
    return ", ".join("n/a" if not np.isfinite(v) else f"{v:.{digits}f}" for v in pair)


def _derivative_of_gaussian_floor(sigma) -> np.ndarray:
    """FWHM (y, x) of the autocorrelation of white noise seen through the probe (σ) and differentiated
    along the diagonal: the narrowest DPC correlation peak any specimen can give."""
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((256, 256))
    blurred = ndimage.gaussian_filter(noise, sigma)
    gy, gx = np.gradient(blurred)
    diag = gx + gy
    return np.asarray(raw_correlation_fwhm(diag, diag))


# ---------------------------------------------------------------------------- (f) quality flag


def _gray(image) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., :3].mean(axis=-1)
    x = (x - x.min()) / max(float(np.ptp(x)), 1e-12)
    return 0.1 + 0.9 * x


def image_kinds(seed: int = 0) -> dict[str, np.ndarray]:
    """Test images unlike the simulators': scikit-image's data module, and sparse spots."""
    import skimage.data as data

    rng = np.random.default_rng(seed)
    spots = np.zeros((512, 512))
    for y, x in rng.uniform(0, 512, (60, 2)).astype(int):
        spots[y, x] = rng.uniform(0.5, 1.0)
    kinds = {
        "camera": data.camera(),
        "text": data.text(),
        "coins": data.coins(),
        "moon": data.moon(),
        "page": data.page(),
        "brick": data.brick(),
        "grass": data.grass(),
        "gravel": data.gravel(),
        "checkerboard": data.checkerboard(),
        "clock": data.clock(),
        "cell": data.cell(),
        "stars": data.hubble_deep_field()[:512, :512],
        "blobs": data.binary_blobs(512, rng=1),
        "sparse spots": ndimage.gaussian_filter(spots, 1.5),
    }
    return {name: _gray(image) for name, image in kinds.items()}


def quality_cases(size: int, doses, trials: int, seed: int = 0):
    """(kind, dose, reference, moving, true displacement or None for unrelated content)."""
    rng = np.random.default_rng(seed)
    kinds = image_kinds(seed)
    names = list(kinds)
    for name, img in kinds.items():
        rows, cols = img.shape
        for dose in doses:
            for trial in range(trials):
                d = rng.uniform(-6.0, 6.0, 2)
                y0, x0 = rng.integers(8, rows - size - 8), rng.integers(8, cols - size - 8)
                ref = img[y0 : y0 + size, x0 : x0 + size]
                around = img[y0 - 8 : y0 + size + 8, x0 - 8 : x0 + size + 8]
                mov = ndimage.shift(around, d, order=3, mode="nearest")[8 : 8 + size, 8 : 8 + size]
                truth = d
                if trial >= trials - 2:  # unrelated content: any shift it returns is a failure
                    other = kinds[names[(names.index(name) + trial) % len(names)]]
                    y1, x1 = rng.integers(0, other.shape[0] - size), rng.integers(0, other.shape[1] - size)
                    mov, truth = other[y1 : y1 + size, x1 : x1 + size], None
                if dose is not None:
                    ref = rng.poisson(np.clip(ref, 0.0, None) * dose).astype(np.float64)
                    mov = rng.poisson(np.clip(mov, 0.0, None) * dose).astype(np.float64)
                yield name, dose, ref, mov, truth


def bench_quality(quick: bool, log=print, *, seed: int = 0) -> dict:
    """Part (f): the quality flag and the stated uncertainty on varied content (module docstring).

    ``seed`` draws other crops, shifts and noise from the same images (the benchmark: 0)."""
    doses = (None, 1000.0, 100.0, 10.0)
    sizes = (64,) if quick else (64, 128)
    trials = 4 if quick else 10
    rows = []
    for size in sizes:
        for name, dose, ref, mov, truth in quality_cases(size, doses, trials, seed):
            r = register(ref, mov, upsample_factor=100)
            err = np.inf if truth is None else float(np.max(np.abs(np.asarray(r.shift) + truth)))
            rows.append((name, dose, size, err, bool(r.quality.ok), float(np.max(r.quality.uncertainty_px))))
    err = np.array([r[3] for r in rows])
    ok = np.array([r[4] for r in rows])
    unc = np.array([r[5] for r in rows])
    big, small, finite = err > 1.0, err <= 0.3, np.isfinite(err)

    def share(mask, among):
        return float(np.mean(mask[among])) if among.any() else None

    out = {
        "registrations": len(rows),
        "seed": seed,
        "sizes_px": list(sizes),
        "doses_counts_per_px": [d if d is not None else "noise-free" for d in doses],
        "over_1px": int(big.sum()),
        "flagged_of_over_1px": share(~ok, big),
        "within_0p3px": int(small.sum()),
        "flagged_of_within_0p3px": share(~ok, small),
        "beyond_3_sigma": share(err > 3.0 * unc, finite),
        "by_dose": {},
        "by_kind": {},
    }
    for key, index in (("by_dose", 1), ("by_kind", 0)):
        for value in dict.fromkeys(r[index] for r in rows):
            sel = np.array([r[index] == value for r in rows])
            out[key][str(value if value is not None else "noise-free")] = {
                "flagged_of_over_1px": share(~ok, sel & big),
                "flagged_of_within_0p3px": share(~ok, sel & small),
                "beyond_3_sigma": share(err > 3.0 * unc, sel & finite),
            }
    log(
        f"(f) quality flag on {len(rows)} registrations of {len(image_kinds())} kinds of content "
        f"({', '.join(str(d) for d in out['doses_counts_per_px'])} counts/px; "
        f"{', '.join(map(str, sizes))} px): "
        f"flagged {_pct(out['flagged_of_over_1px'])} of {out['over_1px']} more than 1 px off, "
        f"{_pct(out['flagged_of_within_0p3px'])} of {out['within_0p3px']} within 0.3 px; errors beyond 3 "
        f"stated sigma {_pct(out['beyond_3_sigma'])}"
    )
    for dose, f in out["by_dose"].items():
        log(
            f"    {dose}: flagged {_pct(f['flagged_of_over_1px'])} of > 1 px, "
            f"{_pct(f['flagged_of_within_0p3px'])} of <= 0.3 px; beyond 3 sigma {_pct(f['beyond_3_sigma'])}"
        )
    return out


def _pct(x) -> str:
    return "n/a" if x is None else f"{100.0 * x:.1f} %"
