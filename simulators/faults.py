"""Switchable fault injection shared by every simulator.

A simulator asks ``faults.fires("nan_frame")`` at the point where the fault would
happen on real hardware. Faults fire either at random with a per-kind probability
(seeded, so a run is reproducible) or at an explicit schedule of call numbers, which
is what tests use to know exactly which frame was hit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

FAULT_KINDS = ("dropped_frame", "stalled_motion", "nan_frame", "detector_timeout", "blanked_frame")


class SimulatedTimeout(TimeoutError):
    """A simulated detector did not answer in time."""


@dataclass
class FaultInjector:
    """Decide when a simulated instrument misbehaves.

    Parameters
    ----------
    probability : mapping of fault kind to probability per opportunity, in [0, 1].
    schedule : mapping of fault kind to the 0-based opportunity numbers at which it fires.
    seed : seed of the random generator used for probabilistic faults.

    Kinds are ``dropped_frame``, ``stalled_motion``, ``nan_frame``, ``detector_timeout`` and
    ``blanked_frame`` (the beam stayed blanked through an exposure: a valid frame of stray
    counts only, which alignment must flag rather than trust).
    ``opportunities`` counts how often each kind was asked about, ``fired`` how often it
    fired, so a test can compare what it sees with what was injected.
    """

    probability: Mapping[str, float] = field(default_factory=dict)
    schedule: Mapping[str, Iterable[int]] = field(default_factory=dict)
    seed: int | None = 0
    opportunities: Counter = field(default_factory=Counter, init=False)
    fired: Counter = field(default_factory=Counter, init=False)

    def __post_init__(self) -> None:
        for kind in (*self.probability, *self.schedule):
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; allowed: {', '.join(FAULT_KINDS)}")
        for kind, p in self.probability.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"fault probability for {kind!r} must be in [0, 1], got {p}")
        self.schedule = {k: frozenset(v) for k, v in self.schedule.items()}
        self._rng = np.random.default_rng(self.seed)

    def fires(self, kind: str) -> bool:
        """Count one opportunity for ``kind`` and say whether the fault happens now."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; allowed: {', '.join(FAULT_KINDS)}")
        n = self.opportunities[kind]
        self.opportunities[kind] += 1
        hit = n in self.schedule.get(kind, ())
        p = self.probability.get(kind, 0.0)
        if not hit and p > 0.0:
            hit = bool(self._rng.random() < p)
        if hit:
            self.fired[kind] += 1
        return hit


def as_faults(faults: FaultInjector | None) -> FaultInjector:
    """Return ``faults`` or a fresh injector that never fires."""
    return faults if faults is not None else FaultInjector()
