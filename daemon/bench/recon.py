"""``livetomo bench recon``: reconstruction speed and accuracy against astra-toolbox and scikit-image.

Three parts, each on data simulated in the same run, accuracy measured against the true phantom:

(a) FBP of one slice of a Shepp-Logan-type phantom, 512 and 1024 px, from 180, 360 and 720
    angles over 180 deg (sparse: N <= 0.35 n): livetomo's ``fbp`` against astra-toolbox's CPU
    ``FBP`` (parallel geometry, ``linear`` projector) and scikit-image's ``iradon``, every peer
    on both cores (``_fbp_peers.py`` says how and how the geometries are matched), medians and
    ranges of interleaved repeats, ratios, RMSE in the inscribed disk for the ramp filter and
    for every filter each side has.
(b) Incremental update throughput: adding one projection to a 256³ volume (read and write of
    every voxel), in voxel updates per second, next to the memory-bandwidth limit measured in
    the same run, the generic array path (``backend="xp"``) and the preview-only mode; the
    back-projection alone through the column kernel ``add`` uses (on both threads and on one)
    and through the row kernel of FBP and the preview planes. The
    limit: an update reads and writes 4 bytes of the accumulator (8 bytes, no write-allocate:
    the line was just read); a copy ``dst[:] = src`` moves 12 bytes per element (read src,
    read dst's line for the write-allocate, write dst), so the copy's bandwidth is
    12 bytes x elements / time; an in-place parallel ``a[i] += 1`` (exactly the update's
    traffic) is measured too and the higher of the two limits is used.
(c) Iterative refinement: SIRT and TV (``TVDescent``) warm-started from the incremental FBP at a
    stated number of iterations, against FBP (ramp and Hann) on a dose-fractionated XRF Zn scan
    (``simulators.microprobe``: many angles, 1 ms dwell, Zn Kα window of the simulated spectra)
    and on a ±60° missing-wedge tilt series of a cryo-FIB lamella (``simulators.k3``).

Central slices of phantom / FBP / SIRT / TV go to PNG files (not in quick mode). The machine is
shared: figures are what this run measured.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ...processing.recon import (
    IncrementalReconstructor,
    angular_weights,
    fbp,
    normalized_counts,
    tilt_weights,
)
from ...processing.recon.backprojection import (
    angle_terms,
    backproject_columns,
    backproject_filtered,
    row_layout,
)
from ...simulators import k3
from ...simulators.microprobe import XRFMicroprobe
from ...simulators.projector import project_many
from ...simulators.specimen import make_cell
from ._fbp_peers import bench_fbp_regimes
from .timing import interleaved_medians, jsonable

# Modified Shepp-Logan (Toft): value, semi-axes (a, b), centre (x0, y0), rotation (deg), in
# units of the half-width; y up.
_ELLIPSES = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)


def shepp_logan(n: int, *, supersample: int = 4, scale: float = 0.9) -> np.ndarray:
    """Modified Shepp-Logan phantom, (n, n) float64, pixel-averaged (supersampled), inside the disk."""
    c = (n - 1) / 2.0
    t = (np.arange(n * supersample) + 0.5) / supersample - 0.5
    y, x = np.meshgrid(-(t - c) / (scale * n / 2), (t - c) / (scale * n / 2), indexing="ij")
    img = np.zeros_like(x)
    for value, a, b, x0, y0, phi in _ELLIPSES:
        p = np.deg2rad(phi)
        u = (x - x0) * np.cos(p) + (y - y0) * np.sin(p)
        v = -(x - x0) * np.sin(p) + (y - y0) * np.cos(p)
        img[(u / a) ** 2 + (v / b) ** 2 <= 1] += value
    return img.reshape(n, supersample, n, supersample).mean(axis=(1, 3))


def _rmse(a, b, mask=None) -> float:
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(np.sqrt(np.mean(d[mask] ** 2 if mask is not None else d**2)))


# ----------------------------------------------------------------------------- (b) throughput


COPY_BYTES_PER_ELEMENT = 12  # float32 copy: read src, read dst (write-allocate), write dst
UPDATE_BYTES = 8  # accumulator update: read and write 4 bytes (the line is already in cache)


def _bandwidth(n_bytes: int, repeats: int) -> dict:
    """Memory bandwidth, bytes per second: numpy and two-thread copies (12 bytes per element),
    and a two-thread in-place increment (8 bytes per element, the accumulator's own traffic)."""
    src = np.ones(n_bytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    copy2, increment2 = _parallel_kernels()
    copy2(dst, src)
    increment2(dst)
    times = interleaved_medians(
        {
            "numpy_copy": lambda: np.copyto(dst, src),
            "threads_copy": lambda: copy2(dst, src),
            "threads_in_place": lambda: increment2(dst),
        },
        repeats,
    )
    per_element = {"numpy_copy": COPY_BYTES_PER_ELEMENT, "threads_copy": COPY_BYTES_PER_ELEMENT,
                   "threads_in_place": UPDATE_BYTES}  # fmt: skip
    return {k: per_element[k] * src.size / t for k, t in times.items()}


def _parallel_kernels():
    from numba import njit, prange

    @njit(parallel=True)
    def copy(dst, src):  # pragma: no cover - compiled
        for i in prange(src.size):
            dst[i] = src[i]

    @njit(parallel=True)
    def increment(a):  # pragma: no cover - compiled
        for i in prange(a.size):
            a[i] += 1.0

    return copy, increment


def _one_thread_seconds(fn, repeats: int) -> float:
    """Median wall seconds of ``fn`` with numba's parallel loops on one thread."""
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return float(np.median([_timed(fn) for _ in range(repeats)]))
    finally:
        numba.set_num_threads(threads)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cpu_and_wall(fn, repeats: int) -> tuple[float, float]:
    """Median CPU seconds (all threads) and wall seconds of ``fn``."""
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return float(np.median(cpu)), float(np.median(wall))


def bench_incremental(n: int, repeats: int, log) -> dict:
    batch = 4
    angles = np.linspace(0.0, 180.0, (batch + 4) * repeats + 16, endpoint=False)
    rng = np.random.default_rng(0)
    projection = rng.random((n, n)).astype(np.float32)
    stack = np.repeat(projection[None], batch, axis=0)
    inc = IncrementalReconstructor((n, n), angles_deg=angles)
    light = IncrementalReconstructor((n, n), angles_deg=angles, mode="previews")
    generic = IncrementalReconstructor((n, n), angles_deg=angles, backend="xp")
    q = inc.plan.filter(projection[None], scale=np.ones((1, 1), np.float32))
    qt = inc.plan.filter(projection[None], scale=np.ones((1, 1), np.float32), transposed=True)
    terms = angle_terms(inc.plan, [33.0], [(n - 1) / 2.0], (n, n))
    layout = row_layout("volume", n, n, (n, n))
    volume = np.zeros((n * n, n), np.float32)  # the volume layout's rows: (slices × ny, nx)
    columns = np.zeros((n, n, n), np.float32)  # the slice-minor accumulator of add: (ny, nx, slices)
    angle = iter(angles)
    inc.add(projection, next(angle))  # warm-up (the compiled kernels load)
    light.add(projection, angles[-1])
    runs = {
        "add": lambda: inc.add(projection, next(angle)),
        "add_many_4": lambda: inc.add_many(stack, [next(angle) for _ in range(batch)]),
        "backprojection_only": lambda: backproject_columns(qt, inc.plan, terms, (n, n), columns),
        "row_kernel": lambda: backproject_filtered(q, inc.plan, terms, layout, volume),
        "previews_mode_add": lambda: light.add(projection, next(angle)),
    }
    times = interleaved_medians(runs, repeats)
    one_thread = _one_thread_seconds(runs["backprojection_only"], repeats)
    cpu_add, wall_add = _cpu_and_wall(runs["add"], repeats)
    t0 = time.perf_counter()
    generic.add(projection, angles[-1])
    t_generic = time.perf_counter() - t0
    bw = _bandwidth(256 << 20, max(repeats // 2, 3))
    voxels = n**3
    rate = {
        "add": voxels / times["add"],
        "add_many_4": batch * voxels / times["add_many_4"],
        "backprojection_only": voxels / times["backprojection_only"],
        "row_kernel": voxels / times["row_kernel"],
        "backprojection_one_thread": voxels / one_thread,
    }
    limit = max(bw.values()) / UPDATE_BYTES
    figures = {
        "volume": [n, n, n],
        "repeats": repeats,
        "median_s": times,
        "voxel_updates_per_s": rate,
        "add_voxel_updates_per_cpu_s": voxels / cpu_add,
        "cpu_cores_obtained_during_add": cpu_add / wall_add,
        "generic_xp_path_voxel_updates_per_s": voxels / t_generic,
        "numba_speedup_over_xp_path": rate["backprojection_only"] / (voxels / t_generic),
        "bandwidth_bytes_per_s": bw,
        "bandwidth_limit_updates_per_s": limit,
        "fraction_of_bandwidth_limit": {k: r / limit for k, r in rate.items()},
        "previews_mode_speedup": times["add"] / times["previews_mode_add"],
    }
    frac = figures["fraction_of_bandwidth_limit"]["add"]
    log(f"(b) incremental update of a {n}^3 volume (medians of {repeats} interleaved runs)")
    log(
        f"  add (filter + back-projection) {times['add'] * 1e3:.1f} ms = {rate['add'] / 1e9:.2f} G "
        f"voxel-updates/s (target >= 3 on 2 cores); batches of {batch}: {rate['add_many_4'] / 1e9:.2f} G/s; "
        f"back-projection alone {rate['backprojection_only'] / 1e9:.2f} G/s (column kernel; on one thread "
        f"{rate['backprojection_one_thread'] / 1e9:.2f} G/s; row kernel of FBP and the preview planes "
        f"{rate['row_kernel'] / 1e9:.2f} G/s)"
    )
    log(
        f"  per CPU-second: {voxels / cpu_add / 1e9:.2f} G updates; this process got "
        f"{cpu_add / wall_add:.2f} of the 2 cores during add (the machine is shared)"
    )
    log(
        f"  memory bandwidth: numpy copy {bw['numpy_copy'] / 1e9:.1f} GB/s, two-thread copy "
        f"{bw['threads_copy'] / 1e9:.1f} GB/s (12 bytes per element), two-thread in-place update "
        f"{bw['threads_in_place'] / 1e9:.1f} GB/s (8 bytes) -> limit {limit / 1e9:.2f} G updates/s "
        f"(8 bytes each); add reaches {frac:.2f} of it"
    )
    log(
        f"  generic array path (backend='xp') {voxels / t_generic / 1e9:.3f} G/s; previews-only mode "
        f"{times['previews_mode_add'] * 1e3:.2f} ms per projection "
        f"({figures['previews_mode_speedup']:.0f}x less)"
    )
    return figures


# ----------------------------------------------------------------------------- (c) iterative


def _refine(
    data, angles, truth, iterations, *, start_filter="ramp", shape_yx=None, **fbp_kw
) -> tuple[dict, dict]:
    """FBP (ramp, Hann); SIRT and TV warm-started from the incremental FBP; RMSE against truth.

    SIRT is reported after ``iterations // 5`` and ``iterations`` iterations (it converges
    towards the noisy least-squares solution, so on noisy data its error has a minimum).
    """
    kw = {"shape_yx": shape_yx, **fbp_kw}
    inc = IncrementalReconstructor(data.shape[1:], angles_deg=angles, filter_name=start_filter, **kw)
    for p, a in zip(data, angles, strict=True):
        inc.add(p, a)
    results = {
        "fbp_ramp": fbp(data, angles, **kw),
        "fbp_hann": fbp(data, angles, filter_name="hann", **kw),
    }
    early = max(iterations // 5, 1)
    sirt = inc.refiner("sirt", nonnegative=True)
    t0 = time.perf_counter()
    results[f"sirt_{early}"] = sirt.run(early)
    results["sirt"] = sirt.run(iterations - early)
    t_sirt = (time.perf_counter() - t0) / iterations
    tv = inc.refiner("tv", nonnegative=True)
    t0 = time.perf_counter()
    results["tv"] = tv.run(iterations)
    t_tv = (time.perf_counter() - t0) / iterations
    rmse = {k: _rmse(v, truth) for k, v in results.items()}
    best_fbp = min(rmse["fbp_ramp"], rmse["fbp_hann"])
    figures = {
        "iterations": iterations,
        "sirt_early_iterations": early,
        "warm_start": f"incremental FBP, {start_filter} filter",
        "rmse": rmse,
        "rmse_truth_std": float(np.std(truth)),
        "seconds_per_iteration": {"sirt": t_sirt, "tv": t_tv},
        "tv_mu": float(np.mean(tv.mu)),
        "tv_noise_sigma": float(np.mean(tv.sigma)),
        "improvement_over_fbp_ramp": {k: rmse["fbp_ramp"] / rmse[k] for k in ("sirt", f"sirt_{early}", "tv")},
        "improvement_over_best_fbp": {k: best_fbp / rmse[k] for k in ("sirt", f"sirt_{early}", "tv")},
    }
    return figures, {
        "truth": truth,
        **{k: results[k] for k in ("fbp_ramp", "fbp_hann", f"sirt_{early}", "tv")},
    }


def bench_xrf(shape, n_angles: int, dwell_s: float, iterations: int, log) -> tuple[dict, dict]:
    spec = make_cell(shape, voxel_size_nm=300.0, seed=11)
    probe = XRFMicroprobe(spec, seed=12)
    det = probe.detector
    window = det.roi_channels("Zn")
    # Background under the Zn Kα window (scatter tails, continuum): a window of the same width
    # just below it, clear of Cu Kα (8.05 keV) and of the Zn line (>= 2.4 σ away).
    width = window.stop - window.start
    side = slice(window.start - width - det.channel_of(0.03) + det.channel_of(0.0), window.start)
    side = slice(side.start, side.start + width)
    profile = det.line_profiles(["Zn"])[0]
    captured = float(profile[window].sum() - profile[side].sum())  # net share of Zn counts
    from ...simulators.xrf import FLUORESCENCE_CROSS_SECTION_CM2_G

    # Counts per (µg/cm²) of projected Zn: photons x detected fraction x cross-section x window share.
    per_areal_mass = (
        probe.flux_photons_per_s * dwell_s * probe.xrf_yield * FLUORESCENCE_CROSS_SECTION_CM2_G["Zn"]
    )
    per_areal_mass *= 1e-6 * captured
    angles = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    maps = []
    t0 = time.perf_counter()
    for a in angles:
        r = probe.raster(a, dwell_s=dwell_s)
        net = r.spectra[..., window].sum(-1).astype(np.float32) - r.spectra[..., side].sum(-1)
        counts = normalized_counts(net, live_fraction=r.live_fraction)
        maps.append(counts / per_areal_mass * 1e4)  # µg/cm² -> µg/cm³·µm
    maps = np.stack(maps).astype(np.float32)
    log(f"  {n_angles} rasters of {maps.shape[1]} x {maps.shape[2]} px in {time.perf_counter() - t0:.1f} s")
    truth = spec.elements["Zn"]
    # Dose-fractionated data are noise-dominated: the live reconstruction uses the Hann filter.
    figures, results = _refine(
        maps, angles, truth, iterations, start_filter="hann", voxel_size=spec.voxel_size_nm * 1e-3
    )
    figures.update(
        {
            "volume": list(spec.shape),
            "n_angles": n_angles,
            "dwell_ms": dwell_s * 1e3,
            "mean_net_zn_counts_per_pixel": float(np.mean(maps) * per_areal_mass / 1e4),
            "units": "µg/cm³",
        }
    )
    return figures, results


def bench_wedge(shape, iterations: int, log) -> tuple[dict, dict]:
    voxel_nm, dose, pixel_A = 2.0, 3.0, 20.0
    pot = k3.make_lamella(shape, voxel_size_nm=voxel_nm, seed=21)
    v_ice = np.median(pot[pot > 0])
    truth = pot - v_ice * np.clip(pot / v_ice, 0.0, 1.0)  # excess potential: what gives contrast
    tilts = np.array(_dose_symmetric(60.0, 2.0))
    alpha = 2.0 * k3.interaction_constant(300.0) * voxel_nm  # contrast per V·voxel (weak phase, 2σφ)
    # Zero-loss electrons per pixel: the energy filter removes inelastic ones, and the slab's path
    # grows as 1/cos(tilt), so high tilts are noisier (what the tilt weights are for).
    thickness_nm = 0.75 * shape[1] * voxel_nm  # make_lamella's default slab
    zero_loss = np.exp(-thickness_nm / (k3.inelastic_mfp_nm(300.0) * np.cos(np.deg2rad(tilts))))
    electrons = dose * pixel_A**2 * zero_loss[:, None, None]
    rng = np.random.default_rng(22)
    projected = project_many(truth, tilts)
    counts = rng.poisson(electrons * np.exp(-alpha * projected))
    data = (-np.log(np.maximum(counts, 0.5) / electrons) / alpha).astype(np.float32)
    log(
        f"  {tilts.size} tilts ±60° (dose-symmetric), {dose} e/Å² per tilt: {electrons.max():.0f} (0°) to "
        f"{electrons.min():.0f} (60°) zero-loss e per pixel"
    )
    figures, results = _refine(data, tilts, truth, iterations, shape_yx=shape[1:])
    figures.update(
        {"volume": list(shape), "tilts": [float(tilts.min()), float(tilts.max()), 2.0], "units": "V"}
    )
    figures["tilt_weighted_fbp_rmse"] = {
        str(lam): _rmse(fbp(data, tilts, shape_yx=shape[1:], tilt_lambda=lam), truth)
        for lam in (0.0, 0.5, 2.0)
    }
    figures["tilt_weights_study"] = tilt_weight_study(shape, log)
    return figures, {"truth": truth, **results}


def tilt_weight_study(shape, log) -> dict:
    """What the source's weights w = cos α / (1 + λ sin² α) do to a weighted FBP of a lamella.

    RMSE against the true excess potential (V) of the FBP (ramp) of 61 tilts (±60°, 2°) for
    λ = 0, 0.5, 2 and none: the weights as defined (1 at zero tilt, so they also scale the volume
    by their mean), normalised (how livetomo applies them: Σ Δθ w = Σ Δθ) and each volume at its
    best scale (what is left is their shape: an anisotropic angular weighting); for the benchmark's
    series, noise-free, a tenth of the dose, and a slab whose zero-loss transmission falls as a
    700 nm one would.
    """
    voxel_nm, pixel_A = 2.0, 20.0
    pot = k3.make_lamella(shape, voxel_size_nm=voxel_nm, seed=21)
    v_ice = np.median(pot[pot > 0])
    truth = pot - v_ice * np.clip(pot / v_ice, 0.0, 1.0)
    tilts = np.array(_dose_symmetric(60.0, 2.0))
    alpha = 2.0 * k3.interaction_constant(300.0) * voxel_nm
    projected = project_many(truth, tilts)
    d_theta = angular_weights(tilts)
    cases = {
        "3 e/A2, 72 nm slab": (3.0, 0.75 * shape[1] * voxel_nm),
        "noise-free": (None, 0.0),
        "0.3 e/A2, 72 nm slab": (0.3, 0.75 * shape[1] * voxel_nm),
        "3 e/A2, zero-loss of a 700 nm slab": (3.0, 700.0),
    }
    out = {}
    for name, (dose, thickness_nm) in cases.items():
        rng = np.random.default_rng(22)
        if dose is None:
            data = projected.astype(np.float32)
        else:
            zero_loss = np.exp(-thickness_nm / (k3.inelastic_mfp_nm(300.0) * np.cos(np.deg2rad(tilts))))
            electrons = dose * pixel_A**2 * zero_loss[:, None, None]
            counts = rng.poisson(electrons * np.exp(-alpha * projected))
            data = (-np.log(np.maximum(counts, 0.5) / electrons) / alpha).astype(np.float32)
        row = {}
        plain = fbp(data, tilts, shape_yx=shape[1:])
        row["none"] = {"as defined": _rmse(plain, truth), "normalised": _rmse(plain, truth),
                       "best scale": _best_scale_rmse(plain, truth)}  # fmt: skip
        for lam in (0.0, 0.5, 2.0):
            w = tilt_weights(tilts, lam)
            as_defined = fbp(data, tilts, shape_yx=shape[1:], weights=w)
            normalised = fbp(data, tilts, shape_yx=shape[1:], tilt_lambda=lam)
            row[str(lam)] = {
                "as defined": _rmse(as_defined, truth),
                "normalised": _rmse(normalised, truth),
                "best scale": _best_scale_rmse(normalised, truth),
                "mean weight": float(np.sum(d_theta * w) / np.sum(d_theta)),
            }
        out[name] = row
        log(
            f"  tilt weights, {name}: RMSE none {row['none']['as defined']:.3f}; "
            + "; ".join(
                f"λ={lam}: {row[lam]['as defined']:.3f} as defined, {row[lam]['normalised']:.3f} normalised, "
                f"{row[lam]['best scale']:.3f} at best scale"
                for lam in ("0.0", "0.5", "2.0")
            )
        )
    return out


def _best_scale_rmse(volume, truth) -> float:
    v = np.asarray(volume, dtype=np.float64)
    a = float(np.sum(v * truth) / np.sum(v * v))
    return _rmse(a * v, truth)


def _dose_symmetric(max_deg: float, step: float) -> list[float]:
    """0, +s, +2s, -s, -2s, +3s, ... (Hagen, groups of two)."""
    ladder = np.arange(step, max_deg + 1e-6, step)
    order = [0.0]
    for i in range(0, ladder.size, 2):
        order += list(ladder[i : i + 2]) + list(-ladder[i : i + 2])
    return order


def _log_refinement(title: str, f: dict, log) -> None:
    r, early = f["rmse"], f["sirt_early_iterations"]
    log(title)
    log(
        f"  RMSE ({f['units']}): FBP ramp {r['fbp_ramp']:.4g}, FBP Hann {r['fbp_hann']:.4g}; from the "
        f"{f['warm_start']}: SIRT {r[f'sirt_{early}']:.4g} ({early} it.) / {r['sirt']:.4g} "
        f"({f['iterations']} it.), TV {r['tv']:.4g} ({f['iterations']} it.); "
        f"truth std {f['rmse_truth_std']:.4g}; TV mu = {f['tv_mu']:.3g} "
        f"from noise sigma {f['tv_noise_sigma']:.3g}"
    )
    s = f["seconds_per_iteration"]
    log(f"  per iteration: SIRT {s['sirt'] * 1e3:.0f} ms, TV {s['tv'] * 1e3:.0f} ms")


# ----------------------------------------------------------------------------- pictures


def _write_pictures(out_dir: Path, name: str, panels: dict, log) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(3.2 * len(panels), 3.4))
    FigureCanvasAgg(fig)
    truth = next(iter(panels.values()))
    lo, hi = np.percentile(truth, [0.5, 99.5])
    for i, (title, img) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=110)
    log(f"  wrote {path}")
    return str(path)


def _central(vol):
    return vol[vol.shape[0] // 2] if vol.ndim == 3 else vol


# ----------------------------------------------------------------------------- entry point


def run(*, quick: bool = False, log=print, out_dir: str | Path = "livetomo_bench_recon") -> dict:
    """Run (a), (b), (c); print through ``log``; return every figure (JSON-serialisable)."""
    if quick:
        fbp_cases, inc_n, inc_repeats, iters = [(128, 44), (128, 90), (128, 180)], 96, 5, 10
        xrf_shape, xrf_angles, wedge_shape = (8, 40, 40), 60, (12, 32, 48)
    else:
        fbp_cases = [(n, a) for n in (512, 1024) for a in (180, 360, 720)]
        inc_n, inc_repeats, iters = 256, 9, 50
        xrf_shape, xrf_angles, wedge_shape = (16, 64, 64), 180, (32, 48, 96)
    figures: dict = {"quick": quick}
    figures["fbp"], slices_fbp = bench_fbp_regimes(
        fbp_cases, lambda n: 3 if quick else (5 if n <= 512 else 3), shepp_logan, log
    )
    figures["incremental"] = bench_incremental(inc_n, inc_repeats, log)
    log(f"(c) XRF Zn, dose-fractionated: {xrf_angles} angles, 1 ms dwell")
    figures["xrf"], slices_xrf = bench_xrf(xrf_shape, xrf_angles, 1e-3, iters, log)
    _log_refinement("  result:", figures["xrf"], log)
    log("(c) missing-wedge tilt series of a lamella")
    figures["wedge"], slices_wedge = bench_wedge(wedge_shape, iters, log)
    _log_refinement("  result:", figures["wedge"], log)
    if not quick:
        out = Path(out_dir)
        figures["pictures"] = [
            _write_pictures(
                out,
                "fbp_512_180",
                {k: slices_fbp[k] for k in ("phantom", "livetomo", "astra", "skimage")},
                log,
            ),
            _write_pictures(out, "xrf_zn", {k: _central(v) for k, v in slices_xrf.items()}, log),
            _write_pictures(out, "wedge", {k: v[v.shape[0] // 2] for k, v in slices_wedge.items()}, log),
        ]
    return jsonable(figures)
