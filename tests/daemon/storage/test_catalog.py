"""The run catalogue: runs written by the daemon to its embedded Tiled catalog with bluesky-tiled-plugins'
TiledWriter, read back with Tiled's own client: frames bit-exact from the SWMR run file, shapes as
declared, events as documented.
"""

import h5py
import numpy as np
import pytest

from livetomo.daemon.config import ConfigError, load_config
from livetomo.daemon.control import ControlClient
from livetomo.daemon.storage import RunCatalog, run_catalog, tiled_missing
from livetomo.daemon.testing import running_daemon, wait_until

needs_tiled = pytest.mark.skipif(
    tiled_missing() is not None,
    reason=f'the embedded Tiled catalog needs {tiled_missing()} (pip install ".[tiled]")',
)


def _embedded_client(storage):
    """Tiled's client over the catalog in ``storage/catalog``, opened with Tiled's API alone."""
    from tiled.catalog import from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    directory = storage.resolve() / "catalog"
    adapter = from_uri(
        f"sqlite:///{directory / 'catalog.db'}",
        writable_storage=[str(directory / "data"), f"sqlite:///{directory / 'tables.sqlite'}"],
        readable_storage=[str(storage.resolve())],
    )
    return from_context(Context.from_app(build_app(adapter)))


@needs_tiled
def test_runs_are_read_back_from_the_embedded_catalog_bit_exact(tmp_path):
    docs, history = [], []
    with running_daemon(tmp_path, tiled={"enabled": True}, processing={"refine": None}) as daemon:
        world = daemon.beamline.truth["microprobe"]

        def record(name, doc):
            docs.append((name, doc))
            if name == "stop" and not history:  # the truth of the first run (the next one starts afresh)
                history.extend(world.history)

        daemon.runner.RE.subscribe(record)
        client = ControlClient(daemon.config.endpoints.control)
        angles = [0.0, 36.0, 72.0, 108.0, 144.0, 180.0]
        client(
            "queue_add",
            plan="xrf_dpc_tomo",
            kwargs={"angles": angles, "dwell_s": 0.003, "raster_shape": [12, 32]},
        )
        client("queue_add", plan="tomo_scan", kwargs={"start": 0, "stop": 90, "num": 4})
        client("queue_start")
        wait_until(lambda: len(daemon.pipeline.finished_runs) == 2, timeout=120, what="two runs finished")
        summaries = {s["plan_name"]: s for s in daemon.pipeline.finished_runs}
        _wait_for_the_catalogue(daemon)
    # closing the daemon wrote every queued document
    status = daemon.tiled.status()
    assert status["state"] == "ready" and status["errors"] == 0 and status["documents_dropped"] == 0, status
    assert status["documents_written"] == len(docs) and status["documents_queued"] == 0
    tiled = _embedded_client(tmp_path / "data")
    starts = {doc["plan_name"]: doc["uid"] for name, doc in docs if name == "start"}
    assert set(starts) == {"xrf_dpc_tomo", "tomo_scan"} and set(starts.values()) <= set(tiled)

    run = tiled[starts["xrf_dpc_tomo"]]
    assert run.metadata["start"]["livetomo_method"] == "xrf-dpc"
    assert run.metadata["stop"]["exit_status"] == "success"
    primary = run["primary"]
    segments = primary["dpc_segments"]
    assert (
        segments.shape == (6, 4, 12, 32) and segments.dtype == np.float32
    )  # as declared: no [1, ...] to repair
    read = segments.read()
    assert read.shape == (6, 4, 12, 32)
    np.testing.assert_array_equal(read, np.stack([r.segments for r in history]))  # the detector's own frames
    spectra = primary["xrf_spectra"].read()
    assert spectra.dtype == np.uint32 and spectra.shape == (6, 12, 32, history[0].spectra.shape[-1])
    # where Tiled read them from, opened as Tiled does (one process: HDF5 wants the same flags)
    with h5py.File(summaries["xrf_dpc_tomo"]["file"], "r", swmr=True, locking=False) as f:
        np.testing.assert_array_equal(spectra, f["entry/instrument/xrf_spectra/data"][()])
        np.testing.assert_array_equal(primary["xrf_roi"].read(), f["entry/instrument/xrf_roi/data"][()])
    # bluesky-tiled-plugins' own check of each declared structure against the file, fixing nothing:
    # shape, chunks and dtype as the descriptors and stream_resources declare them
    from bluesky_tiled_plugins.writing.validator import validate_structure

    for key in ("dpc_segments", "xrf_roi", "xrf_spectra"):
        assert validate_structure(primary[key], fix_errors=False) == [], key
    events = [doc for name, doc in docs if name == "event" and doc["descriptor"] in _descriptors(docs, run)]
    np.testing.assert_allclose(primary["rotation"].read(), [e["data"]["rotation"] for e in events])
    np.testing.assert_allclose(primary["rotation"].read(), angles, atol=1e-6)
    np.testing.assert_allclose(primary["xrf_Zn"].read(), [e["data"]["xrf_Zn"] for e in events])

    run = tiled[starts["tomo_scan"]]
    images = run["primary"]["txm_image"]
    with h5py.File(summaries["tomo_scan"]["file"], "r", swmr=True, locking=False) as f:
        stored = f["entry/instrument/txm_image/data"][()]
    assert images.shape == stored.shape and stored.shape[0] == 4
    np.testing.assert_array_equal(images.read(), stored)
    np.testing.assert_array_equal(images[2], stored[2])  # one frame, sliced on the server
    assert validate_structure(images, fix_errors=False) == []


def _wait_for_the_catalogue(daemon):
    """Until the catalogue has opened and written what was queued (its start takes seconds)."""

    def done():
        status = daemon.status()["catalog"]
        return status["state"] != "starting" and status["documents_queued"] == 0

    wait_until(done, timeout=300, what="the catalogue written")


def _descriptors(docs, run):
    uid = run.metadata["start"]["uid"]
    return {doc["uid"] for name, doc in docs if name == "descriptor" and doc["run_start"] == uid}


@needs_tiled
def test_frames_are_read_through_tiled_while_the_writer_holds_the_run_file_in_swmr_mode(tmp_path):
    """The run file as the daemon holds it during a run (SWMR, no file locks): Tiled's HDF5 adapter
    reads it, and sees a frame appended after the reader first opened it."""
    docs, history = [], []
    with running_daemon(tmp_path, tiled={"enabled": True}, processing={"refine": None}) as daemon:
        world = daemon.beamline.truth["microprobe"]

        def record(name, doc):
            docs.append((name, doc))
            if name == "stop" and not history:  # the truth of the first run (the next one starts afresh)
                history.extend(world.history)

        daemon.runner.RE.subscribe(record)
        client = ControlClient(daemon.config.endpoints.control)
        client("queue_add", plan="tomo_scan", kwargs={"start": 0, "stop": 90, "num": 3})
        client("queue_start")
        wait_until(lambda: daemon.pipeline.finished_runs, timeout=120, what="the run finished")
        path = daemon.pipeline.finished_runs[-1]["file"]
        _wait_for_the_catalogue(daemon)
    uid = next(doc["uid"] for name, doc in docs if name == "start")
    tiled = _embedded_client(tmp_path / "data")
    images = tiled[uid]["primary"]["txm_image"]
    with h5py.File(path, "r+", libver="latest", locking=False) as writer:  # as NXtomoWriter reopens it
        data = writer["entry/instrument/txm_image/data"]
        expected = data[()]
        writer.swmr_mode = True
        np.testing.assert_array_equal(images.read(), expected)  # a reader beside the SWMR writer
        data[1] = expected[1] + 1.0  # the writer changes a frame in place and flushes it
        data.flush()
        np.testing.assert_array_equal(images[1], expected[1] + 1.0)


def test_the_catalogue_is_configured_and_checked(tmp_path):
    assert load_config().tiled.enabled == "auto"
    config = load_config(overrides={"tiled": {"enabled": False}})
    assert run_catalog(config.tiled, tmp_path) is None
    with pytest.raises(
        ConfigError, match=r"config.tiled.enabled = 'yes' must be true or false or one of 'auto'"
    ):
        load_config(overrides={"tiled": {"enabled": "yes"}})
    with pytest.raises(ConfigError, match=r"unknown key config.tiled.url \(did you mean 'uri'\?\)"):
        load_config(overrides={"tiled": {"url": "http://127.0.0.1:8000"}})
    secret = load_config(overrides={"tiled": {"uri": "http://127.0.0.1:9/api", "api_key": "s3cret"}})
    assert "s3cret" not in str(secret.as_dict())  # never written into run files or served by the control API


def test_a_catalog_that_cannot_be_opened_keeps_the_runs_as_json_lines(tmp_path):
    """A Tiled server that does not answer: the daemon's documents are saved for replay, nothing blocks."""
    pytest.importorskip("tiled.client")
    stamina = pytest.importorskip("stamina")  # Tiled's client retries a refused connection for ~20 s
    with stamina.set_testing(True, attempts=1):
        catalog = RunCatalog(tmp_path, uri="http://127.0.0.1:9/api/v1", api_key="x").start()
        catalog("start", {"uid": "0123abcd-run", "time": 0.0})
        catalog("stop", {"uid": "stop-1", "run_start": "0123abcd-run", "time": 1.0, "exit_status": "success"})
        catalog.close()
    status = catalog.status()
    assert status["state"] == "failed" and status["errors"] == 1
    assert status["last_error"].startswith("cannot open http://127.0.0.1:9/api/v1: ConnectError")
    (saved,) = (tmp_path / "catalog" / "backup").glob("*.jsonl")
    assert saved.name.startswith("0123abcd") and saved.read_text().count("\n") == 2


def test_without_tiled_auto_goes_on_and_true_is_refused(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bluesky_tiled_plugins" else find_spec(name, *a),
    )
    assert run_catalog(load_config().tiled, tmp_path) is None  # said in the log, the daemon goes on
    with pytest.raises(
        RuntimeError, match=r"tiled.enabled is true but bluesky_tiled_plugins is not installed"
    ):
        run_catalog(load_config(overrides={"tiled": {"enabled": True}}).tiled, tmp_path)
