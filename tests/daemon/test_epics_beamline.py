"""``beamline.kind: epics``: ``livetomo serve`` with the documented example configuration drives
the caproto test IOCs; frames are stored bit-exact and aligned; mistakes are refused by name.

The IOCs (``livetomo.devices.epics_testing``) serve the PV names of
docs/examples/epics-beamline.yaml on loopback; the daemon runs as a subprocess with ipc
endpoints and the IOCs' Channel Access addresses in its environment.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

pytest.importorskip("caproto", reason="the EPICS tests need caproto (the test extra) for their IOCs")

from livetomo.daemon.config import ConfigError, load_config  # noqa: E402
from livetomo.daemon.testing import daemon_overrides, wait_until  # noqa: E402
from livetomo.devices import epics_testing as et  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "epics-beamline.yaml"
CAMERA_SHAPE = (24, 32)


def _example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


@pytest.fixture(scope="module")
def iocs():
    """The IOCs the example names: motors LT:ROT and LT:TILT, the raster LT:RASTER:, a camera LT:TXM:."""
    beamline = _example()["beamline"]
    rotation, tilt = beamline["rotation"]["prefix"], beamline["tilt"]["prefix"]
    assert rotation.startswith("LT:") and tilt.startswith("LT:")
    buffers = beamline["raster"]["buffers"]
    started = []
    try:
        started.append(
            et.start_motor_ioc(
                "LT:",
                {
                    rotation[3:]: {"velocity": 180.0, "acceleration_s": 0.05},
                    tilt[3:]: {"velocity": 20.0, "limits": (-70.0, 70.0)},
                    **{
                        m["prefix"][3:]: {"velocity": 100.0, "egu": "um"}
                        for m in beamline["raster_offset"].values()
                        if isinstance(m, dict)
                    },
                },  # fmt: skip
            )
        )
        started.append(
            et.start_raster_ioc(
                beamline["raster"]["prefix"], max_pixels=16 * 16, n_channels=buffers["n_channels"]
            )
        )
        started.append(et.start_camera_ioc(beamline["cameras"]["txm"]["prefix"], shape=CAMERA_SHAPE))
        yield {**os.environ, **et.client_environment(*started)}
    finally:
        for ioc in started:
            ioc.stop()


def _config(tmp_path, beamline_changes=None, **sections) -> Path:
    """The example configuration confined to ``tmp_path`` (ipc endpoints, storage, page port)."""
    config = _example()
    confined = daemon_overrides(tmp_path, **sections)
    confined.pop("beamline")
    config.update(confined)
    for key, value in (beamline_changes or {}).items():
        config["beamline"][key] = value
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cli(*args, env, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "livetomo.daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_the_example_configuration_is_valid_and_builds_every_device_kind():
    config = load_config(EXAMPLE)
    settings = config.beamline.settings
    assert config.beamline.kind == "epics"
    assert settings.rotation.prefix == "LT:ROT" and settings.rotation.limits == (-190.0, 190.0)
    assert list(settings.raster.buffers.rois) == ["P", "S", "K", "Ca", "Fe", "Cu", "Zn"]
    assert settings.cameras.txm.pixel_size_nm == 30.0 and settings.cameras.k3 is None
    assert (settings.raster_offset.y.prefix, settings.raster_offset.range_um) == ("LT:SY", 10.0)
    assert settings.stage_shift is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rotation": {"limits": [-190, 190]}}, r"beamline.rotation.prefix is required but missing"),
        (
            {"rotation": {"prefx": "LT:ROT"}},
            r"unknown key beamline.rotation.prefx \(did you mean 'prefix'\?\); allowed in beamline.rotation",
        ),
        (
            {"raster": {"prefix": "LT:RASTER:", "buffers": {"rois": {"Zn": [854, 874]}, "spectrum": "X"}}},
            r"unknown key beamline.raster.buffers.spectrum \(did you mean 'spectra'\?\)",
        ),
        ({"raster": {"prefix": "LT:RASTER:"}}, r"beamline.raster.buffers is required but missing"),
        (
            {"raster": {"prefix": "LT:RASTER:", "buffers": {"rois": {"Zn": [874, 854]}}}},
            r"beamline.raster.buffers.rois.Zn = \[874, 854\] must be a channel window \[lo, hi\)",
        ),
        (
            {"raster": {"prefix": "LT:RASTER:", "buffers": {"rois": {"Zn": 860}}}},
            r"beamline.raster.buffers.rois.Zn = 860 must be a list of 2 integers",
        ),
        (
            {"raster": {"prefix": "LT:RASTER:", "buffers": {"rois": {}, "segments": ["A", "B"]}}},
            r"beamline.raster.buffers.segments = \['A', 'B'\] must name the 4 segment waveforms",
        ),
        ({"cameras": {"txm": {"prefix": "LT:TXM:"}}}, r"beamline.cameras.txm.pixel_size_nm is required"),
        (
            {"cameras": {"txm": {"prefix": "LT:TXM:", "pixel_size_nm": 30, "pvs": {"aquire": "cam1:Go"}}}},
            r"unknown key beamline.cameras.txm.pvs.aquire \(did you mean 'acquire'\?\)",
        ),
        (
            {"cameras": {"k3": {"prefix": "LT:K3:", "pixel_size_nm": 2.5}}},
            r"beamline.cameras.k3.dose_rate_e_per_A2_per_s is required",
        ),
        ({"cameras": {"tx": {}}}, r"unknown key beamline.cameras.tx \(did you mean 'txm'\?\)"),
        ({"connect_timeout_s": 0}, r"beamline.connect_timeout_s = 0.0 is outside the allowed range"),
    ],
)
def test_each_epics_misconfiguration_is_refused_with_its_key(tmp_path, change, message):
    beamline = {"kind": "epics", **change}
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={"beamline": beamline})


def test_an_epics_beamline_without_devices_is_refused():
    with pytest.raises(ConfigError, match=r"beamline \(kind epics\) configures no device"):
        load_config(overrides={"beamline": {"kind": "epics"}})


def test_serve_refuses_a_misspelt_key_before_starting(tmp_path):
    path = _config(tmp_path, {"rotation": {"prefix": "LT:ROT", "limit": [-1, 1]}})
    out = _cli("serve", "--config", str(path), env=os.environ)
    assert out.returncode == 1
    assert "unknown key beamline.rotation.limit (did you mean 'limits'?)" in out.stderr, out.stderr


def test_serve_names_the_pv_that_does_not_connect_within_the_timeout(iocs, tmp_path):
    path = _config(tmp_path, {"connect_timeout_s": 2, "tilt": {"prefix": "LT:TILTT"}})
    out = _cli("serve", "--config", str(path), env=iocs, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(
        r"livetomo serve: the EPICS beamline did not connect .*beamline\.tilt: EPICS PVs did not connect "
        r"within 2 s: LT:TILTT\.VAL, LT:TILTT\.RBV",
        out.stderr,
    ), out.stderr
    assert "beamline.rotation" not in out.stderr and "beamline.raster" not in out.stderr  # those connected


def test_xrf_dpc_tomo_and_tomo_scan_run_end_to_end_through_livetomo_serve(iocs, tmp_path):
    path = _config(tmp_path, processing={"refine": None})
    control = ["--control", daemon_overrides(tmp_path)["endpoints"]["control"]]
    server = subprocess.Popen(
        [sys.executable, "-m", "livetomo.daemon.cli", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=iocs,
    )
    try:
        wait_until(
            lambda: (
                server.poll() is not None
                or _cli("status", *control, "--timeout", "1", env=iocs).returncode == 0
            ),
            timeout=120,
            what="the daemon's control endpoint",
        )
        assert server.poll() is None, server.stdout.read()
        devices = _cli("devices", "--json", *control, env=iocs)
        assert devices.returncode == 0, devices.stderr
        assert {"rotation", "tilt", "scan", "dpc", "xrf", "txm"} <= set(_names(devices.stdout))
        angles = [0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0]
        shape, dwell = (8, 12), 0.002
        xrf = _cli(
            "submit", "xrf_dpc_tomo", f"angles={angles}", f"raster_shape={list(shape)}",
            "pixel_size_um=0.3", f"dwell_s={dwell}", "--start", "--watch", *control, env=iocs, timeout=300,
        )  # fmt: skip
        assert xrf.returncode == 0, xrf.stdout + xrf.stderr
        assert re.search(r"run \w{8}: 7/7 frames, complete; .*run-.*\.h5", xrf.stdout), xrf.stdout
        tomo = _cli(
            "submit", "tomo_scan", "start=0", "stop=180", "num=7", "--start", "--watch", *control,
            env=iocs, timeout=300,
        )  # fmt: skip
        assert tomo.returncode == 0, tomo.stdout + tomo.stderr
        assert re.search(r"run \w{8}: 7/7 frames, complete; .*run-.*\.h5", tomo.stdout), tomo.stdout
        assert _cli("shutdown", *control, env=iocs).returncode == 0
        output, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert "beamline: epics" in output
    files = {}
    for file in (tmp_path / "data").glob("run-*.h5"):
        with h5py.File(file, "r") as f:
            files[f["entry"].attrs["plan_name"]] = file
    assert set(files) == {"xrf_dpc_tomo", "tomo_scan"}
    n_channels = _example()["beamline"]["raster"]["buffers"]["n_channels"]
    with h5py.File(files["xrf_dpc_tomo"], "r") as f:
        np.testing.assert_allclose(f["entry/sample/rotation_angle"][()], angles, atol=1e-3)
        segments = f["entry/instrument/dpc_segments/data"][()]
        spectra = f["entry/instrument/xrf_spectra/data"][()]
        assert segments.shape == (7, 4, *shape) and spectra.shape == (7, *shape, n_channels)
        for i in range(len(angles)):  # raster i + 1 of the fresh IOC, bit for bit
            expected = et.raster_buffers(i + 1, shape, dwell_s=dwell, n_channels=n_channels)
            np.testing.assert_array_equal(segments[i], expected["segments"])
            np.testing.assert_array_equal(spectra[i], expected["spectra"].astype(np.uint32))
        assert f["entry/instrument/xrf_roi/data"].shape == (7, 7, *shape)
        _assert_aligned_and_reconstructed(f, 7)
        assert "Zn" in f["entry/processing/reconstruction"]
    with h5py.File(files["tomo_scan"], "r") as f:
        np.testing.assert_allclose(f["entry/sample/rotation_angle"][()], angles, atol=1e-3)
        images = f["entry/instrument/txm_image/data"][()]
        assert images.shape == (7, *CAMERA_SHAPE)
        for i in range(7):  # acquisition i + 1 of the fresh camera IOC
            np.testing.assert_array_equal(images[i], et.camera_frame(i + 1, CAMERA_SHAPE).astype(np.float32))
        np.testing.assert_allclose(f["entry/instrument/txm_image/exposure"][()], 0.002)
        _assert_aligned_and_reconstructed(f, 7)


def _names(devices_json: str) -> list[str]:
    import json

    devices = json.loads(devices_json)
    return list(devices) if isinstance(devices, dict) else [d["name"] for d in devices]


def _assert_aligned_and_reconstructed(f, n: int) -> None:
    shifts = f["entry/processing/alignment/shift"][()]
    assert shifts.shape == (n, 2) and np.isfinite(shifts).all()
    assert f["entry/instrument/detector/image_key"][()].tolist() == [0] * n
    volumes = f["entry/processing/reconstruction"]  # NXdata per channel: data (z, y, x)
    assert len(volumes) >= 1
    for name in volumes:
        data = volumes[name]["data"][()]
        assert data.ndim == 3 and np.isfinite(data).all(), name
