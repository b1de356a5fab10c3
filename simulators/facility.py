"""The facility around an instrument: the storage ring's beam current and the cryo-stage
temperature, as functions of time, with outages an operator (or a test) schedules.

``BeamModel.current_mA(t)`` is the stored current (top-up: a small saw-tooth around the
nominal value), zero during a beam loss; ``CryoStageModel.temperature_K(t)`` the specimen
stage's temperature, which climbs during a warm-up excursion (a cryogen refill, say) and
comes back. Times are ``time.monotonic()`` seconds, so the daemon's signals read them live.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class _Outages:
    windows: list[tuple[float, float]] = field(default_factory=list)  # (start, end), monotonic s
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, after_s: float, duration_s: float) -> tuple[float, float]:
        start = time.monotonic() + float(after_s)
        with self.lock:
            self.windows.append((start, start + float(duration_s)))
            return self.windows[-1]

    def fraction_in(self, t: float) -> float | None:
        """Where ``t`` lies in an outage window (0 .. 1), or None outside every window."""
        with self.lock:
            for start, end in self.windows:
                if start <= t < end:
                    return (t - start) / max(end - start, 1e-9)
        return None


class BeamModel:
    """Stored beam current, mA: ``nominal_mA`` with a 1 % top-up saw-tooth, zero during a loss."""

    def __init__(self, nominal_mA: float = 400.0, top_up_period_s: float = 60.0):
        self.nominal_mA = float(nominal_mA)
        self.top_up_period_s = float(top_up_period_s)
        self.outages = _Outages()

    def lose_beam(self, *, after_s: float = 0.0, duration_s: float = 5.0) -> tuple[float, float]:
        """Schedule a beam loss; returns its (start, end) in ``time.monotonic()`` seconds."""
        return self.outages.add(after_s, duration_s)

    def current_mA(self, t: float | None = None) -> float:
        t = time.monotonic() if t is None else t
        if self.outages.fraction_in(t) is not None:
            return 0.0
        phase = (t % self.top_up_period_s) / self.top_up_period_s
        return self.nominal_mA * (1.0 - 0.01 * phase)


class CryoStageModel:
    """Specimen stage temperature, K: ``nominal_K``, rising to ``peak_K`` and back during a warm-up."""

    def __init__(self, nominal_K: float = 95.0, peak_K: float = 140.0):
        self.nominal_K = float(nominal_K)
        self.peak_K = float(peak_K)
        self.outages = _Outages()

    def warm_up(self, *, after_s: float = 0.0, duration_s: float = 5.0) -> tuple[float, float]:
        """Schedule a warm-up excursion; returns its (start, end) in ``time.monotonic()`` seconds."""
        return self.outages.add(after_s, duration_s)

    def temperature_K(self, t: float | None = None) -> float:
        t = time.monotonic() if t is None else t
        x = self.outages.fraction_in(t)
        if x is None:
            return self.nominal_K
        return self.nominal_K + (self.peak_K - self.nominal_K) * (1.0 - abs(2.0 * x - 1.0))  # a triangle
