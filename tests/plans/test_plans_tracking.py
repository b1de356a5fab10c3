"""Tracking in tilt_series against the simulated TEM's truth, with the measurements fed by a
stand-in for the daemon that publishes each frame's true shift (the daemon itself: see
tests/daemon/test_tracking_daemon.py)."""

import numpy as np
import pytest
from bluesky.utils import RunEngineInterrupted

from livetomo.devices.measurements import LiveMeasurements, MeasurementBoard
from livetomo.devices.sim import make_tem
from livetomo.plans import tilt_series
from livetomo.simulators.stages import ImageShiftModel, TiltStageModel

FIELD_PX = 32


def drifting_tem(*, eucentric_nm=100.0, rate=(0.15, 0.3), limit_nm=2000.0, voxel_nm=16.0):
    stage = TiltStageModel(
        eucentric_error_nm=eucentric_nm, drift_rate_nm_per_s=rate, drift_step_nm=1.5, seed=3
    )
    return make_tem(
        shape=(FIELD_PX, 8, FIELD_PX),
        voxel_size_nm=voxel_nm,
        seed=1,
        tilt_model=stage,
        image_shift_model=ImageShiftModel(limit_nm=limit_nm),
    )


def perfect_daemon(board: MeasurementBoard, tem, *, publish=True, noise_px=0.1, seed=0):
    """A RunEngine callback publishing what a daemon would: each frame's shift relative to the
    first frame (minus the specimen's displacement on the camera), to within ``noise_px``."""
    rng = np.random.default_rng(seed)
    first = {}

    def callback(name, doc):
        if name == "start":
            board.on_message("run_start", {"run_uid": doc["uid"], "angles_planned": doc["tilt_angles"]})
            first.clear()
        elif name == "descriptor":
            first.setdefault("streams", {})[doc["uid"]] = doc["name"]
        elif name == "event" and first["streams"][doc["descriptor"]] == "primary" and publish:
            seq = doc["seq_num"] - 1
            true = np.asarray(tem.world.history[-1].true_shift_px)
            first.setdefault("origin", true)
            shift = -(true - first["origin"]) + rng.normal(0, noise_px, 2)
            payload = {
                "run_uid": board.run_uid,
                "seq": seq,
                "angle": doc["data"]["tilt"],
                "shift": list(shift),
            }
            board.on_message("frame", {**payload, "quality": {"ok": True, "uncertainty_px": noise_px}})

    return callback


def displacement_nm(tem):
    return np.array([np.hypot(*f.true_shift_px) for f in tem.world.history]) * tem.world.pixel_size_nm


def series(tem, live, **kwargs):
    return tilt_series(
        tem.k3, tem.tilt, min_deg=-60, max_deg=60, step_deg=3, dose_per_tilt=1.0, measurements=live,
        image_shift=tem.image_shift, **kwargs,
    )  # fmt: skip


def test_tracked_series_keeps_the_area_within_five_percent_of_the_field(RE, docs):
    untracked = drifting_tem()
    RE(series(untracked, None))
    tem = drifting_tem()
    board = MeasurementBoard()
    RE.subscribe(perfect_daemon(board, tem))
    live = LiveMeasurements(board, pixel_size_nm=tem.world.pixel_size_nm)
    RE(series(tem, live, track=True, track_timeout_s=5.0))
    field_nm = FIELD_PX * tem.world.pixel_size_nm
    without, with_ = displacement_nm(untracked), displacement_nm(tem)
    assert without.max() > 0.5 * field_nm  # the target would leave the field
    assert with_.max() < 0.05 * field_nm, with_
    statuses = docs.column("track_status", stream="tracking")
    assert len(statuses) == 41 and statuses[-1] == "last frame"
    assert sum(s.startswith("corrected") for s in statuses) >= 38
    # each primary event carries the image shift in place during its exposure: with the stage's
    # own offset, it makes up where the simulator really put the specimen on the camera
    events = docs.events["primary"][-41:]
    p = tem.world.pixel_size_nm
    for event, frame in zip(events, tem.world.history, strict=True):
        data = event["data"]
        assert frame.true_shift_px[0] * p == pytest.approx(
            data["tilt_true_offset_v"] + data["image_shift_y_true_shift"], abs=1e-6
        )
        assert frame.true_shift_px[1] * p == pytest.approx(
            data["tilt_true_offset_h"] + data["image_shift_x_true_shift"], abs=1e-6
        )
    assert np.ptp([e["data"]["image_shift_x"] for e in events]) > 100.0


def test_stale_measurement_leaves_the_step_uncorrected_and_says_so(RE, docs):
    tem = drifting_tem()
    board = MeasurementBoard()
    RE.subscribe(perfect_daemon(board, tem, publish=False))  # run_start only: no frame ever measured
    live = LiveMeasurements(board, pixel_size_nm=tem.world.pixel_size_nm)
    RE(tilt_series(tem.k3, tem.tilt, min_deg=-6, max_deg=6, step_deg=3, measurements=live,
                   image_shift=tem.image_shift, track=True, track_timeout_s=0.05))  # fmt: skip
    statuses = docs.column("track_status", stream="tracking")
    assert len(statuses) == 5
    assert all(s.startswith("stale") and s.endswith("uncorrected") for s in statuses)
    assert docs.column("live_fresh", stream="tracking") == [False] * 5
    assert docs.column("image_shift_y", stream="tracking") == [0.0] * 5
    # the simulator's truth: the deflectors never moved, the specimen went where the stage took it
    assert not tem.world.image_shift.true_shift_nm.any()
    assert docs.column("image_shift_x_true_shift") == [0.0] * 5


def test_correction_beyond_the_limit_is_refused_with_the_limit_named(RE, docs):
    tem = drifting_tem(eucentric_nm=400.0, limit_nm=40.0)
    board = MeasurementBoard()
    RE.subscribe(perfect_daemon(board, tem))
    live = LiveMeasurements(board, pixel_size_nm=tem.world.pixel_size_nm)
    RE(tilt_series(tem.k3, tem.tilt, min_deg=-15, max_deg=15, step_deg=3, measurements=live,
                   image_shift=tem.image_shift, track=True, track_timeout_s=5.0))  # fmt: skip
    statuses = docs.column("track_status", stream="tracking")
    refused = [s for s in statuses if s.startswith("refused")]
    assert refused, statuses
    assert "outside the allowed range [-40, 40] nm" in refused[0] and refused[0].endswith("uncorrected")
    assert np.all(np.abs(docs.column("image_shift_x_true_shift")) <= 40.0)


def test_refusal_can_pause_the_series(RE, docs):
    tem = drifting_tem(eucentric_nm=400.0, limit_nm=40.0)
    board = MeasurementBoard()
    RE.subscribe(perfect_daemon(board, tem))
    live = LiveMeasurements(board, pixel_size_nm=tem.world.pixel_size_nm)
    with pytest.raises(RunEngineInterrupted):
        RE(tilt_series(tem.k3, tem.tilt, min_deg=-15, max_deg=15, step_deg=3, measurements=live,
                       image_shift=tem.image_shift, track=True, track_on_limit="pause"))  # fmt: skip
    assert RE.state == "paused"
    statuses = docs.column("track_status", stream="tracking")
    assert statuses[-1].startswith("refused")  # paused right after the refusal, recorded first
    RE.abort()


def test_tracking_parameters_are_checked_before_anything_moves(RE):
    tem = drifting_tem()
    with pytest.raises(ValueError, match="needs a measurements device"):
        RE(tilt_series(tem.k3, tem.tilt, track=True))
    live = LiveMeasurements(MeasurementBoard())
    with pytest.raises(ValueError, match="track_on_limit = 'stop' is not allowed"):
        RE(tilt_series(tem.k3, tem.tilt, track=True, measurements=live, image_shift=tem.image_shift,
                       track_on_limit="stop"))  # fmt: skip
    assert tem.tilt.position == 0.0 and not tem.world.history


def test_each_correction_is_limited_to_the_maximum_step(RE, docs):
    tem = drifting_tem()
    board = MeasurementBoard()
    RE.subscribe(perfect_daemon(board, tem))
    live = LiveMeasurements(board, pixel_size_nm=tem.world.pixel_size_nm)
    RE(tilt_series(tem.k3, tem.tilt, min_deg=-15, max_deg=15, step_deg=3, measurements=live,
                   image_shift=tem.image_shift, track=True, track_max_step_nm=5.0))  # fmt: skip
    statuses = docs.column("track_status", stream="tracking")
    assert any(s.endswith("limited to max_step 5 nm") for s in statuses), statuses
    # what the deflectors really did between two exposures, never more than the step allowed
    moved = np.diff(
        np.stack([docs.column("image_shift_y_true_shift"), docs.column("image_shift_x_true_shift")], 1),
        axis=0,
    )
    assert np.hypot(*moved.T).max() <= 5.0 + 1e-9
    assert np.hypot(*moved.T).max() > 4.0


def test_a_series_whose_target_leaves_the_field_is_paused_with_the_reason(RE, docs):
    # the deflectors' range (40 nm) cannot follow a 2 µm eucentric error: the target walks off
    tem = drifting_tem(eucentric_nm=2000.0, limit_nm=40.0)
    board = MeasurementBoard()
    RE.subscribe(perfect_daemon(board, tem))
    live = LiveMeasurements(board, pixel_size_nm=tem.world.pixel_size_nm)
    with pytest.raises(RunEngineInterrupted):
        RE(series(tem, live, track=True, track_timeout_s=5.0))
    assert RE.state == "paused"
    status = docs.column("track_status", stream="tracking")[-1]
    assert status.startswith("paused: the target moved") and "of the 32 x 32 px field" in status
    # the simulator's truth: the target really is at the field's edge, and nothing was taken after
    true = np.array([f.true_shift_px for f in tem.world.history])
    assert np.abs(true[-1] - true[0]).max() > 0.45 * FIELD_PX - 0.5
    assert len(tem.world.history) == len(docs.events["primary"]) < 41
    RE.abort()


def test_a_series_whose_registrations_fail_in_a_row_is_paused_as_lost(RE, docs):
    tem = drifting_tem()
    board = MeasurementBoard()
    publish = perfect_daemon(board, tem)

    def untrusted_after_two(name, doc):  # from the third frame on, every shift is flagged
        publish(name, doc)
        if name == "event" and board.run_uid and doc["seq_num"] > 2 and "tilt" in doc["data"]:
            seq = doc["seq_num"] - 1
            board.on_message(
                "frame",
                {"run_uid": board.run_uid, "seq": seq, "angle": doc["data"]["tilt"], "shift": [0.0, 0.0],
                 "quality": {"ok": False, "uncertainty_px": 5.0}},
            )  # fmt: skip

    RE.subscribe(untrusted_after_two)
    live = LiveMeasurements(board, pixel_size_nm=tem.world.pixel_size_nm)
    with pytest.raises(RunEngineInterrupted):
        RE(series(tem, live, track=True, track_timeout_s=5.0))
    statuses = docs.column("track_status", stream="tracking")
    assert statuses[-1] == "paused: 3 frames in a row with untrusted shifts: the target is lost"
    assert len(docs.events["primary"]) == 5  # two trusted frames, three flagged, then the pause
    RE.abort()
