"""Refinement split into slabs along the rotation axis against the whole-volume refinement and
the true phantom."""

from __future__ import annotations

import numpy as np
import pytest

from livetomo.processing.recon import SIRT, TVDescent, fbp
from livetomo.processing.recon.slabs import (
    RefinementCancelled,
    assemble,
    plan_slabs,
    refine_in_slabs,
    refine_slab,
    slab_ranges,
)
from livetomo.simulators.projector import project_many
from livetomo.simulators.specimen import make_cell


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


@pytest.fixture(scope="module")
def scan():
    """A noisy rotation scan of a simulated cell (attenuation scaled to ~1), and its FBP."""
    spec = make_cell((12, 32, 32), n_gold=0, seed=6)
    mu = (spec.mu / np.median(spec.mu[spec.mu > 5.2e-4])).astype(np.float32)
    angles = np.linspace(0.0, 180.0, 48, endpoint=False)
    ideal = project_many(mu, angles)
    noisy = (ideal + np.random.default_rng(1).normal(0, 0.05 * ideal.std(), ideal.shape)).astype(np.float32)
    return mu, angles, noisy, fbp(noisy, angles, filter_name="hann")


def test_slab_ranges_cover_the_volume_once():
    ranges = slab_ranges(10, 4, halo=2)
    assert [c for c, _ in ranges] == [(0, 4), (4, 8), (8, 10)]
    assert [p for _, p in ranges] == [(0, 6), (2, 10), (6, 10)]


def test_sirt_in_slabs_equals_the_whole_volume(scan):
    mu, angles, data, x0 = scan
    whole = SIRT(data, angles, x0=x0, nonnegative=True).run(8)
    tasks = plan_slabs(data, angles, x0, method="sirt", n_iter=8, slab_slices=5, nonnegative=True)
    assert len(tasks) == 3 and all(t.padded == t.core for t in tasks)  # no halo needed
    split = refine_in_slabs(tasks)
    np.testing.assert_allclose(split, whole, rtol=0, atol=2e-6 * float(np.abs(whole).max()))
    assert rmse(split, mu) < 0.9 * rmse(x0, mu)  # and it is a refinement: closer to the truth


def test_tv_in_slabs_matches_the_whole_volume(scan):
    mu, angles, data, x0 = scan
    whole = TVDescent(data, angles, x0=x0, nonnegative=True).run(10)
    tasks = plan_slabs(data, angles, x0, method="tv", n_iter=10, slab_slices=4, halo=4, nonnegative=True)
    split = refine_in_slabs(tasks)
    one = refine_in_slabs(
        plan_slabs(data, angles, x0, method="tv", n_iter=10, slab_slices=12, nonnegative=True)
    )
    np.testing.assert_allclose(
        one, whole, rtol=0, atol=2e-6 * float(np.abs(whole).max())
    )  # one slab: the same
    # TV couples slices: with a 4-slice halo the slabs differ from the whole volume far less
    # than either differs from the truth, and improve on the FBP as much.
    assert rmse(split, whole) < 0.01 * rmse(whole, mu)  # measured 0.002 (halo 0: 0.056)
    assert rmse(split, mu) < 0.75 * rmse(x0, mu)
    assert abs(rmse(split, mu) - rmse(whole, mu)) < 0.01 * rmse(whole, mu)


def test_slab_results_do_not_depend_on_order(scan):
    _, angles, data, x0 = scan
    tasks = plan_slabs(data, angles, x0, method="tv", n_iter=3, slab_slices=4)
    forward = [refine_slab(t) for t in tasks]
    backward = [refine_slab(t) for t in reversed(tasks)][::-1]
    np.testing.assert_array_equal(assemble(tasks, forward), assemble(tasks, backward))


def test_inputs_are_not_modified_and_stop_cancels(scan):
    _, angles, data, x0 = scan
    data_copy, x0_copy = data.copy(), x0.copy()
    tasks = plan_slabs(data, angles, x0, method="sirt", n_iter=5, slab_slices=6)
    calls = []
    with pytest.raises(RefinementCancelled):
        refine_in_slabs(tasks, stop=lambda: calls.append(1) or len(calls) > 3)
    assert len(calls) == 4  # checked before every iteration, stopped at the fourth check
    np.testing.assert_array_equal(data, data_copy)
    np.testing.assert_array_equal(x0, x0_copy)


def test_channel_stacks_split_along_z_too(scan):
    """XRF element maps share one alignment: projections (N, channels, nz, n_u)."""
    _, angles, data, x0 = scan
    two = np.stack([data, 2.0 * data], axis=1)  # (N, 2, nz, n_u)
    start = np.stack([x0, 2.0 * x0])
    whole = SIRT(two, angles, x0=start).run(4)
    split = refine_in_slabs(plan_slabs(two, angles, start, method="sirt", n_iter=4, slab_slices=5))
    assert split.shape == whole.shape == (2, *x0.shape)
    np.testing.assert_allclose(split, whole, rtol=0, atol=2e-6 * float(np.abs(whole).max()))
    tv = refine_in_slabs(plan_slabs(two, angles, start, method="tv", n_iter=2, slab_slices=6))
    assert tv.shape == whole.shape and np.all(np.isfinite(tv))


def test_a_spent_deadline_stops_each_slab_after_one_iteration(scan):
    """``refine_seconds`` on the slab path: past its deadline a slab runs no further iteration
    (but always one), so a spent budget gives exactly the one-iteration refinement."""
    import dataclasses

    mu, angles, noisy, x0 = scan
    tasks = plan_slabs(noisy, angles, x0, method="tv", n_iter=20, slab_slices=4, halo=2)
    spent = [dataclasses.replace(t, deadline=0.0) for t in tasks]  # 1970: long past
    one = plan_slabs(noisy, angles, x0, method="tv", n_iter=1, slab_slices=4, halo=2)
    np.testing.assert_array_equal(refine_in_slabs(spent), refine_in_slabs(one))
    assert not np.array_equal(refine_in_slabs(spent), refine_in_slabs(tasks[:1] + spent[1:]))
