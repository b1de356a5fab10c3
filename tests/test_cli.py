import json

import h5py
import numpy as np
import pytest

from livetomo.daemon.cli import main
from livetomo.daemon.demo import run_demo


def test_demo_writes_an_nxtomo_file_with_the_true_runout(tmp_path):
    result = run_demo(tmp_path / "demo", n_angles=7, size=24, quiet=True)
    with h5py.File(result.nxtomo, "r") as f:
        assert f["entry/definition"][()] == b"NXtomo"
        angles = f["entry/sample/rotation_angle"][()]
        np.testing.assert_allclose(angles, np.linspace(0, 180, 7))
        data = f["entry/data/data"]
        assert data.shape == (7, 12, 24)
        assert (f["entry/instrument/detector/image_key"][()] == 0).all()
        shifts = f["entry/processing/simulation/true_shift_px"][()]
        assert shifts.shape == (7, 2) and np.ptp(shifts[:, 1]) > 1.0  # several pixels of runout
        assert f["entry/processing/xrf/Zn"].shape == (7, 12, 24)
    assert result.pictures[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(result.frame_files) == 2


def test_cli_demo_prints_progress(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--angles", "3", "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert "step 3/3" in out and "demo done: 3 angles" in out


def test_bench_json_is_one_object_with_both_sides(capsys):
    assert main(["bench", "orchestration", "--quick", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["livetomo_events"] == figures["ophyd_sim_events"] == figures["n_steps"]
    assert figures["ratio_livetomo_over_ophyd_sim"] > 0
    assert figures["livetomo_max_position_error_deg"] == pytest.approx(0.0, abs=1e-9)


def test_unknown_benchmark_is_named(capsys):
    assert main(["bench", "nosuch"]) == 2
    assert "unknown benchmark 'nosuch'; available: orchestration" in capsys.readouterr().err
