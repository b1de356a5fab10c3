"""Incremental reconstruction: projection by projection, shift updates, previews, bad frames."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from livetomo.plans.tilt_order import tilt_order
from livetomo.processing.recon import (
    IncrementalReconstructor,
    NonFiniteProjectionError,
    ReconstructionError,
    UnknownProjectionError,
    fbp,
    orthogonal_slices,
)
from livetomo.simulators.projector import project_many
from livetomo.simulators.specimen import make_cell


def rel_err(a, b) -> float:
    """Largest difference relative to the largest value of b."""
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def scan():
    """A cell phantom, its projections on a 64-px detector, and runout-like true displacements."""
    spec = make_cell((12, 40, 40), n_gold=0, seed=5)
    mu = spec.mu / np.median(spec.mu[spec.mu > 5.2e-4])
    angles = np.linspace(0.0, 180.0, 72, endpoint=False)
    ideal = project_many(mu, angles, shape_u=56).astype(np.float32)
    rng = np.random.default_rng(3)
    displacement = np.column_stack([rng.normal(0, 1.0, angles.size), rng.normal(0, 2.0, angles.size)])
    observed = np.stack(
        [ndimage.shift(p, d, order=3, mode="nearest") for p, d in zip(ideal, displacement, strict=True)]
    )
    return mu, angles, ideal, observed.astype(np.float32), displacement


def test_incremental_equals_one_shot_in_any_order(scan):
    _, angles, _, observed, d = scan
    shifts = -d  # the aligning shift undoes the displacement (register's convention)
    order = np.random.default_rng(0).permutation(angles.size)
    # Without a plan the angular-sampling window is not known, so there is none.
    for planned, window in ((angles, True), (None, False)):
        one_shot = fbp(observed, angles, shifts=shifts, shape_yx=(40, 40), sampling_window=window)
        inc = IncrementalReconstructor(observed.shape[1:], shape_yx=(40, 40), angles_deg=planned)
        for k in order:
            inc.add(observed[k], angles[k], shift=shifts[k], key=int(k))
        assert inc.n_projections == angles.size
        assert rel_err(inc.volume(), one_shot) < 2e-6  # float32 rounding of the sums


def test_dose_symmetric_tilt_series_with_tilt_weights(scan):
    mu, *_ = scan
    tilts = np.array(tilt_order(-60, 60, 3, order="dose-symmetric"))
    proj = project_many(mu, tilts, shape_u=56).astype(np.float32)
    one_shot = fbp(proj, tilts, shape_yx=(40, 40), tilt_lambda=0.5)
    inc = IncrementalReconstructor(proj.shape[1:], shape_yx=(40, 40), angles_deg=tilts, tilt_lambda=0.5)
    for p, t in zip(proj, tilts, strict=True):
        inc.add(p, t)
        assert inc.volume().shape == mu.shape  # a usable volume after every projection
    assert rel_err(inc.volume(), one_shot) < 2e-6


def test_alignment_shifts_restore_the_specimen(scan):
    mu, angles, ideal, observed, d = scan
    aligned = fbp(observed, angles, shifts=-d, shape_yx=(40, 40))
    reference = fbp(ideal, angles, shape_yx=(40, 40))
    err = np.sqrt(np.mean((aligned - mu) ** 2))
    assert err < 1.3 * np.sqrt(np.mean((reference - mu) ** 2))
    assert np.sqrt(np.mean((fbp(observed, angles, shape_yx=(40, 40)) - mu) ** 2)) > 1.5 * err
    assert np.sqrt(np.mean((fbp(observed, angles, shifts=d, shape_yx=(40, 40)) - mu) ** 2)) > 2 * err


class _Spy(IncrementalReconstructor):
    """Counts the back-projection terms the reconstructor computes."""

    def __init__(self, *args, **kwargs):
        self.terms = []
        super().__init__(*args, **kwargs)

    def _apply(self, terms, targets=None):
        self.terms.append(len(terms))
        super()._apply(terms, targets)


def test_shift_update_redoes_only_that_projection(scan):
    _, angles, _, observed, d = scan
    inc = _Spy(observed.shape[1:], shape_yx=(40, 40), angles_deg=angles)
    start = np.zeros_like(d)  # before alignment: no shifts
    for k in range(angles.size):
        inc.add(observed[k], angles[k], shift=start[k], key=k)
    assert set(inc.terms) == {1}  # planned angles: one back-projection per projection
    inc.terms.clear()
    inc.update_shift(7, -d[7])
    assert inc.terms == [2]  # subtract the old contribution, add the new one
    refined = start.copy()
    refined[7] = -d[7]
    assert rel_err(inc.volume(), fbp(observed, angles, shifts=refined, shape_yx=(40, 40))) < 2e-6
    inc.update_shifts({k: -d[k] for k in range(angles.size)})  # a full re-alignment pass
    assert rel_err(inc.volume(), fbp(observed, angles, shifts=-d, shape_yx=(40, 40))) < 2e-6
    np.testing.assert_allclose(inc.shifts, -d)


def test_off_plan_angle_reweights_its_neighbours(scan):
    _, angles, _, observed, _ = scan
    inc = _Spy(observed.shape[1:], shape_yx=(40, 40))  # no plan: weights follow the arrivals
    for k in range(0, angles.size, 2):
        inc.add(observed[k], angles[k], key=k)
    inc.terms.clear()
    inc.add(observed[5], angles[5], key=5)  # fills a gap between two received angles
    assert inc.terms == [3]  # itself and its two neighbours' weight corrections
    keys = list(range(0, angles.size, 2)) + [5]
    expected = fbp(observed[keys], angles[keys], shape_yx=(40, 40), sampling_window=False)  # no plan
    assert rel_err(inc.volume(), expected) < 2e-6


def test_remove_and_unknown_keys(scan):
    _, angles, _, observed, _ = scan
    inc = IncrementalReconstructor(observed.shape[1:], shape_yx=(40, 40))
    for k in range(angles.size):
        inc.add(observed[k], angles[k], key=f"frame{k}")
    inc.remove("frame10")
    keep = [k for k in range(angles.size) if k != 10]
    expected = fbp(observed[keep], angles[keep], shape_yx=(40, 40), sampling_window=False)  # no plan
    assert rel_err(inc.volume(), expected) < 2e-6
    with pytest.raises(UnknownProjectionError, match="frame10"):
        inc.update_shift("frame10", (0.0, 1.0))
    with pytest.raises(ReconstructionError, match="already"):
        inc.add(observed[0], angles[0], key="frame0")


def test_nan_projection_is_rejected_and_the_volume_kept(scan):
    _, angles, _, observed, _ = scan
    inc = IncrementalReconstructor(observed.shape[1:], shape_yx=(40, 40), angles_deg=angles)
    for k in range(10):
        inc.add(observed[k], angles[k])
    before = inc.volume().copy()
    bad = observed[10].copy()
    bad[4, 17] = np.nan
    bad[5, 3] = np.inf
    with pytest.raises(NonFiniteProjectionError, match="2 NaN or infinite pixels.*rejected"):
        inc.add(bad, angles[10])
    assert inc.n_projections == 10
    np.testing.assert_array_equal(inc.volume(), before)
    assert np.all(np.isfinite(inc.volume()))
    inc.add(observed[10], angles[10])  # the next good frame is accepted
    assert inc.n_projections == 11


def test_previews_follow_the_volume_and_cost_less(scan):
    _, angles, _, observed, d = scan
    kwargs = dict(shape_yx=(40, 40), angles_deg=angles)
    full = IncrementalReconstructor(observed.shape[1:], **kwargs)
    light = IncrementalReconstructor(observed.shape[1:], mode="previews", preview_point=(6, 11, 29), **kwargs)
    for k in range(0, angles.size, 3):
        full.add(observed[k], angles[k], shift=-d[k])
        light.add(observed[k], angles[k], shift=-d[k])
        p = light.previews()
        xy, xz, yz = orthogonal_slices(full.volume(), (6, 11, 29))
        for a, b in ((p.xy, xy), (p.xz, xz), (p.yz, yz)):
            np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(full.volume()).max() + 1e-12)
    assert p.xy.shape == (40, 40) and p.xz.shape == (12, 40) and p.yz.shape == (12, 40)
    assert p.n_projections == light.n_projections == full.n_projections
    moved = light.previews((2, 30, 5))  # a new point: recomputed from the stored projections
    np.testing.assert_allclose(moved.xz, full.volume()[:, 30, :], atol=1e-5)
    np.testing.assert_allclose(light.volume(), full.volume(), atol=1e-5)
    # Work per projection: the three planes hold far fewer voxels than the volume.
    assert sum(a.size for a in light._acc.values()) < 0.2 * full.volume().size


def test_channels_share_alignment(scan):
    _, angles, _, observed, d = scan
    two = np.stack([observed, 0.5 * observed], axis=1)  # e.g. Zn and Fe maps of each raster
    inc = IncrementalReconstructor(two.shape[1:], shape_yx=(40, 40), angles_deg=angles)
    for k in range(angles.size):
        inc.add(two[k], angles[k], shift=-d[k])
    vol = inc.volume()
    assert vol.shape == (2, 12, 40, 40)
    np.testing.assert_allclose(vol[1], 0.5 * vol[0], atol=1e-6)
    assert inc.previews().xy.shape == (2, 40, 40)


def test_centre_offset_change_and_chunked_refinement(scan):
    mu, angles, ideal, *_ = scan
    moved = np.roll(ideal, 2, axis=2)
    inc = IncrementalReconstructor(moved.shape[1:], shape_yx=(40, 40), angles_deg=angles)
    for k in range(angles.size):
        inc.add(moved[k], angles[k])
    inc.set_center_offset(2.0)
    assert rel_err(inc.volume(), fbp(moved, angles, center_offset=2.0, shape_yx=(40, 40))) < 2e-6
    a, b = inc.refiner("sirt"), inc.refiner("sirt")
    a.run(3)
    a.run(3)
    b.run(6)
    np.testing.assert_allclose(a.volume, b.volume, atol=1e-6)
    assert a.iterations == 6
    with pytest.raises(ReconstructionError, match="method"):
        inc.refiner("art")


def test_bad_arguments(scan):
    _, angles, _, observed, _ = scan
    inc = IncrementalReconstructor(observed.shape[1:], shape_yx=(40, 40))
    with pytest.raises(ReconstructionError, match="shape"):
        inc.add(observed[0, :5], 0.0)
    with pytest.raises(ReconstructionError, match="finite"):
        inc.add(observed[0], float("nan"))
    with pytest.raises(ReconstructionError, match="preview point"):
        inc.set_preview_point((50, 0, 0))
    with pytest.raises(ReconstructionError, match="mode"):
        IncrementalReconstructor(observed.shape[1:], mode="slices")


def test_gpu_incremental_matches_cpu(scan):
    cupy = pytest.importorskip("cupy")
    _, angles, _, observed, d = scan
    cpu = IncrementalReconstructor(observed.shape[1:], shape_yx=(40, 40), angles_deg=angles)
    gpu = IncrementalReconstructor(observed.shape[1:], shape_yx=(40, 40), angles_deg=angles, xp=cupy)
    for k in range(angles.size):
        cpu.add(observed[k], angles[k], shift=-d[k])
        gpu.add(cupy.asarray(observed[k]), angles[k], shift=-d[k])
    assert rel_err(cupy.asnumpy(gpu.volume()), cpu.volume()) < 1e-5


def test_batched_add_is_one_pass_and_all_or_nothing(scan):
    _, angles, _, observed, d = scan
    inc = _Spy(observed.shape[1:], shape_yx=(40, 40), angles_deg=angles)
    keys = inc.add_many(observed[:30], angles[:30], shifts=-d[:30])
    assert keys == list(range(30)) and inc.terms == [30]
    bad = observed[30:40].copy()
    bad[4, 0, 0] = np.nan
    with pytest.raises(NonFiniteProjectionError):
        inc.add_many(bad, angles[30:40])
    assert inc.n_projections == 30
    inc.add_many(observed[30:], angles[30:], shifts=-d[30:])
    assert rel_err(inc.volume(), fbp(observed, angles, shifts=-d, shape_yx=(40, 40))) < 2e-6
