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

The presets part (``bench_preset``) runs each scan preset (``devices.presets``) through a
``livetomo serve`` in a subprocess whose simulated beamline is sized for it (``beamline.preset``),
submitted by name as an operator would, for a documented fraction of its frames
(``ScanPreset.bench``: 10 of 61 angles of ``xrf-dpc-230``, 21 of 41 tilts of ``k3-bin4``, 3 tilts
of ``k3-full``, 30 of 181 angles of ``sxt-1024``). From the daemon's own stage counters
(``status``: ingest = the receiver's decoding and checks, store = the writer, preprocess, align,
reconstruct, publish = processing) it reports each stage's seconds per frame and their ratio to
the instrument's frame interval, the sum of all stages as well (conservative: the stages run on
different threads); the daemon's peak RSS (VmHWM: the simulators live in the same process, as
they would not at an instrument), stored bytes per frame (the run file over its frames), the
run-end refinement time (from the ``finishing`` status: the span of "refining ..." steps), the
whole run end, what the simulators took per frame, and how often previews were skipped or frames
deferred to the file (the graceful degradation). ``--quick`` runs 3 frames of ``k3-bin4`` and of
``sxt-1024`` only.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ...devices.presets import PRESETS, get_preset
from ...processing.recon import TVDescent, fbp, project
from ...processing.recon.slabs import assemble, plan_slabs, refine_in_slabs, refine_slab
from ...simulators import k3
from ..control import ControlClient
from ..transport import ResultsSubscriber
from ._serve import served_daemon
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


QUICK = {"k3-bin4": {"min_deg": -3.0, "max_deg": 3.0}, "sxt-1024": {"num": 3, "stop": 12.0}}
STAGES = ("ingest", "store", "preprocess", "align", "reconstruct", "publish")
POLL_S = 0.25


def _rss_mib(pid: int, field: str = "VmHWM") -> float | None:
    """The process's peak (VmHWM) or current (VmRSS) resident memory, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _frame_storage(path) -> tuple[int, int]:
    """(bytes on disk, bytes uncompressed) of every detector stream of a run file."""
    import h5py
    import hdf5plugin  # noqa: F401  (the streams' compression filter)

    stored = raw = 0
    with h5py.File(path, "r") as f:
        instrument = f["entry/instrument"]
        for name in instrument:
            if not isinstance(instrument.get(name, getlink=True), h5py.HardLink):
                continue  # /entry/instrument/detector links the primary stream: counted once
            group = instrument[name]
            data = group.get("data") if isinstance(group, h5py.Group) else None
            if isinstance(data, h5py.Dataset) and group.attrs.get("NX_class") == "NXdetector":
                stored += data.id.get_storage_size()
                raw += data.size * data.dtype.itemsize
    return stored, raw


def _stage_seconds(status: dict) -> dict[str, float]:
    return {
        name: stats.get("count", 0) * stats.get("mean_latency_ms", 0.0) / 1e3
        for name, stats in status["stages"].items()
    }


def bench_preset(name: str, *, quick: bool, directory: str | Path, log) -> dict:
    """One preset through ``livetomo serve`` (see the module docstring); its figures."""
    preset = get_preset(name)
    kwargs = dict(QUICK[name] if quick else preset.bench)
    directory = Path(directory)
    overrides = {
        "endpoints": {
            k: f"ipc://{directory}/{k}.sock" for k in ("frames", "documents", "results", "control")
        },
        "storage_directory": str(directory / "data"),
        "beamline": {"preset": name},
        "web": {"enabled": False},
        "tiled": {"enabled": False},
    }
    t_start = time.monotonic()
    with served_daemon(directory, overrides) as (server, client):
        t_up = time.monotonic() - t_start
        poll = ControlClient(overrides["endpoints"]["control"], timeout_s=60.0)
        # each frame's own stage times (the results stream's frame messages): the steady state,
        # beside the means from the daemon's counters, which include the first frames' warm-up
        results = ResultsSubscriber(overrides["endpoints"]["results"], topics=("frame",))
        latencies: list[dict] = []
        time.sleep(0.3)  # the subscription reaches the publisher
        before = poll("status")
        client("queue_add", plan=name, kwargs=kwargs)
        client("queue_start")
        t0 = time.monotonic()
        first_frame = last_frame = refine_start = refine_end = None
        stored, scan_rss = 0, 0.0
        n_done = len(before["finished_runs"])
        while True:
            status = poll("status")
            now = time.monotonic()
            run = status.get("run") or {}
            if not status.get("runs_finishing"):  # acquiring: what the scan needs, before run-end work
                scan_rss = max(scan_rss, _rss_mib(server.pid, "VmRSS") or 0.0)
            if run.get("frames_stored", 0) > stored:  # stored, not processed: the instrument's pace
                stored = run["frames_stored"]
                first_frame = first_frame or now
                last_frame = now
            finishing = [r.get("finishing") or {} for r in status.get("runs_finishing", [])]
            texts = [str(f.get("text", "")) for f in finishing]
            refining = any(t.startswith("refining") and "alignment" not in t for t in texts)
            if refining and refine_start is None:
                refine_start = now
            if refine_start is not None and refine_end is None and not refining:
                refine_end = now
            finished = status["finished_runs"]
            if len(finished) > n_done:  # a fresh daemon: this preset's run is the first to end
                break
            failed = [h for h in client("history") if h.get("state") in ("failed", "aborted", "halted")]
            if failed:
                raise RuntimeError(f"{name}: the plan ended {failed[-1]['state']}: {failed[-1].get('error')}")
            while (message := results.recv(timeout_s=POLL_S)) is not None:
                latencies.append(message[1].get("latency_ms") or {})
        while (message := results.recv(timeout_s=0.5)) is not None:
            latencies.append(message[1].get("latency_ms") or {})
        results.close()
        t_end = time.monotonic()
        summary = finished[-1]
        rss = _rss_mib(server.pid)
        seconds = {k: v - _stage_seconds(before).get(k, 0.0) for k, v in _stage_seconds(status).items()}
    frames = int(summary["frames_received"])
    interval = preset.frame_interval_s
    per_frame = {k: seconds.get(k, 0.0) / max(frames, 1) for k in STAGES}
    total = sum(per_frame.values())
    file_bytes = Path(summary["file"]).stat().st_size
    frame_bytes, raw_bytes = _frame_storage(summary["file"])
    refine_s = None if refine_start is None else (refine_end or t_end) - refine_start
    figures = {
        "preset": name,
        "plan": preset.plan,
        "frames": frames,
        "fraction": "quick: " + ", ".join(f"{k}={v}" for k, v in kwargs.items())
        if quick
        else preset.bench_fraction,
        "frame_shape": list(preset.frame_shape),
        "frame_interval_s": interval,
        "interval_basis": preset.interval_basis,
        "complete": bool(summary["complete"]),
        "seconds_per_frame": per_frame,
        "ratio_to_interval": {k: v / interval for k, v in per_frame.items()},
        # processing stages per frame from the frame messages, the first two (warm-up: compiled
        # kernels loaded, FFT plans, window terms) left out; medians
        "processing_median_s_after_warmup": {
            k: float(np.median([lat.get(k, 0.0) for lat in latencies[2:]] or [np.nan])) / 1e3
            for k in ("preprocess", "align", "reconstruct", "publish")
        },
        "frame_messages": len(latencies),
        "all_stages_per_frame_s": total,
        "all_stages_ratio": total / interval,
        "keeps_pace_at_half_interval": total / interval <= 0.5,
        "peak_daemon_rss_mib": rss,
        "peak_daemon_rss_while_acquiring_mib": scan_rss,  # sampled every POLL_S
        "stored_bytes_per_frame": frame_bytes / max(frames, 1),  # every detector stream, as stored
        "raw_bytes_per_frame": raw_bytes / max(frames, 1),  # the same, uncompressed
        "run_file_bytes_per_frame": file_bytes / max(frames, 1),  # with volumes and results
        "run_file_bytes": file_bytes,
        "refinement_s": refine_s,
        "run_end_s": seconds.get("finish", 0.0),
        "export_s": seconds.get("export", 0.0),
        "acquisition_s_per_frame": None if first_frame is None else (last_frame - t0) / max(frames, 1),
        "daemon_start_s": t_up,
        "wall_s": t_end - t0,
        "previews_skipped": status["previews_skipped"] - before["previews_skipped"],
        "frames_deferred": status["frames_deferred"] - before["frames_deferred"],
    }
    p = preset.parameters
    planned = p.get("num") or round((p["max_deg"] - p["min_deg"]) / p["step_deg"]) + 1
    figures["planned_frames"] = int(planned)
    if figures["acquisition_s_per_frame"] is not None:
        # the whole preset on the simulated beamline: acquisition and exports scale with the
        # frames, the run end (volumes, refinement) does not
        frame_s = figures["acquisition_s_per_frame"] + figures["export_s"] / max(frames, 1)
        figures["whole_preset_simulated_s"] = frame_s * planned + figures["run_end_s"]
    r = figures["ratio_to_interval"]
    log(
        f"  {name}: {frames} frames {tuple(preset.frame_shape)} ({figures['fraction']}), interval "
        f"{interval:g} s; per frame: "
        + ", ".join(f"{k} {per_frame[k] * 1e3:.0f} ms ({r[k]:.3f})" for k in STAGES)
        + f"; all stages {total:.2f} s = {total / interval:.3f} of the interval"
    )
    steady = figures["processing_median_s_after_warmup"]
    log("    after warm-up (medians): " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in steady.items()))
    log(
        f"    peak RSS {rss:.0f} MiB ({scan_rss:.0f} while acquiring), frames stored "
        f"{figures['stored_bytes_per_frame'] / 2**20:.1f} MiB/frame "
        f"({figures['raw_bytes_per_frame'] / 2**20:.1f} raw), run file "
        f"{figures['run_file_bytes_per_frame'] / 2**20:.1f} MiB/frame, "
        f"refinement {'-' if refine_s is None else round(refine_s, 1)} s, "
        f"run end {figures['run_end_s']:.1f} s "
        f"+ exports {figures['export_s']:.1f} s; simulated acquisition "
        f"{figures['acquisition_s_per_frame'] or float('nan'):.2f} s/frame; previews skipped "
        f"{figures['previews_skipped']}, frames deferred {figures['frames_deferred']}"
    )
    return figures


def run(*, quick: bool = False, log=print, presets=None, dask: bool = True) -> dict:
    """The presets part, then the Dask part (see the module docstring); figures JSON-ready."""
    t0 = time.perf_counter()
    figures: dict = {"benchmark": "scale", "quick": quick, "cpus": os.cpu_count()}
    names = list(presets or (QUICK if quick else PRESETS))
    log(
        f"scale: {len(names)} presets through livetomo serve ({'quick' if quick else 'documented fractions'})"
    )
    figures["presets"] = {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"livetomo-bench-scale-{name}-") as directory:
            figures["presets"][name] = bench_preset(name, quick=quick, directory=directory, log=log)
    if dask:
        figures["dask"] = bench_dask(quick, log)
    figures["total_time_s"] = time.perf_counter() - t0
    return jsonable(figures)
