"""Runout model, rotation centre, projector and re-projection refinement against known truth."""

import numpy as np
import pytest

from livetomo.processing.align_tomo import (
    GeometryError,
    angle_weights,
    fbp,
    leave_one_out_reprojection,
    make_projector,
)
from livetomo.processing.register import shift_image
from livetomo.processing.reproject_align import ReprojectionError, reprojection_refine
from livetomo.processing.runout import RunoutError, fit_runout, gauge_errors, mirror_centre, refine_centre
from livetomo.simulators.projector import project_many
from livetomo.simulators.stages import RotationStageModel


def _phantom(n=48, nz=8, seed=0):
    """Blobs of several sizes in a (nz, n, n) volume, inside the reconstruction circle."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:nz, :n, :n].astype(float)
    c = (n - 1) / 2
    vol = np.zeros((nz, n, n))
    for _ in range(25):
        r = rng.uniform(0, 0.35 * n)
        phi = rng.uniform(0, 2 * np.pi)
        cy, cx = c + r * np.sin(phi), c + r * np.cos(phi)
        cz = rng.uniform(0, nz - 1)
        s = rng.uniform(1.0, 3.0)
        vol += rng.uniform(0.5, 1.5) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s**2))
    return vol


def test_runout_fit_recovers_the_stage_model_and_rejects_outliers():
    stage = RotationStageModel(wobble_amplitude_um=(0.6, 1.5), jitter_um=0.0, seed=1)
    angles = np.arange(0.0, 360.0, 5.0)
    true_um = stage.runout_um(angles).T
    pixel_um = 0.3
    shifts = true_um / pixel_um
    shifts[[7, 30, 51]] += [[4.0, -6.0], [-3.0, 5.0], [5.0, 5.0]]  # three failed registrations
    model = fit_runout(angles, shifts, harmonics=2)
    np.testing.assert_allclose(model.evaluate(angles), true_um / pixel_um, atol=0.02)
    assert model.centre_offset == pytest.approx(stage.axis_offset_um / pixel_um, abs=0.02)
    assert not model.inliers[[7, 30, 51]].any() and model.inliers.sum() == angles.size - 3
    plain = fit_runout(angles, shifts, harmonics=2, robust=False)
    assert np.abs(plain.evaluate(angles) - true_um / pixel_um).max() > 0.1  # least squares is pulled
    assert fit_runout(angles[:4], shifts[:4], harmonics=3).harmonics == 1  # what 4 points support
    with pytest.raises(RunoutError):
        fit_runout(angles, shifts[:-1])


def test_mirror_centre_finds_the_axis_of_a_0_180_pair():
    vol = _phantom(nz=24)
    p0, p180 = project_many(vol, [0.0, 180.0])
    for offset in (0.0, 1.3, -2.6):
        a = shift_image(p0, (0.0, offset), mode="wrap")
        b = shift_image(p180, (0.0, offset), mode="wrap")
        centre, reg = mirror_centre(a, b, window=None)
        assert centre == pytest.approx(23.5 + offset, abs=0.05)
    # DPC-like pair: the u-derivative changes sign on mirroring.
    da, db = np.gradient(p0, axis=1), np.gradient(p180, axis=1)
    va, vb = np.gradient(p0, axis=0), np.gradient(p180, axis=0)
    centre, _ = mirror_centre(np.stack([da, va]), np.stack([db, vb]), channel_signs=(-1, 1), window=None)
    assert centre == pytest.approx(23.5, abs=0.05)
    with pytest.raises(RunoutError):
        mirror_centre(np.stack([da, va]), np.stack([db, vb]), channel_signs=(-1, 1, 1))


def test_reconstruction_centre_finds_a_centre_offset():
    vol = _phantom(nz=4)
    angles = np.arange(0.0, 180.0, 2.0)
    proj = project_many(vol, angles)
    projector = make_projector(angles, (48, 48))
    for offset in (1.5, -0.7):
        shifted = shift_image(proj, (0.0, offset))  # axis now at 23.5 + offset
        centre, _ = refine_centre(projector, shifted, start=23.5, search=3.0)
        assert centre == pytest.approx(23.5 + offset, abs=0.25)
    with pytest.raises(RunoutError):
        refine_centre(projector, proj, criterion="entropy")


def _in_container(n=48, nz=4, seed=0, offset_yx=(3.0, -2.0)):
    """The blob phantom in a cylinder (an ice column) off the axis, cut by the field edge."""
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    cylinder = np.hypot(yy - c - offset_yx[0], xx - c - offset_yx[1]) <= 0.47 * n
    return _phantom(n, nz, seed) + 0.6 * cylinder[None]


@pytest.mark.parametrize("seed", [0, 2])
def test_reconstruction_centre_of_dpc_in_a_container_cut_by_the_field(seed):
    angles = np.arange(0.0, 180.0 + 1e-9, 3.0)  # 0-180 inclusive, as scanned
    dpc = np.gradient(project_many(_in_container(seed=seed), angles), axis=-1)
    projector = make_projector(angles, (48, 48))
    errors = {"reprojection": [], "total_variation": []}
    for offset in (1.3, -0.7):
        shifted = shift_image(dpc, (0.0, offset))
        for criterion, e in errors.items():
            centre, _ = refine_centre(projector, shifted, kind="hilbert", search=2.0, criterion=criterion)
            e.append(centre - (23.5 + offset))
    assert np.abs(errors["reprojection"]).max() < 0.25
    # The container's edges dominate the total variation: it misses by 0.7 px or more.
    assert np.abs(errors["total_variation"]).max() > 0.5


def test_projector_matches_the_simulator_and_fbp_reconstructs():
    vol = _phantom(nz=3)
    angles = np.arange(0.0, 180.0, 3.0)
    projector = make_projector(angles, (48, 48))
    ours = projector.project(vol)
    sim = project_many(vol, angles)
    assert np.abs(ours - sim).mean() < 0.01 * np.abs(sim).mean()
    rec = fbp(projector, sim)
    mask = np.asarray(projector.mask)
    assert np.abs(rec - vol)[:, mask].mean() < 0.1 * np.abs(vol[:, mask]).mean()
    assert angle_weights(angles).sum() == pytest.approx(np.pi)
    with pytest.raises(GeometryError):
        make_projector([], (8, 8))


def test_leave_one_out_reprojection_excludes_the_projection_itself():
    vol = _phantom(nz=2)
    angles = np.arange(0.0, 180.0, 2.0)
    projector = make_projector(angles, (48, 48))
    proj = project_many(vol, angles)
    spoiled = proj.copy()
    spoiled[10] = 0.0  # a blank frame: its own re-projection must not be blank
    loo, _ = leave_one_out_reprojection(projector, spoiled)
    assert np.corrcoef(loo[10].ravel(), proj[10].ravel())[0, 1] > 0.95


def test_reprojection_refinement_corrects_jitter():
    vol = _phantom(nz=12, seed=2)
    angles = np.arange(0.0, 180.0, 2.0)
    rng = np.random.default_rng(3)
    jitter = rng.normal(0.0, 0.6, (angles.size, 2))
    proj = np.stack([shift_image(p, d) for p, d in zip(project_many(vol, angles), jitter, strict=True)])
    result = reprojection_refine(proj, angles, np.zeros((angles.size, 2)), iterations=6, band=(1.0, None))
    e = result.shifts + jitter  # modulo the gauge: vertical offset, c + a cos + b sin horizontally
    t = np.deg2rad(angles)
    basis = np.stack([np.ones_like(t), np.cos(t), np.sin(t)], 1)
    e_h = e[:, 1] - basis @ np.linalg.lstsq(basis, e[:, 1], rcond=None)[0]
    rms = np.sqrt(np.mean((e[:, 0] - e[:, 0].mean()) ** 2) + np.mean(e_h**2))
    assert rms < 0.1  # from 0.88 px
    assert result.updates_rms[-1] < 0.1 * result.updates_rms[0]
    with pytest.raises(ReprojectionError):
        reprojection_refine(proj, angles[:-1], np.zeros((angles.size, 2)))
    with pytest.raises(ReprojectionError):
        reprojection_refine(proj, angles, np.zeros((angles.size, 2)), region="slab")


def test_gauge_errors_remove_the_unobservable_terms_and_weights_keep_outliers_to_themselves():
    rng = np.random.default_rng(0)
    angles = np.arange(61) * 3.0
    t = np.deg2rad(angles)
    truth = rng.normal(0.0, 3.0, (61, 2))
    err = rng.normal(0.0, 0.03, (61, 2))
    shifts = -truth + err
    shifts[:, 0] += 1.5  # a vertical offset and a specimen position no alignment can observe
    shifts[:, 1] += 0.7 + 2.0 * np.cos(t) - 1.0 * np.sin(t)
    ev, eh, centre = gauge_errors(shifts, truth, angles, keep_centre=False)
    assert np.sqrt(np.mean(ev**2 + eh**2)) < 0.06 and centre == pytest.approx(0.7, abs=0.02)
    # two frames far off (flagged, with large stated sigma): with equal weights they tilt the
    # fitted terms and move every other frame's error; weighted by 1/sigma² they do not
    far = [4, 56]
    shifts[far, 1] += (-1.4, 1.4)
    sigma = np.full(61, 0.03)
    sigma[far] = 0.5
    _, eh_equal, _ = gauge_errors(shifts, truth, angles, keep_centre=False)
    _, eh_weighted, _ = gauge_errors(shifts, truth, angles, keep_centre=False, weights=1.0 / sigma**2)
    others = np.setdiff1d(np.arange(61), far)
    assert np.mean(np.abs(eh_equal[others]) > 3 * 0.03) > 0.1
    assert np.mean(np.abs(eh_weighted[others]) > 3 * 0.03) < 0.02
