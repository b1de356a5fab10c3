"""Cryo-FIB milling simulator and EELS log-ratio thickness probe."""

import math

import numpy as np
import pytest

from livetomo.simulators.faults import FaultInjector
from livetomo.simulators.fib import (
    CryoFIBMill,
    UnknownCurrentError,
    available_currents,
    eels_spectrum_ratio,
    sputter_yield_factor,
    thickness_from_log_ratio,
)

# DESIGN.md, 30 kV sputter volume rates (um^3/s).
DESIGN_RATES = {20e-12: 0.0069, 0.2e-9: 0.066, 0.74e-9: 0.335, 2e-9: 0.955, 7.6e-9: 3.04}


def test_available_currents_sorted():
    assert available_currents() == tuple(sorted(DESIGN_RATES))


@pytest.mark.parametrize("current", sorted(DESIGN_RATES))
def test_noise_free_removal_follows_rate_table(current):
    mill = CryoFIBMill(10000.0, pattern_area_um2=50.0, rate_noise=0.0, seed=0)
    removed = mill.mill(current, 20.0, angle_deg=0.0)
    assert removed == pytest.approx(1e3 * DESIGN_RATES[current] * 20.0 / 50.0)
    assert mill.thickness_nm == pytest.approx(10000.0 - removed)


def test_recipe_reaches_targets_within_rate_noise():
    mill = CryoFIBMill(10000.0, rate_noise=0.03, seed=1)
    for current, target in ((0.74e-9, 1000.0), (0.2e-9, 400.0), (20e-12, 200.0)):
        start = mill.thickness_nm
        t = mill.time_to_thickness(current, target, angle_deg=30.0)
        mill.mill(current, t, angle_deg=30.0)
        assert abs(mill.thickness_nm - target) <= 4 * 0.03 * (start - target)
    assert mill.time_to_thickness(20e-12, mill.thickness_nm + 10, 30.0) == 0.0


def test_rate_noise_is_the_stated_relative_spread():
    mill = CryoFIBMill(1e9, rate_noise=0.03, seed=2)
    removed = np.array([mill.mill(2e-9, 1.0, 0.0) for _ in range(2000)])
    nominal = 1e3 * DESIGN_RATES[2e-9] / mill.pattern_area_um2
    assert removed.mean() == pytest.approx(nominal, rel=0.005)
    assert removed.std() / nominal == pytest.approx(0.03, rel=0.1)


def test_unknown_current_names_allowed_currents():
    mill = CryoFIBMill(seed=0)
    with pytest.raises(UnknownCurrentError) as info:
        mill.mill(1e-9, 10.0, 0.0)
    msg = str(info.value)
    assert "current_A" in msg
    for name in ("20 pA", "0.2 nA", "0.74 nA", "2 nA", "7.6 nA"):
        assert name in msg
    assert isinstance(info.value, ValueError)
    assert mill.thickness_nm == 10000.0
    with pytest.raises(UnknownCurrentError):
        mill.time_to_thickness(3e-10, 200.0, 0.0)


def test_sputter_yield_angle_dependence():
    assert sputter_yield_factor(0.0) == pytest.approx(1.0)
    # Small angles: grows at least as fast as 1/cos.
    assert sputter_yield_factor(30.0) > 1.0 / math.cos(math.radians(30.0)) * 0.99
    angles = np.linspace(0.0, 89.9, 2000)
    f = sputter_yield_factor(angles)
    assert 75.0 <= angles[np.argmax(f)] <= 80.0
    assert np.all(np.diff(f[angles < 75]) > 0)
    assert sputter_yield_factor(89.5) < 0.5 and sputter_yield_factor(90.0) == 0.0
    assert sputter_yield_factor(-40.0) == sputter_yield_factor(40.0)


def test_log_ratio_inverts_beer_lambert():
    total = 1e6
    assert thickness_from_log_ratio(total, total * math.exp(-200 / 350), 350.0) == pytest.approx(200.0)
    tot, zl = eels_spectrum_ratio(200.0, mfp_nm=350.0, counts=1e6, rng=3)
    assert zl / tot == pytest.approx(math.exp(-200 / 350), rel=0.01)
    assert eels_spectrum_ratio(200.0, rng=3) == (tot, zl)  # default: ice at 300 kV, 350 nm


@pytest.mark.parametrize("target", [150.0, 200.0, 250.0])
def test_eels_readback_recovers_milled_thickness(target):
    mill = CryoFIBMill(600.0, seed=int(target))
    mill.mill(20e-12, mill.time_to_thickness(20e-12, target, 20.0), 20.0)
    truth = mill.thickness_nm
    assert mill.eels_thickness_nm() == pytest.approx(truth, rel=0.05)


def test_stalled_motion_removes_nothing():
    faults = FaultInjector(schedule={"stalled_motion": [0]})
    mill = CryoFIBMill(5000.0, seed=4, faults=faults)
    assert mill.mill(0.74e-9, 60.0, 30.0) == 0.0
    assert mill.thickness_nm == 5000.0
    assert mill.mill(0.74e-9, 60.0, 30.0) > 0.0
    assert faults.fired["stalled_motion"] == 1
