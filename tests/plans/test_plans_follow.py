"""Runout-following rasters in xrf_dpc_tomo against the simulated microprobe's truth, the
measurements fed by a stand-in for the daemon that publishes each raster's true shift."""

import numpy as np
import pytest

from livetomo.devices.measurements import LiveMeasurements, MeasurementBoard
from livetomo.devices.sim import make_microprobe
from livetomo.plans import xrf_dpc_tomo
from livetomo.simulators.stages import RotationStageModel

PIXEL_UM = 0.3


def wobbly_probe(**model):
    stage = RotationStageModel(wobble_amplitude_um=(1.0, 3.0), axis_offset_um=0.0, seed=4, **model)
    return make_microprobe(shape=(16, 40, 40), seed=2, rotation_model=stage, save_spectra=False)


def perfect_daemon(board: MeasurementBoard, probe, *, noise_px=0.05, seed=0):
    """Each raster's shift relative to the first one (minus the specimen's displacement in the
    map), as the daemon would publish it, to within ``noise_px``."""
    rng = np.random.default_rng(seed)
    state = {}

    def callback(name, doc):
        if name == "start":
            board.on_message("run_start", {"run_uid": doc["uid"], "angles_planned": doc["rotation_angles"]})
            state.clear()
        elif name == "descriptor":
            state.setdefault("streams", {})[doc["uid"]] = doc["name"]
        elif name == "event" and state["streams"][doc["descriptor"]] == "primary":
            true = np.asarray(probe.world.history[-1].true_shift_px)
            state.setdefault("origin", true)
            shift = -(true - state["origin"]) + rng.normal(0, noise_px, 2)
            payload = {"run_uid": board.run_uid, "seq": doc["seq_num"] - 1, "angle": doc["data"]["rotation"]}
            board.on_message("frame", {**payload, "shift": list(shift), "quality": {"ok": True}})

    return callback


def scan(probe, **kwargs):
    return xrf_dpc_tomo(
        probe.dpc, probe.xrf, probe.rotation, probe.scan, start=0, stop=180, num=31, raster_shape=(16, 40),
        pixel_size_um=PIXEL_UM, dwell_s=0.003, raster_offset=probe.raster_offset, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("order", ["sequential", "interlaced"])
def test_following_keeps_the_specimen_centred_in_the_raster(RE, docs, order):
    plain = wobbly_probe()
    RE(scan(plain, order=order))
    probe = wobbly_probe()
    board = MeasurementBoard()
    RE.subscribe(perfect_daemon(board, probe))
    live = LiveMeasurements(board, pixel_size_nm=PIXEL_UM * 1000)
    RE(scan(probe, follow=True, measurements=live, order=order))
    without = np.array([r.true_shift_px for r in plain.world.history])
    with_ = np.array([r.true_shift_px for r in probe.world.history])
    assert np.abs(without - without[0]).max() > 8.0  # the runout: about 10 px each way
    off = np.hypot(*(with_ - with_[0]).T)
    # the first three rasters cannot be predicted (too few to fit a harmonic); after that the
    # specimen stays within a pixel of where the first raster saw it. Interlaced, the next
    # rasters are predicted across gaps of 48-24° (extrapolated to 144° and 168°: 1.5 px off)
    # until eight angles span the range.
    if order == "sequential":
        assert off[3:].max() < 1.0, off
    else:
        assert off[3:].max() < 2.0 and off[8:].max() < 1.0, off
    statuses = docs.column("track_status", stream="tracking")
    assert statuses[-1] == "last frame" and statuses.count("corrected") >= 28
    # the primary events carry where the raster was moved, and with the runout where the specimen was
    events = docs.events["primary"][-31:]
    for event, raster in zip(events, probe.world.history, strict=True):
        data = event["data"]
        assert raster.true_shift_px[1] * PIXEL_UM == pytest.approx(
            data["raster_offset_x_true_specimen"], abs=1e-6
        )
        assert data["raster_offset_x_true_specimen"] == pytest.approx(
            data["rotation_true_offset_h"] - data["raster_offset_x"], abs=1e-6
        )


def test_a_raster_offset_beyond_its_range_is_refused_with_the_limit_named(RE, docs):
    probe = wobbly_probe()
    probe.world.RASTER_OFFSET_LIMIT_UM = 1.0
    probe.raster_offset.x.limits = probe.raster_offset.y.limits = (-1.0, 1.0)
    board = MeasurementBoard()
    RE.subscribe(perfect_daemon(board, probe))
    live = LiveMeasurements(board, pixel_size_nm=PIXEL_UM * 1000)
    RE(scan(probe, follow=True, measurements=live))
    refused = [s for s in docs.column("track_status", stream="tracking") if s.startswith("refused")]
    assert refused and "is outside the allowed range [-1, 1] um; uncorrected" in refused[0]
    assert np.abs(docs.column("raster_offset_x")).max() <= 1.0
