"""Tracking in a tilt series: after each tilt, re-centre the next exposure with the image shift.

The measurements device (:class:`~livetomo.devices.measurements.LiveMeasurements`) predicts
the shift the next tilt would show without correction; the image shift is set to cancel it,
limited to ``max_step_nm`` per tilt. Each tilt's decision goes into the ``tracking`` event
stream (the measurement read, the image shift after the decision, and ``track_status`` in
words), and the primary events read the image shift too, so the documents and the run file
carry the real positions. Nothing here moves unless the measurement is fresh and trusted and
the target is within the image shift's limits; otherwise the step stays uncorrected, and says
why.
"""

from __future__ import annotations

import math

from bluesky import plan_stubs as bps

from ..devices.base import ParameterError, check_range, reading

ON_LIMIT = ("continue", "pause")


class TrackingRecord:
    """What tracking decided at one tilt (bluesky Readable, read into the ``tracking`` stream)."""

    def __init__(self, name: str = "track"):
        self.name = name
        self.status = ""
        self.target = (math.nan, math.nan)
        self.step = (0.0, 0.0)

    def read(self) -> dict:
        return {
            f"{self.name}_status": reading(self.status),
            f"{self.name}_target_y": reading(self.target[0]),
            f"{self.name}_target_x": reading(self.target[1]),
            f"{self.name}_step_y": reading(self.step[0]),
            f"{self.name}_step_x": reading(self.step[1]),
        }

    def describe(self) -> dict:
        out = {f"{self.name}_status": {"source": "plan:tracking", "dtype": "string", "shape": []}}
        for key in ("target_y", "target_x", "step_y", "step_x"):
            out[f"{self.name}_{key}"] = {
                "source": "plan:tracking",
                "dtype": "number",
                "shape": [],
                "units": "nm",
            }
        return out


def check_tracking(measurements, image_shift, max_step_nm: float, timeout_s: float, on_limit: str) -> None:
    """ParameterError before anything moves when tracking cannot run as asked."""
    if measurements is None or image_shift is None:
        raise ParameterError("track=True needs a measurements device and an image_shift device")
    check_range("track_max_step_nm", max_step_nm, 0.0, 1e5, "nm")
    check_range("track_timeout_s", timeout_s, 0.0, 3600.0, "s")
    if on_limit not in ON_LIMIT:
        raise ParameterError(
            f"track_on_limit = {on_limit!r} is not allowed; allowed: {', '.join(map(repr, ON_LIMIT))}"
        )


def decide(values: dict, name: str, current, pixel_size_nm: float, max_step_nm: float):
    """(target (y, x) nm or None, status) from the measurements device's readings."""
    get = lambda key: values[f"{name}_{key}"]["value"]  # noqa: E731
    seq = get("seq")
    if not get("fresh"):
        return None, f"stale: no measurement of this frame in time (newest: frame {seq}); uncorrected"
    if not get("ok"):
        return None, f"frame {seq}'s shift is flagged untrusted; uncorrected"
    if not math.isfinite(get("next_angle")):
        return None, "last tilt"
    predicted = (get("predicted_dy"), get("predicted_dx"))
    if not all(math.isfinite(v) for v in predicted):
        return None, "no prediction yet; uncorrected"
    # the published shift is minus the displacement: an image shift of +p·shift cancels it
    target = [pixel_size_nm * v for v in predicted]
    step = [t - c for t, c in zip(target, current, strict=True)]
    size = math.hypot(*step)
    if size > max_step_nm:
        scale = max_step_nm / size
        target = [c + s * scale for c, s in zip(current, step, strict=True)]
        return tuple(target), f"corrected, step {size:.0f} nm limited to max_step {max_step_nm:g} nm"
    return tuple(target), "corrected"


def track_after_tilt(measurements, image_shift, record: TrackingRecord, index: int, *, max_step_nm, on_limit):
    """Read frame ``index``'s measurement, correct the next exposure, record the decision."""
    yield from bps.abs_set(measurements, index, wait=True)
    yield from bps.trigger(measurements, wait=True)
    values = yield from bps.read(measurements)
    current = image_shift.position
    target, status = decide(values, measurements.name, current, measurements.pixel_size_nm, max_step_nm)
    refused = False
    if target is not None:
        try:
            image_shift.check(target)
        except ParameterError as exc:
            target, status, refused = None, f"refused: {exc}; uncorrected", True
    record.status = status
    record.target = target if target is not None else tuple(current)
    record.step = tuple(t - c for t, c in zip(record.target, current, strict=True))
    if target is not None:
        yield from bps.mv(image_shift, target)
    yield from bps.create("tracking")
    yield from bps.read(measurements)
    yield from bps.read(image_shift)
    yield from bps.read(record)
    yield from bps.save()
    if refused and on_limit == "pause":
        yield from bps.pause()
