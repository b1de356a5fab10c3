"""Orders in which a tilt series visits its angles (pure functions, no Bluesky)."""

from __future__ import annotations

import numpy as np

from ..devices.base import ParameterError

TILT_ORDERS = ("dose-symmetric", "bidirectional", "continuous")
MAX_TILTS = 10_000  # more than any tilt series: a bound, so a wild range cannot eat memory


def _ladder(start: float, stop: float, step: float) -> list[float]:
    """start, start±step, … up to and including ``stop`` (within 1e-6 of a step)."""
    n = int(np.floor(abs(stop - start) / step + 1e-6))
    sign = 1.0 if stop >= start else -1.0
    return [round(start + sign * k * step, 6) for k in range(n + 1)]


def tilt_order(
    min_deg: float,
    max_deg: float,
    step_deg: float,
    *,
    order: str = "dose-symmetric",
    group_size: int = 2,
    start_deg: float = 0.0,
) -> list[float]:
    """Tilt angles (degrees) in acquisition order.

    ``dose-symmetric`` is Hagen's scheme: ``start_deg`` first, then alternating groups of
    ``group_size`` tilts on the positive and the negative side, moving outwards, so the
    low tilts that carry the most information get the least accumulated dose:
    with step 3 and groups of 2, 0, 3, 6, -3, -6, 9, 12, -9, -12, … ``bidirectional``
    goes from ``start_deg`` to ``max_deg``, then from ``start_deg - step`` to ``min_deg``.
    ``continuous`` goes from ``min_deg`` to ``max_deg``.
    """
    if order not in TILT_ORDERS:
        raise ParameterError(f"order {order!r} is not one of {', '.join(TILT_ORDERS)}")
    if not step_deg > 0:
        raise ParameterError(f"step_deg = {step_deg} must be > 0 deg")
    if not min_deg <= start_deg <= max_deg:
        raise ParameterError(
            f"start_deg = {start_deg} must lie in [min_deg, max_deg] = [{min_deg}, {max_deg}] deg"
        )
    if group_size < 1:
        raise ParameterError(f"group_size = {group_size} must be >= 1")
    for name, value in (
        ("min_deg", min_deg),
        ("max_deg", max_deg),
        ("step_deg", step_deg),
        ("start_deg", start_deg),
    ):
        if not np.isfinite(value):
            raise ParameterError(f"{name} = {value} must be a finite number of degrees")
    n = (max_deg - min_deg) / step_deg + 1
    if n > MAX_TILTS:
        raise ParameterError(
            f"[{min_deg:g}, {max_deg:g}] deg in steps of {step_deg:g} deg is {n:.3g} tilts; "
            f"at most {MAX_TILTS} are allowed"
        )
    if order == "continuous":
        return _ladder(min_deg, max_deg, step_deg)
    positive = _ladder(start_deg, max_deg, step_deg)[1:]
    negative = _ladder(start_deg, min_deg, step_deg)[1:]
    if order == "bidirectional":
        return [start_deg, *positive, *negative]
    angles = [start_deg]
    for i in range(0, max(len(positive), len(negative)), group_size):
        angles += positive[i : i + group_size] + negative[i : i + group_size]
    return angles
