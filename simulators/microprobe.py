"""Scanning hard-X-ray fluorescence microprobe with a segmented DPC detector.

Forward model of one fly-scan raster at one rotation angle (the 2-ID-E
experiment of the XRF/DPC source): the specimen is projected, displaced by the
stage offset, convolved with the probe spot and sampled at the scan pixels.
The transmitted beam falls on a four-segment detector whose imbalance
measures the beam deflection, i.e. the phase gradient; the fluorescence
detector records a full spectrum per pixel.

Rows of a map are z (vertical, the rotation axis), columns the detector
coordinate u of :mod:`livetomo.simulators.projector`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from livetomo.simulators.faults import FaultInjector, SimulatedTimeout, as_faults
from livetomo.simulators.projector import projection_matrix
from livetomo.simulators.specimen import Specimen
from livetomo.simulators.xrf import FLUORESCENCE_CROSS_SECTION_CM2_G, XRFDetectorModel

HC_KEV_NM = 1.23984193
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
REFERENCE_KEV = 10.0  # energy at which Specimen.mu and Specimen.delta are given
BLANKED_FLUX_FRACTION = 1e-4  # what reaches the specimen while the beam is lost (stray photons)

# Segment signs for segments 2, 3, 4, 5: horizontal = (t2 - t3 - t4 + t5)/sum,
# vertical = (t2 + t3 - t4 - t5)/sum (DESIGN.md).
SEGMENT_SIGN_H = np.array([1.0, -1.0, -1.0, 1.0])
SEGMENT_SIGN_V = np.array([1.0, 1.0, -1.0, -1.0])


@dataclass(frozen=True, eq=False)
class RasterResult:
    """One raster scan at one angle; maps are (ny, nx) = (rows z, columns u).

    Attributes
    ----------
    angle_deg : rotation angle, degrees.
    dwell_s : dwell per pixel, s.
    segments : (4, ny, nx) float32 photon counts of DPC segments 2, 3, 4, 5
        (NaN everywhere after a ``nan_frame`` fault).
    spectra : (ny, nx, n_channels) uint32 fluorescence spectra.
    live_fraction : (ny, nx) float64 live fraction of the XRF detector.
    true_shift_px : (dy, dx) displacement of the specimen in pixels,
        ``observed = scipy.ndimage.shift(ideal, (dy, dx))``.
    true_transmission : (ny, nx) float32 intensity transmission.
    true_phase : (ny, nx) float32 phase, rad (negative: delta > 0).
    true_phase_gradient : (2, ny, nx) float32, rad/pixel, (d/dy, d/dx) of the
        probe-blurred, shifted phase.
    true_line_counts : element -> (ny, nx) float32 expected Kα+Kβ counts
        reaching the detector, noise-free, before dead-time losses.
    """

    angle_deg: float
    dwell_s: float
    segments: np.ndarray
    spectra: np.ndarray
    live_fraction: np.ndarray
    true_shift_px: tuple[float, float]
    true_transmission: np.ndarray
    true_phase: np.ndarray
    true_phase_gradient: np.ndarray
    true_line_counts: dict[str, np.ndarray]


def dpc_sensitivity_from_optics(pixel_size_nm: float, zone_width_nm: float = 80.0) -> float:
    """Difference-over-sum per unit phase gradient (rad/pixel) of a quadrant detector.

    The zone plate's bright-field cone has semi-angle NA = λ / (2·Δr_N).  A
    gradient g (rad/pixel) deflects the beam by α = λ·g / (2π·pixel); shifting
    a uniform disc by a fraction α/NA of its radius moves a share
    (4/π)·α/NA of its photons across the split line.  λ cancels:
    κ = 4·Δr_N / (π²·pixel).
    """
    return 4.0 * zone_width_nm / (np.pi**2 * pixel_size_nm)


class XRFMicroprobe:
    """Fly-scan XRF microprobe with DPC, rastering a :class:`Specimen`.

    Parameters
    ----------
    specimen : the phantom (mu and delta at 10 keV, elements in µg/cm³).
    energy_kev : incident energy, keV; mu scales as E⁻³ and delta as E⁻²
        from their 10 keV values (no absorption edges of the matrix nearby).
    flux_photons_per_s : focused flux, photons/s.
    spot_fwhm_nm : (vertical, horizontal) probe FWHM, nm.
    pixel_size_nm : scan step, nm; defaults to the voxel size.
    detector : fluorescence detector; default :class:`XRFDetectorModel`.
    dpc_sensitivity : κ, difference-over-sum per rad/pixel of phase gradient;
        default from the zone plate (``zone_width_nm``) and the pixel size (≈0.108 at 300 nm).
    zone_width_nm : outermost zone width of the focusing zone plate, nm (its bright-field cone
        fills the segmented detector).
    xrf_yield : detected fraction of the emitted fluorescence (Ω/4π·ε);
        default ``detector.solid_angle_fraction`` (0.08).
    scatter_yield : detected scattered photons per incident photon per unit
        optical depth ∫µ; ~10 % of the 10 keV attenuation of water is
        scattering, polarisation suppresses it ~3x at 90°, times Ω/4π.
    seed : seed or generator for the counting noise.
    faults : fault injector asked about ``blanked_frame`` (the beam lost through a raster:
        ``BLANKED_FLUX_FRACTION`` of the flux), ``detector_timeout``, ``dropped_frame``
        and ``nan_frame`` once per raster.
    """

    def __init__(
        self,
        specimen: Specimen,
        *,
        energy_kev: float = 10.2,
        flux_photons_per_s: float = 5e9,
        spot_fwhm_nm: tuple[float, float] = (500.0, 700.0),
        pixel_size_nm: float | None = None,
        detector: XRFDetectorModel | None = None,
        dpc_sensitivity: float | None = None,
        zone_width_nm: float = 80.0,
        xrf_yield: float | None = None,
        scatter_yield: float = 2.5e-3,
        seed: int | np.random.Generator | None = None,
        faults: FaultInjector | None = None,
    ):
        self.specimen = specimen
        self.energy_kev = float(energy_kev)
        self.flux_photons_per_s = float(flux_photons_per_s)
        self.spot_fwhm_nm = (float(spot_fwhm_nm[0]), float(spot_fwhm_nm[1]))
        self.pixel_size_nm = float(pixel_size_nm or specimen.voxel_size_nm)
        self.detector = detector if detector is not None else XRFDetectorModel()
        self.zone_width_nm = float(zone_width_nm)
        self.dpc_sensitivity = (
            dpc_sensitivity_from_optics(self.pixel_size_nm, self.zone_width_nm)
            if dpc_sensitivity is None
            else float(dpc_sensitivity)
        )
        self.xrf_yield = self.detector.solid_angle_fraction if xrf_yield is None else float(xrf_yield)
        self.scatter_yield = float(scatter_yield)
        self.faults = as_faults(faults)
        self._rng = np.random.default_rng(seed)
        # Elements without a tabulated cross-section (custom phantoms) are not rastered.
        self.elements = tuple(e for e in specimen.elements if e in FLUORESCENCE_CROSS_SECTION_CM2_G)
        # All volumes as one (ny*nx, n_vol*nz) matrix: one sparse product per angle.
        vols = [specimen.mu, specimen.delta, *(specimen.elements[e] for e in self.elements)]
        nz, ny, nx = specimen.shape
        self._stack = np.ascontiguousarray(
            np.stack(vols).reshape(len(vols) * nz, ny * nx).T, dtype=np.float32
        )

    @property
    def wavelength_um(self) -> float:
        """Incident wavelength, µm."""
        return HC_KEV_NM / self.energy_kev * 1e-3

    def default_shape(self) -> tuple[int, int]:
        """Map size covering the projection: (nz, nx) scaled by voxel/pixel."""
        nz, _, nx = self.specimen.shape
        s = self.specimen.voxel_size_nm / self.pixel_size_nm
        return max(int(round(nz * s)), 1), max(int(round(nx * s)), 1)

    def raster(
        self,
        angle_deg: float,
        *,
        offset_um: tuple[float, float] = (0.0, 0.0),
        dwell_s: float = 3e-3,
        shape: tuple[int, int] | None = None,
    ) -> RasterResult | None:
        """Scan the specimen at one angle.

        Parameters
        ----------
        angle_deg : rotation angle, degrees.
        offset_um : (vertical, horizontal) stage offset, µm; it displaces the
            specimen by offset / pixel pixels in the map.
        dwell_s : dwell per pixel, s.
        shape : (ny, nx) map size in pixels; default :meth:`default_shape`.

        Returns
        -------
        RasterResult, or None when a ``dropped_frame`` fault fires.

        Raises
        ------
        SimulatedTimeout
            When a ``detector_timeout`` fault fires.
        """
        # Ask about every fault on every call so schedules count rasters.
        timeout = self.faults.fires("detector_timeout")
        dropped = self.faults.fires("dropped_frame")
        nan_frame = self.faults.fires("nan_frame")
        blanked = self.faults.fires("blanked_frame")
        if timeout:
            raise SimulatedTimeout(f"XRF microprobe did not answer at {angle_deg} deg")
        if dropped:
            return None
        shape = self.default_shape() if shape is None else (int(shape[0]), int(shape[1]))
        shift = (
            float(offset_um[0]) * 1e3 / self.pixel_size_nm,
            float(offset_um[1]) * 1e3 / self.pixel_size_nm,
        )
        maps, grad = self._probe_maps(angle_deg, shift, shape)
        n_photons = self.flux_photons_per_s * float(dwell_s)
        if blanked:  # the beam was lost through the raster (shutter, beam dump): stray photons only
            n_photons *= BLANKED_FLUX_FRACTION
        optical_depth, phase = maps[0], maps[1]
        transmission = np.exp(-optical_depth)
        segments = self._segments(n_photons * transmission, grad)
        if nan_frame:
            segments[:] = np.nan
        line_counts = {
            el: (n_photons * self.xrf_yield * FLUORESCENCE_CROSS_SECTION_CM2_G[el] * 1e-6)
            * np.maximum(m, 0.0)
            for el, m in zip(self.elements, maps[2:], strict=True)
        }  # µg/cm² x cm²/g x 1e-6 g/µg = absorbed fraction
        scatter = n_photons * self.scatter_yield * np.maximum(optical_depth, 0.0)
        spectra, live = self.detector.sample_spectra(
            line_counts, scatter, self.energy_kev, self._rng, dwell_s=dwell_s
        )
        return RasterResult(
            angle_deg=float(angle_deg),
            dwell_s=float(dwell_s),
            segments=segments,
            spectra=spectra,
            live_fraction=live,
            true_shift_px=shift,
            true_transmission=transmission.astype(np.float32),
            true_phase=phase.astype(np.float32),
            true_phase_gradient=grad.astype(np.float32),
            true_line_counts={el: c.astype(np.float32) for el, c in line_counts.items()},
        )

    def _probe_maps(self, angle_deg, shift, shape, *, elements: bool = True, gradient: bool = True):
        """Optical depth, phase (rad) and areal masses (µg/cm²) seen by the probe.

        ``elements=False`` leaves out the element maps and ``gradient=False`` the gradient (None):
        a full-field camera needs neither, and at 1024² they were most of its time.

        Returns
        -------
        maps : (2 + n_elements, ny, nx) float64 (2, ny, nx without the elements).
        grad : (2, ny, nx) float64 phase gradient (d/dy, d/dx), rad/pixel, of the
            probe-blurred phase: the projection filtered with the derivatives of the
            Gaussian probe at voxel resolution, then sampled. (Central differences of
            the sampled phase would add a [1, 0, -1]/2 filter that no detector applies:
            it widened the DPC correlation peak from about 2.0 to 2.7 px along x.)
        """
        spec = self.specimen
        nz, ny, nx = spec.shape
        vox_um = spec.voxel_size_nm * 1e-3
        a = projection_matrix((ny, nx), angle_deg)
        stack = self._stack if elements else self._stack[:, : 2 * nz]
        proj = (a @ stack).T.reshape(-1, nz, nx).astype(float) * vox_um  # µm-integrals
        e_ratio = REFERENCE_KEV / self.energy_kev
        proj[0] *= e_ratio**3  # ∫µ, dimensionless
        proj[1] *= -2.0 * np.pi / self.wavelength_um * e_ratio**2  # φ = -(2π/λ)∫δ
        proj[2:] *= 1e-4  # µg/cm³ x µm -> µg/cm²
        # Probe convolution at voxel resolution, then sampling at the scan points.
        sigma_vox = [f / FWHM_PER_SIGMA / spec.voxel_size_nm for f in self.spot_fwhm_nm]
        per_pixel = self.pixel_size_nm / spec.voxel_size_nm  # rad/voxel -> rad/pixel
        # Beyond the field the projection continues its edge values (ice above and below):
        # pad before blurring so that the phase there is flat and its gradient zero, as the
        # phase and the gradient sampled there must agree (DPC integration relies on it).
        reach = per_pixel * (max(abs(shift[0]), abs(shift[1])) + max(shape) / 2.0)
        pad = int(math.ceil(max(reach - min(proj.shape[1:]) / 2.0, 0.0) + 4.0 * max(sigma_vox) + 2.0))
        proj = np.pad(proj, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        grad = [
            per_pixel * ndimage.gaussian_filter(proj[1], sigma_vox, order=order, mode="nearest")
            for order in (((1, 0), (0, 1)) if gradient else ())
        ]
        proj = ndimage.gaussian_filter(proj, (0, *sigma_vox), mode="nearest")
        maps = np.stack([self._sample(p, shift, shape) for p in proj])
        return maps, (np.stack([self._sample(g, shift, shape) for g in grad]) if gradient else None)

    def _sample(self, image, shift, shape) -> np.ndarray:
        """Resample a voxel-grid projection at the scan pixels, displaced by ``shift``.

        Pixel (i, j) sees the projection at the centre-aligned voxel position
        of (i - dy, j - dx); with equal pixel and voxel sizes this is exactly
        ``scipy.ndimage.shift(image, shift)`` (cubic spline, edge values
        continued, as ice continues above and below the field).
        """
        s = self.pixel_size_nm / self.specimen.voxel_size_nm
        centre_in = (np.asarray(image.shape) - 1) / 2.0
        centre_out = (np.asarray(shape) - 1) / 2.0
        offset = centre_in - s * (centre_out + np.asarray(shift))
        return ndimage.affine_transform(
            image, np.array([s, s]), offset=offset, output_shape=shape, order=3, mode="nearest"
        )

    def full_field(
        self,
        angle_deg: float,
        *,
        offset_um: tuple[float, float] = (0.0, 0.0),
        exposure_s: float = 1e-3,
        shape: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """A full-field Zernike phase-contrast transmission image (a TXM camera) at one angle.

        Counts per pixel are Poisson around ``flux · exposure · exp(-∫µ) · exp(2φ)``: for a
        weak object the positive Zernike phase contrast makes dense matter darker, and
        ``-ln(I / I0) = ∫µ + 2(2π/λ)∫δ`` is a projection of the specimen. The image has the
        probe's resolution and is displaced by the stage offset as a raster would be.

        Returns (counts (rows, cols) float32, true shift (dy, dx) in pixels).
        """
        if self.faults.fires("detector_timeout"):
            raise SimulatedTimeout(f"transmission camera did not answer at {angle_deg} deg")
        shape = self.default_shape() if shape is None else (int(shape[0]), int(shape[1]))
        shift = (
            float(offset_um[0]) * 1e3 / self.pixel_size_nm,
            float(offset_um[1]) * 1e3 / self.pixel_size_nm,
        )
        maps, _ = self._probe_maps(angle_deg, shift, shape, elements=False, gradient=False)
        expected = self.flux_photons_per_s * float(exposure_s) * np.exp(-maps[0] + 2.0 * maps[1])
        return self._rng.poisson(expected).astype(np.float32), shift

    def _segments(self, beam: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """Poisson counts of segments 2-5 for transmitted photons and phase gradient."""
        k = self.dpc_sensitivity
        imbalance = SEGMENT_SIGN_H[:, None, None] * (k * grad[1]) + SEGMENT_SIGN_V[:, None, None] * (
            k * grad[0]
        )
        expected = np.clip(beam[None] / 4.0 * (1.0 + imbalance), 0.0, None)
        return self._rng.poisson(expected).astype(np.float32)
