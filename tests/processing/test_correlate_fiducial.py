"""Fiducial route of correlative registration against the simulators' ground truth."""

import numpy as np
import pytest

from livetomo.processing.correlate import (
    BeadMatchingError,
    CorrelationError,
    TooFewBeadsError,
    apply_transform,
    detect_beads,
    estimate_transform,
    localize_beads,
    match_beads,
    register_fiducial,
)
from livetomo.simulators.correlative import make_correlative_scene
from livetomo.simulators.correlative3d import make_fiducial_volumes


def field_errors_nm(scene, matrix_px, step=20):
    """|T_est(q) - T_true(q)| over the SXT field, nm."""
    ny, nx = scene.sxt.shape
    yy, xx = np.mgrid[0:ny:step, 0:nx:step]
    p = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
    q = apply_transform(np.linalg.inv(scene.true_fm_to_sxt), p)
    return np.linalg.norm(apply_transform(matrix_px, q) - p, axis=1) * scene.sxt_pixel_nm


def field_error_nm(scene, matrix_px):
    """Largest transform error anywhere in the SXT field, nm."""
    return float(np.max(field_errors_nm(scene, matrix_px)))


def rms(values):
    return float(np.sqrt(np.mean(np.square(values))))


def true_pairs_found(scene, reg):
    """Map the registration's pairs onto the simulator's bead indices."""
    f = reg.fixed.localisation.positions[reg.pairs[:, 0]]
    m = reg.moving.localisation.positions[reg.pairs[:, 1]]
    ti = np.argmin(np.linalg.norm(f[:, None] - scene.beads_sxt_px[None], axis=2), axis=1)
    tj = np.argmin(np.linalg.norm(m[:, None] - scene.beads_fm_px[None], axis=2), axis=1)
    return set(zip(ti.tolist(), tj.tolist(), strict=True))


def register(scene, **kw):
    return register_fiducial(
        scene.sxt, scene.fm, fixed_pixel_nm=scene.sxt_pixel_nm, moving_pixel_nm=scene.fm_pixel_nm, **kw
    )


@pytest.fixture(scope="module")
def messy():
    """20 % spurious and 20 % missing beads, affine (per-axis scale) distortion."""
    return make_correlative_scene(
        n_beads=12, spurious_fraction=0.2, missing_fraction=0.2, scale_jitter=0.03, seed=4
    )


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("model", ["rigid", "similarity", "affine"])
def test_estimate_transform_recovers_a_known_transform(model, ndim):
    rng = np.random.default_rng(1)
    src = rng.uniform(-50, 50, (9, ndim))
    q, _ = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q[:, 0] *= np.sign(np.linalg.det(q))  # a proper rotation
    linear = {"rigid": q, "similarity": 1.7 * q, "affine": q @ np.diag(rng.uniform(0.8, 1.3, ndim))}[model]
    truth = np.eye(ndim + 1)
    truth[:ndim, :ndim], truth[:ndim, ndim] = linear, rng.uniform(-20, 20, ndim)
    est = estimate_transform(src, apply_transform(truth, src), model=model)
    np.testing.assert_allclose(est, truth, atol=1e-9)


def test_estimate_transform_names_what_is_missing():
    with pytest.raises(TooFewBeadsError, match="at least 3 are needed"):
        estimate_transform(np.zeros((2, 2)), np.zeros((2, 2)), model="affine")
    with pytest.raises(CorrelationError, match="collinear"):
        line = np.column_stack([np.arange(5.0), 2 * np.arange(5.0)])
        estimate_transform(line, line, model="affine")
    with pytest.raises(CorrelationError, match="unknown transform model 'projective'"):
        estimate_transform(np.zeros((4, 2)), np.zeros((4, 2)), model="projective")


def test_match_beads_pairs_points_despite_outliers_missing_points_and_a_mirror():
    rng = np.random.default_rng(3)
    fixed = rng.uniform(0, 10000, (14, 2))
    rot = np.deg2rad(33.0)
    mirror_similarity = np.array(
        [[np.cos(rot), np.sin(rot), 500.0], [np.sin(rot), -np.cos(rot), -800.0], [0, 0, 1]]
    )
    moving = apply_transform(np.linalg.inv(mirror_similarity), fixed) + rng.normal(0, 10, fixed.shape)
    keep_f, keep_m = np.arange(2, 14), np.r_[0:11, 12]  # each side misses beads the other has
    moving = np.vstack([moving[keep_m], rng.uniform(0, 10000, (3, 2))])  # plus 3 spurious spots
    match = match_beads(fixed[keep_f], moving, model="similarity", tolerance=150.0)
    found = {(int(keep_f[i]), int(keep_m[j])) for i, j in match.pairs}
    assert found == {(k, k) for k in set(keep_f) & set(keep_m)}
    np.testing.assert_allclose(match.matrix, mirror_similarity, atol=0.02 * 500)


def test_unrelated_bead_sets_are_refused():
    rng = np.random.default_rng(5)
    with pytest.raises(BeadMatchingError, match="no consistent pairing"):
        match_beads(
            rng.uniform(0, 12000, (10, 2)),
            rng.uniform(0, 12000, (10, 2)),
            tolerance=150.0,
            scale_range=(0.8, 1.25),
        )


# --------------------------------------------------------------------------- detection and localisation


def test_beads_are_found_and_localised_sub_pixel_with_honest_precision():
    scene = make_correlative_scene(n_beads=12, seed=2)
    for image, px, polarity, psf, truth in [
        (scene.sxt, scene.sxt_pixel_nm, "absorbing", 30.0, scene.beads_sxt_px),
        (scene.fm, scene.fm_pixel_nm, "bright", 350.0, scene.beads_fm_px),
    ]:
        det = detect_beads(image, pixel_size_nm=px, polarity=polarity, psf_fwhm_nm=psf)
        assert len(det.positions) == len(truth)
        loc = localize_beads(image, det.positions, sigma_px=det.sigma_px, polarity=polarity)
        assert loc.ok.all()
        nearest = np.argmin(np.linalg.norm(loc.positions[:, None] - truth[None], axis=2), axis=1)
        err_nm = np.linalg.norm(loc.positions - truth[nearest], axis=1) * px
        assert np.sqrt(np.mean(err_nm**2)) < 15.0  # SXT pixels are 20 nm, FM 150 nm
        est_nm = np.sqrt(np.mean(np.sum(loc.sigma_px**2, axis=1))) * px
        assert est_nm / 4 < np.sqrt(np.mean(err_nm**2)) < 4 * est_nm


@pytest.mark.parametrize("method", ["quadratic", "radial"])
def test_other_localisers_are_sub_pixel_too(method):
    scene = make_correlative_scene(n_beads=8, seed=6)
    det = detect_beads(scene.fm, pixel_size_nm=150.0, psf_fwhm_nm=350.0)
    loc = localize_beads(scene.fm, det.positions, sigma_px=det.sigma_px, method=method)
    nearest = np.argmin(np.linalg.norm(loc.positions[:, None] - scene.beads_fm_px[None], axis=2), axis=1)
    err_px = np.linalg.norm(loc.positions - scene.beads_fm_px[nearest], axis=1)
    assert loc.ok.sum() >= 7 and np.median(err_px[loc.ok]) < 0.2


def test_detection_can_be_restricted_to_user_regions():
    scene = make_correlative_scene(n_beads=12, seed=2)
    boxes = [(int(x) - 15, int(y) - 15, int(x) + 15, int(y) + 15) for x, y in scene.beads_sxt_px[:3]]
    det = detect_beads(scene.sxt, pixel_size_nm=20.0, polarity="absorbing", psf_fwhm_nm=30.0, regions=boxes)
    assert len(det.positions) == 3
    assert np.allclose(np.sort(det.positions[:, 0]), np.sort(scene.beads_sxt_px[:3, 0]), atol=1.5)
    with pytest.raises(CorrelationError, match="is not a box"):
        detect_beads(scene.sxt, pixel_size_nm=20.0, polarity="absorbing", regions=[(5, 5, 1, 1)])


# --------------------------------------------------------------------------- whole route


def test_recovers_the_true_transform_and_pairs_on_a_clean_scene():
    scene = make_correlative_scene(n_beads=12, scale_jitter=0.03, seed=1)
    reg = register(scene)
    assert true_pairs_found(scene, reg) == {tuple(p) for p in scene.pairs}
    assert field_error_nm(scene, reg.matrix_px) < 30.0  # 1.5 SXT pixels, anywhere in the field
    assert reg.sigma_t_nm < 60.0


def test_robust_to_spurious_and_missing_beads(messy):
    assert len(messy.spurious_fm) + len(messy.spurious_sxt) > 0 and len(messy.pairs) < 12
    reg = register(messy)
    assert true_pairs_found(messy, reg) == {tuple(p) for p in messy.pairs}
    assert field_error_nm(messy, reg.matrix_px) < 30.0


def test_error_budget_estimated_from_the_data_matches_the_truth(messy):
    reg = register(messy)
    i, j = reg.pairs.T
    f, m = reg.fixed.localisation.positions[i], reg.moving.localisation.positions[j]
    sigma_x = rms(np.min(np.linalg.norm(f[:, None] - messy.beads_sxt_px[None], axis=2), axis=1)) * 20.0
    sigma_f = rms(np.min(np.linalg.norm(m[:, None] - messy.beads_fm_px[None], axis=2), axis=1)) * 150.0
    sigma_a = rms(field_errors_nm(messy, reg.matrix_px, step=10))
    true_total = np.sqrt(sigma_x**2 + sigma_f**2 + sigma_a**2)
    assert reg.sigma_t_nm == pytest.approx(np.sqrt(reg.sigma_x_nm**2 + reg.sigma_f_nm**2 + reg.sigma_a_nm**2))
    assert true_total / 2 < reg.sigma_t_nm < 2 * true_total
    assert sigma_f / 3 < reg.sigma_f_nm < 3 * sigma_f and sigma_x / 3 < reg.sigma_x_nm < 3 * sigma_x
    # Leave-one-out distances measure the same total without a model.
    assert reg.tre_loo_rms_nm / 2 < reg.sigma_t_nm < 2 * reg.tre_loo_rms_nm
    # The TRE map never drops below the localisation floor and grows away from the beads.
    assert reg.tre_map_nm.min() >= np.hypot(reg.sigma_x_nm, reg.sigma_f_nm) - 1e-9
    assert reg.tre_map_nm.max() > reg.tre_map_nm.min()


def test_registering_an_image_to_itself_is_the_identity():
    scene = make_correlative_scene(n_beads=10, seed=8)
    reg = register_fiducial(
        scene.fm,
        scene.fm,
        fixed_pixel_nm=150.0,
        moving_pixel_nm=150.0,
        fixed_polarity="bright",
        fixed_psf_fwhm_nm=350.0,
    )
    np.testing.assert_allclose(reg.matrix_px, np.eye(3), atol=1e-9)
    assert len(reg.pairs) == 10 and reg.fre_nm < 1e-6


def test_too_few_beads_is_a_clear_error():
    scene = make_correlative_scene(n_beads=2, seed=0)
    with pytest.raises(TooFewBeadsError, match=r"found 2 bead\(s\) in the fixed image.*at least 3"):
        register(scene)
    blank = np.random.default_rng(0).normal(100.0, 3.0, (80, 80))
    good = make_correlative_scene(seed=0)
    with pytest.raises(TooFewBeadsError, match=r"found 0 bead\(s\) in the moving image"):
        register_fiducial(good.sxt, blank, fixed_pixel_nm=20.0, moving_pixel_nm=150.0)


def test_wrong_beads_are_a_clear_error():
    a, b = make_correlative_scene(seed=11), make_correlative_scene(seed=12)
    with pytest.raises(BeadMatchingError, match="no consistent pairing"):
        register_fiducial(a.sxt, b.fm, fixed_pixel_nm=20.0, moving_pixel_nm=150.0)


def test_bad_inputs_name_the_problem():
    scene = make_correlative_scene(seed=0)
    with pytest.raises(CorrelationError, match="polarity 'absorbing' needs a transmission image"):
        register_fiducial(scene.sxt - 1.0, scene.fm, fixed_pixel_nm=20.0, moving_pixel_nm=150.0)
    with pytest.raises(CorrelationError, match="both must be 2D or both 3D"):
        register_fiducial(scene.sxt, scene.fm[None].repeat(4, 0), fixed_pixel_nm=20.0, moving_pixel_nm=150.0)
    with pytest.raises(CorrelationError, match="pixel size must be positive"):
        register_fiducial(scene.sxt, scene.fm, fixed_pixel_nm=-20.0, moving_pixel_nm=150.0)
    with pytest.raises(CorrelationError, match="NaN"):
        register_fiducial(np.full((50, 50), np.nan), scene.fm, fixed_pixel_nm=20.0, moving_pixel_nm=150.0)


def test_three_dimensional_beads_register_with_spurious_and_missing_beads():
    vol = make_fiducial_volumes(sxt_voxel_nm=40.0, spurious_fraction=0.2, missing_fraction=0.2, seed=0)
    reg = register_fiducial(
        vol.sxt,
        vol.fm,
        fixed_pixel_nm=vol.sxt_voxel_nm,
        moving_pixel_nm=vol.fm_voxel_nm,
        fixed_polarity="bright",
        fixed_psf_fwhm_nm=30.0,
        moving_psf_fwhm_nm=(350.0, 350.0, 900.0),
    )
    f = reg.fixed.localisation.positions[reg.pairs[:, 0]]
    m = reg.moving.localisation.positions[reg.pairs[:, 1]]
    ti = np.argmin(np.linalg.norm(f[:, None] - vol.beads_sxt_px[None], axis=2), axis=1)
    tj = np.argmin(np.linalg.norm(m[:, None] - vol.beads_fm_px[None], axis=2), axis=1)
    assert set(zip(ti.tolist(), tj.tolist(), strict=True)) == {tuple(p) for p in vol.pairs}
    grid = np.stack(np.meshgrid(*[np.linspace(0, n - 1, 5) for n in vol.sxt.shape[::-1]], indexing="ij"), -1)
    grid = grid.reshape(-1, 3)
    q = apply_transform(np.linalg.inv(vol.true_fm_to_sxt), grid)
    err_nm = np.linalg.norm(apply_transform(reg.matrix_px, q) - grid, axis=1) * 40.0
    assert np.sqrt(np.mean(err_nm**2)) < 60.0
