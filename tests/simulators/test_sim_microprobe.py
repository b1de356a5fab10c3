"""Tests of the projector and the XRF/DPC microprobe simulator against physical truth."""

import numpy as np
import pytest
from scipy import ndimage

from livetomo.simulators.faults import FaultInjector, SimulatedTimeout
from livetomo.simulators.microprobe import RasterResult, XRFMicroprobe
from livetomo.simulators.projector import project, project_many
from livetomo.simulators.specimen import make_cell
from livetomo.simulators.xrf import XRFDetectorModel

# ----------------------------------------------------------------------------- projector


def _ball(n, radius):
    """Centred ball with a one-voxel partial-volume edge."""
    c = (n - 1) / 2
    z, y, x = np.ogrid[:n, :n, :n]
    d = np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2)
    return np.clip(radius + 0.5 - d, 0, 1)


def test_centred_sphere_projects_to_analytic_chords_at_every_angle():
    n, radius, voxel = 40, 15.0, 0.25
    vol = _ball(n, radius)
    angles = [0, 17, 45, 90, 133, 180, 271]
    sino = project_many(vol, angles, voxel_size=voxel)
    assert sino.shape == (len(angles), n, n)
    c = (n - 1) / 2
    zz, uu = np.meshgrid(np.arange(n) - c, np.arange(n) - c, indexing="ij")
    r2 = zz**2 + uu**2
    chord = 2 * np.sqrt(np.clip(radius**2 - r2, 0, None)) * voxel
    inner = r2 < (0.8 * radius) ** 2
    for p in sino:
        np.testing.assert_allclose(p[inner], chord[inner], rtol=0.03)
        np.testing.assert_allclose(p, sino[0], atol=0.03 * chord.max())


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 180.0, 250.0])
def test_off_centre_point_moves_along_u_as_x_cos_plus_y_sin(angle):
    n = 41
    c = (n - 1) / 2
    a, b = 9.0, -5.0  # x and y offsets from the centre, voxels
    vol = np.zeros((3, n, n))
    vol[1, int(c + b), int(c + a)] = 1.0
    p = project(vol, angle)
    assert p.shape == (3, n)
    assert np.all(p[[0, 2]] == 0)  # rows are z: nothing leaks to other slices
    u = np.sum(p[1] * np.arange(n)) / p[1].sum() - c
    th = np.deg2rad(angle)
    assert u == pytest.approx(a * np.cos(th) + b * np.sin(th), abs=0.15)


def test_projection_signs_at_0_and_90_degrees():
    n = 21
    c = n // 2
    vol = np.zeros((1, n, n))
    vol[0, c, c + 6] = 1.0  # +x
    vol[0, c + 3, c] = 1.0  # +y
    p0, p90 = project(vol, 0.0)[0], project(vol, 90.0)[0]
    # 0°: beam along y, u = x -> peaks at c (the +y point) and c + 6.
    assert p0[c + 6] == pytest.approx(1.0) and p0[c] == pytest.approx(1.0)
    # 90°: u = y -> the +x point goes to c, the +y point to c + 3.
    assert p90[c + 3] == pytest.approx(1.0) and p90[c] == pytest.approx(1.0)


def test_projector_options_and_no_mutation():
    vol = _ball(24, 8)
    before = vol.copy()
    p1 = project(vol, 33.0)
    np.testing.assert_allclose(project(vol, 33.0, voxel_size=0.3), 0.3 * p1)
    wide = project(vol, 33.0, shape_u=40)
    assert wide.shape == (24, 40)
    np.testing.assert_allclose(wide[:, 8:32], p1, atol=1e-9)  # same centre, padded
    np.testing.assert_array_equal(vol, before)
    np.testing.assert_allclose(project_many(vol, [33.0])[0], p1)


# ----------------------------------------------------------------------------- microprobe


@pytest.fixture(scope="module")
def cell():
    return make_cell(seed=0)


def _dpc(result: RasterResult):
    t2, t3, t4, t5 = result.segments.astype(float)
    total = t2 + t3 + t4 + t5
    return (t2 - t3 - t4 + t5) / total, (t2 + t3 - t4 - t5) / total, total


def _pearson(a, b):
    return np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]


def test_raster_shapes_and_types(cell):
    probe = XRFMicroprobe(cell, seed=0)
    r = probe.raster(15.0)
    ny, nx = cell.shape[0], cell.shape[2]
    assert r.segments.shape == (4, ny, nx) and r.segments.dtype == np.float32
    assert r.spectra.shape == (ny, nx, 2048) and r.spectra.dtype == np.uint32
    assert r.live_fraction.shape == (ny, nx)
    assert r.true_phase_gradient.shape == (2, ny, nx)
    assert set(r.true_line_counts) == set(cell.elements)
    assert r.angle_deg == 15.0 and r.dwell_s == 3e-3
    assert probe.raster(15.0, shape=(20, 30)).segments.shape == (4, 20, 30)


def test_dpc_difference_over_sum_tracks_phase_gradient(cell):
    probe = XRFMicroprobe(cell, seed=1)
    r = probe.raster(40.0, dwell_s=3e-3)
    horizontal, vertical, total = _dpc(r)
    # ~1.5e7 photons per pixel at 5e9 ph/s and 3 ms: the sum is the transmitted beam.
    n_photons = 5e9 * 3e-3
    np.testing.assert_allclose(total, n_photons * r.true_transmission, rtol=2e-3)
    gy, gx = r.true_phase_gradient
    assert _pearson(horizontal, gx) > 0.9
    assert _pearson(vertical, gy) > 0.9
    # In expectation difference/sum = kappa x gradient: the regression slope is kappa.
    k = probe.dpc_sensitivity
    assert np.polyfit(gx.ravel(), horizontal.ravel(), 1)[0] == pytest.approx(k, rel=0.03)
    assert np.polyfit(gy.ravel(), vertical.ravel(), 1)[0] == pytest.approx(k, rel=0.05)


def test_phase_and_transmission_follow_the_specimen(cell):
    probe = XRFMicroprobe(cell, seed=2, spot_fwhm_nm=(1e-3, 1e-3))  # pencil beam
    r = probe.raster(0.0)
    vox_um = cell.voxel_size_nm / 1000
    lam_um = 1.23984193e-3 / 10.2
    e = 10.0 / 10.2  # mu and delta are given at 10 keV
    phase = -2 * np.pi / lam_um * project(cell.delta, 0.0, voxel_size=vox_um) * e**2
    depth = project(cell.mu, 0.0, voxel_size=vox_um) * e**3
    np.testing.assert_allclose(r.true_phase, phase, atol=1e-3 * np.abs(phase).max())
    np.testing.assert_allclose(r.true_transmission, np.exp(-depth), atol=1e-6)
    # Phase scales as 1/E: twice the energy, half the phase.
    high = XRFMicroprobe(cell, energy_kev=20.4, spot_fwhm_nm=(1e-3, 1e-3)).raster(0.0)
    np.testing.assert_allclose(high.true_phase, r.true_phase / 2, rtol=1e-4, atol=1e-6)


def test_zinc_is_faint_and_much_noisier_than_dpc(cell):
    probe = XRFMicroprobe(cell, seed=3)
    r = probe.raster(0.0, dwell_s=3e-3)
    zn_true = r.true_line_counts["Zn"]
    inside = zn_true > 0.3 * zn_true.max()
    # A few to ~20 Zn counts per pixel inside the cell at 3 ms.
    assert 2 <= np.median(zn_true[inside]) <= 20
    roi = probe.detector.roi_channels("Zn")
    zn_map = r.spectra[..., roi].sum(axis=-1).astype(float)
    horizontal, _, _ = _dpc(r)
    r_zn = _pearson(zn_map, zn_true)
    r_dpc = _pearson(horizontal, r.true_phase_gradient[1])
    assert r_dpc > 0.99 and r_zn < 0.95
    # Relative noise: Poisson on a few counts vs ~1e7 photons.
    k = probe.dpc_sensitivity
    dpc_noise = np.std(horizontal - k * r.true_phase_gradient[1])
    assert dpc_noise / np.std(k * r.true_phase_gradient[1]) < 0.05
    zn_rel = np.std(zn_map[inside] / r.live_fraction[inside] - zn_true[inside])
    assert zn_rel / np.mean(zn_true[inside]) > 0.3


def test_longer_dwell_gives_proportionally_more_counts(cell):
    probe = XRFMicroprobe(cell, seed=4)
    short, long = probe.raster(10.0, dwell_s=3e-3), probe.raster(10.0, dwell_s=30e-3)
    for el in cell.elements:
        np.testing.assert_allclose(
            long.true_line_counts[el], 10 * short.true_line_counts[el], rtol=1e-5, atol=1e-9
        )
    # Heavier trace metals give more counts per µg: Zn map beats Mn by far.
    assert short.true_line_counts["Zn"].sum() > 20 * short.true_line_counts["Mn"].sum()


def test_stage_offset_displaces_specimen_by_offset_over_pixel(cell):
    probe = XRFMicroprobe(cell, seed=5)
    ref = probe.raster(25.0)
    moved = probe.raster(25.0, offset_um=(0.6, -0.45))
    assert moved.true_shift_px == pytest.approx((2.0, -1.5))
    assert ref.true_shift_px == (0.0, 0.0)
    # Content moves by +shift: centre of mass of the Zn map and ndimage.shift convention.
    com0 = np.array(ndimage.center_of_mass(ref.true_line_counts["Zn"]))
    com1 = np.array(ndimage.center_of_mass(moved.true_line_counts["Zn"]))
    np.testing.assert_allclose(com1 - com0, (2.0, -1.5), atol=0.05)
    expected = ndimage.shift(ref.true_phase.astype(float), (2.0, -1.5), mode="nearest")
    # Away from the field's edges (where the displaced scan sees what lay outside the field).
    inner = (slice(5, -5), slice(5, -5))
    np.testing.assert_allclose(moved.true_phase[inner], expected[inner], atol=1e-4)
    # Finer pixels: the same offset is more pixels and the map covers the same field.
    small_mca = XRFDetectorModel(n_channels=256)  # spectra are not looked at here
    fine = XRFMicroprobe(cell, pixel_size_nm=150.0, detector=small_mca, seed=5)
    r = fine.raster(25.0, offset_um=(0.6, -0.45))
    assert r.true_shift_px == pytest.approx((4.0, -3.0))
    assert r.segments.shape == (4, 64, 128)


def test_seeded_and_specimen_untouched(cell):
    before = cell.delta.copy()
    a = XRFMicroprobe(cell, seed=9).raster(5.0)
    b = XRFMicroprobe(cell, seed=9).raster(5.0)
    c = XRFMicroprobe(cell, seed=10).raster(5.0)
    np.testing.assert_array_equal(a.segments, b.segments)
    np.testing.assert_array_equal(a.spectra, b.spectra)
    assert not np.array_equal(a.segments, c.segments)
    np.testing.assert_array_equal(cell.delta, before)


def test_fault_switches(cell):
    faults = FaultInjector(schedule={"nan_frame": [0], "dropped_frame": [1], "detector_timeout": [2]})
    probe = XRFMicroprobe(cell, seed=6, faults=faults)
    first = probe.raster(0.0)
    assert np.all(np.isnan(first.segments))
    assert first.spectra.sum() > 0  # the XRF detector still delivered
    assert probe.raster(1.0) is None
    with pytest.raises(SimulatedTimeout):
        probe.raster(2.0)
    fine = probe.raster(3.0)
    assert np.all(np.isfinite(fine.segments))
    assert faults.fired == {"nan_frame": 1, "dropped_frame": 1, "detector_timeout": 1}
    assert faults.opportunities["nan_frame"] == 4


def test_phase_gradient_is_the_derivative_of_the_probe_blurred_phase(cell):
    """DPC sees ∂(probe * φ), not a finite difference of the sampled phase; beyond the field
    the phase continues flat and its gradient is zero, consistently."""
    probe = XRFMicroprobe(cell, seed=2)
    r = probe.raster(35.0, offset_um=(0.0, 3.0))  # 10 px: the field's left edge comes into view
    phase = r.true_phase.astype(float)
    gy, gx = r.true_phase_gradient
    # Spectral derivative along x of the smooth (probe-blurred) phase, away from the map ends.
    n = phase.shape[1]
    padded = np.pad(phase, ((0, 0), (n, n)), mode="reflect")
    k = 2j * np.pi * np.fft.fftfreq(padded.shape[1])
    spectral = np.fft.ifft(np.fft.fft(padded, axis=1) * k, axis=1).real[:, n:-n]
    inner = (slice(2, -2), slice(14, -4))
    assert np.polyfit(spectral[inner].ravel(), gx[inner].ravel(), 1)[0] == pytest.approx(1.0, abs=0.05)
    assert np.corrcoef(spectral[inner].ravel(), gx[inner].ravel())[0, 1] > 0.99
    # A central difference is a smoothed derivative: visibly below the exact one at fine detail.
    central = np.gradient(phase, axis=1)
    assert np.std(central[inner] - gx[inner]) > 0.02 * np.std(gx[inner])
    # Columns beyond the field's edge: flat phase, zero gradient.
    flat = np.ptp(phase[:, :4], axis=1) < 1e-6
    assert flat.all() and np.abs(gx[:, :4]).max() < 1e-6
