"""Benchmarks: each runs livetomo and its peer on the same work in one run.

Every benchmark is a function ``run(*, quick=False, log=print) -> dict`` that prints its
figures through ``log`` and returns all of them; ``livetomo bench NAME --json`` prints
that dict as one JSON object.
"""

from .orchestration import run as orchestration

BENCHMARKS = {"orchestration": orchestration}
