import numpy as np
import pytest
from bluesky.utils import FailedStatus

from livetomo.devices.base import ParameterError
from livetomo.devices.sim import make_microprobe, make_rotation_stage
from livetomo.plans import tomo_scan, xray_dose_gy, xrf_dpc_tomo
from livetomo.processing.dpc import dpc_from_segments
from livetomo.simulators.faults import FaultInjector, SimulatedTimeout
from livetomo.simulators.stages import MotionStalled

SHAPE = (8, 24, 24)


@pytest.fixture
def beamline():
    return make_microprobe(shape=SHAPE, seed=5)


def _plan(bl, angles, **kwargs):
    kwargs.setdefault("dwell_s", 3e-3)
    return xrf_dpc_tomo(bl.dpc, bl.xrf, bl.rotation, bl.scan, angles, raster_shape=SHAPE[::2], **kwargs)


def test_xrf_dpc_tomo_streams_every_raster_with_the_true_runout(RE, docs, beamline):
    angles = [0.0, 45.0, 90.0, 135.0, 180.0]
    RE(_plan(beamline, angles))
    assert docs.stop["exit_status"] == "success"
    assert docs.column("rotation") == pytest.approx(angles)
    assert len(docs.events["primary"]) == len(angles)
    segments = beamline.sink.stack("dpc", "dpc_segments")
    assert segments.shape == (5, 4, *SHAPE[::2])
    # every frame in the sink is the raster the simulator produced at that angle, in order
    for frame, truth in zip(segments, beamline.world.history, strict=True):
        np.testing.assert_array_equal(frame, truth.segments)
    # the runout the stage reported is the shift the microprobe applied
    pixel_um = beamline.world.probe.pixel_size_nm / 1000
    for event, truth in zip(docs.events["primary"], beamline.world.history, strict=True):
        reported = (
            event["data"]["rotation_true_offset_v"] / pixel_um,
            event["data"]["rotation_true_offset_h"] / pixel_um,
        )
        assert reported == pytest.approx(truth.true_shift_px)
    # pixels stay out of the documents: only stream_datum points at them
    datum_keys = {docs.stream_resources[d]["data_key"] for d in docs.stream_datums}
    assert datum_keys == {"dpc_segments", "xrf_roi", "xrf_spectra"}
    assert all(len(v) == len(angles) for v in docs.stream_datums.values())
    assert not any(isinstance(v, list) for e in docs.events["primary"] for v in e["data"].values())


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # a range is taken interlaced: every part of the scan spans 0-180° (live reconstruction)
        ({"start": 0, "stop": 180, "num": 5}, [0.0, 180.0, 90.0, 45.0, 135.0]),
        ({"start": 0, "stop": 180, "num": 5, "order": "sequential"}, [0.0, 45.0, 90.0, 135.0, 180.0]),
        # a list is the operator's order unless asked otherwise
        ({"angles": [90.0, 0.0, 45.0]}, [90.0, 0.0, 45.0]),
        ({"angles": [0.0, 60.0, 120.0, 180.0], "order": "interlaced"}, [0.0, 120.0, 60.0, 180.0]),
        # a followed scan predicts each raster from the angles before it: in order
        (
            {
                "start": 0,
                "stop": 180,
                "num": 5,
                "follow": True,
                "measurements": "board",
                "follow_timeout_s": 0.01,
            },
            [0.0, 45.0, 90.0, 135.0, 180.0],
        ),
    ],
)
def test_xrf_dpc_tomo_acquisition_order(RE, docs, beamline, kwargs, expected):
    if kwargs.get("measurements") == "board":  # nothing measures here: every step stays uncorrected
        from livetomo.devices.measurements import LiveMeasurements, MeasurementBoard

        kwargs = {**kwargs, "measurements": LiveMeasurements(MeasurementBoard(), timeout_s=0.01)}
        kwargs["raster_offset"] = beamline.raster_offset
    plan = xrf_dpc_tomo(
        beamline.dpc, beamline.xrf, beamline.rotation, beamline.scan, raster_shape=SHAPE[::2], dwell_s=3e-3, **kwargs
    )  # fmt: skip
    RE(plan)
    assert docs.column("rotation") == pytest.approx(expected)
    assert docs.start["rotation_angles"] == pytest.approx(expected)
    assert [r.angle_deg for r in beamline.world.history] == pytest.approx(expected)


def test_dpc_from_the_stored_segments_follows_the_true_phase_gradient(RE, beamline):
    RE(_plan(beamline, [0.0, 60.0]))
    horizontal, vertical, _ = dpc_from_segments(beamline.sink.stack("dpc", "dpc_segments"))
    truth = beamline.world.history[-1].true_phase_gradient
    assert np.corrcoef(horizontal[-1].ravel(), truth[1].ravel())[0, 1] > 0.9
    assert np.corrcoef(vertical[-1].ravel(), truth[0].ravel())[0, 1] > 0.9


def test_roi_maps_follow_the_true_element_lines(RE, beamline):
    RE(_plan(beamline, [30.0], dwell_s=0.5))
    roi = beamline.sink.stack("xrf", "xrf_roi")[0]
    zn = roi[beamline.xrf.elements.index("Zn")]
    truth = beamline.world.history[0].true_line_counts["Zn"]
    assert np.corrcoef(zn.ravel(), truth.ravel())[0, 1] > 0.8


def test_dose_fractionation_spreads_the_total_dwell(RE, docs, beamline):
    angles = np.linspace(0, 180, 12)
    RE(_plan(beamline, angles, dwell_s=None, total_dwell_s=0.036))
    assert docs.start["dwell_s"] == pytest.approx(0.003)
    assert docs.start["dose_gy"] == pytest.approx(12 * xray_dose_gy(5e9, 0.003, 0.3, 10.2))
    assert all(event["data"]["scan_dwell"] == pytest.approx(0.003) for event in docs.events["primary"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"angles": [0.0, 90.0, 400.0]},
            r"angles\[2\] = 400 deg is outside the allowed range \[-360, 360\] deg",
        ),
        ({"dwell_s": 5.0}, r"dwell_s = 5 s is outside the allowed range \[0.0001, 1\] s"),
        ({"dwell_s": 0.9, "dose_budget_gy": 1e6}, r"dose .* exceeds dose_budget_gy = 1e\+06 Gy"),
        ({"pixel_size_um": 10.0}, r"raster extent = 240 um is outside the allowed range \[0, 100\] um"),
        ({"dwell_s": None}, r"exactly one of dwell_s"),
    ],
)
def test_impossible_parameters_fail_before_anything_moves(RE, docs, beamline, kwargs, message):
    angles = kwargs.pop("angles", [0.0, 90.0])
    with pytest.raises(ParameterError, match=message):
        RE(_plan(beamline, angles, **kwargs))
    assert docs.names == []
    assert beamline.world.rotation.faults.opportunities["stalled_motion"] == 0
    assert beamline.world.history == []


def test_tomo_scan_accepts_a_range_and_rejects_both_forms(RE, docs):
    stage = make_rotation_stage(seed=0)
    RE(tomo_scan([], stage, start=-10, stop=10, num=5))
    assert docs.column("rotation") == pytest.approx([-10, -5, 0, 5, 10])
    with pytest.raises(ParameterError, match="either angles or start/stop/num"):
        RE(tomo_scan([], stage, [0.0], start=0, stop=1, num=2))


def test_dropped_frame_is_counted_and_the_scan_continues(RE, docs):
    bl = make_microprobe(shape=SHAPE, seed=2, faults=FaultInjector(schedule={"dropped_frame": [1]}))
    RE(_plan(bl, [0.0, 10.0, 20.0]))
    assert docs.stop["exit_status"] == "success"
    assert docs.column("dpc_dropped") == [0, 1, 1]
    assert docs.column("dpc_frames") == [1, 1, 2]
    assert len(bl.sink.frames[("dpc", "dpc_segments")]) == 2


def test_nan_frame_reaches_the_sink_flagged_by_its_values(RE):
    bl = make_microprobe(shape=SHAPE, seed=2, faults=FaultInjector(schedule={"nan_frame": [0]}))
    RE(_plan(bl, [0.0, 10.0]))
    segments = bl.sink.stack("dpc", "dpc_segments")
    assert np.isnan(segments[0]).all() and np.isfinite(segments[1]).all()


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("stalled_motion", MotionStalled, "rotation stalled at 0.000 deg on the way to 10.000 deg"),
        ("detector_timeout", SimulatedTimeout, "did not answer at 10.0 deg"),
    ],
)
def test_stall_and_timeout_abort_the_run_with_a_reason(RE, docs, fault, error, message):
    bl = make_microprobe(shape=SHAPE, seed=2, faults=FaultInjector(schedule={fault: [1]}))
    with pytest.raises(FailedStatus) as info:
        RE(_plan(bl, [0.0, 10.0, 20.0]))
    reason = info.value.args[0].exception()
    assert isinstance(reason, error)
    assert message in str(reason)
    assert docs.stop["exit_status"] == "fail"
    assert len(docs.events["primary"]) == 1


def test_without_a_raster_shape_the_scan_stage_default_is_used(RE, docs, beamline):
    RE(xrf_dpc_tomo(beamline.dpc, beamline.xrf, beamline.rotation, beamline.scan, [0.0], dwell_s=3e-3))
    rows, cols = beamline.scan.default_shape
    assert (rows, cols) == (SHAPE[0] + 16, SHAPE[2] + 8)  # wider than the specimen, for the runout
    assert docs.start["raster_shape"] == [rows, cols]
    assert beamline.sink.stack("dpc", "dpc_segments").shape == (1, 4, rows, cols)
