"""Fusion, result files, the step after correlative_acquire, and ``livetomo correlate``."""

import argparse
import json

import h5py
import matplotlib.image
import numpy as np
import pytest

from livetomo.daemon.cli import _correlate as correlate_cli
from livetomo.daemon.pipeline import RunCollector, correlate_run, run_frames
from livetomo.daemon.storage import HDF5FrameSink
from livetomo.devices.sim import make_correlative
from livetomo.plans import correlative_acquire
from livetomo.processing.correlate import CorrelationError, apply_transform, fuse_hsi, hsi_to_rgb, warp_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path, min_side=50):
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and min(img.shape[:2]) >= min_side
    assert np.ptp(img[..., :3]) > 0.1  # not a blank picture
    return img


def assert_recovers_truth(matrix_px, scene, tol_nm=30.0):
    ny, nx = scene.sxt.shape
    yy, xx = np.mgrid[0:ny:25, 0:nx:25]
    p = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
    q = apply_transform(np.linalg.inv(scene.true_fm_to_sxt), p)
    assert np.max(np.linalg.norm(apply_transform(matrix_px, q) - p, axis=1)) * scene.sxt_pixel_nm < tol_nm


# --------------------------------------------------------------------------- fusion


def test_hsi_primaries_and_grey():
    rgb = hsi_to_rgb(np.array([0.0, 120.0, 240.0, 0.0]), np.array([1.0, 1.0, 1.0, 0.0]), np.full(4, 1 / 3))
    np.testing.assert_allclose(rgb[:3], np.eye(3), atol=1e-6)
    np.testing.assert_allclose(rgb[3], [1 / 3] * 3, atol=1e-6)


def test_fusion_keeps_structure_grey_and_colours_the_label():
    structure = np.tile(np.linspace(0, 1, 64), (64, 1)).astype(np.float32)
    label = np.zeros((64, 64), np.float32)
    label[20:30, 20:30] = 100.0
    rgb = fuse_hsi(structure, label, hue_deg=120.0)
    grey = rgb[50, 40]
    assert np.ptp(grey) < 1e-6 and rgb[50, 10].sum() < rgb[50, 60].sum()  # intensity follows structure
    spot = rgb[25, 25]
    assert spot[1] > spot[0] + 0.2 and spot[1] > spot[2] + 0.2  # green label
    with pytest.raises(CorrelationError, match="warp the fluorescence"):
        fuse_hsi(structure, label[:10])


def test_warp_image_applies_the_matrix():
    img = np.random.default_rng(0).normal(size=(40, 50)).astype(np.float32)
    np.testing.assert_allclose(warp_image(img, np.eye(3), img.shape), img, atol=1e-6)
    shift = np.array([[1, 0, 3.0], [0, 1, -2.0], [0, 0, 1]])  # moving (x, y) -> fixed (x + 3, y - 2)
    out = warp_image(img, shift, img.shape)
    np.testing.assert_allclose(out[5:30, 10:40], img[7:32, 7:37], atol=1e-5)


# --------------------------------------------------------------------------- the step after correlative_acquire


def test_step_after_correlative_acquire_in_memory(RE, docs, tmp_path):
    devices = make_correlative(seed=3, spurious_fraction=0.2, missing_fraction=0.2)
    RE(correlative_acquire(devices.sxt, devices.fm))
    out = correlate_run(docs, tmp_path / "corr", sink=devices.sink)
    assert_recovers_truth(out.registration.matrix_px, devices.scene)
    img = assert_valid_png(out.fused_png)
    assert img.shape[:2] == devices.scene.sxt.shape
    assert_valid_png(out.overview_png)
    with h5py.File(out.hdf5, "r") as f:
        proc = f["entry/correlation"]
        np.testing.assert_allclose(proc["matrix_px"][()], out.registration.matrix_px)
        assert proc.attrs["run_uid"] == docs.start["uid"]
        assert proc.attrs["sigma_t_nm"] == pytest.approx(out.registration.sigma_t_nm)
        assert f["entry/data/moving_registered"].shape == devices.scene.sxt.shape
        assert f["entry/data/fused"].dtype == np.uint8


def test_step_reads_hdf5_frame_files(RE, tmp_path):
    sink = HDF5FrameSink(tmp_path / "frames")
    devices = make_correlative(seed=5, sink=sink)
    collector = RunCollector()
    RE(correlative_acquire(devices.sxt, devices.fm), collector)
    sink.close()
    np.testing.assert_array_equal(run_frames(collector, "sxt_image")[0], devices.scene.sxt)
    out = correlate_run(collector, tmp_path / "corr", stem="hdf5run")
    assert out.hdf5.name == "hdf5run.h5"
    assert_recovers_truth(out.registration.matrix_px, devices.scene)


def test_step_names_what_is_missing(RE, docs, tmp_path):
    devices = make_correlative(seed=3)
    RE(correlative_acquire(devices.sxt, devices.fm))
    with pytest.raises(ValueError, match="pass the MemorySink"):
        correlate_run(docs, tmp_path)
    with pytest.raises(ValueError, match="no frames for 'xrf_image'.*fm_image, sxt_image"):
        correlate_run(docs, tmp_path, sink=devices.sink, moving_key="xrf_image")


# --------------------------------------------------------------------------- livetomo correlate


@pytest.fixture
def cli():
    parser = argparse.ArgumentParser(prog="livetomo")
    correlate_cli.add_parser(parser.add_subparsers(dest="command", required=True))

    def main(argv):
        args = parser.parse_args(argv)
        return args.func(args)

    return main


def test_cli_fiducial_on_tiff_files(cli, tmp_path, capsys):
    pytest.importorskip("tifffile")  # file formats of the CLI's extra
    assert cli(["correlate", "simulate", "fiducial", "--out", str(tmp_path), "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    truth = np.load(tmp_path / "true_fm_to_sxt.npy")
    argv = [
        "correlate",
        "fiducial",
        files["fixed"],
        files["moving"],
        "--fixed-pixel-nm",
        "20",
        "--moving-pixel-nm",
        "150",
        "--out",
        str(tmp_path / "res"),
        "--json",
    ]
    assert cli(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sigma_t_nm"] < 60.0 and result["n_pairs"] >= 6
    centre = np.array([[40.0, 40.0]])  # FM centre pixel
    assert np.allclose(
        apply_transform(np.array(result["matrix_px"]), centre), apply_transform(truth, centre), atol=1.0
    )
    from pathlib import Path

    assert_valid_png(Path(result["fused_png"]))
    assert Path(result["hdf5"]).is_file()


def test_cli_reads_hdf5_and_mrc_and_reports_bad_input(cli, tmp_path, capsys):
    pytest.importorskip("tifffile")
    pytest.importorskip("mrcfile")
    from livetomo.simulators.correlative import make_correlative_scene

    scene = make_correlative_scene(seed=1)
    with h5py.File(tmp_path / "sxt.h5", "w") as f:
        f["entry/data/sxt_image"] = scene.sxt[None]  # one frame, as livetomo's frame files hold it
    correlate_cli.write_image(tmp_path / "fm.mrc", scene.fm, voxel_nm=(150.0, 150.0, 150.0))
    argv = [
        "correlate",
        "fiducial",
        f"{tmp_path / 'sxt.h5'}::/entry/data/sxt_image",
        str(tmp_path / "fm.mrc"),
        "--fixed-pixel-nm",
        "20",
        "--out",
        str(tmp_path / "res"),
        "--json",
    ]
    assert cli(argv) == 0  # the MRC header gives the FM pixel size
    assert json.loads(capsys.readouterr().out)["n_pairs"] >= 6
    assert (
        cli(
            [
                "correlate",
                "fiducial",
                str(tmp_path / "sxt.h5"),
                str(tmp_path / "nope.tif"),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err
    correlate_cli.write_image(tmp_path / "fm.tif", scene.fm)
    assert (
        cli(
            [
                "correlate",
                "fiducial",
                str(tmp_path / "sxt.h5"),
                str(tmp_path / "fm.tif"),
                "--fixed-pixel-nm",
                "20",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "--moving-pixel-nm is needed" in capsys.readouterr().err


def test_intensity_result_files_overlay_the_stacks_at_the_true_transform(tmp_path):
    from livetomo.daemon.storage import write_intensity_result
    from livetomo.processing.correlate import IntensityRegistration
    from livetomo.simulators.correlative3d import make_correlative_stacks

    s = make_correlative_stacks(
        seed=2,
        lm_shape=(16, 384, 384),
        lm_spacing_um=(0.22, 0.22, 0.6),
        em_shape=(48, 200, 200),
        em_spacing_um=(0.3, 0.3, 0.2),
    )

    def overlay_correlation(matrix, out):
        reg = IntensityRegistration(
            matrix_um=matrix,
            matrix_index=np.diag([*(1 / s.lm_spacing_um), 1]) @ matrix @ np.diag([*s.em_spacing_um, 1]),
            initial_um=matrix,
            prealignment=None,
            stages=[],
            roi_em=np.array([0, 0, 0, 200, 200, 48]),
            lm_spacing_um=s.lm_spacing_um,
            em_spacing_um=s.em_spacing_um,
            common_spacing_um=s.em_spacing_um * [1, 1, 2],
            sigma_lm_um=0.5,
            sigma_em_um=0.5,
        )
        fused, overview, h5 = write_intensity_result(out, reg, s.lm, s.em)
        assert_valid_png(fused)
        assert_valid_png(overview)
        with h5py.File(h5, "r") as f:
            lm, em = f["entry/data/lm_registered"][()], f["entry/data/em"][()]
            np.testing.assert_allclose(f["entry/correlation/matrix_um"][()], matrix)
        assert lm.shape == em.shape == (24, 200, 200)
        inside = np.isfinite(lm)
        return np.corrcoef(lm[inside], em[inside])[0, 1]

    # Labelled cells are bright in LM where EM is darker than resin: strongly anticorrelated when
    # the overlay is right, hardly at all when it is 10 um off.
    shifted = s.true_em_to_lm.copy()
    shifted[:2, 3] += (8.0, -6.0)
    assert overlay_correlation(s.true_em_to_lm, tmp_path / "a") < -0.5
    assert overlay_correlation(shifted, tmp_path / "b") > -0.3
