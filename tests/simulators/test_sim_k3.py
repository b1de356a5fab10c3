"""K3 counting-mode simulator: dose, Poisson statistics, tilt attenuation, drift, faults."""

import numpy as np
import pytest
from scipy import optimize

from livetomo.simulators.faults import FaultInjector, SimulatedTimeout
from livetomo.simulators.k3 import (
    K3Camera,
    electron_wavelength_nm,
    interaction_constant,
    make_lamella,
)

THICKNESS_NM = 48.0
MFP_NM = 350.0  # vitreous ice, 300 kV
PIXEL_A = 20.0  # 2 nm voxels


@pytest.fixture(scope="module")
def lamella():
    return make_lamella((64, 32, 64), voxel_size_nm=2.0, thickness_nm=THICKNESS_NM, seed=3)


def transmission(tilt_deg):
    return np.exp(-THICKNESS_NM / (MFP_NM * np.cos(np.deg2rad(tilt_deg))))


def xcorr_shift(ref, img, margin=8):
    """(dy, dx) with img ~ shift(ref, (dy, dx)): cross-correlation peak, refined continuously.

    The reference's central crop (mean removed) is the template; the cross-correlation is
    evaluated at sub-pixel lags from its Fourier series and maximised from the integer peak.
    """
    template = np.zeros_like(ref)
    core = (slice(margin, -margin), slice(margin, -margin))
    template[core] = ref[core] - ref[core].mean()
    cross = np.fft.fft2(img) * np.conj(np.fft.fft2(template))
    cc = np.fft.ifft2(cross).real
    n = np.array(ref.shape)
    peak = np.array(np.unravel_index(np.argmax(cc), cc.shape), dtype=float)
    peak = np.where(peak > n / 2, peak - n, peak)
    ky, kx = np.fft.fftfreq(n[0])[:, None], np.fft.fftfreq(n[1])[None, :]

    def minus_cc(s):
        return -np.real(np.sum(cross * np.exp(2j * np.pi * (ky * s[0] + kx * s[1]))))

    opts = {"xatol": 1e-5, "fatol": 1e-12}
    return optimize.minimize(minus_cc, peak, method="Nelder-Mead", options=opts).x


def test_electron_optics_constants():
    assert electron_wavelength_nm(300) == pytest.approx(1.97e-3, rel=2e-3)
    assert interaction_constant(300) == pytest.approx(0.00653, rel=2e-3)


def test_lamella_potentials(lamella):
    assert lamella.shape == (64, 32, 64)
    material = lamella[lamella > 0]
    assert np.median(material) == pytest.approx(4.5)  # ice dominates
    assert lamella.max() > 20.0  # gold fiducials, much stronger than protein (7 V)
    assert np.any(np.isclose(lamella, 7.0))
    # Beam at 0 deg runs along y: vacuum at the top and bottom of y.
    assert np.all(lamella[:, 0, :] == 0) and np.all(lamella[:, -1, :] == 0)
    assert np.array_equal(make_lamella(seed=1), make_lamella(seed=1))


def test_mean_counts_follow_dose_and_transmission(lamella):
    cam = K3Camera(lamella, voxel_size_nm=2.0, seed=0)
    assert cam.thickness_nm == pytest.approx(THICKNESS_NM, rel=0.02)
    for dose in (1.0, 3.0):
        frame = cam.acquire(0.0, dose_e_per_A2=dose)
        expected_mean = dose * PIXEL_A**2 * transmission(0.0)
        assert frame.counts.mean() == pytest.approx(expected_mean, rel=0.02)
        assert frame.counts.dtype == np.uint16 and frame.counts.shape == (64, 64)


def test_pixel_size_sets_area_and_shape(lamella):
    cam = K3Camera(lamella, voxel_size_nm=2.0, pixel_size_A=10.0, seed=0)
    frame = cam.acquire(0.0, dose_e_per_A2=3.0)
    assert frame.counts.shape == (128, 128)
    assert frame.counts.mean() == pytest.approx(3.0 * 10.0**2 * transmission(0.0), rel=0.02)


def test_counts_are_poisson(lamella):
    frame = K3Camera(lamella, seed=1).acquire(10.0, dose_e_per_A2=0.2)
    z = (frame.counts - frame.expected) / np.sqrt(frame.expected)
    assert abs(z.mean()) < 0.05
    assert z.var() == pytest.approx(1.0, abs=0.08)
    assert np.array_equal(frame.counts, np.round(frame.counts))


def test_tilt_lowers_mean_as_one_over_cos(lamella):
    cam = K3Camera(lamella, seed=2)
    means = [cam.acquire(a).expected.mean() for a in (0.0, 30.0, 60.0)]
    assert means[0] > means[1] > means[2]
    for a, m in zip((30.0, 60.0), means[1:], strict=True):
        assert m / means[0] == pytest.approx(transmission(a) / transmission(0.0), rel=0.01)


@pytest.mark.parametrize("shift", [(1.37, -2.62), (0.3, 0.45), (-3.8, 2.1)])
def test_drift_appears_in_image(lamella, shift):
    cam = K3Camera(lamella, seed=4)
    ref = cam.acquire(40.0).expected
    frame = cam.acquire(40.0, shift_px=shift)
    assert frame.true_shift_px == shift
    assert np.allclose(xcorr_shift(ref, frame.expected), shift, atol=0.05)


def test_faults_and_determinism(lamella):
    faults = FaultInjector(schedule={"nan_frame": [1], "dropped_frame": [2], "detector_timeout": [3]})
    before = lamella.copy()
    cam = K3Camera(lamella, seed=5, faults=faults)
    good = cam.acquire(0.0)
    nan = cam.acquire(5.0)
    assert nan.counts.dtype == np.float32 and np.all(np.isnan(nan.counts))
    assert cam.acquire(10.0) is None
    with pytest.raises(SimulatedTimeout):
        cam.acquire(15.0)
    assert cam.acquire(20.0).counts.dtype == np.uint16
    assert faults.fired == {"nan_frame": 1, "dropped_frame": 1, "detector_timeout": 1}
    assert np.array_equal(good.counts, K3Camera(lamella, seed=5).acquire(0.0).counts)
    assert np.array_equal(lamella, before)  # input not mutated


def test_filament_family_is_a_different_phantom_with_the_asked_thickness():
    from livetomo.simulators.k3 import LAMELLA_FAMILIES, make_filament_lamella, make_specimen

    assert set(LAMELLA_FAMILIES) == {"particles", "filaments"}
    vol = make_filament_lamella((64, 60, 64), voxel_size_nm=2.0, thickness_nm=100.0, seed=1)
    cam = K3Camera(vol, voxel_size_nm=2.0, seed=2)
    assert cam.thickness_nm == pytest.approx(100.0, rel=0.05)  # objects replace ice, never add to it
    assert vol.max() < 10.0  # no gold in this family
    assert (vol > 6.5).mean() > 0.005  # but filaments, tubes, sheets and granules
    particles = make_specimen("particles", (64, 60, 64), thickness_nm=100.0, seed=1)
    assert particles.max() > 20.0  # gold fiducials
    thick = make_specimen("filaments", (64, 60, 64), thickness_nm=100.0, density=2.0, seed=1)
    assert (thick > 6.5).sum() > (vol > 6.5).sum()
    with pytest.raises(ValueError):
        make_specimen("crystals", (16, 16, 16), thickness_nm=20.0)


def test_defocus_override_and_phase_cache(lamella):
    cam = K3Camera(lamella, voxel_size_nm=2.0, seed=1)
    a = cam.expected_image(20.0, 3.0)
    b = cam.expected_image(20.0, 3.0)  # from the cached projection
    c = cam.expected_image(20.0, 3.0, defocus_um=-1.5)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.mean() == pytest.approx(c.mean(), rel=1e-3)  # same dose and transmission
    assert cam.defocus_um == -3.0  # the override is per image
