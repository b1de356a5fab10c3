"""Every kind of run file the daemon writes, opened by the readers facility users have: ESRF's
nxtomo and tomoscan, nexusformat's validator, mrcfile (the IMOD set) and PyXRF's own loader.

One daemon runs the four kinds of run (XRF-DPC, tilt series, tomography, correlative) once for
the module, with ``md`` naming the sample and the proposal as ``livetomo submit --md`` does.
"""

import logging
from pathlib import Path
from types import SimpleNamespace

import h5py
import hdf5plugin  # noqa: F401  (the run files' compression filter)
import mrcfile
import numpy as np
import pytest

from livetomo.daemon.storage import export_imod
from livetomo.daemon.testing import running_daemon, wait_until

MD = {"sample": "HeLa cell 3", "proposal": "MX-20461"}
XRF_ANGLES = [0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0]
PLANS = {
    "xrf-dpc": ("xrf_dpc_tomo", {"angles": XRF_ANGLES, "dwell_s": 0.003, "raster_shape": [12, 32]}),
    "tilt": ("tilt_series", {"min_deg": -12, "max_deg": 12, "step_deg": 3}),
    "tomography": ("tomo_scan", {"start": 0, "stop": 180, "num": 7}),
    "correlative": ("correlative_acquire", {}),
}
KINDS = list(PLANS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{kind: {"summary", "start", "truth", "pixel_nm", "planned_angles"}} of one daemon's four runs."""
    directory = tmp_path_factory.mktemp("readers")
    with running_daemon(directory, processing={"refine_iterations": 3}) as daemon:
        starts, truth_of_run = [], {}
        truth = daemon.beamline.truth

        def record(name, doc):
            if name == "start":
                starts.append(doc)
            if name == "stop":  # each run's truth: the simulators start afresh with the next run
                plan = starts[-1]["plan_name"]
                truth_of_run[plan] = {k: SimpleNamespace(history=list(w.history), world=w) for k, w in truth.items()
                                      if hasattr(w, "history")}  # fmt: skip

        daemon.runner.RE.subscribe(record)
        for plan, kwargs in PLANS.values():
            daemon.api.queue_add(plan, kwargs, MD)
        daemon.runner.start_queue()
        wait_until(lambda: len(daemon.pipeline.finished_runs) == len(PLANS), 300, "the four runs")
        finished = {s["plan_name"]: s for s in daemon.pipeline.finished_runs}
        out = {}
        for kind, (plan, _) in PLANS.items():
            start = next(d for d in starts if d["plan_name"] == plan)
            out[kind] = {"summary": finished[plan], "start": start}
        out["tilt"]["world"] = truth_of_run["tilt_series"]["tem"]
        out["xrf-dpc"]["world"] = truth_of_run["xrf_dpc_tomo"]["microprobe"]
        pixel = {
            "xrf-dpc": truth["microprobe"].probe.pixel_size_nm,
            "tomography": truth["microprobe"].probe.pixel_size_nm,
            "tilt": truth["tem"].pixel_size_nm,
            "correlative": daemon.beamline.devices["sxt"].backend.pixel_size_nm,
        }
        history = {item.plan: item for item in daemon.queue.history}
    for kind in KINDS:
        out[kind]["pixel_nm"] = pixel[kind]
        out[kind]["queue_md"] = history[PLANS[kind][0]].md
    return out


def _file(runs, kind) -> str:
    summary = runs[kind]["summary"]
    assert summary["error"] is None and summary["complete"], summary
    return summary["file"]


def _planned_angles(runs, kind) -> np.ndarray:
    start = runs[kind]["start"]
    return np.asarray(start.get("rotation_angles") or start.get("tilt_angles") or [np.nan])


@pytest.mark.parametrize("kind", KINDS)
def test_nxtomo_loads_every_run_file(runs, kind):
    pytest.importorskip("nxtomo")
    from nxtomo import NXtomo

    path = _file(runs, kind)
    tomo = NXtomo().load(path, "entry", detector_data_as="as_numpy_array")
    detector = tomo.instrument.detector
    with h5py.File(path, "r") as f:
        frames = f["entry/instrument/detector/data"][()]
    assert detector.data.ndim == 3 and detector.data.shape == frames.shape
    np.testing.assert_array_equal(detector.data, frames)
    np.testing.assert_allclose(tomo.sample.rotation_angle.to("degree").magnitude, _planned_angles(runs, kind))
    for size in (detector.x_pixel_size, detector.y_pixel_size):
        assert size.to("nm").magnitude == pytest.approx(runs[kind]["pixel_nm"])
    assert tomo.sample.name == MD["sample"]
    assert [int(k.value) for k in detector.image_key_control] == [0] * len(frames)
    if kind == "xrf-dpc":  # the transmitted intensity: the sum of the four DPC segments
        world = runs[kind]["world"]
        sums = [r.segments.sum(axis=0) for r in world.history[: len(XRF_ANGLES)]]
        np.testing.assert_allclose(detector.data, sums, rtol=1e-6)
        assert tomo.instrument.beam.incident_energy.to("keV").magnitude == pytest.approx(10.2)


@pytest.mark.parametrize("kind", KINDS)
def test_tomoscan_reads_every_run_file(runs, kind):
    pytest.importorskip("tomoscan")
    from silx.io.utils import get_data
    from tomoscan.esrf.scan.nxtomoscan import NXtomoScan

    path = _file(runs, kind)
    scan = NXtomoScan(path, "entry")
    with h5py.File(path, "r") as f:
        frames = f["entry/instrument/detector/data"][()]
    assert len(scan.projections) == len(frames) and (scan.dim_2, scan.dim_1) == frames.shape[1:]
    first = get_data(scan.projections[sorted(scan.projections)[0]])
    np.testing.assert_array_equal(first, frames[0])
    assert scan.sample_x_pixel_size == pytest.approx(runs[kind]["pixel_nm"] * 1e-9)
    np.testing.assert_allclose(scan.rotation_angle, _planned_angles(runs, kind))
    assert scan.sample_name == MD["sample"]


@pytest.mark.parametrize("kind", KINDS)
def test_nexusformat_finds_no_error(runs, kind):
    validate = pytest.importorskip("nexusformat.nexus.validate")
    logging.getLogger("NXValidate").setLevel(logging.WARNING)
    path = _file(runs, kind)
    warnings, errors = validate.validate_application(path, application="NXtomo")
    assert errors == 0
    assert warnings <= 1  # NXtomo asks for integer data; frames are float (NX_FLOAT)
    _, errors = validate.validate_file(path)
    assert errors == 0


@pytest.mark.parametrize("kind", KINDS)
def test_sample_and_proposal_from_md_are_in_the_file_and_the_run_metadata(runs, kind):
    with h5py.File(_file(runs, kind), "r") as f:
        entry = f["entry"]
        assert entry["sample/name"].asstr()[()] == MD["sample"]
        assert entry["experiment_identifier"].asstr()[()] == MD["proposal"]
        assert entry["run_metadata/sample"].asstr()[()] == MD["sample"]
        assert entry["run_metadata/proposal"].asstr()[()] == MD["proposal"]
        assert entry["run_metadata/uid"].asstr()[()] == runs[kind]["start"]["uid"]
    assert runs[kind]["start"]["sample"] == MD["sample"] and runs[kind]["start"]["proposal"] == MD["proposal"]
    assert runs[kind]["queue_md"] == MD  # the queue's history keeps what was submitted


def test_volumes_and_maps_are_nxdata_with_axes_and_units(runs):
    with h5py.File(_file(runs, "xrf-dpc"), "r") as f:
        recon = f["entry/processing/reconstruction"]
        assert recon.attrs["NX_class"] == "NXprocess"
        names = set(recon)
        assert {"phase", "Zn", "Zn_tv"} <= names
        for name in names:
            group = recon[name]
            assert group.attrs["NX_class"] == "NXdata" and group.attrs["signal"] == "data"
            assert list(group.attrs["axes"]) == ["z", "y", "x"]
            for axis, n in zip("zyx", group["data"].shape, strict=True):
                assert group[axis].attrs["units"] == "um" and len(group[axis]) == n
                assert group[axis][1] - group[axis][0] == pytest.approx(0.3)  # the raster's pixel
        alignment = f["entry/processing/alignment"]
        assert alignment.attrs["NX_class"] == "NXdata" and alignment.attrs["signal"] == "shift"
        assert alignment["shift"].shape == (len(XRF_ANGLES), 2) and "rotation_axis_position" in alignment
        assert f["entry/processing"].attrs["NX_class"] == "NXprocess"
        assert f["entry/processing/configuration"].attrs["NX_class"] == "NXnote"
        maps = f["entry/data_xrf_roi"]
        assert maps.attrs["NX_class"] == "NXdata" and maps["data"].shape[:2] == (len(XRF_ANGLES), 7)
        assert [n.decode() for n in maps["channel_names"][()]] == ["P", "S", "K", "Ca", "Fe", "Cu", "Zn"]


def test_frames_are_compressed_with_the_default_filter(runs):
    with h5py.File(_file(runs, "xrf-dpc"), "r") as f:
        spectra = f["entry/instrument/xrf_spectra/data"]
        assert 32008 in spectra._filters or "32008" in spectra._filters  # bitshuffle (LZ4)
        assert spectra.chunks == (1, *spectra.shape[1:])  # one frame per chunk
        assert spectra.id.get_storage_size() < spectra.nbytes / 20  # simulated spectra: mostly zeros
        np.testing.assert_array_equal(spectra[2], runs["xrf-dpc"]["world"].history[2].spectra)


def _imod(runs):
    exports = [Path(p) for p in runs["tilt"]["summary"]["exports"]]
    return {p.name.split(runs["tilt"]["summary"]["run_uid"])[1]: p for p in exports}


def test_imod_set_tilt_angles_transforms_and_tomogram(runs, tmp_path):
    files = _imod(runs)
    assert {".mrc", ".mrc.mdoc", ".rawtlt", ".tlt", ".xf", "_ali.mrc", "_rec.mrc"} <= set(files)
    planned = np.sort(_planned_angles(runs, "tilt"))  # IMOD's stacks run from low to high tilt
    for suffix in (".tlt", ".rawtlt"):
        np.testing.assert_allclose(np.loadtxt(files[suffix]), planned)
    xf = np.loadtxt(files[".xf"])
    assert xf.shape == (len(planned), 6)
    with h5py.File(_file(runs, "tilt"), "r") as f:  # the axis the daemon used (90: vertical)
        imod_axis = float(f["entry/processing/alignment/tilt_axis"][0]) - 90.0
    turn = np.deg2rad(-imod_axis)  # each .xf turns the raw section so that the axis is vertical
    rotation = [np.cos(turn), -np.sin(turn), np.sin(turn), np.cos(turn)]
    np.testing.assert_allclose(xf[:, :4], np.tile(rotation, (len(planned), 1)), atol=1e-6)
    with mrcfile.open(files[".mrc"]) as raw, mrcfile.open(files["_ali.mrc"]) as ali:
        from scipy import ndimage

        assert raw.data.shape == ali.data.shape == (len(planned), 24, 24)
        centre = np.array([11.5, 11.5])
        for z, line in enumerate(xf):  # newstack's mapping: raw x (from the centre) -> A x + D
            a = np.array([[line[3], line[2]], [line[1], line[0]]])  # in (row, col) order
            inverse = np.linalg.inv(a)
            moved = ndimage.affine_transform(
                raw.data[z],
                inverse,
                offset=centre - inverse @ (centre + line[[5, 4]]),
                order=1,
                mode="nearest",
            )
            np.testing.assert_allclose(ali.data[z], moved, atol=1e-3 * float(np.abs(raw.data).max()))
        pixel_A = float(raw.voxel_size.x)
    assert pixel_A == pytest.approx(runs["tilt"]["pixel_nm"] * 10.0)
    # the .xf shifts undo the simulated stage drift, up to one shift common to all (the gauge)
    world = runs["tilt"]["world"]
    angles = np.asarray(runs["tilt"]["start"]["tilt_angles"])
    truth = np.array([f.true_shift_px for f in world.history])[np.argsort(angles, kind="stable")]
    shifts = xf[:, [4, 5]] @ np.linalg.inv(np.array(rotation).reshape(2, 2)).T  # D = A d: back to d
    residual = shifts[:, ::-1] + truth
    residual -= residual.mean(axis=0)
    assert np.sqrt(np.mean(residual**2)) < 0.5
    with mrcfile.open(files["_rec.mrc"]) as rec:
        assert float(rec.voxel_size.x) == pytest.approx(pixel_A)  # binning 1: the pixel size
        assert rec.data.shape[1:] == (24, 24)  # Z (beam), Y (tilt axis, rows), X
    mdoc = files[".mrc.mdoc"].read_text()
    assert "Voltage = 300" in mdoc and f"Tilt axis angle = {imod_axis:.1f}" in mdoc
    assert f"RotationAngle = {imod_axis:g}" in mdoc
    assert mdoc.count("TiltAngle") == len(planned) and "ExposureDose = 3" in mdoc
    binned = export_imod(_file(runs, "tilt"), tmp_path / "ts", binning=2)
    with mrcfile.open(next(p for p in binned if p.name == "ts_rec.mrc")) as rec:
        assert float(rec.voxel_size.x) == pytest.approx(pixel_A * 2)
        assert rec.data.shape[1:] == (12, 12)


def test_pyxrf_loads_the_export_with_names_positions_and_energy(runs):
    fileio = pytest.importorskip("pyxrf.model.fileio")
    exports = [Path(p) for p in runs["xrf-dpc"]["summary"]["exports"]]
    assert len(exports) == len(XRF_ANGLES)
    world = runs["xrf-dpc"]["world"]
    path = exports[3]
    images, datasets, metadata = fileio.read_hdf_APS(str(path.parent), path.name)
    stem = path.name.split(".")[0]
    roi = images[f"{stem}_roi"]
    names = ["P_K", "S_K", "K_K", "Ca_K", "Fe_K", "Cu_K", "Zn_K"]
    assert list(roi) == names
    assert roi["Zn_K"].shape == (12, 32)
    positions = images["positions"]
    assert set(positions) == {"x_pos", "y_pos"}
    np.testing.assert_allclose(np.diff(positions["x_pos"][0]), 0.3)  # µm, the raster's pixel
    np.testing.assert_allclose(np.diff(positions["y_pos"][:, 0]), 0.3)
    assert metadata["instrument_mono_incident_energy"] == pytest.approx(10.2)
    assert metadata["param_theta"] == pytest.approx(XRF_ANGLES[3])
    assert metadata["sample_name"] == MD["sample"] and metadata["proposal_num"] == MD["proposal"]
    raw = datasets[f"{stem}_sum"].raw_data  # what PyXRF fits: the per-pixel spectra
    assert tuple(raw.shape) == world.history[3].spectra.shape
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[raw.dset_name][()], world.history[3].spectra)
        energies = f["xrfmap/detsum/energy"][()]
    detector = world.world.probe.detector
    np.testing.assert_allclose(energies, detector.energy_axis_kev())


def test_pyxrf_fits_the_exported_spectra(runs, tmp_path):
    """PyXRF's own fitting (NNLS per pixel, its default parameters with the export's energy axis)
    finds the zinc the simulator put there: the fitted Zn map follows the Zn window counts."""
    pytest.importorskip("skbeam")
    pytest.importorskip("xraylib")
    import copy
    import json
    import shutil

    from distributed import Client
    from pyxrf.api_dev import fit_pixel_data_and_save
    from pyxrf.model.param_data import param_data

    source = Path(runs["xrf-dpc"]["summary"]["exports"][3])
    path = shutil.copy(source, tmp_path / source.name)  # PyXRF writes its fit into the file
    with h5py.File(path, "r") as f:
        energies = f["xrfmap/detsum/energy"][()]
    params = copy.deepcopy(param_data)
    params["e_offset"]["value"] = float(energies[0])
    params["e_linear"]["value"] = float(energies[1] - energies[0])
    params["e_quadratic"]["value"] = 0.0
    params["coherent_sct_energy"]["value"] = 10.2
    params["non_fitting_values"]["element_list"] = "P_K, S_K, K_K, Ca_K, Fe_K, Cu_K, Zn_K"
    params["non_fitting_values"]["energy_bound_low"]["value"] = 1.5
    params["non_fitting_values"]["energy_bound_high"]["value"] = 10.8
    (tmp_path / "params.json").write_text(json.dumps(params))
    with Client(processes=False, n_workers=1, threads_per_worker=1, silence_logs=logging.ERROR) as client:
        fit_pixel_data_and_save(
            str(tmp_path), Path(path).name, param_file_name="params.json", dask_client=client, save_tiff=False
        )
    with h5py.File(path, "r") as f:
        names = [n.decode() for n in f["xrfmap/detsum/xrf_fit_name"][()]]
        fit = f["xrfmap/detsum/xrf_fit"][()]
        roi = f["xrfmap/detsum/xrf_roi"][()]
    assert {"P_K", "S_K", "K_K", "Ca_K", "Fe_K", "Cu_K", "Zn_K"} <= set(names)
    zinc = fit[names.index("Zn_K")]
    assert zinc.shape == (12, 32) and zinc.sum() > 0
    assert np.corrcoef(zinc.ravel(), roi[-1].ravel())[0, 1] > 0.3
