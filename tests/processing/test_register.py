"""Sub-pixel registration against known shifts, quality flags, input checks."""

import json

import numpy as np
import pytest
from scipy import ndimage

from livetomo.processing.register import (
    PreparedReference,
    RegistrationError,
    prepare_reference,
    register,
    shift_image,
)


def _texture(shape=(96, 128), sigma=2.0, seed=0):
    """Smooth random texture, periodic (so Fourier shifts of it are exact), std about 0.14."""
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap").astype(np.float32)


def _scene(shift, shape=(96, 128), pad=24, seed=0, noise=0.0):
    """A crop of a larger texture and the same crop displaced by ``shift`` (true content move)."""
    big = _texture((shape[0] + 2 * pad, shape[1] + 2 * pad), seed=seed)
    moved = ndimage.shift(big.astype(np.float64), shift, order=3, mode="nearest")
    crop = (slice(pad, pad + shape[0]), slice(pad, pad + shape[1]))
    rng = np.random.default_rng(seed + 1)
    a = big[crop] + noise * rng.standard_normal(shape)
    b = moved[crop] + noise * rng.standard_normal(shape)
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize(
    "d", [(0.0, 0.0), (3.0, -7.0), (-5.0, 4.0), (0.37, -0.81), (-2.63, 1.12), (6.25, 9.5), (-0.05, 0.02)]
)
def test_windowed_registration_recovers_content_shift_with_skimage_sign(d):
    ref, mov = _scene(d)
    r = register(ref, mov)
    # ndimage.shift(mov, r.shift) ~ ref: the registering shift is minus the displacement.
    assert r.shift == pytest.approx((-d[0], -d[1]), abs=0.03)
    assert r.quality.ok
    assert all(u < 0.3 for u in r.quality.uncertainty_px)


@pytest.mark.parametrize("d", [(5.0, -11.0), (-0.4, 0.3), (31.7, 0.0), (-31.6, 47.3), (12.5, -63.5)])
def test_periodic_shifts_including_near_half_size_wrap(d):
    ref = _texture((64, 128), seed=3)
    mov = shift_image(ref, d, mode="wrap")
    r = register(ref, mov, window=None)
    for axis, n in enumerate(ref.shape):
        err = (r.shift[axis] + d[axis] + n / 2) % n - n / 2  # shifts are defined modulo the size
        assert abs(err) < 0.02
        assert -n / 2 <= r.shift[axis] <= n / 2


def test_result_is_on_the_upsampled_grid_and_upsample_1_gives_integers():
    ref, mov = _scene((2.37, -1.61))
    r = register(ref, mov, upsample_factor=20)
    assert np.allclose(np.array(r.shift) * 20, np.round(np.array(r.shift) * 20), atol=1e-6)
    r1 = register(ref, mov, upsample_factor=1)
    assert r1.shift == (-2.0, 2.0)


def test_agrees_with_scikit_image_on_sign_and_value():
    skimage = pytest.importorskip("skimage.registration")
    ref, mov = _scene((4.3, -2.7), seed=5)
    ours = register(ref, mov, window=None).shift
    theirs = skimage.phase_cross_correlation(ref, mov, upsample_factor=100, normalization=None)[0]
    assert ours == pytest.approx(tuple(theirs), abs=0.02)


def test_prepared_reference_gives_the_same_result_and_multichannel_sums():
    ref, mov = _scene((1.4, -3.2), seed=7)
    prepared = prepare_reference(ref, roi=((8, 88), (10, 118)), band=(None, 8.0))
    assert isinstance(prepared, PreparedReference) and prepared.shape == (80, 108)
    direct = register(ref, mov, roi=((8, 88), (10, 118)), band=(None, 8.0))
    assert register(prepared, mov).shift == direct.shift
    two = register(np.stack([ref, 2 * ref]), np.stack([mov, 2 * mov]))
    assert two.shift == pytest.approx((-1.4, 3.2), abs=0.03)


def test_phase_correlation_with_band_and_max_shift():
    ref, mov = _scene((-3.3, 2.2), seed=9, noise=0.05)
    r = register(ref, mov, normalization="phase", band=(1.5, None))
    assert r.shift == pytest.approx((3.3, -2.2), abs=0.1)
    # A search limited to +-2 px cannot reach the true peak: the result stays inside it.
    # (integer peak within +-max_shift, sub-pixel refinement within 1 px of it).
    limited = register(ref, mov, max_shift=2.0)
    assert max(abs(s) for s in limited.shift) <= 3.0
    assert register(ref, mov, max_shift=4.0).shift == pytest.approx(r.shift, abs=0.1)


def test_inputs_are_not_modified():
    ref, mov = _scene((1.0, 2.0))
    a, b = ref.copy(), mov.copy()
    register(ref, mov, band=(1, 10), normalization="phase")
    np.testing.assert_array_equal(ref, a)
    np.testing.assert_array_equal(mov, b)


def test_featureless_input_is_flagged_not_a_confident_shift():
    flat = np.full((64, 64), 7.0, np.float32)
    ref, _ = _scene((0, 0), shape=(64, 64))
    for a, b in ((flat, flat), (ref, flat), (flat, ref), (np.zeros((64, 64)), np.zeros((64, 64)))):
        q = register(a, b).quality
        assert not q.ok
        assert q.uncertainty_px == (np.inf, np.inf)


def test_pure_noise_pairs_are_flagged_low_quality():
    rng = np.random.default_rng(11)
    flagged, scores = 0, []
    for _ in range(30):
        a, b = rng.standard_normal((2, 64, 96))
        q = register(a, b).quality
        flagged += not q.ok
        scores.append(q.score)
    assert flagged == 30
    assert np.median(scores) < 1.0  # about 0.85: sqrt(2 ln n) normalises the noise maximum
    # The same noise over a real signal is accepted.
    ref, mov = _scene((2.0, 1.0), shape=(64, 96), noise=0.1)
    assert register(ref, mov).quality.ok


def test_uncertainty_follows_the_real_error():
    """Across noise levels the estimated sigma must track the actual error (within a few x)."""
    rows = []
    for k, noise in enumerate((0.02, 0.06, 0.12)):
        errs, unc = [], []
        for seed in range(6):
            d = (0.3 * seed - 0.7, 0.45 - 0.2 * seed)
            ref, mov = _scene(d, seed=10 * k + seed, noise=noise)
            r = register(ref, mov)
            if r.quality.ok:
                errs.append(np.hypot(r.shift[0] + d[0], r.shift[1] + d[1]))
                unc.append(np.hypot(*r.quality.uncertainty_px))
        rows.append((np.sqrt(np.mean(np.square(errs))), np.median(unc)))
    errs, unc = np.array(rows).T
    assert np.all(np.diff(unc) > 0)  # more noise, larger estimated uncertainty
    assert np.all(errs < 3.0 * unc + 0.01)  # not over-confident
    assert np.all(unc < 5.0 * errs + 0.05)  # not uselessly pessimistic
    assert errs[-1] > errs[0]


def test_fwhm_reflects_the_feature_size():
    sharp_ref, sharp_mov = _scene((1.0, 1.0), seed=2)
    wide_ref = ndimage.gaussian_filter(sharp_ref, 6.0, mode="wrap")
    wide_mov = ndimage.gaussian_filter(sharp_mov, 6.0, mode="wrap")
    f_sharp = register(sharp_ref, sharp_mov).quality.fwhm_px
    f_wide = register(wide_ref, wide_mov).quality.fwhm_px
    # Gaussian-filtered white noise: autocorrelation FWHM = 2.355 * sqrt(2) * sigma.
    assert f_sharp == pytest.approx((6.7, 6.7), rel=0.2)
    assert all(w > 2.0 * s for w, s in zip(f_wide, f_sharp, strict=True))


def _full_surface_result(monkeypatch, *args, **kwargs):
    """register() with the whole correlation surface computed (the small-image way)."""
    import livetomo.processing.register as module

    with monkeypatch.context() as m:
        m.setattr(module, "_COARSE_MIN", 10**9)
        return register(*args, **kwargs)


@pytest.mark.parametrize(
    ("d", "sigma", "options", "tolerance"),
    [
        ((3.4, -7.8), 1.0, {}, 0.03),  # sharp peak: exclusion box evaluated by DFT
        ((-5.2, 2.7), 8.0, {}, 0.05),  # broad peak: FWHM from whole lines, then the whole surface
        ((3.4, -7.8), 2.0, {"max_shift": (2, 9)}, 0.05),  # true y shift outside the window
        # Phase correlation whitens the noise too: less precise here, the same either way.
        ((-1.3, 6.6), 2.0, {"normalization": "phase", "band": (1.0, 30.0)}, 0.25),
        ((250.4, -3.3), 2.0, {"window": None}, 0.03),  # near the half-size wrap of 512
    ],
)
def test_coarse_peak_search_at_large_sizes_matches_the_whole_surface(
    monkeypatch, d, sigma, options, tolerance
):
    """From 256 px the peak is searched on a quarter-band surface and refined by DFT; the
    shift and quality must equal those found on the whole surface, and the true shift."""
    big = _texture((512, 512), sigma=sigma, seed=5)
    big /= big.std()
    mov = shift_image(big, d, mode="wrap")
    rng = np.random.default_rng(6)
    ref = big + 0.1 * rng.standard_normal(big.shape).astype(np.float32)
    mov = mov + 0.1 * rng.standard_normal(big.shape).astype(np.float32)
    fast = register(ref, mov, **options)
    full = _full_surface_result(monkeypatch, ref, mov, **options)
    assert fast.shift == full.shift
    # Exact for sharp peaks; a broad peak's exclusion box is summed on the coarse surface.
    broad = max(full.quality.fwhm_px) > 8
    assert fast.quality.psr == pytest.approx(full.quality.psr, rel=5e-3 if broad else 1e-4)
    assert fast.quality.fwhm_px == pytest.approx(full.quality.fwhm_px, rel=1e-3)
    assert fast.quality.ok and full.quality.ok
    if "max_shift" in options:
        assert abs(fast.shift[0]) <= options["max_shift"][0] + 1.0
        assert fast.shift[1] == pytest.approx(-d[1], abs=tolerance)
    else:
        for axis in (0, 1):
            assert (fast.shift[axis] + d[axis] + 256) % 512 - 256 == pytest.approx(0.0, abs=tolerance)


def test_coarse_peak_search_flags_pure_noise(monkeypatch):
    rng = np.random.default_rng(12)
    for _ in range(4):
        a, b = rng.standard_normal((2, 384, 320)).astype(np.float32)
        assert not register(a, b).quality.ok
        assert not _full_surface_result(monkeypatch, a, b).quality.ok


def test_quality_as_dict_is_json():
    ref, mov = _scene((0.5, 0.5))
    r = register(ref, mov)
    text = json.dumps(r.as_dict())
    assert "fwhm_px" in text and "shift_px" in text


@pytest.mark.parametrize(
    "call",
    [
        lambda a: register(a, a[:, :-1]),
        lambda a: register(a, a.astype(np.complex64)),
        lambda a: register(a, a, window="gauss"),
        lambda a: register(a, a, upsample_factor=0),
        lambda a: register(a, a, normalization="full"),
        lambda a: register(a, a, band=(5, 2)),
        lambda a: register(a, a, roi=((0, 2), (0, 10))),
        lambda a: register(prepare_reference(a), a, band=(1, None)),
        lambda a: register(a[0], a[0]),
    ],
)
def test_bad_input_raises_a_clear_error(call):
    a = _texture((32, 32))
    with pytest.raises(RegistrationError):
        call(a)


def test_shift_image_moves_content_like_ndimage_shift():
    img = _texture((48, 64), seed=4)
    out = shift_image(img, (2.5, -3.25))
    ref = ndimage.shift(img.astype(float), (2.5, -3.25), order=5, mode="nearest")
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(out[inner] - ref[inner]).max() < 0.02 * np.abs(img).max()
    back = shift_image(shift_image(img, (1.3, 0.7), mode="wrap"), (-1.3, -0.7), mode="wrap")
    np.testing.assert_allclose(back, img, atol=1e-4)
