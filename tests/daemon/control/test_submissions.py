"""Submissions are checked against the plan's annotated signature: each refusal names the parameter."""

import pytest

from livetomo.daemon.control import PlanCatalog, SubmissionError
from livetomo.devices.beamlines import beamline_module
from livetomo.devices.sinks import MemorySink


@pytest.fixture(scope="module")
def catalog():
    module = beamline_module("simulated")
    beamline = module.build(
        module.Settings(microprobe_shape=(8, 24, 24), tem_shape=(16, 8, 16)), sink=MemorySink()
    )
    return PlanCatalog(beamline.devices, plan_defaults=beamline.plan_defaults)


XRF = {"start": 0, "stop": 180, "num": 5, "dwell_s": 0.003, "raster_shape": [8, 24]}


@pytest.mark.parametrize(
    ("plan", "kwargs", "message"),
    [
        (
            "xrf_dpc_tomo",
            {**XRF, "start": "zero"},
            r"xrf_dpc_tomo: start = 'zero' is not a number$",
        ),
        ("xrf_dpc_tomo", {**XRF, "num": "abc"}, r"xrf_dpc_tomo: num = 'abc' is not an integer"),
        (
            "xrf_dpc_tomo",
            {**XRF, "num": 61.5},
            r"xrf_dpc_tomo: num = 61.5 is not an integer \(a whole number, e.g. 61\)",
        ),
        ("xrf_dpc_tomo", {**XRF, "num": True}, r"num = True is not an integer"),
        ("xrf_dpc_tomo", {**XRF, "dwell_s": float("nan")}, r"dwell_s = nan is not a finite number"),
        ("xrf_dpc_tomo", {**XRF, "raster_shape": [8]}, r"raster_shape = \[8\] is not a list of 2 integers"),
        (
            "xrf_dpc_tomo",
            {**XRF, "raster_shape": [8, "wide"]},
            r"raster_shape\[1\] = 'wide' is not an integer",
        ),
        ("tomo_scan", {"angles": [0, "ninety"]}, r"tomo_scan: angles\[1\] = 'ninety' is not a number"),
        ("tomo_scan", {"angles": 90}, r"tomo_scan: angles = 90 is not a list of numbers$"),
        (
            "tomo_scan",
            {"rotation": 3, "angles": [0]},
            r"tomo_scan: rotation = 3 is not a device name; devices:",
        ),
        ("tilt_series", {"order": 5}, r"tilt_series: order = 5 is not a string"),
        (
            "tilt_series",
            {"on_tilt": "print"},
            r"on_tilt takes a Python callable; it cannot be given in a submission",
        ),
        (
            "mill_lamella",
            {"recipe": "standard_lamelle"},
            r"mill_lamella: unknown recipe 'standard_lamelle'; known recipes: standard_lamella",
        ),
        (
            "mill_lamella",
            {"recipe": "/etc/hosts.yaml"},
            r"unknown recipe '/etc/hosts.yaml'; known recipes: standard_lamella",
        ),
        ("mill_lamella", {}, r"mill_lamella needs parameter\(s\) recipe \(a string or a mapping\)"),
        ("tomo_scan", {"angels": [0]}, r"tomo_scan has no parameter 'angels' \(did you mean 'angles'\?\)"),
        ("tomo_scn", {}, r"unknown plan 'tomo_scn' \(did you mean 'tomo_scan'\?\)"),
    ],
)
def test_a_bad_parameter_is_refused_naming_it_and_what_it_expects(catalog, plan, kwargs, message):
    with pytest.raises(SubmissionError, match=message):
        catalog.check(plan, kwargs)


def test_values_are_converted_to_what_the_plan_expects(catalog):
    kwargs, md = catalog.check("xrf_dpc_tomo", {**XRF, "num": 5.0, "start": 0}, {"sample": "cell 3"})
    assert kwargs["num"] == 5.0 and md == {"sample": "cell 3"}  # queued as given ...
    plan = catalog.make_plan("xrf_dpc_tomo", kwargs, md)  # ... and converted when it is made
    assert plan.gi_frame is not None
    plan.close()


def test_metadata_must_be_plain_json(catalog):
    with pytest.raises(SubmissionError, match=r"md must be a mapping of metadata"):
        catalog.check("tomo_scan", {"angles": [0]}, ["sample"])
    with pytest.raises(SubmissionError, match=r"md must hold plain JSON values"):
        catalog.check("tomo_scan", {"angles": [0]}, {"x": float("nan")})


def test_describe_plans_lists_kinds_defaults_and_what_is_required(catalog):
    plans = catalog.describe_plans()
    xrf = plans["xrf_dpc_tomo"]["parameters"]
    assert xrf["num"] == {"kind": "an integer (or null)", "default": None, "required": False}
    assert xrf["rotation"]["kind"] == "device name" and xrf["rotation"]["default"] == "rotation"
    assert plans["mill_lamella"]["parameters"]["recipe"]["required"] is True
