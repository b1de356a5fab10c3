"""Descriptors declare the shape of one event's frame, as the frames are stored (no leading 1)."""

from livetomo.daemon.testing import xrf_dpc_plan
from livetomo.devices.sim import make_correlative, make_microprobe, make_tem
from livetomo.plans import correlative_acquire, tilt_series


def _external_shapes(descriptors):
    return {
        key: tuple(data_key["shape"])
        for doc in descriptors
        for key, data_key in doc["data_keys"].items()
        if data_key.get("external") == "STREAM:"
    }


def test_every_image_detector_declares_the_frame_it_stores(RE, docs):
    """``docs`` validates every document against event-model's schemas (tests/conftest.py)."""
    probe = make_microprobe(shape=(6, 12, 12), seed=2)
    RE(xrf_dpc_plan(probe, raster_shape=(6, 10)))
    tem = make_tem(shape=(16, 8, 20), seed=3)
    RE(tilt_series(tem.k3, tem.tilt, min_deg=-3, max_deg=3, step_deg=3))
    correlative = make_correlative(seed=4)
    RE(correlative_acquire(correlative.sxt, correlative.fm))
    shapes = _external_shapes(docs.descriptors.values())  # the descriptors of all three runs
    assert shapes["dpc_segments"] == (4, 6, 10)
    assert shapes["xrf_spectra"] == (6, 10, probe.xrf.backend.n_channels)
    assert shapes["k3_image"] == (16, 20)
    stored = {
        "dpc_segments": probe.sink.stack("dpc", "dpc_segments"),
        "xrf_roi": probe.sink.stack("xrf", "xrf_roi"),
        "xrf_spectra": probe.sink.stack("xrf", "xrf_spectra"),
        "k3_image": tem.sink.stack("k3", "k3_image"),
        "sxt_image": correlative.sink.stack("sxt", "sxt_image"),
        "fm_image": correlative.sink.stack("fm", "fm_image"),
    }
    for key, frames in stored.items():  # n events of the declared shape: (n, *shape), as Tiled reads it
        assert frames.shape[1:] == shapes[key], key
    assert stored["dpc_segments"].shape[0] == 2 and stored["k3_image"].shape[0] == 3
