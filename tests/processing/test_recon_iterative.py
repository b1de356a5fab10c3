"""Forward model A, SIRT and TV refinement against the simulator's truth."""

from __future__ import annotations

import numpy as np
import pytest

from livetomo.processing.recon import (
    SIRT,
    Projector,
    ReconstructionError,
    TVDescent,
    estimate_noise,
    fbp,
    mu_from_noise,
    project,
)
from livetomo.simulators import k3
from livetomo.simulators.projector import project_many
from livetomo.simulators.specimen import make_cell


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


@pytest.mark.parametrize("backend", ["xp", "numba"])
def test_projector_matches_the_simulator(backend):
    spec = make_cell((6, 30, 36), seed=7)
    angles = [0.0, 12.5, 45.0, 90.0, 133.3, 271.0]
    expected = project_many(spec.delta, angles, voxel_size=0.3, shape_u=40)
    got = project(spec.delta, angles, voxel_size=0.3, n_u=40, backend=backend)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * np.abs(expected).max())


@pytest.mark.parametrize("backend", ["xp", "numba"])
@pytest.mark.parametrize("n_slices", [1, 5])
def test_adjoint_is_the_transpose(backend, n_slices):
    rng = np.random.default_rng(n_slices)
    a = Projector(
        (20, 26),
        [3.0, 50.0, 97.0, 160.0],
        n_u=30,
        center_offset=1.5,
        shifts_dx=[0, 0.7, -1.2, 2.0],
        backend=backend,
    )
    x = rng.standard_normal((n_slices, 20, 26)).astype(np.float32)
    y = rng.standard_normal((4, n_slices, 30)).astype(np.float32)
    lhs = np.vdot(a.forward(x).astype(float), y)
    rhs = np.vdot(x.astype(float), a.adjoint(y))
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_backends_agree_with_offsets():
    rng = np.random.default_rng(0)
    v = rng.random((3, 24, 24)).astype(np.float32)
    kw = dict(n_u=28, center_offset=-2.0, shifts_dx=np.linspace(-1, 1, 7))
    angles = np.linspace(0, 180, 7, endpoint=False)
    a, b = Projector((24, 24), angles, backend="xp", **kw), Projector((24, 24), angles, backend="numba", **kw)
    np.testing.assert_allclose(a.forward(v), b.forward(v), atol=1e-4)
    p = a.forward(v)
    np.testing.assert_allclose(a.adjoint(p), b.adjoint(p), atol=1e-3)


def test_noise_estimate():
    rng = np.random.default_rng(1)
    smooth = np.add.outer(np.linspace(0, 50, 40), np.linspace(0, 20, 60))[None].repeat(8, axis=0)
    for sigma in (0.5, 3.0):
        noisy = smooth + rng.normal(0, sigma, smooth.shape)
        assert float(estimate_noise(noisy)) == pytest.approx(sigma, rel=0.1)
    channels = np.stack([smooth + rng.normal(0, 1, smooth.shape), smooth + rng.normal(0, 4, smooth.shape)], 1)
    np.testing.assert_allclose(estimate_noise(channels), [1.0, 4.0], rtol=0.1)
    assert mu_from_noise(2.0, 100, voxel_size=0.5, kappa=1.0) == pytest.approx(10.0)


@pytest.fixture(scope="module")
def xrf_scan():
    """Dose-fractionated Zn tomography: many angles, ~1 count per pixel, Poisson noise."""
    spec = make_cell((8, 48, 48), seed=2)
    zn = spec.elements["Zn"] / 60.0  # about 1 in the cytoplasm, 0 in the ice
    angles = np.linspace(0.0, 180.0, 90, endpoint=False)
    counts_per_unit = 1.5  # counts per unit of projected Zn: low dwell
    rng = np.random.default_rng(8)
    expected = np.clip(project_many(zn, angles) * counts_per_unit, 0, None)
    data = rng.poisson(expected).astype(np.float32) / counts_per_unit
    return zn, angles, data


def test_sirt_and_tv_improve_on_fbp_for_noisy_xrf(xrf_scan):
    zn, angles, data = xrf_scan
    start = fbp(data, angles)
    e_fbp = rmse(start, zn)
    sirt = SIRT(data, angles, x0=start, nonnegative=True)
    e_sirt = rmse(sirt.run(20), zn)
    tv = TVDescent(data, angles, x0=start, nonnegative=True)
    e_tv = rmse(tv.run(25), zn)
    assert e_sirt < 0.85 * e_fbp
    assert e_tv < 0.5 * e_fbp
    assert e_tv < rmse(fbp(data, angles, filter_name="hann"), zn)  # beats a smoothing filter too
    assert tv.sigma > 0 and tv.mu == pytest.approx(mu_from_noise(tv.sigma, angles.size))
    assert tv.residual_norms[-1] < tv.residual_norms[0] * 1.5


def test_tv_reduces_missing_wedge_artefacts():
    pot = k3.make_lamella((6, 32, 48), voxel_size_nm=2.0, n_particles=25, seed=1)
    v_ice = np.median(pot[pot > 0])
    excess = pot - v_ice * np.clip(pot / v_ice, 0, 1)  # what phase contrast sees
    tilts = np.arange(-60.0, 60.1, 3.0)
    rng = np.random.default_rng(4)
    data = project_many(excess, tilts).astype(np.float32)
    data += rng.normal(0, 0.3 * data.std(), data.shape).astype(np.float32)
    start = fbp(data, tilts, shape_yx=(32, 48))
    tv = TVDescent(data, tilts, x0=start, shape_yx=(32, 48), nonnegative=True)
    assert rmse(tv.run(30), excess) < 0.6 * rmse(start, excess)
    sirt = SIRT(data, tilts, x0=start, shape_yx=(32, 48), nonnegative=True)
    assert rmse(sirt.run(20), excess) < 0.9 * rmse(start, excess)


def test_chunks_and_time_budget(xrf_scan):
    zn, angles, data = xrf_scan
    start = fbp(data, angles)
    a = TVDescent(data, angles, x0=start)
    b = TVDescent(data, angles, x0=start, lipschitz=a.lipschitz)
    for _ in range(3):
        a.run(2)
    b.run(6)
    np.testing.assert_allclose(a.volume, b.volume, atol=1e-5)
    c = SIRT(data, angles, x0=start)
    c.run(1000, max_seconds=0.0)  # stops after the first iteration when the budget is spent
    assert c.iterations == 1
    assert np.all(np.isfinite(a.volume))


def test_refiner_arguments(xrf_scan):
    _, angles, data = xrf_scan
    with pytest.raises(ReconstructionError, match="x0"):
        SIRT(data, angles, x0=np.zeros((3, 3, 3)))
    with pytest.raises(ReconstructionError, match="relaxation"):
        SIRT(data, angles, relaxation=2.5)
    with pytest.raises(ReconstructionError, match="mu"):
        TVDescent(data, angles, mu="silverman")
    with pytest.raises(ReconstructionError, match="angles"):
        SIRT(data, angles[:-1])
    bad = data.copy()
    bad[3, 0, 0] = np.inf
    with pytest.raises(ReconstructionError, match="NaN or infinite"):
        TVDescent(bad, angles)


def test_gpu_projector_and_tv(xrf_scan):
    cupy = pytest.importorskip("cupy")
    zn, angles, data = xrf_scan
    cpu = TVDescent(data, angles, x0=fbp(data, angles))
    gpu = TVDescent(cupy.asarray(data), angles, x0=cupy.asarray(fbp(data, angles)), lipschitz=cpu.lipschitz)
    np.testing.assert_allclose(cupy.asnumpy(gpu.run(5)), cpu.run(5), atol=1e-3 * np.abs(zn).max())
