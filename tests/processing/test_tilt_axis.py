"""The in-plane tilt-axis angle from features tracked through a simulated tilt series."""

import numpy as np
import pytest

from livetomo.devices.sim import make_tem
from livetomo.plans.tilt_order import tilt_order
from livetomo.processing.tilt_axis import (
    TiltAxisEstimator,
    axis_vectors,
    detect_features,
    from_axis_frame,
    rotate_image,
    to_axis_frame,
)


@pytest.fixture(scope="module")
def series():
    """A dose-symmetric ±60° series (3°, 3 e/Å²) of a 96-px lamella with the axis at 84°."""
    tem = make_tem(shape=(96, 24, 96), seed=10, tilt_axis_deg=84.0)
    world = tem.world
    frames, truth = [], []
    tilts = tilt_order(-60.0, 60.0, 3.0, order="dose-symmetric")
    for tilt in tilts:
        world.tilt.move(tilt)
        frames.append(world.acquire(3.0))
        truth.append(world.history[-1].true_shift_px)
    return np.asarray(tilts), np.asarray(frames), np.asarray(truth)


def test_the_axis_angle_is_recovered_within_a_fifth_of_a_degree(series):
    tilts, frames, truth = series
    estimator = TiltAxisEstimator()
    for tilt, frame, shift in zip(tilts, frames, truth, strict=True):
        estimator.add(frame, tilt, -shift)  # drift-corrected as the live alignment would
    estimate = estimator.estimate()
    assert estimate is not None and estimate.n_tracks >= 2
    assert estimate.angle_deg == pytest.approx(84.0, abs=0.2)
    assert estimate.sigma_deg < 0.5
    # without any drift correction (linking alone) it still finds the axis
    plain = TiltAxisEstimator()
    for tilt, frame in zip(tilts, frames, strict=True):
        plain.add(frame, tilt)
    assert plain.estimate().angle_deg == pytest.approx(84.0, abs=0.5)


def test_too_few_tilts_give_no_estimate(series):
    tilts, frames, _ = series
    estimator = TiltAxisEstimator()
    for tilt, frame in list(zip(tilts, frames, strict=True))[:5]:  # 0, ±3, ±6 degrees
        estimator.add(frame, tilt)
    assert estimator.estimate() is None


def test_rotation_and_frames_agree_with_the_simulator():
    along, across = axis_vectors(84.0)
    assert np.dot(along, across) == pytest.approx(0.0, abs=1e-12)
    v = np.array([[1.5, -2.0], [0.3, 4.0]])
    np.testing.assert_allclose(from_axis_frame(to_axis_frame(v, 84.0), 84.0), v, atol=1e-12)
    # a bright spot displaced along the axis direction lands on the vertical after turning
    image = np.zeros((64, 64), np.float32)
    y, x = np.array([31.5, 31.5]) + 10.0 * along
    image[int(round(y)) - 1 : int(round(y)) + 2, int(round(x)) - 1 : int(round(x)) + 2] = 1.0
    turned = rotate_image(image, 84.0)
    r, c = np.unravel_index(int(np.argmax(turned)), turned.shape)
    assert abs(c - 31.5) <= 1.0 and r > 36
    assert len(detect_features(image + 0.001 * np.random.default_rng(0).standard_normal(image.shape))) >= 1
