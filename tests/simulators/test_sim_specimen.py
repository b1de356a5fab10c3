"""Tests of the synthetic cell phantom (livetomo.simulators.specimen)."""

import numpy as np
import pytest

from livetomo.simulators.specimen import FLUOSPHERE_DIAMETER_NM, Specimen, make_cell

ELEMENTS = ("Zn", "Fe", "Cu", "Ca", "P", "K", "S", "Mn")
ICE_MU = 4.9e-4  # 1/µm at 10 keV (0.92 g/cm³ x 5.3 cm²/g)


@pytest.fixture(scope="module")
def cell() -> Specimen:
    return make_cell(seed=0)


def _volumes(spec: Specimen):
    return [spec.mu, spec.delta, spec.potential, spec.label, *spec.elements.values()]


def test_shapes_dtypes_and_contents(cell):
    assert cell.shape == (32, 64, 64)
    assert cell.voxel_size_nm == 300.0
    assert set(cell.elements) == set(ELEMENTS)
    for v in _volumes(cell):
        assert v.shape == cell.shape
        assert v.dtype == np.float32
        assert np.all(np.isfinite(v))
    assert cell.gold_beads.shape == (6, 3)
    assert cell.fluospheres.shape == (6, 3)


def test_element_maps_non_negative_and_confined_to_cell(cell):
    outside = cell.potential == 0  # vacuum outside the ice cylinder
    for el, v in cell.elements.items():
        assert v.min() >= 0, el
        assert v.max() > 0, el
        assert np.all(v[outside] == 0), el


def test_deterministic_per_seed_and_seeds_differ():
    a, b, c = make_cell(seed=5), make_cell(seed=5), make_cell(seed=6)
    for va, vb in zip(_volumes(a), _volumes(b), strict=True):
        np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(a.gold_beads, b.gold_beads)
    assert not np.array_equal(a.delta, c.delta)
    assert not np.array_equal(a.gold_beads, c.gold_beads)
    # A Generator is accepted as the seed too.
    np.testing.assert_array_equal(a.mu, make_cell(seed=np.random.default_rng(5)).mu)


def test_arrays_are_read_only(cell):
    with pytest.raises(ValueError):
        cell.mu[0, 0, 0] = 1.0


def test_beads_inside_the_field_and_in_ice(cell):
    shape = np.array(cell.shape)
    for beads in (cell.gold_beads, cell.fluospheres):
        assert np.all(beads >= 0) and np.all(beads <= shape - 1)
        idx = tuple(np.round(beads).astype(int).T)
        # Beads sit in the ice around the cell: no cell elements there.
        assert np.all(cell.elements["K"][idx] < 1.0)
    # Gold is a strong absorber: far above ice at every bead centre.
    idx = tuple(np.round(cell.gold_beads).astype(int).T)
    assert np.all(cell.mu[idx] > 20 * ICE_MU)
    assert np.all(cell.delta[idx] > 2 * cell.delta[16, 32, 32])
    # Beads do not overlap.
    allb = np.vstack([cell.gold_beads, cell.fluospheres])
    dist = np.linalg.norm(allb[:, None] - allb[None], axis=-1) + np.eye(len(allb)) * 99
    assert dist.min() >= 3.0


@pytest.mark.parametrize("voxel_nm", [300.0, 25.0])
def test_fluosphere_label_matches_its_200nm_volume(voxel_nm):
    shape = (32, 64, 64)
    spec = make_cell(shape, voxel_size_nm=voxel_nm, n_fluospheres=2, n_gold=0, seed=1)
    radius_vox = FLUOSPHERE_DIAMETER_NM / 2 / voxel_nm
    volume_vox = 4 / 3 * np.pi * radius_vox**3
    zz, yy, xx = np.indices(shape)
    assert len(spec.fluospheres) == 2
    for c in spec.fluospheres:
        near = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < (radius_vox + 3) ** 2
        # Label density 100 per unit occupancy; sum = 100 x sphere volume in voxels.
        assert spec.label[near].sum() == pytest.approx(100 * volume_vox, rel=0.08)
        # Polystyrene absorbs less than ice at 10 keV: a visible dip in mu.
        k = tuple(np.round(c).astype(int))
        assert spec.mu[k] < ICE_MU * 0.99


def test_cell_fills_about_70_percent_and_scales_with_volume():
    # The cell is a flattened, randomly yawed ellipsoid; its extent along each axis
    # is a fixed fraction of the field whatever the volume size.
    for shape in [(32, 64, 64), (24, 40, 40), (48, 96, 96)]:
        spec = make_cell(shape, seed=2)
        cell_mask = spec.elements["K"] > 100
        for axis in range(3):
            extent = np.flatnonzero(cell_mask.any(axis=tuple(a for a in range(3) if a != axis)))
            frac = (extent[-1] - extent[0] + 1) / shape[axis]
            assert 0.45 < frac < 0.8, (shape, axis, frac)


def test_compartments_carry_their_elements(cell):
    mask = cell.elements["K"] > 100  # cell
    nucleus = mask & (cell.elements["P"] > 3000) & (cell.elements["Ca"] < 100)
    cytoplasm = mask & (cell.elements["P"] < 1200)
    # P is mostly in the nucleus; Zn is diffuse over the cytoplasm.
    assert nucleus.sum() > 0 and cytoplasm.sum() > 0
    assert cell.elements["P"][nucleus].mean() > 2 * cell.elements["P"][cytoplasm].mean()
    zn = cell.elements["Zn"][cytoplasm]
    assert np.median(zn) > 20 and np.percentile(zn, 99) < 10 * np.median(zn)
    # Fe and Ca are concentrated in a few small compartments.
    assert cell.elements["Fe"].max() > 20 * np.median(cell.elements["Fe"][mask])
    assert cell.elements["Ca"].max() > 50 * np.median(cell.elements["Ca"][mask])
    # Electron-optical potential: ice ~4.5 V, membranes and protein ~7 V.
    ice = (cell.potential > 0) & ~mask & (cell.mu < 1e-3)
    assert np.median(cell.potential[ice]) == pytest.approx(4.5, abs=0.1)
    assert 6.0 < np.percentile(cell.potential[mask], 99) < 9.0
