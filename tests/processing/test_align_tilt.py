"""Tilt-series alignment in dose-symmetric order against the K3 simulator's true drift."""

import json

import numpy as np
import pytest

from livetomo.plans.tilt_order import tilt_order
from livetomo.processing.streaming_align import StreamingAlignmentError, StreamingTiltAligner
from livetomo.processing.tilt_align import (
    TiltAlignmentError,
    check_tilt,
    nearest_aligned,
    predict_drift,
    stretch_columns,
    stretch_factor,
)
from livetomo.simulators.k3 import K3Camera, make_lamella
from livetomo.simulators.stages import TiltStageModel


def _series(order_name="dose-symmetric", max_tilt=51.0, seed=0):
    potential = make_lamella(
        (96, 24, 96), voxel_size_nm=2.0, n_particles=90, n_vesicles=4, n_gold=3, seed=seed
    )
    camera = K3Camera(potential, voxel_size_nm=2.0, seed=seed + 1)
    stage = TiltStageModel(eucentric_error_nm=20.0, seed=seed + 2)
    tilts, frames, truth = [], [], []
    for tilt in tilt_order(-max_tilt, max_tilt, 3.0, order=order_name):
        stage.move(tilt)
        frame = camera.acquire(tilt, dose_e_per_A2=3.0, shift_px=tuple(stage.true_offset_nm / 2.0))
        tilts.append(tilt)
        frames.append(frame.counts)
        truth.append(frame.true_shift_px)
    return np.asarray(tilts), np.asarray(frames), np.asarray(truth)


@pytest.fixture(scope="module")
def series():
    return _series()


def drift_error(shifts, truth, tilts):
    """RMS of shift + true drift without the gauge (vertical offset; a + b cos + c sin horizontally)."""
    e = np.asarray(shifts) + np.asarray(truth)
    t = np.deg2rad(tilts)
    basis = np.stack([np.ones_like(t), np.cos(t), np.sin(t)], 1)
    coef, *_ = np.linalg.lstsq(basis, e[:, 1], rcond=None)
    return float(np.sqrt(np.mean((e[:, 0] - e[:, 0].mean()) ** 2) + np.mean((e[:, 1] - basis @ coef) ** 2)))


def test_dose_symmetric_series_recovers_the_true_drift(series):
    tilts, frames, truth = series
    assert abs(np.ptp(truth[:, 1])) > 10  # the drift to undo is large
    aligner = StreamingTiltAligner(thickness_px=18)
    results = [aligner.add(f, t) for f, t in zip(frames, tilts, strict=True)]
    streaming = drift_error(aligner.shifts, truth, tilts)
    refined = drift_error(aligner.refine(), truth, tilts)
    plain = StreamingTiltAligner(stretch=False, n_references=1, min_outlier_px=1e9)
    for f, t in zip(frames, tilts, strict=True):
        plain.add(f, t)
    baseline = drift_error(plain.shifts, truth, tilts)
    assert streaming < 0.25
    assert refined < 0.12
    assert baseline > 3 * refined  # cosine stretch + references + refinement vs plain cross-correlation
    assert all(r.quality.ok for r in results[1:])
    # Each tilt was compared with an already-aligned neighbour at most one step away.
    for r in results[1:]:
        assert abs(tilts[r.reference_index] - r.angle_deg) <= 3.0 + 1e-9
    json.dumps(results[5].as_dict())


def test_link_scatter_measures_what_one_link_is_worth_on_both_axes(series):
    tilts, frames, truth = series
    aligner = StreamingTiltAligner(thickness_px=18)
    results = [aligner.add(f, t) for f, t in zip(frames, tilts, strict=True)]
    err = aligner.shifts + truth
    cos = np.cos(np.deg2rad(tilts))
    # the true error of each tilt's link to its nearest aligned tilt (horizontal: in the
    # stretched frame of the tilt, as the aligner links them)
    links = [(r.index, r.reference_index) for r in results[1:]]
    true_v = np.array([err[i, 0] - err[j, 0] for i, j in links])
    true_h = np.array([(err[i, 1] / cos[i] - err[j, 1] / cos[j]) * cos[i] for i, j in links])
    stated = aligner.link_scatter()
    for axis, true in ((0, true_v), (1, true_h)):
        robust = 1.4826 * np.median(np.abs(true - np.median(true)))
        assert 0.5 < stated[axis] / robust < 2.0, (axis, stated, robust)


def test_any_tilt_order_gives_the_same_alignment():
    tilts, frames, truth = _series("bidirectional", max_tilt=30.0, seed=3)
    aligner = StreamingTiltAligner()
    for f, t in zip(frames, tilts, strict=True):
        aligner.add(f, t)
    assert drift_error(aligner.shifts, truth, tilts) < 0.15


def test_cosine_stretch_maps_features_to_the_lower_tilt():
    img = np.zeros((4, 101), np.float32)
    img[:, 70] = 1.0  # a line 20 px right of the axis at column 50
    factor = stretch_factor(60.0, 0.0)  # cos 60 / cos 0 = 0.5: expands 2x
    out = stretch_columns(img, factor)
    peak = np.sum(np.arange(101) * out[0]) / out[0].sum()
    assert peak == pytest.approx(50 + 20 / factor, abs=0.1)
    np.testing.assert_allclose(stretch_columns(img, 1.0), img, atol=1e-6)
    with pytest.raises(TiltAlignmentError):
        stretch_columns(img, 0.0)


def test_reference_choice_and_drift_prediction():
    tilts = [0.0, 3.0, 6.0, -3.0, -6.0]
    assert nearest_aligned(tilts, [0, 1, 2, 3, 4], 9.0) == 2
    assert nearest_aligned(tilts, [0, 1, 3], -4.5) == 3
    assert nearest_aligned(tilts, [1, 3], 0.0) == 3 or nearest_aligned(tilts, [1, 3], 0.0) == 1
    pred, scale = predict_drift(tilts, np.zeros((5, 2)), np.arange(5), 9.0, 5)
    assert pred is None and scale is None  # too few tilts to predict
    t = np.arange(-30.0, 33.0, 3.0)
    shifts = np.column_stack([0.1 * np.arange(t.size), 8.0 * np.sin(np.deg2rad(t))])
    pred, scale = predict_drift(t, shifts, np.arange(t.size), 33.0, t.size)
    assert pred == pytest.approx([0.1 * t.size, 8.0 * np.sin(np.deg2rad(33.0))], abs=0.05)


def test_bad_tilt_input_is_rejected(series):
    tilts, frames, _ = series
    with pytest.raises(TiltAlignmentError):
        check_tilt(90.0)
    aligner = StreamingTiltAligner()
    with pytest.raises(StreamingAlignmentError):
        aligner.add(np.zeros((8, 8)), 0.0)  # no counts: no contrast
    aligner.add(frames[0], tilts[0])
    with pytest.raises(StreamingAlignmentError):
        aligner.add(frames[1][:-1], tilts[1])
    with pytest.raises(StreamingAlignmentError):
        aligner.refine()  # needs the lamella thickness
