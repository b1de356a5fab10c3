"""``livetomo bench scale``: run-end TV refinement of a K3 bin-4 tomogram on one process and on Dask.

The ``k3-bin4`` volume is 1440 (x) × 1023 (z, the tilt axis) × 300 (y, the beam at 0°) voxels
from 41 tilts (±60° in 3° steps). Its full TV refinement is about 50 CPU-minutes per 30
iterations on this 2-core machine, so the benchmark refines a documented fraction: the full
1440 × 300 slices, 64 of the 1023 (1/16), 3 iterations; the time of the
whole volume is projected from it (work ∝ slices × iterations). Four runs of the same
refinement, warm-started from the FBP of a simulated lamella (``simulators.k3``) projected by
``processing.recon.project``:

1. single process, whole volume (what the daemon does without ``processing.dask``; numba on
   both cores);
2. single process, in slabs (``processing.recon.slabs``: 4 slabs of 16 slices, TV halo 4) —
   the reference the Dask runs must equal;
3. Dask ``LocalCluster``, 1 worker process (1 thread);
4. Dask ``LocalCluster``, 2 worker processes (1 thread each);
3 and 4 interleaved three times (medians), both clusters started and warmed up first.

Reported: times, the speed-up of 2 workers over 1, the serial fraction s from Amdahl's law
(S = 1/(s + (1 − s)/p) at p = 2, so s = 2/S − 1), the projected time on 16 and 64 workers
(T₁ (s + (1 − s)/p)) for the fraction and the whole volume, and the agreement: the Dask
volumes against the single-process slab volume (max |difference| / max |volume|, float32
rounding is ~1e-7..1e-6) and the slab volume against the whole-volume one (TV's halo effect).
Two points give a crude Amdahl fit: s lumps together scheduling, data transfer, load imbalance
and other jobs taking the cores, so it moves from run to run; the CPU seconds the workers got
per wall second (``dask_cores_obtained``) show how much of two cores a run really had.
"""

from __future__ import annotations

import time

import numpy as np

from ...processing.recon import TVDescent, fbp, project
from ...processing.recon.slabs import assemble, plan_slabs, refine_in_slabs, refine_slab
from ...simulators import k3
from .timing import jsonable

FULL = {"nz": 1023, "ny": 300, "nx": 1440, "tilts": 41, "iterations": 30}  # k3-bin4, as the daemon refines


def _volume(nz: int, ny: int, nx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth, projections, tilts) of a simulated lamella, 41 tilts ±60°/3°."""
    truth = k3.make_lamella((nz, ny, nx), voxel_size_nm=2.0, n_particles=nx * nz // 80, seed=3)
    truth = truth.astype(np.float32)
    tilts = np.arange(-60.0, 60.0 + 1e-6, 3.0)
    data = np.asarray(project(truth, tilts))
    rng = np.random.default_rng(4)
    data = (data + rng.normal(0.0, 0.05 * float(data.std()), data.shape)).astype(np.float32)
    return truth, data, tilts


def _cluster(workers: int):
    from distributed import Client, LocalCluster

    env = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, env=env
    )
    return cluster, Client(cluster)


def _on_dask(client, tasks) -> np.ndarray:
    """As the daemon does it (``pipeline._refine``): slab data scattered to the workers, one task each."""
    futures = [client.submit(refine_slab, d, pure=False) for d in client.scatter(tasks, hash=False)]
    return assemble(tasks, client.gather(futures))


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def bench_dask(quick: bool, log) -> dict:
    nz, ny, nx = (16, 75, 360) if quick else (64, FULL["ny"], FULL["nx"])
    iterations, slab, halo, repeats = (3, 8, 4, 1) if quick else (3, 16, 4, 3)
    truth, data, tilts = _volume(nz, ny, nx)
    x0 = fbp(data, tilts, shape_yx=(ny, nx))
    tasks = plan_slabs(
        data, tilts, x0, method="tv", n_iter=iterations, slab_slices=slab, halo=halo, shape_yx=(ny, nx)
    )
    options = {k: v for k, v in tasks[0].options.items() if k in ("mu", "lipschitz")}  # the same μ and step
    log(
        f"Dask: TV refinement of {nx} x {nz} x {ny} voxels (x, z, y; k3-bin4 is "
        f"{FULL['nx']} x {FULL['nz']} x {FULL['ny']}), {tilts.size} tilts, {iterations} iterations, "
        f"{len(tasks)} slabs of {slab} (+{halo} halo)"
    )
    times, volumes = {}, {}
    t0 = time.perf_counter()
    volumes["whole"] = TVDescent(data, tilts, x0=x0, shape_yx=(ny, nx), **options).run(iterations)
    times["single_process_whole"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    volumes["slabs"] = refine_in_slabs(tasks)
    times["single_process_slabs"] = time.perf_counter() - t0
    tiny = plan_slabs(data[..., :4, :64], tilts, x0[:4, :, :64], method="tv", n_iter=1, slab_slices=4,
                      shape_yx=(ny, 64), mu=1.0)[0]  # fmt: skip
    clusters = {w: _cluster(w) for w in (1, 2)}  # both up before timing: starting one takes seconds
    runs: dict[str, list[float]] = {"dask_1_workers": [], "dask_2_workers": []}
    cores: dict[str, list[float]] = {"dask_1_workers": [], "dask_2_workers": []}
    try:
        for _, client in clusters.values():
            for address in client.scheduler_info()["workers"]:  # load the compiled kernels everywhere
                client.submit(refine_slab, tiny, workers=[address], pure=False).result()
        for _ in range(repeats):  # interleaved, so drifts in the machine's load hit both alike
            for workers, (_, client) in clusters.items():
                cpu0 = sum(client.run(time.process_time).values())
                t0 = time.perf_counter()
                volumes[f"dask_{workers}"] = _on_dask(client, tasks)
                wall = time.perf_counter() - t0
                runs[f"dask_{workers}_workers"].append(wall)
                # CPU seconds the workers got per wall second: how many cores this run really had
                cpu = sum(client.run(time.process_time).values()) - cpu0
                cores[f"dask_{workers}_workers"].append(cpu / wall)
    finally:
        for cluster, client in clusters.values():
            client.close()
            cluster.close()
    times.update({k: float(np.median(v)) for k, v in runs.items()})
    speedup = times["dask_1_workers"] / times["dask_2_workers"]
    serial = float(np.clip(2.0 / speedup - 1.0, 0.0, 1.0))
    scale_full = (FULL["nz"] / nz) * (FULL["iterations"] / iterations)

    def projected(p: int) -> float:
        return times["dask_1_workers"] * (serial + (1.0 - serial) / p)

    rmse = {k: float(np.sqrt(np.mean((v - truth) ** 2))) for k, v in volumes.items()}
    figures = {
        "volume_xzy": [nx, nz, ny],
        "fraction_of_k3_bin4": {"slices": nz / FULL["nz"], "iterations": iterations / FULL["iterations"]},
        "iterations": iterations,
        "slabs": len(tasks),
        "slab_slices": slab,
        "halo": halo,
        "seconds": times,  # Dask: medians of the interleaved repeats
        "dask_repeats_seconds": runs,
        "dask_cores_obtained": cores,  # worker CPU seconds per wall second, per repeat
        "speedup_2_over_1_worker": speedup,
        "serial_fraction": serial,
        "projected_seconds": {str(p): projected(p) for p in (16, 64)},
        "projected_seconds_full_k3_bin4": {str(p): projected(p) * scale_full for p in (1, 2, 16, 64)},
        "agreement_max_rel": {
            "dask_1_vs_single_process_slabs": _rel(volumes["dask_1"], volumes["slabs"]),
            "dask_2_vs_single_process_slabs": _rel(volumes["dask_2"], volumes["slabs"]),
            "slabs_vs_whole_volume": _rel(volumes["slabs"], volumes["whole"]),
        },
        "rmse_vs_truth_V": {**rmse, "fbp": float(np.sqrt(np.mean((x0 - truth) ** 2)))},
    }
    a = figures["agreement_max_rel"]
    t = times
    log(
        f"  seconds: single process whole {t['single_process_whole']:.1f}, single process slabs "
        f"{t['single_process_slabs']:.1f}, Dask 1 worker {t['dask_1_workers']:.1f}, 2 workers "
        f"{t['dask_2_workers']:.1f} (medians of {repeats} interleaved; "
        f"1 worker {min(runs['dask_1_workers']):.1f}-{max(runs['dask_1_workers']):.1f}, "
        f"2 workers {min(runs['dask_2_workers']):.1f}-{max(runs['dask_2_workers']):.1f}); cores the "
        f"workers obtained: 1 worker {np.median(cores['dask_1_workers']):.2f}, 2 workers "
        f"{np.median(cores['dask_2_workers']):.2f} (the machine is shared)"
    )
    full_min = {p: projected(p) * scale_full / 60.0 for p in (1, 16, 64)}
    log(
        f"  speed-up 2 vs 1 worker {speedup:.2f}x; serial fraction {serial:.3f}; projected (this fraction) "
        f"16 workers {projected(16):.1f} s, 64 workers {projected(64):.1f} s; whole k3-bin4 "
        f"(x{scale_full:.0f} work): 1 worker {full_min[1]:.0f} min, 16 {full_min[16]:.1f} min, "
        f"64 {full_min[64]:.1f} min"
    )
    log(
        f"  agreement (max |diff| / max |volume|): Dask 1 / 2 workers vs single-process slabs "
        f"{a['dask_1_vs_single_process_slabs']:.1e} / {a['dask_2_vs_single_process_slabs']:.1e}; slabs vs "
        f"whole volume {a['slabs_vs_whole_volume']:.1e} (TV halo); RMSE vs truth: FBP "
        f"{figures['rmse_vs_truth_V']['fbp']:.3f}, TV whole {rmse['whole']:.3f}, "
        f"TV Dask {rmse['dask_2']:.3f} V"
    )
    return figures


def run(*, quick: bool = False, log=print) -> dict:
    """The Dask part (see the module docstring); figures JSON-ready."""
    t0 = time.perf_counter()
    figures: dict = {"benchmark": "scale", "quick": quick, "dask": bench_dask(quick, log)}
    figures["total_time_s"] = time.perf_counter() - t0
    return jsonable(figures)
