"""Realistic scan presets (devices/presets.py) and what they need: frames in pieces, presets
submitted by name, the simulated beamline sized for them, a preset-driven run end to end."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from livetomo.daemon.config import ConfigError, load_config
from livetomo.daemon.control import SubmissionError
from livetomo.daemon.testing import running_daemon, wait_until
from livetomo.daemon.transport._sender import piece_rows
from livetomo.devices.presets import PRESETS


def _run(daemon, plan, kwargs, timeout=120.0):
    done = len(daemon.pipeline.finished_runs)
    daemon.api.queue_add(plan, kwargs)
    daemon.runner.start_queue()
    return wait_until(
        lambda: len(daemon.pipeline.finished_runs) > done and daemon.pipeline.finished_runs[-1], timeout, plan
    )


def test_piece_rows_divide_the_frame_and_fit():
    assert piece_rows((230, 230, 4096), np.uint16, 16 << 20) == 5  # 5 lines of 1.9 MB
    assert piece_rows((229, 230, 4096), np.uint16, 16 << 20) == 1  # a prime: line by line
    assert piece_rows((12, 32, 64), np.uint32, 16 << 20) == 12  # fits: one message
    assert piece_rows((4092, 5760), np.uint16, 16 << 20) == 1364  # 3 pieces of a K3 frame


def test_spectra_sent_in_lines_are_stored_whole_and_bit_exact(tmp_path):
    """A raster's spectra larger than ``limits.frame_piece_bytes`` travel as blocks of lines; the
    run file holds every raster complete, equal to what the simulated MCA counted."""
    with running_daemon(tmp_path, limits={"frame_piece_bytes": 65536}, processing={"refine": None}) as daemon:
        summary = _run(daemon, "xrf_dpc_tomo", {"num": 4, "start": 0, "stop": 90, "dwell_s": 0.003,
                                                "raster_shape": [12, 32]})  # fmt: skip
        world = daemon.beamline.truth["microprobe"]
        received = daemon.receiver.status()["received_messages"]
    assert summary["complete"] and summary["frames_received"] == 4
    # one message per raster line of spectra (12 lines x 4 rasters), besides the other streams
    assert received >= 4 * 12 + 2 * 4
    with h5py.File(summary["file"], "r") as f:
        stored = f["entry/instrument/xrf_spectra/data"]
        assert stored.shape == (4, 12, 32, 2048) and stored.chunks[:2] == (1, 1)
        for i, raster in enumerate(world.history):
            np.testing.assert_array_equal(stored[i], raster.spectra)
        assert (f["entry/instrument/xrf_spectra/image_key"][()] == 0).all()
        # in acquisition order (a range is taken interlaced): the raster each angle really had
        np.testing.assert_allclose(f["entry/instrument/xrf_spectra/rotation_angle"][()], [0, 60, 30, 90])
        np.testing.assert_allclose([r.angle_deg for r in world.history], [0, 60, 30, 90])


def test_presets_validate_and_are_submitted_by_name(tmp_path):
    with pytest.raises(
        ConfigError, match="beamline.preset = 'k3-bin2' is not a preset; presets: xrf-dpc-230"
    ):
        load_config(overrides={"beamline": {"preset": "k3-bin2"}})
    for name, preset in PRESETS.items():
        assert preset.frame_interval_s > 0 and preset.bench and preset.bench_fraction, name
    with running_daemon(tmp_path) as daemon:  # sized for small specimens: a preset is refused, by name
        with pytest.raises(SubmissionError, match="k3-bin4: the simulated beamline is sized for small"):
            daemon.api.queue_add("k3-bin4", {})


def test_frames_in_pieces_are_processed_whole(tmp_path):
    """A processed stream sent in pieces (K3 frames of 3 blocks of rows) is assembled in the run
    file and processed from there: aligned and reconstructed as if it had come whole."""
    with running_daemon(tmp_path, limits={"frame_piece_bytes": 1024}, processing={"refine": None}) as daemon:
        summary = _run(daemon, "tilt_series", {"min_deg": -9, "max_deg": 9, "step_deg": 3})
        world = daemon.beamline.truth["tem"]
    assert summary["complete"] and summary["frames_received"] == 7
    with h5py.File(summary["file"], "r") as f:
        stored = f["entry/instrument/k3_image/data"]
        assert stored.shape == (7, 24, 24) and stored.chunks == (1, 8, 24)
        for i, frame in enumerate(world.history):
            np.testing.assert_array_equal(stored[i], frame.counts.astype(np.float32))
        assert f["entry/processing/alignment/shift"].shape == (7, 2)
        assert f["entry/processing/reconstruction/k3/data"].shape[0] == 24


def _tilt_errors(summary, world):
    """RMS error (camera px) of the stored shifts against the simulator's drift, up to a constant."""
    with h5py.File(summary["file"], "r") as f:
        shifts = f["entry/processing/alignment/shift"][()]
        group = f["entry/processing/reconstruction/k3"]
        binning, shape = int(group.attrs["binning"]), group["data"].shape
        pixel = float(f["entry/instrument/k3_image/x_pixel_size"][()])
        assert float(group["voxel_size"][()]) == pytest.approx(pixel * binning)
    truth = np.array([fr.true_shift_px for fr in world.history])
    err = shifts + truth  # the aligning shift undoes the drift
    err -= err.mean(axis=0)
    return float(np.sqrt(np.mean(err**2))), binning, shape


def test_large_frames_are_processed_binned_and_published_in_camera_pixels(tmp_path):
    """Graceful degradation: frames above processing.live_max_frame_pixels are aligned binned and
    the live volume is binned further to stay within live_max_voxels; shifts still come out in
    camera pixels, as accurate against the simulator's drift as without binning (within 0.3 px;
    measured 0.58 binned by 2 against 0.55 px for 64² frames unbinned; 32² frames are too small
    to bin: 1.85 px)."""
    plan = {"min_deg": -30, "max_deg": 30, "step_deg": 3}
    beamline = {"tem_shape": [128, 16, 128]}
    with running_daemon(tmp_path / "a", beamline=beamline, processing={"refine": None}) as daemon:
        full = _tilt_errors(_run(daemon, "tilt_series", plan), daemon.beamline.truth["tem"])
    limits = {"refine": None, "live_max_frame_pixels": 64 * 64, "live_max_voxels": 4096}
    with running_daemon(tmp_path / "b", beamline=beamline, processing=limits) as daemon:
        seen = []
        status = daemon.api.status
        daemon.pipeline.publish = (lambda publish: lambda topic, payload: (
            seen.append((status().get("run") or {}).get("degraded")) if topic == "frame" else None,
            publish(topic, payload)))(daemon.pipeline.publish)  # fmt: skip
        binned = _tilt_errors(_run(daemon, "tilt_series", plan), daemon.beamline.truth["tem"])
    # livetomo status says what the run gives up to keep pace
    assert {"frames_binned_by": 2, "live_volume_binned_by": 4} in seen
    assert full[1] == 1 and full[2] == (128, 128, 128)
    assert binned[1] == 8 and binned[2] == (16, 16, 16)  # frames by 2, the volume by 4 more
    assert binned[0] < full[0] + 0.3, (full, binned)


def test_a_preset_runs_end_to_end_at_its_size(tmp_path):
    """``livetomo demo --preset k3-bin4`` for 3 tilts: 1440 x 1023 frames from the simulated K3,
    stored whole (uint16), aligned against the simulator's drift, a binned live tomogram."""
    from livetomo.daemon.demo import run_preset_demo

    result = run_preset_demo("k3-bin4", tmp_path, frames=3, quiet=True, processing={"refine": None})
    assert result.complete and result.frames == 3 and result.frame_interval_s == 3.0
    assert set(result.stage_ms_per_frame) >= {"ingest", "store", "align", "reconstruct"}
    # at 0.68 nm pixels the 204 nm lamella is 300 px thick: tilt-to-tilt parallax limits what
    # any shift can do; the live alignment (binned by 2) still removes most of the drift
    assert result.alignment_rms_px < 0.75 * result.unaligned_rms_px, result
    with h5py.File(result.nxtomo, "r") as f:
        frames = f["entry/instrument/k3_image/data"]
        assert frames.shape == (3, 1023, 1440) and frames.dtype == np.uint16
        assert f["entry/run_metadata/preset"][()] == b"k3-bin4"
        volume = f["entry/processing/reconstruction/k3"]
        # frames binned by 2 (1 Mpx), the 1440 x 1023 x 300 tomogram by 2 more: 360 x 255 x 75
        assert volume.attrs["binning"] == 4 and volume["data"].shape == (255, 75, 360)


def test_a_volume_above_the_voxel_budget_is_refined_slab_by_slab(tmp_path):
    """Run-end TV of volumes larger than ``live_max_voxels`` (all channels) runs slab after slab
    in the finisher (memory of one slab), and the refined element volumes are written."""
    seen = []
    with running_daemon(tmp_path, processing={"live_max_voxels": 8192, "refine_iterations": 2}) as daemon:
        publish = daemon.pipeline.publish
        daemon.pipeline.publish = lambda topic, payload: (
            seen.append(payload.get("text", "")),
            publish(topic, payload),
        )
        summary = _run(daemon, "xrf_dpc_tomo", {"num": 9, "start": 0, "stop": 160, "dwell_s": 0.003,
                                                "raster_shape": [12, 32]})  # fmt: skip
    assert summary["complete"]
    assert any("slab" in str(t) and "refining" in str(t) for t in seen), [t for t in seen if t]
    with h5py.File(summary["file"], "r") as f:
        zn, zn_tv = (
            f["entry/processing/reconstruction/Zn/data"],
            f["entry/processing/reconstruction/Zn_tv/data"],
        )
        assert zn.shape == zn_tv.shape and f["entry/processing/reconstruction/Zn"].attrs["binning"] == 2
        assert np.isfinite(zn_tv[()]).all() and not np.array_equal(zn[()], zn_tv[()])


def test_bench_scale_quick_reports_every_figure(tmp_path):
    """``livetomo bench scale --quick``'s preset part: 3 tilts of k3-bin4 through livetomo serve."""
    from livetomo.daemon.bench.scale import STAGES, bench_preset

    lines = []
    figures = bench_preset("k3-bin4", quick=True, directory=tmp_path, log=lines.append)
    assert figures["complete"] and figures["frames"] == 3 and figures["frame_interval_s"] == 3.0
    assert set(figures["seconds_per_frame"]) == set(STAGES) and figures["all_stages_per_frame_s"] > 0
    assert figures["ratio_to_interval"]["align"] == pytest.approx(figures["seconds_per_frame"]["align"] / 3.0)
    assert figures["peak_daemon_rss_mib"] >= figures["peak_daemon_rss_while_acquiring_mib"] > 100
    # stored whole and compressed: 1440 x 1023 uint16 is 2.9 MB raw
    assert figures["raw_bytes_per_frame"] == 1440 * 1023 * 2
    assert 0 < figures["stored_bytes_per_frame"] < figures["raw_bytes_per_frame"]
    assert figures["run_end_s"] > 0 and figures["frame_messages"] == 3
    assert any("k3-bin4: 3 frames" in line for line in lines)
