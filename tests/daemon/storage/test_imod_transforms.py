"""IMOD .xf transforms of a tilt series whose axis is inclined on the camera: applied to the
raw sections they give sections with the axis vertical, checked against the simulator's own
rotation of a vertical-axis image."""

import numpy as np
import pytest
from scipy import ndimage

from livetomo.daemon.storage import apply_xf, xf_transforms
from livetomo.simulators.k3 import rotate_to_axis


def _specimen(shape=(96, 96), seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    rows, cols = rng.integers(20, shape[0] - 20, 12), rng.integers(20, shape[1] - 20, 12)
    image[rows, cols] = 1.0
    image[30:66, 46:50] += 0.5  # a bar along the (vertical) tilt axis
    return ndimage.gaussian_filter(image, 2.0)


@pytest.mark.parametrize("camera_axis_deg", [84.0, 90.0, 97.5])
def test_xf_turns_an_inclined_axis_vertical_and_undoes_the_drift(camera_axis_deg):
    vertical = _specimen()
    drift = np.array([2.6, -3.4])  # (dy, dx) px the specimen moved on the camera
    raw = ndimage.shift(rotate_to_axis(vertical, camera_axis_deg), drift, order=3, mode="nearest")
    imod_axis = camera_axis_deg - 90.0  # counter-clockwise from Y
    (transform,) = xf_transforms([-drift], imod_axis)
    angle = np.rad2deg(np.arctan2(transform[2], transform[0]))
    assert angle == pytest.approx(-imod_axis)
    aligned = apply_xf(raw, transform)
    inner = (slice(20, -20), slice(20, -20))
    error = np.abs(aligned[inner] - vertical[inner]).max() / vertical.max()
    assert error < 0.05
    # the other sense of rotation would leave the bar inclined by twice the angle
    if camera_axis_deg != 90.0:
        (wrong,) = xf_transforms([-drift], -imod_axis)
        assert np.abs(apply_xf(raw, wrong)[inner] - vertical[inner]).max() / vertical.max() > 0.2


def test_without_rotation_the_xf_is_the_identity_and_a_shift():
    (transform,) = xf_transforms([[1.5, -2.25]], 0.0)
    np.testing.assert_array_equal(transform, [1.0, 0.0, 0.0, 1.0, -2.25, 1.5])
