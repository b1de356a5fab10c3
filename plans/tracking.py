"""Tracking: after each frame, re-centre the next one from livetomo's live measurements.

The measurements device (:class:`~livetomo.devices.measurements.LiveMeasurements`) predicts
the shift the next frame would show without correction; a corrector (a TEM's image shift, a
microprobe's raster offset: ``livetomo.devices.image_shift``) is set to cancel it, limited to a
maximum step per frame. Each decision goes into the ``tracking`` event stream (the measurement
read, the corrector after the decision, and ``track_status`` in words), and the primary events
read the corrector too, so the documents and the run file carry the real positions. Nothing
moves unless the measurement is fresh and trusted and the target is within the corrector's
limits; otherwise the step stays uncorrected, and says why.

Re-acquisition (``reacquire_flagged=True`` in the plans): a frame whose fresh measurement is
flagged untrusted because the frame itself failed (``<name>_failed``: its registration failed
or disagreed, not only an uncertain shift) is taken once more at the same angle, before any
correction, when the dose budget still allows another exposure (:class:`DoseLedger`). The
``tracking`` event that decides it names the frame it replaces (``<record>_superseded_frame``);
the daemon keeps that frame in the run file marked invalid (NXtomo ``image_key`` 3, listed in
``superseded_frames``) and aligns and reconstructs with the new one.
"""

from __future__ import annotations

import math

from bluesky import plan_stubs as bps

from ..devices.base import ParameterError, check_range, reading

ON_LIMIT = ("continue", "pause")
LEFT_FIELD_FRACTION = 0.45  # a trusted shift beyond this share of the field: the target is at its edge
LOST_AFTER = 3  # this many frames in a row without a trusted measurement: the target is lost


class TrackingRecord:
    """What tracking decided at one frame (bluesky Readable, read into the ``tracking`` stream).

    ``field_px`` (rows, columns) of the frames: with it, a scan whose target has left the field
    is paused (see :func:`left_field`); only for shifts measured from where the scan began (a
    tilt series'), not for a rotation scan's absolute runout."""

    def __init__(self, name: str = "track", units: str = "nm", field_px=None):
        self.name = name
        self.units = units
        self.field_px = None if field_px is None else tuple(int(n) for n in field_px)
        self.status = ""
        self.target = (math.nan, math.nan)
        self.step = (0.0, 0.0)
        self.untrusted_run = 0  # measured frames in a row flagged untrusted
        self.trusted_seen = False  # early frames are often untrusted: "lost" needs a target first
        self.superseded_frame = -1  # the frame this decision replaces by re-acquiring it

    def read(self) -> dict:
        return {
            f"{self.name}_status": reading(self.status),
            f"{self.name}_superseded_frame": reading(self.superseded_frame),
            f"{self.name}_target_y": reading(self.target[0]),
            f"{self.name}_target_x": reading(self.target[1]),
            f"{self.name}_step_y": reading(self.step[0]),
            f"{self.name}_step_x": reading(self.step[1]),
        }

    def describe(self) -> dict:
        out = {
            f"{self.name}_status": {"source": "plan:tracking", "dtype": "string", "shape": []},
            f"{self.name}_superseded_frame": {"source": "plan:tracking", "dtype": "integer", "shape": []},
        }
        for key in ("target_y", "target_x", "step_y", "step_x"):
            out[f"{self.name}_{key}"] = {
                "source": "plan:tracking",
                "dtype": "number",
                "shape": [],
                "units": self.units,
            }
        return out


def check_tracking(
    measurements,
    corrector,
    max_step: float,
    timeout_s: float,
    on_limit: str,
    *,
    prefix="track",
    what="image_shift",
    units=None,
) -> None:
    """ParameterError before anything moves when tracking cannot run as asked (``max_step`` in
    ``units``, default the corrector's)."""
    if measurements is None or corrector is None:
        raise ParameterError(f"{prefix}=True needs a measurements device and an {what} device")
    units = units or corrector.units
    check_range(f"{prefix}_max_step_{units}", max_step, 0.0, 1e5, units)
    check_range(f"{prefix}_timeout_s", timeout_s, 0.0, 3600.0, "s")
    if on_limit not in ON_LIMIT:
        allowed = ", ".join(map(repr, ON_LIMIT))
        raise ParameterError(f"{prefix}_on_limit = {on_limit!r} is not allowed; allowed: {allowed}")


def decide(values: dict, name: str, current, corrector, pixel_size_nm: float, max_step: float):
    """(target (y, x) in the corrector's units, or None; status) from the measurements' readings."""
    get = lambda key: values[f"{name}_{key}"]["value"]  # noqa: E731
    seq = get("seq")
    if not get("fresh"):
        return None, f"stale: no measurement of this frame in time (newest: frame {seq}); uncorrected"
    if not math.isfinite(get("next_angle")):
        return None, "last frame"
    if not get("ok"):
        return None, f"frame {seq}'s shift is flagged untrusted; uncorrected"
    predicted = (get("predicted_dy"), get("predicted_dx"))
    if not all(math.isfinite(v) for v in predicted):
        return None, "no prediction yet; uncorrected"
    # the published shift is minus the displacement: moving the image by the shift cancels it
    target = corrector.target_for(predicted, pixel_size_nm)
    step = [t - c for t, c in zip(target, current, strict=True)]
    size = math.hypot(*step)
    if size > max_step:
        scale = max_step / size
        target = [c + s * scale for c, s in zip(current, step, strict=True)]
        units = corrector.units
        return tuple(target), f"corrected, step {size:.3g} {units} limited to max_step {max_step:g} {units}"
    return tuple(target), "corrected"


def left_field(values: dict, name: str, record: TrackingRecord) -> str | None:
    """Why the target has left the field (None while it has not): a trusted shift beyond
    ``LEFT_FIELD_FRACTION`` of the field, or ``LOST_AFTER`` measured frames in a row flagged
    untrusted (what registrations give once the target is gone). A stale measurement (none in
    time) says nothing about the specimen and changes neither."""
    get = lambda key: values[f"{name}_{key}"]["value"]  # noqa: E731
    if record.field_px is None or not get("fresh"):
        return None
    trusted = bool(get("ok"))
    record.trusted_seen |= trusted
    record.untrusted_run = 0 if trusted else record.untrusted_run + 1
    if record.trusted_seen and record.untrusted_run >= LOST_AFTER:
        return f"{record.untrusted_run} frames in a row with untrusted shifts: the target is lost"
    if trusted:
        dy, dx = get("shift_dy"), get("shift_dx")
        limit = [LEFT_FIELD_FRACTION * n for n in record.field_px]
        if math.isfinite(dy) and math.isfinite(dx) and (abs(dy) > limit[0] or abs(dx) > limit[1]):
            return (
                f"the target moved ({dy:.1f}, {dx:.1f}) px from where the scan began, beyond "
                f"{LEFT_FIELD_FRACTION:.0%} of the {record.field_px[0]} x {record.field_px[1]} px field"
            )
    return None


def measure(measurements, seq: int, step: int):
    """Wait for frame ``seq``'s measurement (the plan's step ``step``: which angle comes next)
    and read it; returns the readings."""
    yield from bps.abs_set(measurements, (seq, step), wait=True)
    yield from bps.trigger(measurements, wait=True)
    return (yield from bps.read(measurements))


def flagged(values: dict, name: str, seq: int) -> bool:
    """True when frame ``seq`` was measured in time, its shift is flagged untrusted and the
    frame's own measurement failed: a shift that is only uncertain (its aligned neighbours
    far, early in an interlaced scan) would be as uncertain from a second exposure."""
    get = lambda key: values[f"{name}_{key}"]["value"]  # noqa: E731
    return bool(get("fresh")) and int(get("seq")) == seq and not get("ok") and bool(get("failed"))


class DoseLedger:
    """A plan's exposures against its dose budget (the plan's units).

    The planned exposures were checked against the budget before anything moved; a
    re-acquisition is one more, allowed only while the planned ones still fit after it."""

    def __init__(self, per_exposure: float, planned: int, budget: float, units: str):
        self.per_exposure = float(per_exposure)
        self.planned = int(planned)
        self.budget = float(budget)
        self.units = units
        self.extra = 0  # re-acquisitions so far

    def total(self, extra: int | None = None) -> float:
        """The dose of the planned exposures and ``extra`` (default: those so far) more."""
        return (self.planned + (self.extra if extra is None else extra)) * self.per_exposure

    def allows_another(self) -> bool:
        return self.total(self.extra + 1) <= self.budget * (1 + 1e-9)

    def text(self, extra: int | None = None) -> str:
        n = self.extra if extra is None else extra
        return (
            f"{self.planned} planned + {n} re-acquired = {self.total(n):.4g} of dose_budget "
            f"{self.budget:.4g} {self.units}"
        )


def reacquire_if_flagged(
    measurements, corrector, record: TrackingRecord, ledger: DoseLedger, seq: int, values, reshoot
):
    """Frame ``seq`` flagged untrusted: record the decision in the ``tracking`` stream and run
    ``reshoot()`` (a plan taking the same angle's frame again) if the dose budget allows.
    ``corrector``: the tracking corrector (None without tracking), read with every decision so
    the stream keeps one set of fields. Returns True when it re-acquired."""
    if not flagged(values, measurements.name, seq):
        return False
    if not ledger.allows_another():
        record.status = (
            f"frame {seq} flagged untrusted; not re-acquired: another {ledger.per_exposure:.4g} "
            f"{ledger.units} would exceed the budget ({ledger.text(ledger.extra + 1)})"
        )
        yield from _save_decision(measurements, corrector, record)
        return False
    ledger.extra += 1
    record.status = f"frame {seq} flagged untrusted: re-acquired at the same angle ({ledger.text()})"
    record.superseded_frame = seq
    yield from _save_decision(measurements, corrector, record)
    record.superseded_frame = -1
    yield from reshoot()
    return True


def _save_decision(measurements, corrector, record: TrackingRecord):
    yield from bps.create("tracking")
    yield from bps.read(measurements)
    if corrector is not None:
        yield from bps.read(corrector)
    yield from bps.read(record)
    yield from bps.save()


def track_after_frame(measurements, corrector, record: TrackingRecord, values, *, max_step, on_limit):
    """Correct the next frame from the measurement ``values`` (the readings of ``measurements``),
    record the decision (``max_step`` in the corrector's units)."""
    current = corrector.position
    target, status = decide(
        values, measurements.name, current, corrector, measurements.pixel_size_nm, max_step
    )
    refused = False
    if target is not None:
        try:
            corrector.check(target)
        except ParameterError as exc:
            target, status, refused = None, f"refused: {exc}; uncorrected", True
    lost = left_field(values, measurements.name, record)
    if lost is not None:  # nothing moves after a lost target; the operator decides
        target, status = None, f"paused: {lost}"
    record.status = status
    record.target = target if target is not None else tuple(current)
    record.step = tuple(t - c for t, c in zip(record.target, current, strict=True))
    if target is not None:
        yield from bps.mv(corrector, target)
    yield from _save_decision(measurements, corrector, record)
    if lost is not None or (refused and on_limit == "pause"):
        yield from bps.pause()


def tracking_md(measurements, corrector, max_step, timeout_s) -> dict:
    """What the run's documents say about tracking; the daemon stores the corrector named here."""
    return {
        "measurements": measurements.name,
        "corrector": corrector.name,
        "units": corrector.units,
        "max_step": max_step,
        "timeout_s": timeout_s,
    }


class Steering:
    """What a plan does after each frame it takes: read livetomo's measurement of it, re-acquire
    it if flagged untrusted (``reacquire``), correct the next frame (``track``).

    The measurements are numbered by the frames the detector sent: ``detector.get_index()`` (the
    frames written this run) names the last one, so an exposure that a pause made bluesky repeat
    is counted as the detector counted it. Without ``get_index`` the frames taken here are
    counted (re-acquisitions included)."""

    def __init__(self, measurements, corrector, ledger: DoseLedger, record: TrackingRecord, *,
                 track: bool, reacquire: bool, max_step: float, on_limit: str, detector=None):  # fmt: skip
        self.measurements, self.corrector = measurements, corrector
        self.ledger, self.record = ledger, record
        self.track, self.reacquire = bool(track), bool(reacquire)
        self.max_step, self.on_limit = max_step, on_limit
        self._index = getattr(detector, "get_index", None)
        self.frames = 0

    def _last_frame(self) -> int:
        seq, self.frames = self.frames, self.frames + 1
        return seq if self._index is None else int(self._index()) - 1

    def after_frame(self, step: int, reshoot):
        """After the frame of plan step ``step``; ``reshoot()`` takes that step's frame again."""
        seq = self._last_frame()
        if not (self.track or self.reacquire):
            return
        values = yield from measure(self.measurements, seq, step)
        corrector = self.corrector if self.track else None
        reacquired = False
        if self.reacquire:
            reacquired = yield from reacquire_if_flagged(
                self.measurements, corrector, self.record, self.ledger, seq, values, reshoot
            )
        if reacquired:
            seq = self._last_frame()
            values = yield from measure(self.measurements, seq, step)
        if self.track:
            yield from track_after_frame(
                self.measurements,
                self.corrector,
                self.record,
                values,
                max_step=self.max_step,
                on_limit=self.on_limit,
            )
