"""Benchmarks: each runs livetomo and its peer on the same work in one run.

Every benchmark is a module of this package with a function
``run(*, quick=False, log=print) -> dict`` that prints its figures through ``log`` and
returns all of them; ``livetomo bench NAME --json`` prints that dict as one JSON object.
Modules are imported only when their benchmark runs, so a missing peer (installed by the
``bench`` extra) only affects the benchmark that needs it.
"""

from __future__ import annotations

import importlib
import importlib.util

BENCHMARKS = {
    "orchestration": "livetomo.daemon.bench.orchestration",
    "align": "livetomo.daemon.bench.align",
    "live": "livetomo.daemon.bench.live",
    "recon": "livetomo.daemon.bench.recon",
    "streaming": "livetomo.daemon.bench.streaming",
    "correlate": "livetomo.daemon.bench.correlate",
    "monitor": "livetomo.daemon.bench.monitor",
    "control": "livetomo.daemon.bench.control",
    "learned": "livetomo.daemon.bench.learned",
    "soak": "livetomo.daemon.bench.soak",
    "tracking": "livetomo.daemon.bench.tracking",
    "scale": "livetomo.daemon.bench.scale",
}


def available() -> list[str]:
    """Names of the benchmarks whose module exists in this installation."""
    return [name for name, module in BENCHMARKS.items() if importlib.util.find_spec(module) is not None]


def load(name: str):
    """The ``run`` function of benchmark ``name``; KeyError names the available ones."""
    if name not in available():
        raise KeyError(f"unknown benchmark {name!r}; available: {', '.join(available())}")
    return importlib.import_module(BENCHMARKS[name]).run
