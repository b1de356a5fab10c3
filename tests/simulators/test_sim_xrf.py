"""Tests of the XRF detector model (livetomo.simulators.xrf) against DESIGN.md numbers."""

import numpy as np
import pytest

from livetomo.simulators.xrf import (
    EMISSION_LINES,
    KBETA_RATIO,
    XRFDetectorModel,
    peak_sigma_kev,
    roi_half_width_ev,
    sample_spectra,
)

# DESIGN.md reference energies (keV); Kβ1 of P, S, Mn from standard tables.
KA1 = {"P": 2.013, "S": 2.307, "K": 3.313, "Ca": 3.691, "Mn": 5.898, "Fe": 6.403,
       "Cu": 8.046, "Zn": 8.637}  # fmt: skip
KB1 = {"P": 2.139, "S": 2.464, "K": 3.589, "Ca": 4.012, "Mn": 6.490, "Fe": 7.057,
       "Cu": 8.904, "Zn": 9.570}  # fmt: skip


def test_emission_line_table_matches_design():
    assert set(EMISSION_LINES) == set(KA1)
    for el in KA1:
        assert EMISSION_LINES[el]["Ka1"] == KA1[el]
        assert EMISSION_LINES[el]["Kb1"] == KB1[el]
        assert 0.0 <= KBETA_RATIO[el] <= 0.15
    for el in ("Mn", "Fe", "Cu", "Zn"):
        assert 0.13 <= KBETA_RATIO[el] <= 0.14


def test_peak_width_and_roi_follow_design_formulas():
    e = 5.898
    sigma2 = (0.097 / 2.3548) ** 2 + 2.96 * e * 2.24e-4
    assert peak_sigma_kev(e) == pytest.approx(np.sqrt(sigma2), rel=1e-12)
    fwhm_ev = 2.3548 * peak_sigma_kev(e) * 1000
    assert 125 <= fwhm_ev <= 180
    assert roi_half_width_ev(8.637) == pytest.approx(0.5 * np.hypot(150, 12 * 8.637))
    np.testing.assert_allclose(peak_sigma_kev(np.array([e, e])), np.sqrt(sigma2))


def test_mn_ka_fwhm_measured_on_the_model_profile():
    det = XRFDetectorModel(ev_per_channel=2.0, n_channels=5000)  # fine bins to measure
    prof = det.line_profiles(["Mn"])[0]
    e = det.energy_axis_kev()
    near = np.abs(e - KA1["Mn"]) < 0.3  # Kα only (Kβ is 0.6 keV away)
    half = prof[near].max() / 2
    above = e[near][prof[near] >= half]
    fwhm_ev = (above[-1] - above[0]) * 1000 + det.ev_per_channel
    assert 125 <= fwhm_ev <= 180
    assert fwhm_ev == pytest.approx(2.3548 * peak_sigma_kev(KA1["Mn"]) * 1000, abs=4)


def test_energy_axis_and_channel_of():
    det = XRFDetectorModel(offset_ev=-20.0)
    e = det.energy_axis_kev()
    assert e.shape == (2048,)
    assert e[0] == pytest.approx(-0.020) and e[1] - e[0] == pytest.approx(0.010)
    for el, ka in KA1.items():
        ch = det.channel_of(ka)
        assert abs(e[ch] - ka) <= 0.005 + 1e-12, el


def test_line_profiles_normalised_with_kbeta_share():
    det = XRFDetectorModel()
    prof = det.line_profiles(list(KA1))
    assert prof.shape == (8, 2048)
    np.testing.assert_allclose(prof.sum(axis=1), 1.0, rtol=1e-9)
    e = det.energy_axis_kev()
    zn = prof[list(KA1).index("Zn")]
    kb_share = zn[e > (KA1["Zn"] + KB1["Zn"]) / 2].sum()
    r = KBETA_RATIO["Zn"]
    assert kb_share == pytest.approx(r / (1 + r), rel=0.01)


def test_simulated_peaks_sit_at_ka1_for_every_element():
    # Long dwell: ~6e6 counts per element, enough to locate the maximum to a channel.
    det = XRFDetectorModel()
    for el, ka in KA1.items():
        lines = {el: np.full((4, 8), 2e5)}
        spectra, live = det.sample_spectra(lines, np.zeros((4, 8)), 10.2, 3)
        total = spectra.sum(axis=(0, 1))
        assert abs(int(np.argmax(total)) - det.channel_of(ka)) <= 1, el
        np.testing.assert_array_equal(live, 1.0)  # no dwell given: no dead time


def test_low_count_peaks_are_centred_on_ka1():
    # Short dwell (photon-by-photon sampler): the Kα centroid is on the line.
    det = XRFDetectorModel()
    e = det.energy_axis_kev()
    for el, ka in KA1.items():
        spectra, _ = det.sample_spectra({el: np.full((16, 16), 50.0)}, np.zeros((16, 16)), 10.2, 5)
        total = spectra.sum(axis=(0, 1)).astype(float)
        win = np.abs(e - ka) < 2 * peak_sigma_kev(ka)
        centroid = (e[win] * total[win]).sum() / total[win].sum()
        assert abs(centroid - ka) * 1000 < det.ev_per_channel, el


def test_kbeta_peak_is_a_local_maximum_where_resolved():
    det = XRFDetectorModel()
    for el in ("K", "Ca", "Mn", "Fe", "Cu", "Zn"):
        total = det.sample_spectra({el: np.full((8, 8), 1e5)}, np.zeros((8, 8)), 10.2, 4)[0]
        total = total.sum(axis=(0, 1))
        kb = det.channel_of(KB1[el])
        window = total[kb - 8 : kb + 9]
        assert abs(int(np.argmax(window)) - 8) <= 1, el


def test_scatter_profile_has_elastic_and_compton_peaks():
    det = XRFDetectorModel()
    e_in = 10.2
    e_c = e_in / (1 + e_in / 511.0)  # Compton energy at 90°
    elastic = det.scatter_profile(e_in, elastic_fraction=1.0, continuum_fraction=0.0)
    compton = det.scatter_profile(e_in, elastic_fraction=0.0, continuum_fraction=0.0)
    assert abs(int(np.argmax(elastic)) - det.channel_of(e_in)) <= 1
    assert abs(int(np.argmax(compton)) - det.channel_of(e_c)) <= 1
    # Compton is Doppler-broadened: wider than the elastic peak.
    assert (compton > compton.max() / 2).sum() > (elastic > elastic.max() / 2).sum()
    prof = det.scatter_profile(e_in)
    assert prof.sum() == pytest.approx(1.0)
    # Weak continuum at low energy, nothing below 1 keV or far above the elastic peak.
    e = det.energy_axis_kev()
    assert np.all(prof[e < 0.95] == 0)
    assert 0 < prof[det.channel_of(5.0)] < 0.01 * prof.max()
    assert prof[e > 10.8].sum() < 1e-6


def test_dead_time_non_paralysable_live_fraction():
    det = XRFDetectorModel(dead_time_s=1e-6)
    dwell = 1e-3
    rates = np.array([1e3, 1e5, 1e6, 4e6])  # input counts per second
    scatter = np.tile(rates * dwell, (50, 1))  # 50 pixels per rate
    spectra, live = det.sample_spectra({}, scatter, 10.2, 0, dwell_s=dwell)
    np.testing.assert_allclose(live[0], 1.0 / (1.0 + rates * 1e-6))
    assert np.all(np.diff(live[0]) < 0)
    assert live[0, 2] == pytest.approx(0.5)
    # Recorded counts = input x live fraction (4000 x 0.2 = 800 at the highest rate).
    recorded = spectra.sum(axis=-1).mean(axis=0)
    expected = rates * dwell * live[0]
    assert np.all(np.abs(recorded - expected) < 4 * np.sqrt(expected / 50))  # 4 sigma


@pytest.mark.parametrize("scale", [1.0, 300.0])  # event sampler and dense sampler
def test_spectra_are_poisson(scale):
    det = XRFDetectorModel(n_channels=1024)
    n = (50, 80)
    lines = {"Zn": np.full(n, 20.0 * scale), "Fe": np.full(n, 10.0 * scale)}
    scatter = np.full(n, 200.0 * scale)
    spectra, live = det.sample_spectra(lines, scatter, 10.2, 11, dwell_s=3e-3)
    assert spectra.dtype == np.uint32 and spectra.shape == (*n, 1024)
    expected = live[0, 0] * (
        20 * scale * det.line_profiles(["Zn"])[0]
        + 10 * scale * det.line_profiles(["Fe"])[0]
        + 200 * scale * det.scatter_profile(10.2)
    )
    flat = spectra.reshape(-1, 1024).astype(float)
    mean, var = flat.mean(axis=0), flat.var(axis=0, ddof=1)
    busy = expected > 2.0
    assert busy.sum() > 20
    # Mean matches the model; variance equals the mean (Poisson), channel by channel.
    np.testing.assert_allclose(mean[busy], expected[busy], rtol=0.1)
    np.testing.assert_allclose(var[busy], mean[busy], rtol=0.2)
    assert var[busy].sum() / mean[busy].sum() == pytest.approx(1.0, abs=0.04)


def test_sampling_is_seeded_and_inputs_untouched():
    zn = np.full((3, 4), 15.0)
    scatter = np.full((3, 4), 50.0)
    before = zn.copy()
    a = sample_spectra({"Zn": zn}, scatter, 10.2, 7, dwell_s=3e-3)[0]
    b = sample_spectra({"Zn": zn}, scatter, 10.2, 7, dwell_s=3e-3)[0]
    c = sample_spectra({"Zn": zn}, scatter, 10.2, 8, dwell_s=3e-3)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(zn, before)
    with pytest.raises(ValueError):
        sample_spectra({"Zn": -zn}, scatter, 10.2, 7)


def test_roi_channels_cover_the_kalpha_peak():
    det = XRFDetectorModel()
    prof = det.line_profiles(["Zn"])[0]
    roi = det.roi_channels("Zn")
    hw_ch = roi_half_width_ev(KA1["Zn"]) / det.ev_per_channel
    assert roi.stop - roi.start == pytest.approx(2 * hw_ch + 1, abs=1.5)
    # About 1.3 sigma each side: a bit more than two thirds of the Kα counts.
    ka_share = prof[roi].sum() * (1 + KBETA_RATIO["Zn"])
    assert 0.7 < ka_share < 0.95
