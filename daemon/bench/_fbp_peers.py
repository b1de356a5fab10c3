"""Part (a) of ``livetomo bench recon``: FBP accuracy and speed against astra and ``iradon``.

Every peer runs at its best on the same cores as livetomo:

- livetomo's ``fbp`` uses every core (numba's parallel kernels, scipy.fft workers).
- astra-toolbox's CPU ``FBP`` and scikit-image's ``iradon`` run on one thread each, so they
  get one worker process per core (a spawned pool, started and warmed up before the timing),
  each reconstructing an interleaved half of the angles (every other angle); the halves are
  averaged. That is exact, not an approximation: both filter each projection on its own and
  normalise by the number of angles (π/(2N)), so the mean of the two halves' reconstructions
  is the whole set's (checked in the run: ``two_core_max_rel_diff``). Inside each worker BLAS
  and OpenMP are limited to one thread (threadpoolctl), so two workers use two cores. Threads
  were tried first: astra releases the GIL (1.66x on two threads) but ``iradon`` does not
  enough (1.35x); processes gave 2.0x and 1.6x.
- Sinograms come from livetomo's numba ray-driven projector
  (``processing.recon.project``), which reproduces ``simulators.projector`` (relative
  difference 6e-6 on the 512 px / 360-angle sinogram) 30x faster: the 1024 px / 720-angle
  sinogram took 3.5 min with the simulator.

Geometry matching (as before): astra gets -θ (its y axis points up); ``iradon`` gets -θ and
rows moved by -0.5 + 0.5 (cos θ + sin θ) px (exact Fourier shift, outside the timing) because
it centres detector and image at n // 2. All use the ramp filter with zero padding and unit
pixels. Accuracy is the RMSE against the true phantom in the inscribed disk; it is also given
for every filter each side offers (its best filter chosen knowing the truth, which no user
can do, so it is reported next to the like-for-like ramp figure, not instead of it).
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ...processing.recon import fbp, project
from .timing import interleaved_times

ASTRA_FILTERS = {"ramp": "ram-lak", "shepp-logan": "shepp-logan", "cosine": "cosine",
                 "hamming": "hamming", "hann": "hann"}  # fmt: skip
SKIMAGE_FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
LIVETOMO_FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


# ----------------------------------------------------------------------------- peer runners
# Module-level functions: the spawned workers import them by name.


def _one_thread() -> None:
    """Worker initialiser: BLAS/OpenMP on one thread, so two workers use two cores."""
    import threadpoolctl

    threadpoolctl.threadpool_limits(limits=1)


def astra_fbp(sino: np.ndarray, angles_deg: np.ndarray, n: int, filter_type: str = "ram-lak") -> np.ndarray:
    """astra-toolbox CPU FBP of one (N, n) sinogram onto an n x n grid (what
    ``astra.create_reconstruction("FBP", ...)`` does, minus its unused options)."""
    import astra

    vol_geom = astra.create_vol_geom(n, n)
    proj_geom = astra.create_proj_geom("parallel", 1.0, n, -np.deg2rad(angles_deg))
    projector = astra.create_projector("linear", proj_geom, vol_geom)
    sino_id = astra.data2d.create("-sino", proj_geom, sino)
    rec_id = astra.data2d.create("-vol", vol_geom, 0.0)
    cfg = astra.astra_dict("FBP")
    cfg.update(ProjectorId=projector, ProjectionDataId=sino_id, ReconstructionDataId=rec_id)
    cfg["option"] = {"FilterType": filter_type}
    alg_id = astra.algorithm.create(cfg)
    astra.algorithm.run(alg_id)
    out = astra.data2d.get(rec_id)
    astra.algorithm.delete(alg_id)
    astra.data2d.delete([sino_id, rec_id])
    astra.projector.delete(projector)
    return out


def skimage_fbp(sk_sino: np.ndarray, angles_deg: np.ndarray, n: int, filter_name: str = "ramp") -> np.ndarray:
    """scikit-image ``iradon`` of a sinogram already moved onto its centring (see the module)."""
    from skimage.transform import iradon

    return iradon(sk_sino, -angles_deg, filter_name=filter_name, output_size=n, circle=True)


def skimage_sinogram(sino: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Sinogram (n_u, N) for iradon: rows moved so its centre n // 2 lands on ours, (n - 1)/2."""
    import scipy.fft as sfft

    n_angles, n_u = sino.shape
    th = np.deg2rad(angles_deg)
    e = -0.5 + 0.5 * (np.cos(th) + np.sin(th))  # px; see the module docstring
    size = sfft.next_fast_len(4 * n_u)
    padded = np.zeros((n_angles, size))
    padded[:, :n_u] = sino
    k = sfft.fftfreq(size)
    moved = np.real(sfft.ifft(sfft.fft(padded, axis=1) * np.exp(2j * np.pi * k[None] * e[:, None]), axis=1))
    return np.ascontiguousarray(moved[:, :n_u].T)


class TwoCorePeers:
    """astra and iradon on two worker processes, each with an interleaved half of the angles."""

    def __init__(self, workers: int = 2):
        self.workers = workers
        self.pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread
        )

    def close(self) -> None:
        self.pool.shutdown()

    def _split(self, fn, data, angles, n, option, axis):
        w = self.workers
        halves = [
            np.ascontiguousarray(np.take(data, range(i, data.shape[axis], w), axis=axis)) for i in range(w)
        ]
        parts = [self.pool.submit(fn, halves[i], angles[i::w], n, option) for i in range(w)]
        return sum(p.result() for p in parts) / w

    def astra(self, sino, angles, n, filter_type="ram-lak"):
        return self._split(astra_fbp, sino, angles, n, filter_type, axis=0)

    def skimage(self, sk_sino, angles, n, filter_name="ramp"):
        return self._split(skimage_fbp, sk_sino, angles, n, filter_name, axis=1)


# ----------------------------------------------------------------------------- the comparison


def _rmse(a, b, mask) -> float:
    d = np.asarray(a, float)[mask] - np.asarray(b, float)[mask]
    return float(np.sqrt(np.mean(d**2)))


def fbp_case(phantom: np.ndarray, n_angles: int, repeats: int, peers: TwoCorePeers, log) -> tuple[dict, dict]:
    """One (n, N) case: RMSE of every side (ramp, and every filter), times on two cores."""
    n = phantom.shape[0]
    angles = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    t0 = time.perf_counter()
    sino = np.asarray(project(phantom[None].astype(np.float32), angles))[:, 0]
    t_sino = time.perf_counter() - t0
    sk_sino = skimage_sinogram(sino, angles)
    disk = np.hypot(*(np.mgrid[:n, :n] - (n - 1) / 2.0)) < n / 2 - 2
    out: dict[str, np.ndarray] = {}

    runs = {
        "livetomo": lambda: out.__setitem__("livetomo", fbp(sino, angles, padding="zeros")),
        "astra": lambda: out.__setitem__("astra", peers.astra(sino, angles, n)),
        "skimage": lambda: out.__setitem__("skimage", peers.skimage(sk_sino, angles, n)),
        "astra_one_core": lambda: astra_fbp(sino, angles, n),
        "skimage_one_core": lambda: skimage_fbp(sk_sino, angles, n),
    }
    for fn in runs.values():  # warm-up: compiled kernels, imports in the workers
        fn()
    times = interleaved_times(runs, repeats)
    median = {k: statistics.median(v) for k, v in times.items()}
    one_astra, one_skimage = astra_fbp(sino, angles, n), skimage_fbp(sk_sino, angles, n)
    agreement = {
        "astra": float(np.abs(out["astra"] - one_astra).max() / np.abs(one_astra).max()),
        "skimage": float(np.abs(out["skimage"] - one_skimage).max() / np.abs(one_skimage).max()),
    }
    rmse = {k: _rmse(v, phantom, disk) for k, v in out.items()}
    every_filter = {
        "livetomo": {f: _rmse(fbp(sino, angles, padding="zeros", filter_name=f), phantom, disk)
                     for f in LIVETOMO_FILTERS},
        "astra": {f: _rmse(peers.astra(sino, angles, n, a), phantom, disk) for f, a in ASTRA_FILTERS.items()},
        "skimage": {f: _rmse(peers.skimage(sk_sino, angles, n, f), phantom, disk) for f in SKIMAGE_FILTERS},
    }  # fmt: skip
    best = {side: min(v.items(), key=lambda kv: kv[1]) for side, v in every_filter.items()}
    figures = {
        "size": n,
        "n_angles": n_angles,
        "angles_per_pixel": n_angles / n,
        "sparse": n_angles <= 0.36 * n,  # the N <= 0.35 n, which means 180 angles at 512 px too
        "sinogram_s": t_sino,
        "repeats": repeats,
        "median_s": median,
        "range_s": {k: [min(v), max(v)] for k, v in times.items()},
        # Each peer at its best: the faster of its two-process and its one-process runs (at small
        # sizes moving data to the workers costs more than the second core saves).
        "peer_best_s": {p: min(median[p], median[f"{p}_one_core"]) for p in ("astra", "skimage")},
        "speedup_vs_astra": min(median["astra"], median["astra_one_core"]) / median["livetomo"],
        "speedup_vs_skimage": min(median["skimage"], median["skimage_one_core"]) / median["livetomo"],
        "peer_two_core_speedup": {
            "astra": median["astra_one_core"] / median["astra"],
            "skimage": median["skimage_one_core"] / median["skimage"],
        },
        "two_core_max_rel_diff": agreement,
        "rmse_disk": rmse,
        "livetomo_lowest": rmse["livetomo"] < min(rmse["astra"], rmse["skimage"]),
        "livetomo_without_sampling_window": _rmse(
            fbp(sino, angles, padding="zeros", sampling_window=False), phantom, disk
        ),
        "livetomo_linear_interpolation": _rmse(
            fbp(sino, angles, padding="zeros", interpolation="linear", sampling_window=False), phantom, disk
        ),
        "rmse_every_filter": every_filter,
        "best_filter": {side: {"filter": f, "rmse": r} for side, (f, r) in best.items()},
    }
    m, r = median, figures["range_s"]
    log(
        f"  {n:5d} px {n_angles:4d} angles (N/n {n_angles / n:.2f}{', sparse' * figures['sparse']}): "
        f"RMSE livetomo {rmse['livetomo']:.5f} | astra {rmse['astra']:.5f} | iradon {rmse['skimage']:.5f}"
        f"{'  livetomo lowest' if figures['livetomo_lowest'] else '  livetomo NOT lowest'}; "
        f"without the window {figures['livetomo_without_sampling_window']:.5f}"
    )
    log(
        "        best filter (chosen on the truth): "
        + ", ".join(f"{side} {f} {v:.5f}" for side, (f, v) in best.items())
    )
    log(
        f"        time, median [range] of {repeats}: livetomo {m['livetomo'] * 1e3:.0f} "
        f"[{r['livetomo'][0] * 1e3:.0f}-{r['livetomo'][1] * 1e3:.0f}] ms, astra on 2 cores "
        f"{m['astra'] * 1e3:.0f} [{r['astra'][0] * 1e3:.0f}-{r['astra'][1] * 1e3:.0f}] ms (1 core "
        f"{m['astra_one_core'] * 1e3:.0f}), iradon on 2 cores {m['skimage'] * 1e3:.0f} "
        f"[{r['skimage'][0] * 1e3:.0f}-{r['skimage'][1] * 1e3:.0f}] ms (1 core "
        f"{m['skimage_one_core'] * 1e3:.0f}); livetomo is {figures['speedup_vs_astra']:.1f}x astra, "
        f"{figures['speedup_vs_skimage']:.1f}x iradon (each at its faster setting)"
    )
    return figures, {"phantom": phantom, **out}


def bench_fbp_regimes(cases, repeats_for, phantom_of, log) -> tuple[dict, dict]:
    """Every (n, N) case with one pool of peer workers; the slices of the first case for a picture."""
    peers = TwoCorePeers()
    results, first = [], None
    log("(a) FBP against astra CPU FBP and iradon, each on both cores (RMSE in the inscribed disk)")
    try:
        for n, n_angles in cases:
            fig, slices = fbp_case(phantom_of(n), n_angles, repeats_for(n), peers, log)
            results.append(fig)
            first = first or slices
    finally:
        peers.close()
    speed_astra = [c["speedup_vs_astra"] for c in results]
    speed_skimage = [c["speedup_vs_skimage"] for c in results]
    summary = {
        "cases": results,
        "livetomo_lowest_in_every_case": all(c["livetomo_lowest"] for c in results),
        "speedup_vs_astra_median": statistics.median(speed_astra),
        "speedup_vs_astra_range": [min(speed_astra), max(speed_astra)],
        "speedup_vs_skimage_median": statistics.median(speed_skimage),
        "speedup_vs_skimage_range": [min(speed_skimage), max(speed_skimage)],
    }
    log(
        f"  livetomo lowest RMSE in every case: {summary['livetomo_lowest_in_every_case']}; speed-up over "
        f"astra (at its best) median {summary['speedup_vs_astra_median']:.1f}x "
        f"[{min(speed_astra):.1f}-{max(speed_astra):.1f}], over iradon (at its best) "
        f"{summary['speedup_vs_skimage_median']:.1f}x [{min(speed_skimage):.1f}-{max(speed_skimage):.1f}]"
    )
    return summary, first
