"""``livetomo bench learned``'s decomposition: its noise-free series and its translation pairs."""

import numpy as np

from livetomo.daemon.bench.learned import CLEAN, CLEAN_DOSE, simulate_series
from livetomo.daemon.bench.learned_protocol import _camera, pair_errors


def test_noise_free_series_is_the_expectation_of_the_noisy_one():
    data = simulate_series(
        "particles", 0, 60.0, (32,), (CLEAN_DOSE,), field_vox=32, max_tilt=10.0, step=2.0, clean_sizes=(32,)
    )
    clean, noisy = data[32, CLEAN], data[32, CLEAN_DOSE]
    # Same specimen, tilts and drift: the truth is the same, frame by frame.
    np.testing.assert_array_equal(clean["truth"], noisy["truth"])
    assert clean["frames"].shape == noisy["frames"].shape == (len(data["tilts"]), 32, 32)
    # No counting noise: not integer counts, and the noisy frames are Poisson draws of it.
    assert np.any(clean["frames"] != np.round(clean["frames"]))
    residual = noisy["frames"] - clean["frames"]
    n = residual.size
    assert abs(residual.mean()) < 5.0 * np.sqrt(clean["frames"].mean() / n)
    assert abs(residual.var() / clean["frames"].mean() - 1.0) < 0.1


def test_translation_pairs_know_their_shift():
    cam = _camera("particles", 0, 150.0, 128, 128)
    conditions = (("noise-free", None, None), ("3 e/px", "counts", 3.0))
    res = pair_errors(cam, np.random.default_rng(0), tilts=(0.0,), shifts_per_tilt=2, conditions=conditions)
    clean = res["noise-free"]
    # The truth's sign and size: cross-correlation of noise-free pairs is exact to the
    # upsampling step; the network to its stated noise-free precision (a few 0.01 px).
    assert np.abs(clean["plain"]).max() < 0.03
    assert np.abs(clean["learned"]).max() < 0.3
    # The low-count condition is set by the mean detected count per pixel.
    np.testing.assert_allclose(res["3 e/px"]["counts"], 3.0, rtol=0.05)
