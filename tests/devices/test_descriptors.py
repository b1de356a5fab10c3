"""Descriptors declare the shape of one event's frame, as the frames are stored (no leading 1)."""

from bluesky import RunEngine
from event_model import DocumentNames, schema_validators

from livetomo.devices.sim import make_correlative, make_microprobe, make_tem
from livetomo.plans import correlative_acquire, tilt_series, xrf_dpc_tomo


def _run(plan):
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(plan)
    for name, doc in docs:
        schema_validators[DocumentNames(name)].validate(doc)
    return docs


def _external_shapes(docs):
    shapes = {}
    for name, doc in docs:
        if name == "descriptor":
            for key, data_key in doc["data_keys"].items():
                if data_key.get("external") == "STREAM:":
                    shapes[key] = tuple(data_key["shape"])
    return shapes


def test_every_image_detector_declares_the_frame_it_stores():
    probe = make_microprobe(shape=(6, 12, 12), seed=2)
    docs = _run(
        xrf_dpc_tomo(
            probe.dpc,
            probe.xrf,
            probe.rotation,
            probe.scan,
            [0.0, 90.0],
            raster_shape=(6, 10),
            pixel_size_um=0.3,
            dwell_s=0.003,
        )  # fmt: skip
    )
    tem = make_tem(shape=(16, 8, 20), seed=3)
    docs += _run(tilt_series(tem.k3, tem.tilt, min_deg=-3, max_deg=3, step_deg=3))
    correlative = make_correlative(seed=4)
    docs += _run(correlative_acquire(correlative.sxt, correlative.fm))
    shapes = _external_shapes(docs)
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
