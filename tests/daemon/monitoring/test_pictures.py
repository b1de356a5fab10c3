"""Run-end pictures: shift traces, alignment quality and central slices as valid PNG files."""

import numpy as np
import pytest
from PIL import Image

from livetomo.daemon.monitoring import MonitorState, RunArrays, write_run_pictures
from livetomo.daemon.testing import SimulatedScan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()  # checks the chunks' CRCs
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def finished_state():
    scan = SimulatedScan(n_angles=30, size=32, low_quality=(4, 17), seed=4)
    state = MonitorState()
    for topic, payload in scan.messages():
        state.update(topic, payload)
    return scan, state


def test_pictures_from_the_monitor_state(tmp_path, finished_state):
    scan, state = finished_state
    paths = write_run_pictures(state, tmp_path / "run", scan.run_uid)
    names = [p.name for p in paths]
    assert names == [f"{scan.run_uid}_{n}.png" for n in ("shift_traces", "alignment_quality", "slices")]
    for path in paths:
        pixels = _read_png(path)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200
        assert pixels.std() > 10  # something was drawn
    # low-quality frames are marked in pure red on the traces and the quality plot
    for path in paths[:2]:
        pixels = _read_png(path).astype(int)
        red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
        assert red.sum() > 20


def test_pictures_from_arrays_and_the_snapshot_agree(tmp_path, finished_state):
    scan, state = finished_state
    arrays = RunArrays.from_snapshot(state.snapshot())
    np.testing.assert_allclose(arrays.shift, scan.measured_shifts)
    assert list(np.flatnonzero(~arrays.ok)) == [4, 17]
    assert set(arrays.slices) == {"dpc", "Zn"} and arrays.slices["dpc"]["xz"].shape == (16, 32)
    plain = {
        "angle": scan.angles,
        "shift": scan.true_shifts,
        "ok": scan.ok,
        "slices": {"dpc": scan.slice_images("dpc", 29)},
    }
    paths = write_run_pictures(plain, tmp_path, "run/with:odd chars")
    assert [p.name for p in paths] == [
        "run_with_odd_chars_shift_traces.png",
        "run_with_odd_chars_alignment_quality.png",
        "run_with_odd_chars_slices.png",
    ]
    for path in paths:
        _read_png(path)


def test_nothing_to_draw_writes_nothing_and_bad_input_is_named(tmp_path):
    assert write_run_pictures(MonitorState(), tmp_path, "empty") == []
    with pytest.raises(ValueError, match="angle"):
        write_run_pictures({"shift": np.zeros((3, 2))}, tmp_path, "x")
    with pytest.raises(TypeError, match="MonitorState"):
        write_run_pictures([1, 2, 3], tmp_path, "x")
