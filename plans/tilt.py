"""Cryo-ET tilt series with a K3 camera: dose-symmetric, bidirectional or continuous order."""

from __future__ import annotations

from bluesky import plan_stubs as bps
from bluesky import plans as bp
from bluesky import preprocessors as bpp

from ..devices.base import ParameterError
from ..devices.cameras import K3Settings
from .tilt_order import tilt_order
from .tomo import _metadata, check_angles, step_then_checkpoint
from .tracking import DoseLedger, Steering, TrackingRecord, check_tracking, tracking_md


def tilt_series(
    camera,
    tilt,
    *,
    min_deg: float = -60.0,
    max_deg: float = 60.0,
    step_deg: float = 3.0,
    order: str = "dose-symmetric",
    group_size: int = 2,
    start_deg: float = 0.0,
    dose_per_tilt: float = 3.0,
    dose_budget: float = 150.0,
    on_tilt=None,  # a callable: no annotation, so queueserver can validate the plan
    track: bool = False,
    measurements=None,
    image_shift=None,
    track_max_step_nm: float = 300.0,
    track_timeout_s: float = 10.0,
    track_on_limit: str = "continue",
    reacquire_flagged: bool = False,
    md: dict | None = None,
):
    """Acquire a tilt series; one event per tilt in acquisition order.

    ``dose_per_tilt`` and ``dose_budget`` are in e/Å²; the series must fit the budget.
    ``on_tilt(angle_deg, index)``, a callable, if given, returns a plan (or None) run after
    each tilt, e.g. to track the specimen or refocus (left unannotated so that
    bluesky-queueserver can validate the plan; queued from there it stays None). Checks
    happen before anything moves.

    ``track=True`` re-centres the area of interest after each tilt (plans/tracking.py): the
    ``measurements`` device (livetomo's live shifts, in-process or over the results stream)
    predicts where the next tilt would find the specimen, and ``image_shift`` moves it back,
    by at most ``track_max_step_nm`` per tilt. A measurement not in within ``track_timeout_s``,
    or flagged untrusted, leaves the step uncorrected; a target beyond the image shift's
    limits is refused with the limit named and the series goes on uncorrected
    (``track_on_limit='continue'``) or pauses (``'pause'``). Every decision is an event of the
    ``tracking`` stream, and the primary events read the image shift.

    ``reacquire_flagged=True`` (needs ``measurements``) takes a tilt whose measurement is
    flagged untrusted once more, at the same angle and before any correction, if another
    ``dose_per_tilt`` still fits ``dose_budget``; the re-acquisition is an event of the primary
    stream like any tilt, the decision (and a refusal for dose) one of the ``tracking`` stream,
    and the daemon marks the replaced frame invalid. ``total_dose_e_per_A2`` in the metadata is
    what was planned; the ``tracking`` events name each frame taken again
    (``track_superseded_frame``) and the dose spent so far.
    """
    angles = tilt_order(min_deg, max_deg, step_deg, order=order, group_size=group_size, start_deg=start_deg)
    check_angles(tilt, angles)
    camera.check_exposure(dose_per_tilt)
    total = dose_per_tilt * len(angles)
    if total > dose_budget:
        raise ParameterError(
            f"total dose {total:g} e/A^2 ({len(angles)} tilts × {dose_per_tilt:g} e/A^2) exceeds "
            f"dose_budget = {dose_budget:g} e/A^2; "
            f"allowed: dose_per_tilt <= {dose_budget / len(angles):.3g} e/A^2"
        )
    if reacquire_flagged and measurements is None:
        raise ParameterError("reacquire_flagged=True needs a measurements device (livetomo's live shifts)")
    if track:
        check_tracking(
            measurements, image_shift, track_max_step_nm, track_timeout_s, track_on_limit, units="nm"
        )
    # the largest step in the corrector's own units (a stage's are µm)
    max_step = track_max_step_nm / getattr(image_shift, "nm_per_unit", 1.0) if track else track_max_step_nm
    if track or reacquire_flagged:
        measurements.timeout_s = float(track_timeout_s)
        measurements.corrector = image_shift if track else None
        measurements.model = "tilt"
        pixel = camera.read_configuration().get(f"{camera.name}_pixel_size")
        if pixel is not None:  # the camera's pixels, which the shifts count
            measurements.pixel_size_nm = float(pixel["value"])
    index = {"n": 0}
    steering = Steering(
        measurements, image_shift, DoseLedger(dose_per_tilt, len(angles), dose_budget, "e/A^2"),
        TrackingRecord(field_px=getattr(getattr(camera, "backend", None), "shape", None)),
        track=track, reacquire=reacquire_flagged, max_step=max_step, on_limit=track_on_limit, detector=camera,
    )  # fmt: skip

    def reshoot(detectors, step):
        def plan():  # the same readings as bluesky's step, without the move
            yield from bps.trigger_and_read([*detectors, *step.keys()])
            yield from bps.checkpoint()

        return plan

    def per_step(detectors, step, pos_cache):
        yield from step_then_checkpoint(detectors, step, pos_cache)  # a pause never repeats a tilt
        yield from steering.after_frame(index["n"], reshoot(detectors, step))
        if on_tilt is not None:
            hook = on_tilt(next(iter(step.values())), index["n"])
            if hook is not None:
                yield from hook
        index["n"] += 1

    md = _metadata(
        md,
        plan_name="tilt_series",
        livetomo_method="cryo-et",
        tilt_angles=angles,
        tilt_order=order,
        group_size=group_size,
        dose_per_tilt_e_per_A2=dose_per_tilt,
        total_dose_e_per_A2=total,
        **({"tracking": tracking_md(measurements, image_shift, max_step, track_timeout_s)} if track else {}),
        **({"reacquire_flagged": True} if reacquire_flagged else {}),
    )
    yield from bps.prepare(camera, K3Settings(dose_e_per_A2=dose_per_tilt), wait=True)
    if not (track or reacquire_flagged):
        return (yield from bp.list_scan([camera], tilt, angles, per_step=per_step, md=md))
    # the image shift is read with every frame (the real position); the measurements device is
    # staged before the run opens, so it follows this run and no earlier one
    scan = bp.list_scan([camera, *([image_shift] if track else [])], tilt, angles, per_step=per_step, md=md)
    return (yield from bpp.stage_wrapper(scan, [measurements]))
