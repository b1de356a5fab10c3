import numpy as np
import pytest

from livetomo.devices.base import ParameterError
from livetomo.devices.sim import make_rotation_stage
from livetomo.simulators.stages import RotationStageModel, TiltStageModel


def test_runout_follows_the_stage_model_through_the_device():
    amp_v, amp_h, ph_v, ph_h, second, offset = 0.4, 1.5, 30.0, -60.0, 0.2, 0.5
    stage = make_rotation_stage(
        seed=1,
        wobble_amplitude_um=(amp_v, amp_h),
        wobble_phase_deg=(ph_v, ph_h),
        second_harmonic_um=second,
        axis_offset_um=offset,
        jitter_um=0.0,
    )
    for angle in (0.0, 37.0, 90.0, 181.5, -45.0):
        stage.set(angle).wait(1)
        reading = stage.read()
        t = np.deg2rad(angle)
        expected_v = amp_v * np.sin(t + np.deg2rad(ph_v))
        expected_h = offset + amp_h * np.sin(t + np.deg2rad(ph_h)) + second * np.sin(2 * t)
        assert reading["rotation"]["value"] == pytest.approx(angle)
        assert reading["rotation_true_offset_v"]["value"] == pytest.approx(expected_v, abs=1e-12)
        assert reading["rotation_true_offset_h"]["value"] == pytest.approx(expected_h, abs=1e-12)


def test_jitter_has_the_configured_spread():
    model = RotationStageModel(jitter_um=0.05, seed=3)
    residuals = []
    for angle in np.linspace(0, 360, 400):
        model.move(angle)
        residuals.append(model.true_offset_um - model.runout_um(angle))
    assert np.std(residuals) == pytest.approx(0.05, rel=0.15)


def test_rotation_limit_is_enforced_with_a_clear_message():
    stage = make_rotation_stage(seed=0)
    with pytest.raises(
        ParameterError, match=r"rotation = 400 deg is outside the allowed range \[-360, 360\] deg"
    ):
        stage.set(400.0)
    assert stage.position == 0.0


def test_tilt_stage_eucentric_error_moves_the_specimen_sideways():
    model = TiltStageModel(eucentric_error_nm=100.0, drift_step_nm=0.0, drift_rate_nm_per_s=(0.0, 0.0))
    model.move(30.0)
    assert model.true_offset_nm == pytest.approx([0.0, 50.0])
    model.move(-90.0 + 30.0)
    assert model.true_offset_nm[1] == pytest.approx(100.0 * np.sin(np.deg2rad(-60.0)))
