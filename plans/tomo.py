"""Tomography plans: a rotation step scan, and XRF-DPC nanotomography with fly-scan rasters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import plans as bp
from bluesky import preprocessors as bpp

from ..devices.base import ParameterError, check_range
from ..devices.motion import RasterSpec
from .tracking import DoseLedger, Steering, TrackingRecord, check_tracking, tracking_md

# Mass energy-absorption coefficient of water (vitreous ice) near 10 keV, cm²/g (NIST, 10 keV: 4.944).
ICE_MU_EN_CM2_PER_G = 4.944
KEV_TO_J = 1.602176634e-16


MAX_ANGLES = 10_000  # more than any scan: a bound, so a wild num cannot eat memory


def resolve_angles(angles=None, *, start=None, stop=None, num=None) -> list[float]:
    """Angles from an explicit list or from ``start``, ``stop`` (inclusive) and ``num``."""
    if angles is not None and any(v is not None for v in (start, stop, num)):
        raise ParameterError("give either angles or start/stop/num, not both")
    if angles is None:
        if any(v is None for v in (start, stop, num)):
            raise ParameterError("angles missing: give a list of angles, or start, stop and num")
        if not 1 <= int(num) <= MAX_ANGLES:
            raise ParameterError(f"num = {num} is outside the allowed range [1, {MAX_ANGLES}]")
        return [float(a) for a in np.linspace(start, stop, int(num))]
    if not 1 <= len(angles) <= MAX_ANGLES:
        raise ParameterError(f"angles has {len(angles)} entries; allowed: 1 to {MAX_ANGLES}")
    return [float(a) for a in angles]


ORDERS = ("sequential", "interlaced")


def order_angles(angles: Sequence[float], order: str = "sequential") -> list[float]:
    """Angles in acquisition order.

    ``sequential``: as given. ``interlaced``: the same angles in bit-reversed index order (van der
    Corput), so that every prefix of the scan covers the whole angular range about evenly: the
    live reconstruction at half the angles has the full range at half the density instead of
    half the range (as interlaced scans do for live previews, e.g. tomostream).
    """
    if order not in ORDERS:
        raise ParameterError(f"order = {order!r} is not allowed; allowed: {', '.join(map(repr, ORDERS))}")
    angles = [float(a) for a in angles]
    if order == "sequential" or len(angles) < 3:
        return angles
    bits = max(1, (len(angles) - 1).bit_length())
    keys = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(len(angles))]
    return [angles[i] for i in sorted(range(len(angles)), key=keys.__getitem__)]


def check_angles(axis, angles: Sequence[float]) -> None:
    """ParameterError naming the first angle outside ``axis``' limits."""
    for i, angle in enumerate(angles):
        axis.check(angle, parameter=f"angles[{i}]")


def planned_angles(rotation, angles, order: str, *, start, stop, num) -> list[float]:
    """The scan's angles (a list, or ``start``/``stop``/``num``) in acquisition ``order``, each
    checked against ``rotation``'s limits before reordering, so that an error names the index
    the user gave."""
    angles = resolve_angles(angles, start=start, stop=stop, num=num)
    check_angles(rotation, angles)
    return order_angles(angles, order)


def step_then_checkpoint(detectors, step, pos_cache):
    """bluesky's step (checkpoint, move, trigger and read), then a checkpoint.

    A pause rewinds to the last checkpoint: without one after the read, a pause that lands
    between a step's event and the next step's move would repeat that step, recording its
    angle twice.
    """
    yield from bps.one_nd_step(detectors, step, pos_cache)
    yield from bps.checkpoint()


def _metadata(md, **extra) -> dict:
    return {**extra, **(md or {})}


def tomo_scan(
    detectors,
    rotation,
    angles: list[float] | None = None,
    *,
    start: float | None = None,
    stop: float | None = None,
    num: int | None = None,
    order: str = "sequential",
    md: dict | None = None,
):
    """Step scan of ``rotation`` over angles (degrees), reading ``detectors`` at each.

    Give ``angles`` (any order, non-uniform allowed) or ``start``, ``stop``, ``num``;
    ``order='interlaced'`` acquires them in bit-reversed order (see :func:`order_angles`).
    Every angle is checked against the stage limits before anything moves.
    """
    angles = planned_angles(rotation, angles, order, start=start, stop=stop, num=num)
    md = _metadata(md, plan_name="tomo_scan", livetomo_method="tomography", rotation_angles=angles)
    return (yield from bp.list_scan(list(detectors), rotation, angles, per_step=step_then_checkpoint, md=md))


def xray_dose_gy(flux_photons_per_s: float, dwell_s: float, pixel_size_um: float, energy_kev: float) -> float:
    """Surface dose in vitreous ice of one raster (Gy): fluence · E · (µ_en/ρ)."""
    fluence_per_cm2 = flux_photons_per_s * dwell_s / (pixel_size_um * 1e-4) ** 2
    return fluence_per_cm2 * energy_kev * KEV_TO_J * ICE_MU_EN_CM2_PER_G * 1e3


def xrf_dpc_tomo(
    dpc,
    xrf,
    rotation,
    scan,
    angles: list[float] | None = None,
    *,
    start: float | None = None,
    stop: float | None = None,
    num: int | None = None,
    raster_shape: tuple[int, int] | None = None,
    pixel_size_um: float = 0.3,
    dwell_s: float | None = None,
    total_dwell_s: float | None = None,
    flux_photons_per_s: float = 5e9,
    energy_kev: float = 10.2,
    dose_budget_gy: float = 1e8,
    order: str | None = None,
    follow: bool = False,
    measurements=None,
    raster_offset=None,
    follow_max_step_um: float = 5.0,
    follow_timeout_s: float = 10.0,
    follow_on_limit: str = "continue",
    reacquire_flagged: bool = False,
    md: dict | None = None,
):
    """XRF nanotomography with DPC: a fly-scan raster of DPC + XRF at every angle.

    Give ``dwell_s`` per pixel, or ``total_dwell_s`` for dose fractionation: the total
    dwell per pixel is spread over all angles (dwell = total / n_angles), so many low-dose
    angles cost what few high-dose ones would. The accumulated dose (Gy, ice, 10 keV
    surface dose) must stay within ``dose_budget_gy``. Angles from ``start``/``stop``/``num`` are
    acquired interlaced (bit-reversed order, :func:`order_angles`) unless
    ``order='sequential'``: every part of the scan then covers the whole range, so the live
    reconstruction at half the angles is almost the final one (0.99 of its correlation with the
    truth, against 0.74 for a sequential half: a 90° missing wedge; docs/alignment.md). An
    explicit ``angles`` list, and any scan with ``follow=True``, is acquired in order unless
    ``order='interlaced'``. ``raster_shape`` (rows, columns) defaults to the scan stage's
    ``default_shape``, the field that covers the beamline's usual specimen. All checks happen
    before motion.

    ``follow=True`` moves the next angle's raster centre (``raster_offset``, µm) by the runout
    livetomo predicts from its live measurements (``measurements``), so the specimen stays
    centred; at most ``follow_max_step_um`` per angle; stale or untrusted measurements and
    targets beyond the offset's limits leave the raster where it is (``follow_on_limit``:
    'continue' or 'pause'), each decision an event of the ``tracking`` stream
    (plans/tracking.py; docs/tracking.md).

    ``reacquire_flagged=True`` (needs ``measurements``) scans an angle whose measurement is
    flagged untrusted once more, before any correction, if the dose of another raster still
    fits ``dose_budget_gy``; the decision (or the refusal) is an event of the ``tracking``
    stream naming the replaced raster, which the daemon marks invalid.
    """
    if order is None:  # a list is the operator's order; a range is best taken interlaced, unless
        # followed: predictions hold the specimen only from nearby angles (interlaced, the first
        # rasters jump 24-96°: 3 of 121 cut the cell in `livetomo bench tracking`, none in order)
        order = "sequential" if angles is not None or follow else "interlaced"
    angles = planned_angles(rotation, angles, order, start=start, stop=stop, num=num)
    if (dwell_s is None) == (total_dwell_s is None):
        raise ParameterError("give exactly one of dwell_s (per angle) or total_dwell_s (dose-fractionated)")
    if dwell_s is None:
        check_range("total_dwell_s", total_dwell_s, 0.0, np.inf, "s")
        dwell_s = total_dwell_s / len(angles)
    # every input of the dose is checked, so nothing can slip a scan under the budget
    check_range("flux_photons_per_s", flux_photons_per_s, 1.0, 1e16, "photons/s")
    check_range("energy_kev", energy_kev, 0.1, 100.0, "keV")
    check_range("dose_budget_gy", dose_budget_gy, 0.0, np.inf, "Gy")
    if raster_shape is None:
        raster_shape = getattr(scan, "default_shape", (48, 48))
    spec = RasterSpec(shape=tuple(int(n) for n in raster_shape), pixel_size_um=pixel_size_um, dwell_s=dwell_s)
    scan.check(spec)
    dose = xray_dose_gy(flux_photons_per_s, dwell_s, pixel_size_um, energy_kev) * len(angles)
    if dose > dose_budget_gy:
        raise ParameterError(
            f"dose {dose:.3g} Gy ({len(angles)} angles × {dwell_s * 1e3:g} ms dwell) exceeds "
            f"dose_budget_gy = {dose_budget_gy:.3g} Gy; allowed: total dose <= budget"
        )

    if reacquire_flagged and measurements is None:
        raise ParameterError("reacquire_flagged=True needs a measurements device (livetomo's live shifts)")
    if reacquire_flagged and not follow:
        measurements.timeout_s = float(follow_timeout_s)
        measurements.corrector = None
        measurements.model = "runout"
        measurements.pixel_size_nm = pixel_size_um * 1000.0
    if follow:
        check_tracking(
            measurements, raster_offset, follow_max_step_um, follow_timeout_s, follow_on_limit,
            prefix="follow", what="raster_offset",
        )  # fmt: skip
        measurements.timeout_s = float(follow_timeout_s)
        measurements.corrector = raster_offset
        measurements.model = "runout"
        measurements.pixel_size_nm = pixel_size_um * 1000.0  # the maps' pixels, which the shifts count
    index = {"n": 0}
    steering = Steering(
        measurements, raster_offset, DoseLedger(dose / len(angles), len(angles), dose_budget_gy, "Gy"),
        TrackingRecord(units="um"),  # runout shifts are absolute: no "left the field" rule
        track=follow, reacquire=reacquire_flagged, max_step=follow_max_step_um, on_limit=follow_on_limit,
        detector=dpc,
    )  # fmt: skip

    def raster(detectors, step):
        def plan():
            yield from bps.kickoff(scan, wait=True)
            yield from bps.complete(scan, wait=True)
            yield from bps.trigger_and_read([*detectors, *step.keys(), scan])
            yield from bps.checkpoint()  # a pause from here on does not repeat this raster

        return plan

    def per_step(detectors, step, pos_cache):
        yield from bps.move_per_step(step, pos_cache)  # checkpoints, then moves
        yield from raster(detectors, step)()
        yield from steering.after_frame(index["n"], raster(detectors, step))
        index["n"] += 1

    md = _metadata(
        md,
        plan_name="xrf_dpc_tomo",
        livetomo_method="xrf-dpc",
        rotation_angles=angles,
        raster_shape=list(spec.shape),
        pixel_size_um=pixel_size_um,
        dwell_s=dwell_s,
        dose_gy=dose,
        energy_kev=energy_kev,
        xrf_elements=list(xrf.elements),
        **(
            {"tracking": tracking_md(measurements, raster_offset, follow_max_step_um, follow_timeout_s)}
            if follow
            else {}
        ),
        **({"reacquire_flagged": True} if reacquire_flagged else {}),
    )
    for device in (scan, dpc, xrf):
        yield from bps.prepare(device, spec, wait=True)
    if not (follow or reacquire_flagged):
        return (yield from bp.list_scan([dpc, xrf], rotation, angles, per_step=per_step, md=md))
    # the raster offset is read with every raster (where it really was); the measurements device
    # is staged before the run opens, so it follows this run and no earlier one
    readers = [dpc, xrf, *([raster_offset] if follow else [])]
    plan = bp.list_scan(readers, rotation, angles, per_step=per_step, md=md)
    return (yield from bpp.stage_wrapper(plan, [measurements]))
