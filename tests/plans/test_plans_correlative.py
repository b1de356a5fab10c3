import numpy as np

from livetomo.devices.sim import make_correlative
from livetomo.plans import correlative_acquire


def test_correlative_acquire_records_both_modalities_of_the_same_scene(RE, docs):
    devices = make_correlative(seed=3)
    RE(correlative_acquire(devices.sxt, devices.fm))
    assert docs.stop["exit_status"] == "success"
    assert len(docs.events["primary"]) == 1
    np.testing.assert_array_equal(
        devices.sink.stack("sxt", "sxt_image")[0], devices.scene.sxt.astype(np.float32)
    )
    np.testing.assert_array_equal(
        devices.sink.stack("fm", "fm_image")[0], devices.scene.fm.astype(np.float32)
    )
    keys = {docs.stream_resources[uid]["data_key"] for uid in docs.stream_datums}
    assert keys == {"sxt_image", "fm_image"}
    config = docs.descriptors[next(iter(docs.descriptors))]["configuration"]
    assert config["sxt"]["data"]["sxt_pixel_size"] == devices.scene.sxt_pixel_nm
    assert config["fm"]["data"]["fm_pixel_size"] == devices.scene.fm_pixel_nm
