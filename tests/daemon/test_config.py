"""The daemon's configuration: every mistake is refused at start-up with the key named."""

import json

import h5py
import numpy as np
import pytest

from livetomo.daemon.config import ConfigError, load_config
from livetomo.daemon.testing import daemon_overrides, running_daemon, wait_until


def test_defaults_bind_every_endpoint_to_loopback():
    config = load_config()
    for endpoint in (config.endpoints.frames, config.endpoints.results, config.endpoints.control):
        assert endpoint.startswith("tcp://127.0.0.1:")


@pytest.mark.parametrize(
    "address", ["tcp://0.0.0.0:6000", "tcp://*:6000", "tcp://10.1.2.3:6000", "tcp://beamline-pc:6000"]
)
def test_non_loopback_bind_needs_curve_keys(address):
    with pytest.raises(ConfigError, match=r"bind beyond loopback; configure curve.server_secret_key"):
        load_config(overrides={"endpoints": {"control": address}})


def test_yaml_config_is_checked(tmp_path):
    path = tmp_path / "daemon.yaml"
    path.write_text("endpoints:\n  control: tcp://127.0.0.1:6101\nlimits:\n  ingest_queue: 8\n")
    config = load_config(path)
    assert config.endpoints.control == "tcp://127.0.0.1:6101" and config.limits.ingest_queue == 8
    path.write_text("limits:\n  ingest_queue: 8\n  speed: 3\n")
    with pytest.raises(
        ConfigError, match=r"daemon.yaml: unknown key config.limits.speed; allowed in config.limits"
    ):
        load_config(path)
    path.write_text("endpoints: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # wrong types
        ({"web": {"port": "eighty"}}, r"config.web.port = 'eighty' must be an integer"),
        ({"limits": {"ingest_queue": 2.5}}, r"config.limits.ingest_queue = 2.5 must be an integer"),
        ({"processing": {"align": "yes"}}, r"config.processing.align = 'yes' must be true or false"),
        (
            {"processing": {"refine_seconds": "ten"}},
            r"config.processing.refine_seconds = 'ten' must be a finite number",
        ),
        ({"endpoints": {"control": 5580}}, r"config.endpoints.control = 5580 must be a string"),
        (
            {"beamline": {"microprobe_shape": [32, 64]}},
            r"beamline.microprobe_shape = \[32, 64\] must be a list of 3",
        ),
        ({"web": [8080]}, r"config.web must be a mapping of keys, got list"),
        # values outside what is allowed
        (
            {"processing": {"refine": "tvv"}},
            r"config.processing.refine = 'tvv' is not allowed; allowed: 'tv', 'sirt', null",
        ),
        ({"web": {"port": 70000}}, r"config.web.port = 70000 is outside the allowed range \[0, 65535\]"),
        (
            {"limits": {"process_queue": 0}},
            r"config.limits.process_queue = 0 is outside the allowed range \[1, inf\]",
        ),
        ({"processing": {"preview_every": -1}}, r"config.processing.preview_every = -1 is outside"),
        (
            {"beamline": {"microprobe_shape": [4, 64, 64]}},
            r"beamline.microprobe_shape = \[4, 64, 64\] must be three sizes in \[8, 1024\]",
        ),
        (
            {"beamline": {"tem_blanked_exposures": [3, -1]}},
            r"beamline.tem_blanked_exposures = \[3, -1\]: exposure numbers must be >= 0",
        ),
        # unknown keys, with a suggestion
        (
            {"processing": {"refine_iteration": 5}},
            r"unknown key config.processing.refine_iteration \(did you mean 'refine_iterations'\?\)",
        ),
        (
            {"endpoint": {"control": "tcp://127.0.0.1:1"}},
            r"unknown key config.endpoint \(did you mean 'endpoints'\?\)",
        ),
        ({"beamline": {"sead": 3}}, r"unknown key beamline.sead \(did you mean 'seed'\?\)"),
        # storage
        (
            {"storage": {"compression": "zip"}},
            r"config.storage.compression = 'zip' is not allowed; allowed: 'bitshuffle-lz4', 'blosc-lz4', "
            r"'blosc-zstd', 'gzip', 'none'",
        ),
        ({"storage": {"compression": None}}, r"config.storage.compression = None is not allowed"),
        ({"storage": {"xrf_spectra": "no"}}, r"config.storage.xrf_spectra = 'no' must be true or false"),
        (
            {"storage": {"compresion": "gzip"}},
            r"unknown key config.storage.compresion \(did you mean 'compression'\?\)",
        ),
        ({"storage": "gzip"}, r"config.storage must be a mapping of keys, got str"),
        # run-end refinement on Dask
        (
            {"processing": {"dask": {"worker": 4}}},
            r"unknown key config.processing.dask.worker \(did you mean 'workers'\?\)",
        ),
        (
            {"processing": {"dask": {"scheduler": "host:8786"}}},
            r"processing.dask.scheduler = 'host:8786' must be a scheduler address",
        ),
        ({"processing": {"dask": {"workers": 0}}}, r"config.processing.dask.workers = 0 is outside"),
        ({"processing": {"dask": "yes"}}, r"config.processing.dask must be a mapping of keys, got str"),
        # unknown beamline kind
        (
            {"beamline": {"kind": "epcs"}},
            r"beamline.kind = 'epcs' is not a known beamline; known: epics, simulated",
        ),
    ],
)
def test_each_configuration_mistake_is_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_dask_is_off_by_default_and_a_section_turns_it_on():
    assert load_config().processing.dask is None
    local = load_config(overrides={"processing": {"dask": {}}}).processing.dask
    assert (local.scheduler, local.workers) == (None, 2)  # an embedded LocalCluster
    remote = load_config(
        overrides={"processing": {"dask": {"scheduler": "tcp://cluster:8786"}}}
    ).processing.dask
    assert remote.scheduler == "tcp://cluster:8786"


def test_a_misspelt_key_in_a_file_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "daemon.yaml"
    path.write_text("processing:\n  refine: tvv\n")
    with pytest.raises(ConfigError, match=r"daemon.yaml: config.processing.refine = 'tvv' is not allowed"):
        load_config(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"the configuration must be a mapping of sections, got list"):
        load_config(path)


def test_serve_refuses_a_bad_configuration_before_binding_anything(tmp_path):
    from livetomo.daemon.cli import main

    path = tmp_path / "daemon.yaml"
    path.write_text("beamline:\n  kind: epics-typo\n")
    assert main(["serve", "--config", str(path)]) == 1


def test_the_effective_configuration_is_written_into_each_run_file(tmp_path):
    with running_daemon(tmp_path, processing={"refine": None, "preview_every": 2}) as daemon:
        daemon.api.queue_add("tomo_scan", {"angles": [0, 45, 90]})
        daemon.runner.start_queue()
        summary = wait_until(
            lambda: daemon.pipeline.finished_runs and daemon.pipeline.finished_runs[-1], what="run"
        )
    with h5py.File(summary["file"], "r") as f:
        note = f["entry/processing/configuration"]
        assert note.attrs["NX_class"] == "NXnote" and note["type"][()] == b"application/json"
        stored = json.loads(note["data"][()])
    expected = load_config(
        overrides=daemon_overrides(tmp_path, processing={"refine": None, "preview_every": 2})
    )
    assert stored == json.loads(json.dumps(expected.as_dict()))
    assert stored["processing"]["refine"] is None and stored["beamline"]["kind"] == "simulated"


def test_storage_settings_choose_the_filter_and_whether_xrf_spectra_are_kept(tmp_path):
    """``storage: {compression: gzip, xrf_spectra: false}``: frames gzip-compressed (any HDF5 reader),
    XRF element maps stored, the per-pixel spectra not; the PyXRF export then holds the maps."""
    storage = {"compression": "gzip", "xrf_spectra": False}
    with running_daemon(tmp_path, storage=storage, processing={"refine": None}) as daemon:
        daemon.api.queue_add(
            "xrf_dpc_tomo", {"angles": [0, 60, 120], "dwell_s": 0.003, "raster_shape": [12, 32]}
        )
        daemon.runner.start_queue()
        summary = wait_until(
            lambda: daemon.pipeline.finished_runs and daemon.pipeline.finished_runs[-1], what="run"
        )
        world = daemon.beamline.truth["microprobe"]
    assert summary["complete"] and summary["error"] is None
    with h5py.File(summary["file"], "r") as f:  # plain h5py: gzip needs no plugin
        instrument = f["entry/instrument"]
        assert "xrf_spectra" not in instrument and "xrf_roi" in instrument
        for stream in ("dpc_segments", "dpc_sum", "xrf_roi"):
            assert instrument[f"{stream}/data"].compression == "gzip"
        segments = instrument["dpc_segments/data"][()]
        np.testing.assert_array_equal(segments, [r.segments for r in world.history])
        assert json.loads(f["entry/processing/configuration/data"][()])["storage"] == {
            **storage,
            "flush_interval_s": 1.0,
        }
    with h5py.File(summary["exports"][0], "r") as f:
        assert "counts" not in f["xrfmap/detsum"] and f["xrfmap/detsum/xrf_roi"].shape == (7, 12, 32)
