"""Intensity route (3D LM / EM without beads) against the simulators' ground truth."""

import numpy as np
import pytest

from livetomo.processing.correlate import (
    RegistrationError,
    apply_transform,
    prealign_xy,
    register_stacks,
    select_log_scale,
)
from livetomo.processing.correlate.descriptors import LDP_CLASSES, histogram, ldp_classes, masked_ncc
from livetomo.simulators.correlative3d import make_correlative_stacks

# Small stacks (LM 384 x 384 x 16 at 0.22 / 0.6 um, EM 200 x 200 x 48 at 0.3 / 0.2 um) keep the
# source's LM sampling and a few cells in the EM field, and register in a few seconds.
SMALL = {
    "lm_shape": (16, 384, 384),
    "lm_spacing_um": (0.22, 0.22, 0.6),
    "em_shape": (48, 200, 200),
    "em_spacing_um": (0.3, 0.3, 0.2),
}


@pytest.fixture(scope="module")
def stacks():
    return make_correlative_stacks(seed=2, **SMALL)


def error_um(stacks, matrix, roi):
    """RMS of |T(p) - T_true(p)| over the EM ROI where the LM stack covers it."""
    x0, y0, z0, x1, y1, z1 = roi
    axes = [np.linspace(x0, x1 - 1, 8), np.linspace(y0, y1 - 1, 8), np.linspace(z0, z1 - 1, 16)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3) * stacks.em_spacing_um
    true = apply_transform(stacks.true_em_to_lm, grid)
    inside = (true[:, 2] >= 0) & (true[:, 2] <= (stacks.lm.shape[0] - 1) * stacks.lm_spacing_um[2])
    return float(
        np.sqrt(np.mean(np.sum((apply_transform(matrix, grid[inside]) - true[inside]) ** 2, axis=1)))
    )


def test_simulated_stacks_have_the_source_geometry_and_a_known_affine():
    s = make_correlative_stacks(seed=0, **SMALL)
    assert s.lm.shape == (16, 384, 384) and s.em.shape == (48, 200, 200)
    assert s.lm.dtype == np.uint16 and s.em.dtype == np.uint8
    lin = s.true_em_to_lm[:3, :3]
    assert 0.9 < abs(np.linalg.det(lin)) < 1.1 and not np.allclose(lin, np.eye(3), atol=1e-3)
    # Mitochondria are bright in LM and dark in EM at the same place: the EM voxel nearest to a
    # mitochondrion centre inside the EM field is darker than the resin.
    inv = np.linalg.inv(s.true_em_to_lm)
    centres = np.array([m.centre for c in s.cells for m in c.mitochondria])
    em_idx = np.round(apply_transform(inv, centres) / s.em_spacing_um).astype(int)
    inside = np.all((em_idx >= 0) & (em_idx < np.array(s.em.shape[::-1])), axis=1)
    values = s.em[em_idx[inside, 2], em_idx[inside, 1], em_idx[inside, 0]]
    assert inside.sum() > 20 and np.median(values) < np.median(s.em) - 30


def test_log_scale_selection_finds_the_blob_size():
    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 0.05, (256, 256))
    yy, xx = np.mgrid[0:256, 0:256]
    for cy, cx in rng.uniform(10, 246, (60, 2)):
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))  # blobs of sigma 3 px
    sel = select_log_scale(img, spacing=1.0, sigmas_um=np.geomspace(1.0, 10.0, 12))
    assert 2.3 < sel.sigma_um < 3.9


def test_ldp_histogram_is_invariant_to_quarter_turns():
    img = np.random.default_rng(1).normal(size=(64, 64))
    h0 = histogram(ldp_classes(img), LDP_CLASSES)
    h1 = histogram(ldp_classes(np.rot90(img)), LDP_CLASSES)
    np.testing.assert_allclose(h0, h1, atol=1e-12)


def test_masked_ncc_finds_a_cut_out_template():
    img = np.random.default_rng(2).normal(size=(80, 90))
    tmpl = img[20:40, 30:55].copy()
    ncc = masked_ncc(img, tmpl, np.ones(tmpl.shape, bool))
    assert np.unravel_index(np.argmax(ncc), ncc.shape) == (20, 30)
    assert ncc.max() == pytest.approx(1.0, abs=1e-3)


def test_prealignment_locates_the_em_roi_in_the_lm_mip(stacks):
    roi = (0, 0, 0, *stacks.em.shape[::-1])
    pre = prealign_xy(
        stacks.lm, stacks.em, lm_spacing_um=stacks.lm_spacing_um, em_spacing_um=stacks.em_spacing_um, roi=roi
    )
    centre_em = np.array([(roi[3] - 1) / 2, (roi[4] - 1) / 2, (roi[5] - 1) / 2]) * stacks.em_spacing_um
    true_xy = apply_transform(stacks.true_em_to_lm, centre_em[None])[0, :2]
    assert np.linalg.norm(pre.centre_lm_um - true_xy) < 2.0  # the LM field is 84 um wide
    true_rot = np.degrees(np.arctan2(stacks.true_em_to_lm[1, 0], stacks.true_em_to_lm[0, 0]))
    assert abs(pre.rotation_deg - true_rot) < 5.0
    assert pre.inliers.sum() >= len(pre.inliers) // 2


def test_intensity_registration_recovers_the_true_affine(stacks):
    pytest.importorskip("SimpleITK")  # the intensity route's extra
    roi = (0, 0, 0, *stacks.em.shape[::-1])
    messages = []
    reg = register_stacks(
        stacks.lm,
        stacks.em,
        lm_spacing_um=stacks.lm_spacing_um,
        em_spacing_um=stacks.em_spacing_um,
        roi=roi,
        progress=messages.append,
    )
    assert [s.name for s in reg.stages] == ["rigid", "affine"]
    start, final = error_um(stacks, reg.initial_um, roi), error_um(stacks, reg.matrix_um, roi)
    assert final < 0.5 and final < start / 2  # 0.5 um: under 2.5 LM pixels
    assert any("mutual information" in m for m in messages)
    np.testing.assert_allclose(
        reg.matrix_index,
        np.diag([*(1 / stacks.lm_spacing_um), 1]) @ reg.matrix_um @ np.diag([*stacks.em_spacing_um, 1]),
    )


def test_intensity_route_names_bad_input(stacks):
    sp = {"lm_spacing_um": stacks.lm_spacing_um, "em_spacing_um": stacks.em_spacing_um}
    with pytest.raises(RegistrationError, match="3D stacks"):
        register_stacks(stacks.lm[0], stacks.em, **sp)
    with pytest.raises(RegistrationError, match="roi"):
        register_stacks(stacks.lm, stacks.em, roi=(500, 500, 0, 600, 600, 10), **sp)
    with pytest.raises(RegistrationError, match="unknown descriptor"):
        prealign_xy(stacks.lm, stacks.em, descriptor="sift", **sp)
