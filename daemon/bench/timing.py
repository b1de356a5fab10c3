"""What every benchmark shares: interleaved repeated timing reported as medians, request latency
percentiles, and figures as plain JSON values."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np


def jsonable(x):
    """Figures as plain JSON values: numpy scalars as numbers, keys as strings, NaN and inf as null."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def interleaved_times(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times (s) of each callable, run in turns so drifts in machine load hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time (s) of each callable, run in turns (:func:`interleaved_times`)."""
    return {name: statistics.median(values) for name, values in interleaved_times(runs, repeats).items()}


def latency_percentiles(latencies_s: list[float]) -> dict:
    """n, p50, p99 and max in ms of request latencies given in seconds."""
    if not latencies_s:
        return {"n": 0}
    ms = np.asarray(latencies_s) * 1e3
    return {
        "n": int(ms.size),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def answers(client) -> bool:
    """Whether the daemon behind ``client`` (a ``ControlClient``) answers a ping."""
    try:
        client("ping")
        return True
    except (TimeoutError, RuntimeError):
        return False
