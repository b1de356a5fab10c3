"""``livetomo bench soak``: many consecutive scans through one daemon under continuous fuzzing.

A ``livetomo serve`` (a separate process) runs 24 scans, cycling through ``xrf_dpc_tomo``
(251 angles: three streams), ``tomo_scan`` (401 angles, the full-field camera) and
``tilt_series`` (±60° in 1° steps, the K3) on the small simulated beamline: 10,200 frames in
all. During the whole soak a fuzzer (another process) sends malformed frame messages aimed
at the current run and malformed control requests, and an operator's client (this process)
asks for ``status`` every 20 ms.

Figures:

- after each run, the daemon's resident memory, open file descriptors and threads (read from
  ``/proc``), once the run has ended and the daemon is idle; growth from the first run to the
  last (target ≤ 5 %) and the trend over the later runs (MiB per run);
- every run complete (all frames sent were stored);
- fuzz throughput: malformed messages sent and rejected by the daemon per second;
- control latency under fuzzing: p50, p99 (target ≤ 100 ms) and max.

There is no peer: this is the daemon's own reliability over time. ``--quick`` runs one cycle
of small scans (it shows the figures; it does not reach the 20 scans and 10⁴ frames of the
full soak).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from ..testing import daemon_overrides, fuzz_control_request, fuzz_frame_message, wait_until
from ._serve import served_daemon
from .timing import latency_percentiles

SCAN = {"start": 0, "stop": 180, "dwell_s": 0.003, "raster_shape": [12, 32]}
CYCLE = (
    ("xrf_dpc_tomo", {**SCAN, "num": 251}),
    ("tomo_scan", {"start": 0, "stop": 180, "num": 401}),
    ("tilt_series", {"min_deg": -60, "max_deg": 60, "step_deg": 1, "dose_per_tilt": 1.0}),
)
QUICK_CYCLE = (
    ("xrf_dpc_tomo", {**SCAN, "num": 61}),
    ("tomo_scan", {"start": 0, "stop": 180, "num": 91}),
    ("tilt_series", {"min_deg": -60, "max_deg": 60, "step_deg": 3, "dose_per_tilt": 1.0}),
)
CYCLES, QUICK_CYCLES = 8, 1
TARGET_GROWTH, TARGET_P99_MS = 0.05, 100.0


def _proc(pid: int) -> dict:
    """Resident memory (MiB), open file descriptors and threads of process ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
    }


def _fuzz(endpoints: dict, stop, counts) -> None:
    """The fuzzer process: malformed frames at the current run, malformed control requests."""
    rng = np.random.default_rng(0)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDTIMEO, 1000)
    push.connect(endpoints["frames"])
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 30_000)
    req.connect(endpoints["control"])
    streams = {"xrf_dpc_tomo": "dpc_segments", "tomo_scan": "txm_image", "tilt_series": "k3_image"}
    run, stream, next_look = "none", "dpc_segments", 0.0
    while not stop.is_set():
        if time.monotonic() > next_look:  # aim at the run that is on, as an attacker reading status would
            req.send(b'{"cmd": "status"}')
            reply = json.loads(req.recv())
            current = (reply.get("result") or {}).get("run") or {}
            run = current.get("uid") or run
            stream = streams.get(current.get("plan_name"), stream)
            next_look = time.monotonic() + 1.0
        for _ in range(50):
            try:
                push.send_multipart(fuzz_frame_message(rng, run, stream, (4, 12, 32)))
                counts[0] += 1
            except zmq.Again:
                break
        req.send_multipart(fuzz_control_request(rng))
        reply = json.loads(req.recv())  # a missing reply raises here and ends the fuzzer: counted below
        counts[1] += 1
        counts[2] += not isinstance(reply.get("ok"), bool)
        stop.wait(0.005)  # a flood, not a denial of service
    push.close()
    req.close()
    ctx.term()


def _poll_latency(client, stop: threading.Event, out: list[float], interval_s: float = 0.02) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        client("status")
        out.append(time.perf_counter() - t0)
        stop.wait(interval_s)


def _run_one(client, plan: str, kwargs: dict, timeout_s: float = 1800) -> dict:
    """Queue and start one plan; wait until its item has finished and its run has ended."""
    item = client("queue_add", plan=plan, kwargs=kwargs)
    client("queue_start")

    def ended():
        done = [h for h in client("history", limit=5) if h["uid"] == item["uid"]]
        if not done:
            return None
        runs = client("status")["finished_runs"]
        return next((r for r in runs if r["run_uid"] in done[0]["run_uids"]), None)

    return wait_until(ended, timeout_s, f"{plan} to end")


def measure(
    directory: str | Path, *, cycle=CYCLE, cycles: int = CYCLES, fuzz: bool = True, log=print
) -> dict:
    directory = Path(directory)
    overrides = daemon_overrides(directory)
    runs: list[dict] = []
    latencies: list[float] = []
    with served_daemon(directory, overrides) as (server, client):
        mp = multiprocessing.get_context("spawn")  # the fuzzer shares nothing with this process's ZeroMQ
        stop_fuzz = mp.Event()
        counts = mp.Array("q", 3, lock=False)
        fuzzer = mp.Process(target=_fuzz, args=(overrides["endpoints"], stop_fuzz, counts), daemon=True)
        stop_poll = threading.Event()
        poller = threading.Thread(target=_poll_latency, args=(client, stop_poll, latencies), daemon=True)
        rejected0 = sum(client("status")["rejected_by_reason"].values())
        t0 = time.monotonic()
        if fuzz:
            fuzzer.start()
        poller.start()
        try:
            for i in range(cycles * len(cycle)):
                plan, kwargs = cycle[i % len(cycle)]
                t_run = time.monotonic()
                summary = _run_one(client, plan, kwargs)
                stored = sum(s["stored"] for s in summary["streams"].values())
                sent = sum(s["sent"] for s in summary["streams"].values())
                time.sleep(0.5)  # the run's last previews and files are released
                row = {
                    "plan": plan,
                    "frames": stored,
                    "complete": bool(summary["complete"]) and sent == stored,
                    "seconds": time.monotonic() - t_run,
                    **_proc(server.pid),
                }
                runs.append(row)
                log(
                    f"  run {i + 1:>2} {plan:<13} {stored:>4} frames complete={row['complete']!s:<5} "
                    f"{row['seconds']:5.1f} s  RSS {row['rss_mib']:7.1f} MiB  fds {row['fds']:>3}  "
                    f"threads {row['threads']:>3}  fuzz sent {counts[0]:>7}"
                )
        finally:
            stop_poll.set()
            stop_fuzz.set()
            if fuzz:
                fuzzer.join(30)
            poller.join(30)
        elapsed = time.monotonic() - t0
        rejected = sum(client("status")["rejected_by_reason"].values()) - rejected0
        fuzz_alive = fuzzer.exitcode == 0 if fuzz else None
    return _figures(runs, latencies, counts, rejected, elapsed, fuzz_alive, len(cycle))


def _figures(runs, latencies, counts, rejected, elapsed, fuzz_alive, cycle_length: int = 1) -> dict:
    rss = np.array([r["rss_mib"] for r in runs])
    fds = np.array([r["fds"] for r in runs])
    warm = min(cycle_length, len(runs)) - 1  # every kind of scan has run once
    later = np.arange(1, len(runs))
    trend = float(np.polyfit(later, rss[1:], 1)[0]) if len(runs) > 2 else float("nan")
    growth = {
        "rss": float(rss[-1] / rss[0] - 1),
        "rss_max": float(rss[1:].max() / rss[0] - 1) if len(runs) > 1 else 0.0,
        "fds": float(fds[-1] / fds[0] - 1),
        "rss_trend_mib_per_run": trend,
        # from the end of the first cycle: each plan's first-time allocations are behind
        "rss_after_first_cycle": float(rss[-1] / rss[warm] - 1),
        "rss_max_after_first_cycle": float(rss[warm:].max() / rss[warm] - 1),
    }
    latency = latency_percentiles(latencies)
    return {
        "runs": runs,
        "n_runs": len(runs),
        "frames": int(sum(r["frames"] for r in runs)),
        "all_complete": all(r["complete"] for r in runs),
        "growth_after_first": growth,
        "fuzz": {
            "frame_messages": int(counts[0]),
            "control_requests": int(counts[1]),
            "requests_without_ok": int(counts[2]),
            "rejected_by_daemon": int(rejected),
            "fuzzer_ended_cleanly": fuzz_alive,
            "messages_per_s": (counts[0] + counts[1]) / elapsed,
            "rejected_per_s": rejected / elapsed,
        },
        "latency_under_fuzz": latency,
        "seconds": elapsed,
        "targets": {"growth": TARGET_GROWTH, "p99_ms": TARGET_P99_MS, "runs": 20, "frames": 10_000},
        "meets_targets": bool(
            growth["rss"] <= TARGET_GROWTH
            and growth["fds"] <= TARGET_GROWTH
            and latency.get("p99_ms", 0.0) <= TARGET_P99_MS
            and all(r["complete"] for r in runs)
            and len(runs) >= 20
            and sum(r["frames"] for r in runs) >= 10_000
        ),
    }


def run(*, quick: bool = False, log=print) -> dict:
    cycle, cycles = (QUICK_CYCLE, QUICK_CYCLES) if quick else (CYCLE, CYCLES)
    n = cycles * len(cycle)
    log(f"soak: {n} scans through one daemon under fuzzing (targets: growth <= 5 %, p99 <= 100 ms)")
    with tempfile.TemporaryDirectory(prefix="livetomo-bench-soak-") as directory:
        figures = measure(directory, cycle=cycle, cycles=cycles, log=log)
    g, f, lat = figures["growth_after_first"], figures["fuzz"], figures["latency_under_fuzz"]
    log(
        f"  {figures['n_runs']} runs, {figures['frames']} frames in {figures['seconds']:.0f} s, "
        f"all complete: {figures['all_complete']}"
    )
    log(
        f"  growth from the first run to the last: RSS {g['rss']:+.1%} (largest {g['rss_max']:+.1%}, trend "
        f"{g['rss_trend_mib_per_run']:+.1f} MiB/run), fds {g['fds']:+.1%}; from the end of the first "
        f"cycle: RSS {g['rss_after_first_cycle']:+.1%} (largest {g['rss_max_after_first_cycle']:+.1%})"
    )
    log(
        f"  fuzz: {f['frame_messages']} frame messages and {f['control_requests']} control requests "
        f"({f['messages_per_s']:.0f}/s), {f['rejected_by_daemon']} rejected by the daemon "
        f"({f['rejected_per_s']:.0f}/s); requests without a proper reply: {f['requests_without_ok']}"
    )
    log(
        f"  control latency under fuzzing (status every 20 ms, n={lat['n']}): p50 {lat['p50_ms']:.1f} ms, "
        f"p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms"
    )
    log(f"  targets met: {figures['meets_targets']}")
    return figures
