"""The compiled back-projection kernels against a straightforward reference back-projection."""

from __future__ import annotations

import numpy as np
import pytest

from livetomo.processing.recon import IncrementalReconstructor
from livetomo.processing.recon.backprojection import (
    FilterPlan,
    angle_terms,
    backproject_columns,
    backproject_filtered,
    row_layout,
)


def reference_backprojection(q, plan: FilterPlan, angles_deg, centres, shape_yx) -> np.ndarray:
    """Σ_k q_k(x cos θ_k + y sin θ_k) for every voxel, from the geometry alone, in float64.

    Filtered row ``q[k, s]`` holds sample m at padded-row position m / oversample; the
    detector's first pixel is at ``pad_left``, the axis at column ``centres[k]``; voxel
    coordinates are measured from the slice centre. Returns (n_slices, ny, nx).
    """
    nk, ns, length = q.shape
    ny, nx = shape_yx
    y = (np.arange(ny) - (ny - 1) / 2.0)[:, None]
    x = (np.arange(nx) - (nx - 1) / 2.0)[None, :]
    out = np.zeros((ns, ny, nx))
    for k in range(nk):
        th = np.deg2rad(angles_deg[k])
        pos = (plan.pad_left + centres[k] + x * np.cos(th) + y * np.sin(th)) * plan.oversample
        if plan.nearest:
            j = np.clip(np.floor(pos + 0.5).astype(np.int64), 0, length - 1)
            out += q[k][:, j].astype(np.float64)
        else:
            pos = np.clip(pos, 0.0, length - 1.0)
            i = np.minimum(np.floor(pos).astype(np.int64), length - 2)
            f = pos - i
            out += (1.0 - f) * q[k][:, i] + f * q[k][:, i + 1]
    return out


@pytest.mark.parametrize("interpolation", ["fourier", "linear"])
@pytest.mark.parametrize("n_angles", [1, 3, 9])  # the kernels take four angles per pass, then singles
def test_row_and_column_kernels_equal_the_reference(interpolation, n_angles):
    rng = np.random.default_rng(n_angles)
    n_u, ns, shape_yx = 37, 10, (29, 34)
    plan = FilterPlan.make(n_u, interpolation=interpolation)
    rows = rng.standard_normal((n_angles, ns, n_u)).astype(np.float32)
    q = plan.filter(rows)
    angles = rng.uniform(-90.0, 270.0, n_angles)
    centres = (n_u - 1) / 2.0 + rng.uniform(-4.0, 4.0, n_angles)  # shifted, partly off the detector
    ref = reference_backprojection(q, plan, angles, centres, shape_yx)
    tol = 2e-6 * n_angles * np.abs(q).max()  # float32 rounding of the sums

    terms = angle_terms(plan, angles, centres, shape_yx)
    by_rows = np.zeros((ns * shape_yx[0], shape_yx[1]), np.float32)
    backproject_filtered(q, plan, terms, row_layout("volume", ns, ns, shape_yx), by_rows)
    np.testing.assert_allclose(by_rows.reshape(ref.shape), ref, rtol=0, atol=tol)

    columns = np.zeros((*shape_yx, ns), np.float32)
    backproject_columns(plan.filter(rows, transposed=True), plan, terms, shape_yx, columns)
    # Same positions, clamping and order of the sums as the row kernel: identical bits.
    np.testing.assert_array_equal(np.moveaxis(columns, -1, 0), by_rows.reshape(ref.shape))


def test_transposed_filtering_is_the_same_filter():
    rows = np.random.default_rng(0).standard_normal((3, 5, 21)).astype(np.float32)
    plan = FilterPlan.make(21, filter_name="hann")
    scale = np.array([[0.5], [1.0], [2.0]], np.float32)
    np.testing.assert_array_equal(
        plan.filter(rows, scale=scale, transposed=True), np.swapaxes(plan.filter(rows, scale=scale), -1, -2)
    )


@pytest.mark.parametrize("stack", [(12,), (2, 6), (3,)])  # column accumulator from 8 slices, rows below
def test_incremental_volume_is_the_same_in_either_accumulator(stack):
    """The slice-minor (column) accumulator gives the row-layout (generic array) result."""
    rng = np.random.default_rng(1)
    n_u = 24
    angles = np.linspace(0.0, 180.0, 11, endpoint=False)
    data = rng.random((angles.size, *stack, n_u)).astype(np.float32)
    fast = IncrementalReconstructor((*stack, n_u), angles_deg=angles)
    generic = IncrementalReconstructor((*stack, n_u), angles_deg=angles, backend="xp")
    fast.add_many(data[:5], angles[:5])
    for p, a in zip(data[5:], angles[5:], strict=True):
        fast.add(p, a)
    generic.add_many(data, angles)
    v = fast.volume()
    assert v.shape == (*stack, n_u, n_u) and not v.flags.writeable
    np.testing.assert_allclose(v, generic.volume(), rtol=0, atol=2e-6 * np.abs(generic.volume()).max())
    p = fast.previews((1, 3, 20))
    np.testing.assert_array_equal(p.xz, v[..., :, 3, :])
    np.testing.assert_array_equal(p.yz, v[..., :, :, 20])
