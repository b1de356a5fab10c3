"""Every channel the daemon reconstructs, from the simulators' raw detector output to a tomogram."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from livetomo.processing.dpc import dpc_from_segments
from livetomo.processing.recon import (
    IncrementalReconstructor,
    ReconstructionError,
    absorption_from_transmission,
    contrast_from_counts,
    fbp,
    normalized_counts,
    phase_from_dpc,
)
from livetomo.simulators import k3
from livetomo.simulators.microprobe import XRFMicroprobe
from livetomo.simulators.projector import project_many
from livetomo.simulators.specimen import make_cell


def corr(a, b) -> float:
    a = np.asarray(a, float).ravel() - np.mean(a)
    b = np.asarray(b, float).ravel() - np.mean(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def detail_corr(a, b, sigma: float = 2.0) -> float:
    """Correlation of the fine structure (high-pass) inside the cell, away from the round ice edge."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ny, nx = a.shape[-2:]
    yy, xx = np.ogrid[:ny, :nx]
    inside = np.broadcast_to(np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2) < 0.35 * min(ny, nx), a.shape)
    ha, hb = a - ndimage.gaussian_filter(a, sigma), b - ndimage.gaussian_filter(b, sigma)
    return corr(ha[inside], hb[inside])


@pytest.fixture(scope="module")
def microprobe_scan():
    """Rasters of a cell at 40 angles, 3 ms dwell (dose fractionation), with stage runout."""
    spec = make_cell((10, 40, 40), seed=0)
    probe = XRFMicroprobe(spec, seed=1)
    angles = np.linspace(0.0, 180.0, 40, endpoint=False)
    rng = np.random.default_rng(2)
    offsets_um = rng.normal(0, 1.0, (angles.size, 2))  # runout, µm (300 nm pixels)
    # Maps 48 px wide for a 40-voxel specimen: room for the runout.
    rasters = [
        probe.raster(a, offset_um=tuple(o), dwell_s=3e-3, shape=(10, 48))
        for a, o in zip(angles, offsets_um, strict=True)
    ]
    return spec, probe, angles, rasters


def test_dpc_phase_tomogram(microprobe_scan):
    spec, probe, angles, rasters = microprobe_scan
    phases, shifts = [], []
    for r in rasters:
        h, v, _ = dpc_from_segments(r.segments)
        phases.append(phase_from_dpc(h, v, sensitivity=probe.dpc_sensitivity))
        shifts.append(-np.asarray(r.true_shift_px))  # aligning shift = minus the displacement
    phases = np.stack(phases)
    kw = dict(filter_name="hann", shape_yx=(40, 40))
    rec = fbp(phases, angles, shifts=shifts, **kw)
    truth = -spec.delta  # phase = -(2π/λ)∫δ: the tomogram is proportional to -δ
    assert corr(rec, truth) > 0.85
    good = detail_corr(rec, truth)
    assert good > 0.5
    assert detail_corr(fbp(phases, angles, **kw), truth) < good - 0.3  # unaligned
    assert detail_corr(fbp(phases, -angles, shifts=shifts, **kw), truth) < good - 0.1  # mirrored geometry


def test_xrf_elements_reconstruct_together(microprobe_scan):
    spec, probe, angles, rasters = microprobe_scan
    shifts = [-np.asarray(r.true_shift_px) for r in rasters]
    # Zn straight from the spectra: counts in its Kα window (the window is clean at 8.6 keV).
    window = probe.detector.roi_channels("Zn")
    zn_maps = np.stack(
        [normalized_counts(r.spectra[..., window].sum(-1), live_fraction=r.live_fraction) for r in rasters]
    )
    zn = fbp(zn_maps, angles, shifts=shifts, filter_name="hann", shape_yx=(40, 40))
    assert corr(zn, spec.elements["Zn"]) > 0.5
    # Several elements as one channel stack. Windows of Fe, Ca and Cu sit on scatter and on
    # other elements' lines; spectral fitting (not part of reconstruction) would separate
    # them, so here each map is the element's own line counts with Poisson noise.
    elements = ("Zn", "Fe")
    rng = np.random.default_rng(7)
    boost = 10.0  # 30 ms dwell instead of 3 ms
    maps = np.stack([[rng.poisson(boost * r.true_line_counts[e]) / boost for e in elements] for r in rasters])
    inc = IncrementalReconstructor(maps.shape[1:], shape_yx=(40, 40), angles_deg=angles, filter_name="hann")
    for m, a, s in zip(maps, angles, shifts, strict=True):
        inc.add(m, a, shift=s)
    vol = inc.volume()
    assert vol.shape == (2, *spec.shape)
    for i, el in enumerate(elements):
        assert corr(vol[i], spec.elements[el]) > 0.4, el
        own = detail_corr(vol[i], spec.elements[el])
        for other in elements:
            if other != el:  # each channel finds its own element's details
                assert own > detail_corr(vol[i], spec.elements[other]) + 0.2, (el, other)


def test_k3_tilt_series_tomogram():
    pot = k3.make_lamella((24, 24, 40), seed=3)
    cam = k3.K3Camera(pot, seed=4)
    v_ice = np.median(pot[pot > 0])
    excess = pot - v_ice * np.clip(pot / v_ice, 0, 1)  # the contrast-giving part
    tilts = np.arange(-60.0, 60.1, 3.0)
    frames = np.stack([contrast_from_counts(cam.acquire(t, dose_e_per_A2=20.0).counts) for t in tilts])
    rec = fbp(frames, tilts, shape_yx=(24, 40), tilt_lambda=0.3)
    good = corr(rec, excess)
    assert good > 0.5
    assert corr(fbp(frames, -tilts, shape_yx=(24, 40)), excess) < good - 0.2


def test_sxt_absorption_tomogram():
    spec = make_cell((8, 40, 40), n_gold=0, seed=6)
    mu_sxt = spec.mu * (0.04 / 5.3e-4)  # water window: ~1.3/µm in cytoplasm, 30 nm voxels
    angles = np.linspace(0, 180, 60, endpoint=False)
    flat = 500.0  # photons per pixel
    rng = np.random.default_rng(5)
    counts = rng.poisson(flat * np.exp(-project_many(mu_sxt, angles))).astype(np.float32)
    proj = np.stack([absorption_from_transmission(c, flat) for c in counts])
    rec = fbp(proj, angles, filter_name="shepp-logan")
    assert np.sqrt(np.mean((rec - mu_sxt) ** 2)) < 0.25 * mu_sxt.max()
    assert corr(rec, mu_sxt) > 0.9


def test_channel_helpers_check_their_input():
    with pytest.raises(ReconstructionError, match="sensitivity"):
        phase_from_dpc(np.zeros((4, 4)), np.zeros((4, 4)), sensitivity=0.0)
    with pytest.raises(ReconstructionError, match="flat"):
        absorption_from_transmission(np.ones((2, 2)), flat=0.0)
    with pytest.raises(ReconstructionError, match="live_fraction"):
        normalized_counts(np.ones((2, 2)), live_fraction=0.0)
    zero = absorption_from_transmission(np.zeros((2, 2)), 100.0)
    assert np.all(np.isfinite(zero))  # zero counts are floored, not infinite
    c = contrast_from_counts(np.array([[10.0, 30.0]]))
    np.testing.assert_allclose(c, [[0.5, -0.5]])
