import json
import subprocess
import sys
import textwrap

import h5py
import mrcfile
import numpy as np
import pytest
from nexusformat.nexus import nxload
from nexusformat.nexus.validate import validate_application

from livetomo.daemon.storage import (
    NXtomoWriter,
    export_pyxrf_maps,
    export_tilt_series,
    run_file,
    stream_dataset,
    write_mrc_tilt_series,
    write_pyxrf_map,
)
from livetomo.daemon.transport import decode, encode_end, encode_frame, encode_start
from livetomo.devices.sim import make_microprobe, make_tem
from livetomo.plans import tilt_series


@pytest.fixture(scope="module")
def tilt_run():
    """A dose-symmetric K3 tilt series on the simulated TEM: frames, angles (acquisition order), dose."""
    from livetomo.daemon.pipeline import RunCollector
    from livetomo.daemon.testing import make_run_engine

    tem = make_tem(shape=(24, 10, 24), seed=2)
    RE, docs = make_run_engine(), RunCollector()
    RE.subscribe(docs)
    RE(tilt_series(tem.k3, tem.tilt, min_deg=-30, max_deg=30, step_deg=10, dose_per_tilt=2.5))
    frames = tem.sink.stack("k3", "k3_image")
    angles = np.asarray(docs.column("tilt"))
    return frames, angles, 2.5


def _write_tilt_run(path, frames, angles, dose, **kw):
    with NXtomoWriter(path, run_uid="tilt-run", sample_name="lamella", probe="electron", **kw) as writer:
        writer.add_stream("k3_image", frames.dtype, frames.shape[1:], exposure_units="e/A^2", pixel_size=0.2)
        for i, (frame, angle) in enumerate(zip(frames, angles, strict=True)):
            writer.append("k3_image", frame, angle_deg=angle, exposure=dose, timestamp=1.7e9 + i)
        writer.declare_processed("k3_image/shift_px", np.float64, (2,), units="pixel")
        for i in range(len(frames)):
            writer.append_processed("k3_image/shift_px", [0.5 * i, -0.25 * i], index=i)
        writer.append_processed("k3_image/quality", 0.9)
        writer.write_processed("reconstruction", np.ones((4, 5, 6), np.float32))
        writer.write_processed("reconstruction", np.arange(3 * 7 * 7, dtype=np.float32).reshape(3, 7, 7))
    return path


def test_run_file_is_valid_nxtomo_for_nexusformat(tmp_path, tilt_run):
    frames, angles, dose = tilt_run
    path = _write_tilt_run(tmp_path / "tilt.h5", frames, angles, dose)
    warnings, errors = validate_application(str(path), application="NXtomo")
    assert errors == 0
    root = nxload(str(path))
    entry = root["entry"]
    assert entry["definition"].nxvalue == "NXtomo" and entry["sample/name"].nxvalue == "lamella"
    assert entry["instrument/detector"].nxclass == "NXdetector"
    np.testing.assert_array_equal(entry["instrument/detector/data"].nxvalue, frames)
    np.testing.assert_array_equal(entry["sample/rotation_angle"].nxvalue, angles)
    assert entry["sample/rotation_angle"].attrs["units"] == "degree"
    np.testing.assert_array_equal(entry["instrument/detector/image_key"].nxvalue, np.zeros(len(frames)))
    assert entry["data"].nxsignal.nxpath.endswith("data")
    np.testing.assert_array_equal(entry["data/rotation_angle"].nxvalue, angles)
    assert "end_time" in entry and entry["instrument/source/probe"].nxvalue == "electron"


def test_processed_results_sit_beside_the_raw_data_and_resize(tmp_path, tilt_run):
    frames, angles, dose = tilt_run
    path = _write_tilt_run(tmp_path / "tilt.h5", frames, angles, dose)
    with h5py.File(path, "r") as f:
        shifts = f["entry/processing/k3_image/shift_px"]
        np.testing.assert_array_equal(
            shifts[()], np.stack([0.5 * np.arange(7), -0.25 * np.arange(7)], axis=1)
        )
        assert shifts.maxshape == (None, 2) and shifts.attrs["units"] == "pixel"
        assert f["entry/processing/k3_image/quality"][()].tolist() == [0.9]
        recon = f["entry/processing/reconstruction"]
        assert recon.maxshape == (None, None, None)
        np.testing.assert_array_equal(recon[()], np.arange(3 * 7 * 7).reshape(3, 7, 7))
        assert f["entry/instrument/k3_image/exposure"].attrs["units"] == "e/A^2"
        np.testing.assert_array_equal(f["entry/instrument/k3_image/timestamp"][()], 1.7e9 + np.arange(7))
        assert f["entry/instrument/k3_image"].attrs["frames_written"] == 7


_READER = textwrap.dedent(
    """
    import json, sys, time
    import hdf5plugin  # the compression filter of the run file (docs/storage.md)
    import h5py, numpy as np
    path, half, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    f = h5py.File(path, "r", swmr=True)
    data = f["entry/instrument/detector/data"]
    angles = f["entry/sample/rotation_angle"]
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data.refresh(); angles.refresh()
        if data.shape[0] not in seen:
            seen.append(data.shape[0])
        if data.shape[0] >= half and angles.shape[0] >= half and "told" not in seen:
            seen.append("told"); print("half", flush=True)
        if data.shape[0] == total and angles.shape[0] == total:
            break
        time.sleep(0.01)
    frames = data[()]
    print(json.dumps({"seen": seen, "sums": frames.reshape(len(frames), -1).sum(axis=1).tolist(),
                      "angles": angles[()].tolist(), "groups": list(f["entry/instrument"])}))
    """
)


def test_a_reader_process_follows_the_file_while_it_is_written(tmp_path, tilt_run):
    """h5py SWMR reader in another process sees frames as they are written, also across a late stream."""
    frames, angles, dose = tilt_run
    frames = frames.astype(np.float64)
    path = tmp_path / "live.h5"
    n, half = len(frames), len(frames) // 2
    writer = NXtomoWriter(path, primary_stream="k3_image", flush_interval_s=0.0)
    writer.add_stream("k3_image", np.float64, frames.shape[1:])
    for i in range(half):
        writer.append("k3_image", frames[i], angle_deg=angles[i])
    assert writer.swmr_mode
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(path), str(half), str(n)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout.readline().strip() == "half"  # it saw the first half while we write
        writer.add_stream("late_stream", np.uint16, (3,))  # appears after SWMR is on: reopen
        writer.append("late_stream", np.arange(3, dtype=np.uint16))
        for i in range(half, n):
            writer.append("k3_image", frames[i], angle_deg=angles[i])
        writer.flush()
        out = json.loads(reader.stdout.readline())
        assert reader.wait(timeout=60) == 0
    finally:
        reader.kill()
        writer.close()
    assert out["seen"][0] < n and out["seen"][-1] == n
    np.testing.assert_allclose(out["sums"], frames.reshape(n, -1).sum(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(out["angles"], angles)
    assert writer.reopens == 1
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[stream_dataset("late_stream")][()], [[0, 1, 2]])
        np.testing.assert_array_equal(f[stream_dataset("k3_image")][()], frames)


def test_frames_land_at_their_sequence_number_and_gaps_stay_invalid(tmp_path):
    path = tmp_path / "gaps.h5"
    with NXtomoWriter(path) as writer:
        writer.add_stream("cam", np.float32, (2, 2))
        writer.append("cam", np.full((2, 2), 1, np.float32), index=0, angle_deg=0.0)
        writer.append("cam", np.full((2, 2), 3, np.float32), index=2, angle_deg=20.0)
        writer.set_angle("cam", 1, 10.0)  # from the documents, for a frame that never came
        writer.set_angle("cam", 3, 30.0)  # before its frame
        writer.append("cam", np.full((2, 2), 4, np.float32), index=3, image_key=2)
    with h5py.File(path, "r") as f:
        data = f[stream_dataset("cam")][()]
        assert np.isnan(data[1]).all() and (data[[0, 2, 3], 0, 0] == [1, 3, 4]).all()
        assert f["entry/instrument/cam/image_key"][()].tolist() == [0, 3, 0, 2]  # 3 = invalid
        assert f["entry/sample/rotation_angle"][()].tolist() == [0.0, 10.0, 20.0, 30.0]


def test_protocol_messages_are_stored_with_their_metadata(tmp_path):
    rng = np.random.default_rng(0)
    roi = (rng.random((3, 2, 4, 5)) * 100).astype(np.float32)
    msgs = [decode(encode_start("u", "xrf_roi", device="xrf", dtype=np.float32, shape=(2, 4, 5),
                                channels=["Fe", "Zn"], exposure_units="s"))]  # fmt: skip
    msgs += [
        decode(encode_frame("u", "xrf_roi", i, roi[i], angle_deg=5.0 * i, exposure=0.003)) for i in range(3)
    ]
    msgs.append(decode(encode_end("u", "xrf_roi", 3)))
    with NXtomoWriter(run_file(tmp_path, "u"), run_uid="u") as writer:
        for msg in msgs:
            writer.write_message(msg)
    with h5py.File(run_file(tmp_path, "u"), "r") as f:
        group = f["entry/instrument/xrf_roi"]
        np.testing.assert_array_equal(group["data"][()], roi)
        assert group["channel_names"][()].tolist() == [b"Fe", b"Zn"] and group.attrs["device"] == "xrf"
        np.testing.assert_array_equal(group["exposure"][()], [0.003] * 3)
        assert f["entry"].attrs["run_uid"] == "u"


def test_writer_names_bad_input(tmp_path):
    with NXtomoWriter(tmp_path / "x.h5") as writer:
        with pytest.raises(ValueError, match="stream name 'a b'"):
            writer.add_stream("a b", np.uint8, (2,))
        writer.add_stream("s", np.uint8, (2,))
        with pytest.raises(ValueError, match="already exists"):
            writer.add_stream("s", np.uint8, (2,))
        with pytest.raises(KeyError, match="streams: s"):
            writer.append("t", np.zeros(2, np.uint8))
        with pytest.raises(ValueError, match="shape"):
            writer.append("s", np.zeros(3, np.uint8))
        with pytest.raises(ValueError, match="processed dataset name"):
            writer.write_processed("../up", np.zeros(2))
        with pytest.raises(ValueError, match="taken by the NXtomo layout"):
            writer.add_stream("detector", np.uint8, (2,))  # the link to the primary stream "s"


def _parse_mdoc(path):
    sections, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith("[ZValue"):
            current = {}
            sections.append(current)
        elif current is not None and " = " in line:
            key, value = line.split(" = ", 1)
            current[key] = value
    return sections


def test_tilt_series_exports_to_mrc_and_mdoc(tmp_path, tilt_run):
    frames, angles, dose = tilt_run
    h5 = _write_tilt_run(tmp_path / "tilt.h5", frames, angles, dose)
    mrc_path, mdoc_path = export_tilt_series(h5, tmp_path / "tilt.mrc")
    order = np.argsort(angles, kind="stable")
    with mrcfile.open(mrc_path, permissive=False) as mrc:
        assert mrc.is_image_stack()
        np.testing.assert_array_equal(mrc.data, frames[order])  # sorted by tilt, bit-exact
        assert mrc.voxel_size.x == pytest.approx(2.0)  # 0.2 nm
    sections = _parse_mdoc(mdoc_path)
    assert [float(s["TiltAngle"]) for s in sections] == pytest.approx(angles[order])
    assert all(float(s["ExposureDose"]) == dose and float(s["PixelSpacing"]) == 2.0 for s in sections)
    # prior dose follows the acquisition (dose-symmetric) order, not the stored order
    prior = {int(s["AcquisitionIndex"]): float(s["PriorRecordDose"]) for s in sections}
    assert [prior[i] for i in range(len(angles))] == pytest.approx(dose * np.arange(len(angles)))
    assert mdoc_path.read_text().startswith("PixelSpacing = 2\nImageFile = tilt.mrc\nImageSize = 24 24")


def test_mrc_export_refuses_mismatched_input(tmp_path):
    with pytest.raises(ValueError, match="n_tilts angles"):
        write_mrc_tilt_series(tmp_path / "x.mrc", np.zeros((3, 4, 4)), [0, 1], pixel_size_A=1.0)


@pytest.fixture(scope="module")
def xrf_run():
    from livetomo.daemon.testing import make_run_engine, xrf_dpc_plan

    probe = make_microprobe(shape=(6, 12, 12), seed=3)
    make_run_engine()(xrf_dpc_plan(probe, raster_shape=(6, 12)))
    return probe


def test_xrf_maps_export_in_pyxrf_layout(tmp_path, xrf_run):
    probe = xrf_run
    spectra = probe.sink.stack("xrf", "xrf_spectra")
    roi = probe.sink.stack("xrf", "xrf_roi")
    path = tmp_path / "run.h5"
    with NXtomoWriter(path, run_uid="xrf-run", primary_stream="dpc_segments") as writer:
        for key, stack, channels in (("xrf_roi", roi, probe.xrf.elements), ("xrf_spectra", spectra, None)):
            writer.add_stream(key, stack.dtype, stack.shape[1:], channels=channels)
            for i, frame in enumerate(stack):
                writer.append(key, frame, angle_deg=[0.0, 90.0][i])
    paths = export_pyxrf_maps(path, tmp_path / "pyxrf", pixel_size_um=0.3, incident_energy_keV=10.2)
    assert [p.name for p in paths] == ["xrf-run_proj0000_+0.00deg.h5", "xrf-run_proj0001_+90.00deg.h5"]
    # read it the way PyXRF's loader (pyxrf.model.fileio.read_hdf_APS) does
    with h5py.File(paths[1], "r") as f:
        counts = f["xrfmap/detsum/counts"][()]
        np.testing.assert_array_equal(counts, spectra[1].astype(np.float32))
        names = [n.decode() for n in f["xrfmap/detsum/xrf_roi_name"]]
        maps = dict(zip(names, f["xrfmap/detsum/xrf_roi"][()], strict=True))
        assert names == [f"{el}_K" for el in probe.xrf.elements]  # PyXRF's names of the K lines
        np.testing.assert_array_equal(maps["Zn_K"], probe.xrf.roi_maps(probe.world.history[1].spectra)[-1])
        pos_names = [n.decode() for n in f["xrfmap/positions/name"]]
        pos = dict(zip(pos_names, f["xrfmap/positions/pos"][()], strict=True))
        assert pos["x_pos"][0, 1] - pos["x_pos"][0, 0] == pytest.approx(0.3) and pos["y_pos"].shape == (6, 12)
        assert f["xrfmap/scan_metadata"].attrs["instrument_mono_incident_energy"] == 10.2
        assert f["xrfmap/scan_metadata"].attrs["scan_uid"] == "xrf-run"


def test_pyxrf_map_checks_names_against_maps(tmp_path):
    with pytest.raises(ValueError, match="one name each"):
        write_pyxrf_map(tmp_path / "x.h5", roi_maps=np.zeros((2, 3, 3)), roi_names=["Fe"])


def test_exposure_units_from_the_frames_are_kept(tmp_path, tilt_run):
    frames, angles, dose = tilt_run
    path = tmp_path / "units.h5"
    with NXtomoWriter(path) as writer:
        writer.add_stream("k3_image", frames.dtype, frames.shape[1:], pixel_size=0.2)  # no units here
        for frame, angle in zip(frames, angles, strict=True):
            writer.append("k3_image", frame, angle_deg=angle, exposure=dose, exposure_units="e/A^2")
    _, mdoc = export_tilt_series(path, tmp_path / "units.mrc")
    assert mdoc.read_text().count(f"ExposureDose = {dose:g}") == len(frames)
