"""DPC-driven alignment of XRF projections against the microprobe simulator's true shifts."""

import json

import numpy as np
import pytest

from livetomo.processing.dpc import dpc_from_segments
from livetomo.processing.dpc_align import (
    DPCAlignmentError,
    dpc_moments,
    map_moments,
    shift_maps,
)
from livetomo.processing.moment_align import (
    MomentAlignmentError,
    fit_horizontal_moments,
    flat_border,
    phase_from_dpc_rows,
    vertical_profile_shifts,
)
from livetomo.processing.register import register, shift_image
from livetomo.processing.streaming_align import StreamingAlignmentError, StreamingProjectionAligner
from livetomo.simulators.microprobe import XRFMicroprobe
from livetomo.simulators.specimen import make_cell
from livetomo.simulators.stages import RotationStageModel

ANGLES = np.arange(0.0, 180.0 + 1e-9, 3.0)
ROI = ((3, 21), (6, 42))


@pytest.fixture(scope="module")
def scan():
    """A small 3 ms XRF-DPC scan (61 angles) with several pixels of runout, and its truth."""
    probe = XRFMicroprobe(make_cell((24, 48, 48), voxel_size_nm=300.0, seed=0), seed=1)
    stage = RotationStageModel(wobble_amplitude_um=(0.6, 1.5), seed=2)
    zn_window = probe.detector.roi_channels("Zn")
    fe_window = probe.detector.roi_channels("Fe")
    out = {"dpc_h": [], "dpc_v": [], "Zn": [], "Fe": [], "shift": [], "true_zn": []}
    for angle in ANGLES:
        stage.move(angle)
        r = probe.raster(angle, offset_um=tuple(stage.true_offset_um), dwell_s=3e-3)
        h, v, _ = dpc_from_segments(r.segments)
        out["dpc_h"].append(h)
        out["dpc_v"].append(v)
        out["Zn"].append(r.spectra[..., zn_window].sum(-1).astype(np.float32))
        out["Fe"].append(r.spectra[..., fe_window].sum(-1).astype(np.float32))
        out["shift"].append(r.true_shift_px)
        out["true_zn"].append(r.true_line_counts["Zn"])
    return {k: np.asarray(v) for k, v in out.items()}


def gauge_error(shifts, true, angles):
    """RMS of (shift + true displacement) without the unobservable gauge, and the centre error."""
    e = np.asarray(shifts) + np.asarray(true)
    t = np.deg2rad(angles)
    basis = np.stack([np.ones_like(t), np.cos(t), np.sin(t)], 1)
    coef, *_ = np.linalg.lstsq(basis, e[:, 1], rcond=None)
    eh = e[:, 1] - basis @ coef
    ev = e[:, 0] - e[:, 0].mean()
    return float(np.sqrt(np.mean(ev**2) + np.mean(eh**2))), float(coef[0])


def _align(scan, kind, key=None, order=None, **options):
    aligner = StreamingProjectionAligner(kind=kind, key=key, roi=ROI, **options)
    order = range(len(ANGLES)) if order is None else order
    results = [
        aligner.add({"dpc_h": scan["dpc_h"][k], "dpc_v": scan["dpc_v"][k], "Zn": scan["Zn"][k]}, ANGLES[k])
        for k in order
    ]
    return aligner, results


def test_dpc_driven_alignment_beats_aligning_the_zinc_maps(scan):
    dpc, dpc_results = _align(scan, "dpc")
    zn, zn_results = _align(scan, "map", "Zn")
    err_dpc, centre_dpc = gauge_error(dpc.refine(), scan["shift"], ANGLES)
    err_zn, _ = gauge_error(zn.refine(), scan["shift"], ANGLES)
    assert err_dpc < 0.2  # a coarse 3-degree, 24 x 48 scan; the benchmark has the full-size figure
    assert err_zn > 2.0 * err_dpc
    assert abs(centre_dpc) < 0.25
    true_centre = (47 / 2) + gauge_error(np.zeros_like(scan["shift"]), scan["shift"], ANGLES)[1]
    assert dpc.centre_px == pytest.approx(true_centre, abs=0.25)
    # The DPC correlation peak is far narrower than zinc's, and its registrations are trusted.
    fwhm_dpc = np.nanmedian([r.quality.fwhm_px for r in dpc_results[1:]], axis=0)
    fwhm_zn = np.nanmedian([r.quality.fwhm_px for r in zn_results[1:]], axis=0)
    assert np.all(fwhm_zn > 2.0 * fwhm_dpc)
    assert np.mean([r.quality.score for r in dpc_results[1:]]) > np.mean(
        [r.quality.score for r in zn_results[1:]]
    )
    json.dumps(dpc_results[-1].as_dict())


def test_dpc_shifts_align_every_element_map(scan):
    aligner, _ = _align(scan, "dpc")
    shifts = aligner.refine()
    k = 20
    aligned = shift_maps({"Zn": scan["true_zn"][k], "Fe": scan["Fe"][k]}, shifts[k])
    assert set(aligned) == {"Zn", "Fe"}
    np.testing.assert_allclose(aligned["Zn"], shift_image(scan["true_zn"][k], shifts[k]), atol=1e-4)

    # Noise-free Zn maps aligned with the DPC shifts sit at the same height at every angle
    # (a slice's Zn content does not depend on the angle), to a small fraction of a pixel,
    # although they had moved by up to 3.5 px.
    def profile(m):
        return np.repeat(m.sum(axis=1)[:, None], 8, axis=1)

    far = int(np.argmax(np.abs(scan["shift"][:, 0] - scan["shift"][0, 0])))
    moved = scan["shift"][far, 0] - scan["shift"][0, 0]
    assert abs(moved) > 1.5
    raw = register(profile(scan["true_zn"][0]), profile(scan["true_zn"][far]), window=None).shift[0]
    assert raw == pytest.approx(-moved, abs=0.1)
    for j in (far, 20, 40, 60):
        aligned_j = shift_image(scan["true_zn"][j], shifts[j])
        reference = shift_image(scan["true_zn"][0], shifts[0])
        assert abs(register(profile(reference), profile(aligned_j), window=None).shift[0]) < 0.1


def test_alignment_does_not_depend_on_arrival_order(scan):
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ANGLES))
    aligner, _ = _align(scan, "dpc", order=order)
    shifts = np.empty((len(ANGLES), 2))
    shifts[order] = aligner.refine()
    err, _ = gauge_error(shifts, scan["shift"], ANGLES)
    assert err < 0.2


def test_streaming_results_are_right_from_the_first_frames(scan):
    """Published while the scan runs, before any refine(): the first frame's shift already
    puts its centre of mass on the axis, and after 20 frames (57 degrees) every current shift
    follows the truth, modulo the unobservable gauge, as does each first-published one."""
    aligner, results = _align(scan, "dpc", order=range(20))
    assert results[0].quality is None and results[0].uncertainty_px is not None
    assert aligner.centre_known and aligner.centre_px is not None
    current, _ = gauge_error(aligner.shifts, scan["shift"][:20], ANGLES[:20])
    first, _ = gauge_error([r.shift_px for r in results], scan["shift"][:20], ANGLES[:20])
    assert current < 0.25 and first < 0.5
    # The flag says which published shifts can be trusted: none more than 1 px off passes.
    e = np.asarray([r.shift_px for r in results]) + scan["shift"][:20]
    t = np.deg2rad(ANGLES[:20])
    basis = np.stack([np.ones_like(t), np.cos(t), np.sin(t)], 1)
    eh = e[:, 1] - basis @ np.linalg.lstsq(basis, e[:, 1], rcond=None)[0]
    ev = e[:, 0] - e[:, 0].mean()
    off = np.hypot(ev, eh)
    assert not any(r.ok for r, err in zip(results, off, strict=True) if err > 1.0)
    json.dumps(results[-1].as_dict())


def test_moments_recover_shifts_of_projections_with_known_truth():
    """Exact synthetic projections of a blob phantom: the moment method has no noise to fight."""
    from livetomo.simulators.projector import project_many

    n = 48
    z, y, x = np.mgrid[:16, :n, :n] - np.array([7.5, 23.5, 23.5])[:, None, None, None]
    vol = np.exp(-((x - 6) ** 2 + (y + 4) ** 2) / 30.0) + 0.5 * np.exp(-((x + 8) ** 2 + y**2 + z**2) / 12.0)
    angles = np.arange(0.0, 180.0, 4.0)
    rng = np.random.default_rng(1)
    true = np.column_stack([rng.normal(0, 1.0, angles.size), 1.2 + rng.normal(0, 1.0, angles.size)])
    proj = [shift_image(p, d) for p, d in zip(project_many(vol, angles), true, strict=True)]
    centres = [map_moments(p, border=2).centre_u for p in proj]
    fit = fit_horizontal_moments(angles, centres, n)
    v = vertical_profile_shifts(np.stack([p.sum(axis=1) for p in proj]))
    err, centre = gauge_error(np.column_stack([v, fit.shifts_h]), true, angles)
    assert err < 0.03 and abs(centre) < 0.03
    assert fit.centre_px == pytest.approx((n - 1) / 2 + 1.2 + np.mean(true[:, 1]) - 1.2, abs=0.5)


def test_dpc_row_integration_is_the_phase():
    y, x = np.mgrid[:32, :64]
    phase = np.exp(-((x - 30.0) ** 2 + (y - 16.0) ** 2) / 40.0)
    gy, gx = np.gradient(phase)
    kappa = 0.11
    integrated = phase_from_dpc_rows(kappa * gx)
    np.testing.assert_allclose(integrated / kappa, phase, atol=0.02)
    right = phase_from_dpc_rows(kappa * gx, start="right")
    np.testing.assert_allclose(right / kappa, phase, atol=0.02)
    assert flat_border(kappa * gx + np.random.default_rng(0).normal(0, 1e-4, gx.shape)) == "left"
    m = dpc_moments(kappa * gx, kappa * gy)
    assert m.valid and m.centre_u == pytest.approx(30.0 - 31.5, abs=0.05)


def test_bad_input_is_rejected(scan):
    with pytest.raises(StreamingAlignmentError):
        StreamingProjectionAligner(kind="map")
    with pytest.raises(StreamingAlignmentError):
        StreamingProjectionAligner(kind="xrf")
    aligner = StreamingProjectionAligner(kind="dpc")
    with pytest.raises(DPCAlignmentError):
        aligner.add({"dpc_h": scan["dpc_h"][0]}, 0.0)
    with pytest.raises(StreamingAlignmentError):
        aligner.add({"dpc_h": scan["dpc_h"][0], "dpc_v": scan["dpc_v"][0]}, float("nan"))
    aligner.add({"dpc_h": scan["dpc_h"][0], "dpc_v": scan["dpc_v"][0]}, 0.0)
    with pytest.raises(StreamingAlignmentError):
        aligner.add({"dpc_h": scan["dpc_h"][1][:, :-2], "dpc_v": scan["dpc_v"][1][:, :-2]}, 3.0)
    with pytest.raises(MomentAlignmentError):
        fit_horizontal_moments([0, 1, 2, 3], [0.0, 0.1, 0.2, 0.3], 32)  # 3 degrees cannot separate the terms


def test_reconstruction_based_centre_in_the_streaming_aligner(scan):
    """``centre_search_px`` refines the axis by least re-projection residual at refine()."""
    aligner, _ = _align(scan, "dpc", centre_search_px=2.0)
    shifts = aligner.refine()
    true_centre = (47 / 2) + gauge_error(np.zeros_like(scan["shift"]), scan["shift"], ANGLES)[1]
    assert aligner.centre_px == pytest.approx(true_centre, abs=0.25)
    err, centre = gauge_error(shifts, scan["shift"], ANGLES)
    assert abs(centre) < 0.25 and err < 0.2
