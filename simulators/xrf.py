"""Energy-dispersive X-ray fluorescence detector (silicon drift) model.

Emission-line energies, detector resolution and ROI widths follow DESIGN.md.
A spectrum per pixel is the sum of Gaussian Kα/Kβ lines for each element, an
elastic and a Compton scatter peak and a weak continuum; dead time is
non-paralysable and counting is Poisson.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

# Kα1 / Kβ1 energies, keV (DESIGN.md; Kβ1 of P, S and Mn from standard tables).
EMISSION_LINES: dict[str, dict[str, float]] = {
    "P": {"Ka1": 2.013, "Kb1": 2.139},
    "S": {"Ka1": 2.307, "Kb1": 2.464},
    "K": {"Ka1": 3.313, "Kb1": 3.589},
    "Ca": {"Ka1": 3.691, "Kb1": 4.012},
    "Mn": {"Ka1": 5.898, "Kb1": 6.490},
    "Fe": {"Ka1": 6.403, "Kb1": 7.057},
    "Cu": {"Ka1": 8.046, "Kb1": 8.904},
    "Zn": {"Ka1": 8.637, "Kb1": 9.570},
}

# Kβ/Kα intensity ratios (Scofield-type values): about 0.13-0.14 for the
# transition metals, smaller for the light elements whose 3p shell is nearly
# empty; 0 would mean "no Kβ line".
KBETA_RATIO: dict[str, float] = {
    "P": 0.04,
    "S": 0.07,
    "K": 0.11,
    "Ca": 0.12,
    "Mn": 0.13,
    "Fe": 0.135,
    "Cu": 0.135,
    "Zn": 0.14,
}

# K-shell fluorescence production cross-section at ~10 keV excitation, cm²/g:
# photoabsorption cross-section x K-shell fraction x fluorescence yield.  It
# rises steeply with Z (yield 0.06 for P, 0.47 for Zn), so trace metals give
# usable signal while P and S need much higher concentrations.
FLUORESCENCE_CROSS_SECTION_CM2_G: dict[str, float] = {
    "P": 1.6,
    "S": 2.5,
    "K": 8.0,
    "Ca": 12.0,
    "Mn": 38.0,
    "Fe": 50.0,
    "Cu": 65.0,
    "Zn": 72.0,
}

ELECTRON_REST_KEV = 510.999


def peak_sigma_kev(energy_kev, fwhm0_kev: float = 0.097, fano: float = 2.24e-4):
    """Gaussian width of a detector peak.

    Parameters
    ----------
    energy_kev : float or ndarray, photon energy, keV.
    fwhm0_kev : electronic-noise FWHM, keV.
    fano : Fano term F of DESIGN.md.

    Returns
    -------
    sigma : same shape as ``energy_kev``, keV;
        sigma² = (FWHM0 / 2.3548)² + 2.96·E·F.
    """
    e = np.asarray(energy_kev, dtype=float)
    sigma = np.sqrt((fwhm0_kev / 2.3548) ** 2 + 2.96 * e * fano)
    return float(sigma) if sigma.ndim == 0 else sigma


def roi_half_width_ev(energy_kev):
    """Half-width of the integration window of a line, eV: ½·√(150² + (12·E_keV)²)."""
    e = np.asarray(energy_kev, dtype=float)
    hw = 0.5 * np.sqrt(150.0**2 + (12.0 * e) ** 2)
    return float(hw) if hw.ndim == 0 else hw


def compton_energy_kev(incident_kev: float, angle_deg: float = 90.0) -> float:
    """Energy of a photon Compton-scattered by ``angle_deg``, keV."""
    k = incident_kev / ELECTRON_REST_KEV
    return incident_kev / (1.0 + k * (1.0 - np.cos(np.deg2rad(angle_deg))))


@dataclass
class XRFDetectorModel:
    """Silicon drift detector with a multichannel analyser.

    Parameters
    ----------
    n_channels : number of MCA channels.
    ev_per_channel : gain, eV per channel.
    offset_ev : energy of channel 0, eV (channel i sits at offset + i·gain).
    dead_time_s : non-paralysable dead time per event, s.
    solid_angle_fraction : collected fraction of the isotropic emission times
        detection efficiency (Ω/4π·ε); scales fluorescence counts.
    fwhm0_kev, fano : resolution parameters, see :func:`peak_sigma_kev`.
    spectra_dtype : the MCA's count type, "uint32" (as an Xspress3 reads out) or "uint16"
        (half the bytes; counts saturate at 65535 per channel, far above a few-ms dwell's).
    """

    n_channels: int = 2048
    ev_per_channel: float = 10.0
    offset_ev: float = 0.0
    dead_time_s: float = 1e-6
    solid_angle_fraction: float = 0.08
    fwhm0_kev: float = 0.097
    fano: float = 2.24e-4
    spectra_dtype: str = "uint32"

    def energy_axis_kev(self) -> np.ndarray:
        """Nominal energy of every channel, keV, shape (n_channels,)."""
        return (self.offset_ev + self.ev_per_channel * np.arange(self.n_channels)) / 1000.0

    def channel_of(self, energy_kev: float) -> int:
        """Channel whose nominal energy is closest to ``energy_kev`` (may be out of range)."""
        return int(np.round((energy_kev * 1000.0 - self.offset_ev) / self.ev_per_channel))

    def roi_channels(self, element: str) -> slice:
        """Channels of the Kα1 integration window of ``element`` (DESIGN.md width)."""
        e = EMISSION_LINES[element]["Ka1"]
        hw = roi_half_width_ev(e) / 1000.0
        lo, hi = self.channel_of(e - hw), self.channel_of(e + hw) + 1
        return slice(max(lo, 0), min(hi, self.n_channels))

    def sigma_kev(self, energy_kev):
        """Peak width (σ, keV) at ``energy_kev`` for this detector."""
        return peak_sigma_kev(energy_kev, self.fwhm0_kev, self.fano)

    def _gaussian(self, centre_kev: float, sigma_kev: float) -> np.ndarray:
        """Counts fraction per channel of a Gaussian, integrated over each channel's width."""
        half = self.ev_per_channel / 2000.0
        e = self.energy_axis_kev()
        return ndtr((e + half - centre_kev) / sigma_kev) - ndtr((e - half - centre_kev) / sigma_kev)

    def line_profiles(self, elements) -> np.ndarray:
        """Normalised Kα+Kβ spectra of elements.

        Parameters
        ----------
        elements : sequence of element symbols (keys of EMISSION_LINES).

        Returns
        -------
        profiles : ndarray, shape (n_el, n_channels), float64; each row sums
            to 1, Kβ carrying KBETA_RATIO/(1 + KBETA_RATIO) of it.
        """
        out = np.zeros((len(elements), self.n_channels))
        for i, el in enumerate(elements):
            lines, r = EMISSION_LINES[el], KBETA_RATIO.get(el, 0.0)
            prof = self._gaussian(lines["Ka1"], self.sigma_kev(lines["Ka1"]))
            if r > 0 and "Kb1" in lines:
                prof = prof + r * self._gaussian(lines["Kb1"], self.sigma_kev(lines["Kb1"]))
            out[i] = _normalised(prof)
        return out

    def scatter_profile(
        self,
        incident_kev: float,
        *,
        elastic_fraction: float = 0.35,
        continuum_fraction: float = 0.1,
        compton_broadening_kev: float = 0.08,
    ) -> np.ndarray:
        """Normalised spectrum of scattered incident photons seen at 90°.

        Parameters
        ----------
        incident_kev : incident photon energy, keV.
        elastic_fraction : share of the elastic (Rayleigh) peak.
        continuum_fraction : share of a flat low-energy tail (incomplete charge
            collection, multiple scattering) from 1 keV up to the Compton peak.
        compton_broadening_kev : extra Gaussian width (σ) of the Compton peak
            from the electrons' momentum distribution (Doppler broadening).

        Returns
        -------
        profile : ndarray, shape (n_channels,), sums to 1.
        """
        e_c = compton_energy_kev(incident_kev, 90.0)
        elastic = _normalised(self._gaussian(incident_kev, self.sigma_kev(incident_kev)))
        sig_c = np.hypot(self.sigma_kev(e_c), compton_broadening_kev)
        compton = _normalised(self._gaussian(e_c, sig_c))
        e = self.energy_axis_kev()
        continuum = _normalised(((e > 1.0) & (e < e_c)).astype(float))
        compton_fraction = 1.0 - elastic_fraction - continuum_fraction
        return elastic_fraction * elastic + compton_fraction * compton + continuum_fraction * continuum

    def live_fraction(self, input_counts: np.ndarray, dwell_s: float | None) -> np.ndarray:
        """Non-paralysable live fraction 1 / (1 + n·τ) for input rate n = counts/dwell."""
        counts = np.asarray(input_counts, dtype=float)
        if dwell_s is None:
            return np.ones_like(counts)
        return 1.0 / (1.0 + counts / float(dwell_s) * self.dead_time_s)

    def sample_spectra(
        self,
        expected_line_counts: dict[str, np.ndarray],
        scatter_counts: np.ndarray,
        incident_kev: float,
        rng: int | np.random.Generator | None = None,
        *,
        dwell_s: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Poisson spectra of a map.

        Parameters
        ----------
        expected_line_counts : element -> ndarray (ny, nx), expected Kα+Kβ counts
            per pixel reaching the detector (before dead-time losses).
        scatter_counts : ndarray (ny, nx), expected scattered photons per pixel.
        incident_kev : incident energy, keV (elastic and Compton peaks).
        rng : seed or generator.
        dwell_s : dwell per pixel, s; sets the input rate for the dead time.
            None means no dead-time losses.

        Returns
        -------
        spectra : ndarray (ny, nx, n_channels), counts of ``spectra_dtype``.
        live_fraction : ndarray (ny, nx), float64, fraction of the dwell the
            detector was live; expected recorded counts are scaled by it.
        """
        rng = np.random.default_rng(rng)
        scatter = np.asarray(scatter_counts, dtype=float)
        shape = scatter.shape
        elements = list(expected_line_counts)
        rates = (
            np.stack(
                [np.asarray(expected_line_counts[el], dtype=float).reshape(shape) for el in elements]
                + [scatter]
            )
            .reshape(len(elements) + 1, -1)
            .T
        )  # (n_pixels, n_components)
        if np.any(~np.isfinite(rates)) or np.any(rates < 0):
            raise ValueError("expected counts must be finite and non-negative")
        profiles = np.vstack([self.line_profiles(elements), self.scatter_profile(incident_kev)[None]])
        live = self.live_fraction(rates.sum(axis=1), dwell_s)
        rates *= live[:, None]
        dtype = np.dtype(self.spectra_dtype)
        spectra = np.empty((rates.shape[0], self.n_channels), dtype=dtype)
        # In blocks of pixels: the sampler's temporaries grow with pixels x channels (a 230 x 230
        # raster of 4096 channels at once took 1.7 GB for its histogram alone). Rasters of up
        # to 2^24 pixel-channels are one block, so their random stream is what it always was.
        block = max(1, (1 << 24) // self.n_channels)
        top = np.iinfo(dtype).max
        for start in range(0, rates.shape[0], block):
            counts = _poisson_spectra(rates[start : start + block], profiles, rng)
            spectra[start : start + block] = (
                np.minimum(counts, top) if top < np.iinfo(counts.dtype).max else counts
            )
        return spectra.reshape(*shape, self.n_channels), live.reshape(shape)


def sample_spectra(
    expected_line_counts: dict[str, np.ndarray],
    scatter_counts: np.ndarray,
    incident_kev: float,
    rng: int | np.random.Generator | None = None,
    *,
    dwell_s: float | None = None,
    detector: XRFDetectorModel | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`XRFDetectorModel.sample_spectra` with a default detector."""
    det = XRFDetectorModel() if detector is None else detector
    return det.sample_spectra(expected_line_counts, scatter_counts, incident_kev, rng, dwell_s=dwell_s)


def _normalised(profile: np.ndarray) -> np.ndarray:
    """Scale a non-negative profile to unit sum (zeros stay zeros)."""
    total = profile.sum()
    return profile / total if total > 0 else profile


def _poisson_spectra(rates: np.ndarray, profiles: np.ndarray, rng) -> np.ndarray:
    """Independent Poisson counts with mean ``rates @ profiles``, as uint32.

    Parameters
    ----------
    rates : (n_pixels, n_components) expected counts of each component.
    profiles : (n_components, n_channels), rows summing to 1.

    Two exact samplers: at low counts (the usual few-ms dwell) draw each
    component's Poisson total per pixel and drop its photons into channels
    from the profile's CDF, which touches only the photons; at high counts
    draw one Poisson per channel from the expected spectrum, built as one
    float32 matrix product.  Both give independent Poisson channels.
    """
    n_pix, n_ch = rates.shape[0], profiles.shape[1]
    if rates.sum() > n_pix * n_ch:
        lam = rates.astype(np.float32) @ profiles.astype(np.float32)
        return rng.poisson(lam).astype(np.uint32)
    counts = rng.poisson(rates)  # (n_pixels, n_components)
    flat = []
    for k in range(profiles.shape[0]):
        n = counts[:, k]
        total = int(n.sum())
        cdf = np.cumsum(profiles[k])
        if total == 0 or cdf[-1] <= 0:
            continue  # nothing emitted, or all of it falls outside the channel range
        chan = np.searchsorted(cdf, rng.random(total) * cdf[-1], side="right")
        pix = np.repeat(np.arange(n_pix), n)
        flat.append(pix * n_ch + np.minimum(chan, n_ch - 1))
    if not flat:
        return np.zeros((n_pix, n_ch), dtype=np.uint32)
    hist = np.bincount(np.concatenate(flat), minlength=n_pix * n_ch)
    return hist.astype(np.uint32).reshape(n_pix, n_ch)
