import numpy as np
import pytest

from livetomo.devices.base import ParameterError
from livetomo.devices.sim import make_tem
from livetomo.plans import tilt_order, tilt_series


def test_hagen_dose_symmetric_order_is_the_documented_sequence():
    # Hagen et al. 2017: start at 0, then groups of two on alternating sides, moving outwards
    assert tilt_order(-12, 12, 3, order="dose-symmetric", group_size=2) == [
        0, 3, 6, -3, -6, 9, 12, -9, -12,
    ]  # fmt: skip
    assert tilt_order(-9, 9, 3, group_size=1) == [0, 3, -3, 6, -6, 9, -9]
    assert tilt_order(-6, 6, 3, group_size=3) == [0, 3, 6, -3, -6]


def test_bidirectional_and_continuous_orders():
    assert tilt_order(-6, 9, 3, order="bidirectional") == [0, 3, 6, 9, -3, -6]
    assert tilt_order(-6, 6, 3, order="continuous") == [-6, -3, 0, 3, 6]


def test_full_dose_symmetric_series_visits_every_tilt_once():
    angles = tilt_order(-60, 60, 3)
    assert len(angles) == 41
    assert sorted(angles) == pytest.approx(np.arange(-60, 61, 3))
    # dose symmetry: after each complete pair of groups the accumulated tilts are balanced
    assert angles[:5] == [0, 3, 6, -3, -6]


@pytest.fixture
def tem():
    return make_tem(shape=(32, 12, 32), seed=4)


def test_tilt_series_runs_in_order_with_hook_and_drift_truth(RE, docs, tem):
    seen = []

    def track(angle, index):
        seen.append((index, angle))
        return None

    RE(tilt_series(tem.k3, tem.tilt, min_deg=-9, max_deg=9, step_deg=3, dose_per_tilt=3.0, on_tilt=track))
    expected = [0, 3, 6, -3, -6, 9, -9]
    assert docs.column("tilt") == pytest.approx(expected)
    assert seen == list(enumerate(expected))
    assert docs.start["total_dose_e_per_A2"] == pytest.approx(21.0)
    frames = tem.sink.stack("k3", "k3_image")
    assert frames.shape == (7, 32, 32)
    # dose per tilt: mean electrons per pixel ≈ dose × pixel area × transmission (1/cos thickness)
    pixel_area_A2 = (tem.world.pixel_size_nm * 10) ** 2
    for frame, angle in zip(frames, expected, strict=True):
        transmission = tem.world.camera.transmission(angle)
        assert frame.mean() == pytest.approx(3.0 * pixel_area_A2 * transmission, rel=0.05)
    # the drift the stage reports is the shift the camera applied
    for event, frame in zip(docs.events["primary"], tem.world.history, strict=True):
        v, h = event["data"]["tilt_true_offset_v"], event["data"]["tilt_true_offset_h"]
        assert frame.true_shift_px == pytest.approx(
            (v / tem.world.pixel_size_nm, h / tem.world.pixel_size_nm)
        )


def test_dose_over_budget_fails_before_anything_moves(RE, docs, tem):
    with pytest.raises(
        ParameterError, match=r"total dose 123 e/A\^2 \(41 tilts × 3 e/A\^2\) exceeds dose_budget = 100"
    ):
        RE(tilt_series(tem.k3, tem.tilt, dose_per_tilt=3.0, dose_budget=100.0))
    assert docs.names == [] and tem.world.history == [] and tem.tilt.position == 0.0


def test_tilt_out_of_range_names_the_angle_and_the_range(RE, docs, tem):
    with pytest.raises(
        ParameterError, match=r"angles\[\d+\] = 72 deg is outside the allowed range \[-70, 70\] deg"
    ):
        RE(tilt_series(tem.k3, tem.tilt, min_deg=-72, max_deg=72, step_deg=3, dose_per_tilt=1.0))
    assert docs.names == [] and tem.world.history == []


def test_unknown_order_and_bad_dose_are_named(RE, tem):
    with pytest.raises(ParameterError, match="order 'zigzag' is not one of"):
        RE(tilt_series(tem.k3, tem.tilt, order="zigzag"))
    with pytest.raises(
        ParameterError, match=r"k3 exposure = 50 e/A\^2 is outside the allowed range \[0.05, 20\]"
    ):
        RE(tilt_series(tem.k3, tem.tilt, dose_per_tilt=50.0, dose_budget=1e6))
