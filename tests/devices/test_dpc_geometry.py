"""Phase in radians from DPC through the detector's geometry, checked against the simulator's phase."""

import numpy as np
import pytest

from livetomo.devices.motion import RasterSpec
from livetomo.devices.sim import make_microprobe
from livetomo.devices.xray import dpc_sensitivity
from livetomo.processing.dpc import dpc_from_segments
from livetomo.processing.recon import phase_from_dpc
from livetomo.simulators.microprobe import dpc_sensitivity_from_optics


def test_the_detector_states_its_sensitivity_from_its_geometry():
    probe = make_microprobe(shape=(16, 40, 40), seed=0)
    probe.dpc.prepare(RasterSpec(shape=(16, 40), pixel_size_um=0.3, dwell_s=0.03))
    config = probe.dpc.read_configuration()
    kappa = config["dpc_sensitivity"]["value"]
    assert config["dpc_zone_width"]["value"] == 80.0
    assert (
        kappa
        == pytest.approx(dpc_sensitivity(80.0, 300.0))
        == pytest.approx(dpc_sensitivity_from_optics(300.0))
    )
    assert "dpc_sensitivity" in probe.dpc.describe_configuration()


def test_phase_from_dpc_in_radians_matches_the_true_phase():
    probe = make_microprobe(shape=(16, 48, 48), seed=1)
    world = probe.world.probe
    result = world.raster(30.0, dwell_s=0.03, shape=(24, 64))  # the field covers the ice: flat borders
    h, v, _ = dpc_from_segments(result.segments)
    kappa = dpc_sensitivity(world.zone_width_nm, world.pixel_size_nm)
    phase = phase_from_dpc(h, v, sensitivity=kappa, background="edge")
    true = result.true_phase - np.median(
        np.r_[result.true_phase[:, :2].ravel(), result.true_phase[:, -2:].ravel()]
    )
    slope = float(np.sum(phase * true) / np.sum(true * true))
    assert slope == pytest.approx(1.0, abs=0.01)  # rad, not arbitrary units
    assert np.corrcoef(phase.ravel(), true.ravel())[0, 1] > 0.999
