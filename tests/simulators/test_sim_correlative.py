"""Correlative cryo-SXT / cryo-FM scene simulator."""

import numpy as np
import pytest

from livetomo.simulators.correlative import make_correlative_scene


def apply(affine, xy):
    return xy @ affine[:2, :2].T + affine[:2, 2]


@pytest.fixture(scope="module")
def clean():
    return make_correlative_scene(
        n_beads=14, spurious_fraction=0.3, missing_fraction=0.3, noise=False, seed=7
    )


def bead_depth_peak(sxt, xy, r_in=10, r_out=14):
    """(x, y) of the deepest pixel within 3 px of ``xy`` once the local background is removed.

    Optical depths add (Beer-Lambert), so the background is a quadratic fitted to ``-ln T`` on
    an annulus outside the blob (up to 175 nm = 8.75 px in radius). Without this, the slope of
    the cell under a bead shifts the raw minimum by up to ~2 px, as it would in a real image.
    """
    cx, cy = np.round(xy).astype(int)
    yy, xx = np.mgrid[-r_out : r_out + 1, -r_out : r_out + 1]
    depth = -np.log(sxt[cy - r_out : cy + r_out + 1, cx - r_out : cx + r_out + 1].astype(float))
    rr = np.hypot(xx, yy)
    ring = (rr >= r_in) & (rr <= r_out)
    basis = np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], -1).astype(float)
    coef = np.linalg.lstsq(basis[ring], depth[ring], rcond=None)[0]
    excess = np.where(rr <= 3, depth - basis @ coef, -np.inf)
    iy, ix = np.unravel_index(np.argmax(excess), excess.shape)
    return np.array([cx + xx[iy, ix], cy + yy[iy, ix]])


def local_extremum(img, xy, radius, fn):
    """(x, y) of the extreme pixel of ``img`` within ``radius`` px of ``xy``."""
    cx, cy = np.round(xy).astype(int)
    win = img[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1]
    iy, ix = np.unravel_index(fn(win), win.shape)
    return np.array([cx - radius + ix, cy - radius + iy])


def test_transform_maps_paired_beads(clean):
    m = clean.true_fm_to_sxt
    i, j = clean.pairs.T
    assert np.allclose(apply(m, clean.beads_fm_px[j]), clean.beads_sxt_px[i], atol=1e-9)


def test_transform_matches_requested_geometry():
    s = make_correlative_scene(rotation_deg=7.0, offset_um=(1.3, -0.8), noise=False, seed=1)
    m = s.true_fm_to_sxt
    assert np.degrees(np.arctan2(m[1, 0], m[0, 0])) == pytest.approx(7.0)
    assert np.hypot(m[0, 0], m[1, 0]) == pytest.approx(150.0 / 20.0)  # FM px in SXT px
    fm_centre = (np.array(s.fm.shape[::-1]) - 1) / 2
    sxt_centre = (np.array(s.sxt.shape[::-1]) - 1) / 2
    offset = apply(m, fm_centre[None])[0] - sxt_centre
    assert np.allclose(offset * 20.0, (1300.0, -800.0))
    assert s.sxt.shape == (600, 600) and s.fm.shape == (80, 80)


def test_beads_appear_where_stated(clean):
    for i, xy in enumerate(clean.beads_sxt_px):  # beads: dark 200 nm disks, 10 px across
        # Spurious blobs are up to 350 nm across, flatter-bottomed: a looser bound.
        tol = 1.5 if i in clean.spurious_sxt else 1.0
        assert np.all(np.abs(bead_depth_peak(clean.sxt, xy) - xy) <= tol)
    for xy in clean.beads_fm_px:  # bright PSF spots
        assert np.all(np.abs(local_extremum(clean.fm, xy, 2, np.argmax) - xy) <= 1.0)
    bg = np.median(clean.sxt)
    for i in np.setdiff1d(np.arange(len(clean.beads_sxt_px)), clean.spurious_sxt):
        x, y = np.round(clean.beads_sxt_px[i]).astype(int)
        assert clean.sxt[y, x] < 0.9 * bg  # polystyrene absorbs in the water window


def test_spurious_and_missing_fractions(clean):
    n_pairs = len(clean.pairs)
    assert n_pairs == 14 - round(0.3 * 14)
    assert len(clean.spurious_fm) + len(clean.spurious_sxt) == round(0.3 * 14)
    only_sxt = len(clean.beads_sxt_px) - n_pairs - len(clean.spurious_sxt)
    only_fm = len(clean.beads_fm_px) - n_pairs - len(clean.spurious_fm)
    assert only_sxt + only_fm == round(0.3 * 14)
    # Spurious spots and unpaired beads are never in a pair.
    assert not set(clean.spurious_sxt) & set(clean.pairs[:, 0])
    assert not set(clean.spurious_fm) & set(clean.pairs[:, 1])
    full = make_correlative_scene(n_beads=10, noise=False, seed=2)
    assert len(full.pairs) == 10 and len(full.beads_fm_px) == len(full.beads_sxt_px) == 10
    assert full.spurious_fm.size == full.spurious_sxt.size == 0


def test_deterministic_per_seed_and_noise_is_shot_noise():
    a = make_correlative_scene(seed=3)
    b = make_correlative_scene(seed=3)
    c = make_correlative_scene(seed=4)
    assert np.array_equal(a.sxt, b.sxt) and np.array_equal(a.fm, b.fm)
    assert np.array_equal(a.beads_fm_px, b.beads_fm_px)
    assert not np.allclose(a.beads_sxt_px, c.beads_sxt_px)
    quiet = make_correlative_scene(seed=3, noise=False)
    assert np.array_equal(a.beads_sxt_px, quiet.beads_sxt_px)  # noise does not move beads
    # SXT: Poisson with 2000 incident photons per pixel.
    z = (a.sxt - quiet.sxt) / np.sqrt(quiet.sxt / 2000.0)
    assert abs(z.mean()) < 0.02 and z.var() == pytest.approx(1.0, abs=0.05)


def test_scale_jitter_gives_affine():
    s = make_correlative_scene(scale_jitter=0.05, noise=False, seed=5)
    sx, sy = np.hypot(*s.true_fm_to_sxt[:2, :2].T)
    assert sx != pytest.approx(sy) and abs(sx / 7.5 - 1) <= 0.05 and abs(sy / 7.5 - 1) <= 0.05
    i, j = s.pairs.T
    assert np.allclose(apply(s.true_fm_to_sxt, s.beads_fm_px[j]), s.beads_sxt_px[i])
