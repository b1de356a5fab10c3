import json

import h5py
import numpy as np
import pytest

from livetomo.daemon.cli import main
from livetomo.daemon.demo import run_demo
from livetomo.simulators.specimen import make_cell


def test_demo_runs_the_daemon_chain_and_aligns_against_the_true_runout(tmp_path):
    # 5-degree steps: at 10 degrees (19 angles) a 32-px map is too coarse for the moment fit to
    # halve the runout reliably (0.32-0.36 px against 0.67 px unaligned, depending on details).
    n = 37
    result = run_demo(tmp_path / "demo", n_angles=n, size=32, quiet=True)
    with h5py.File(result.nxtomo, "r") as f:
        assert f["entry/definition"][()] == b"NXtomo"
        angles = f["entry/sample/rotation_angle"][()]  # in acquisition order: interlaced by default
        np.testing.assert_allclose(np.sort(angles), np.linspace(0, 180, n))
        assert angles[1] > 90.0  # the second angle is across the range, not the next step
        assert f["entry/instrument/dpc_segments/data"].shape == (n, 4, 16, 32)  # the DPC segments
        assert f["entry/instrument/detector/data"].shape == (n, 16, 32)  # NXtomo: their sum
        assert (f["entry/instrument/detector/image_key"][()] == 0).all()
        assert f["entry/instrument/xrf_roi/data"].shape[0] == n
        assert f["entry/processing/reconstruction/phase/data"].shape == (16, 32, 32)
        assert f["entry/processing/reconstruction/Zn/data"].shape == (16, 32, 32)
        zn_fbp = f["entry/processing/reconstruction/Zn/data"][()]
        zn_tv = f["entry/processing/reconstruction/Zn_tv/data"][()]
    # TV refinement at run end brings the Zn volume closer to the simulator's true Zn distribution
    truth = make_cell((16, 32, 32), voxel_size_nm=300.0, seed=0).elements["Zn"]
    assert np.corrcoef(zn_tv.ravel(), truth.ravel())[0, 1] > np.corrcoef(zn_fbp.ravel(), truth.ravel())[0, 1]
    # scored against the simulator's truth: alignment removes most of the observable runout
    assert result.alignment_rms_px < 0.5 * result.unaligned_rms_px
    assert abs(result.centre_error_px) < 0.5
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.pictures)
    assert len(result.exports) == n  # one PyXRF file per projection


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
