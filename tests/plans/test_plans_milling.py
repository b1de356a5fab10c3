import pytest

from livetomo.devices.sim import make_fib
from livetomo.plans import RecipeError, load_recipe, mill_lamella
from livetomo.simulators.faults import FaultInjector


def test_standard_recipe_stops_each_stage_on_eels_thickness(RE, docs):
    fib = make_fib(initial_thickness_nm=3000.0, seed=1)
    RE(mill_lamella(fib, "standard_lamella"))
    assert docs.stop["exit_status"] == "success"
    recipe = load_recipe("standard_lamella")
    assert [d["name"] for d in docs.descriptors.values()] == [s.name for s in recipe.stages]
    for stage in recipe.stages:
        events = docs.events[stage.name]
        assert len(events) >= 2  # measured before and after milling: never on time alone
        last = events[-1]["data"]
        truth = last["fib_true_thickness"]
        # EELS log-ratio recovers the milled thickness within 5 %
        assert last["fib_eels_thickness"] == pytest.approx(truth, rel=0.05)
        # and the stage stopped at its target, not past it by more than the tolerance
        assert (
            stage.target_thickness_nm - 2 * stage.tolerance_nm
            <= truth
            <= stage.target_thickness_nm + 1.5 * stage.tolerance_nm
        )
        assert all(e["data"]["fib_current"] == pytest.approx(stage.current_A) for e in events)
    assert fib.backend.mill_model.thickness_nm == pytest.approx(200.0, abs=25.0)


def test_every_eels_readback_tracks_the_true_thickness(RE, docs):
    fib = make_fib(initial_thickness_nm=1200.0, seed=3)
    RE(
        mill_lamella(
            fib,
            {
                "stages": [
                    {"name": "polish", "current": "0.2 nA", "target_thickness_nm": 180, "angle_deg": 12}
                ]
            },
        )
    )
    for event in docs.events["polish"]:
        data = event["data"]
        if data["fib_true_thickness"] < 300:
            assert data["fib_eels_thickness"] == pytest.approx(data["fib_true_thickness"], rel=0.05)


BAD_RECIPES = [
    ("stages: [{current: 30 pA, target_thickness_nm: 200, angle_deg: 10}]", r"FIB current 30 pA is not offered; allowed currents: 20 pA, 0.2 nA, 0.74 nA, 2 nA, 7.6 nA"),
    ("stages: [{current: 0.74 nA, target_thickness_nm: 200, angle_deg: 45}]", r"milling angle = 45 deg is outside the allowed range \[0, 30\] deg"),
    ("stages: [{current: 0.74 nA, angle_deg: 10}]", r"missing required field 'target_thickness_nm'"),
    ("stages: [{current: fast, target_thickness_nm: 200, angle_deg: 10}]", r"current 'fast' is not a number"),
    ("stages: [{current: 0.74 nA, target_thickness_nm: -5, angle_deg: 10}]", r"target_thickness_nm = -5 must be > 0"),
    ("stages: [{current: 0.74 nA, target_thickness_nm: 200, angle_deg: 10, speed: 3}]", r"unknown field\(s\) \['speed'\]"),
    ("stages:\n  - {name: a, current: 0.74 nA, target_thickness_nm: 200, angle_deg: 10}\n  - {name: b, current: 20 pA, target_thickness_nm: 300, angle_deg: 10}", r"stage 'b': target_thickness_nm 300 must be thinner"),
    ("stages: [unclosed", r"recipe is not valid YAML"),
    ("name: nothing", r"recipe must be a mapping with a 'stages' list"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD_RECIPES)
def test_bad_recipe_fails_before_anything_moves(RE, docs, text, message):
    fib = make_fib(initial_thickness_nm=2000.0)
    with pytest.raises(RecipeError, match=message):
        RE(mill_lamella(fib, text))
    assert docs.names == []
    assert fib.backend.mill_model.thickness_nm == 2000.0
    assert fib.pattern.milled_s == 0.0


def test_recipe_file_is_read(tmp_path, RE, docs):
    path = tmp_path / "r.yaml"
    path.write_text(
        "stages: [{name: only, current: 2 nA, target_thickness_nm: 1500, angle_deg: 8, tolerance_nm: 40}]\n"
    )
    fib = make_fib(initial_thickness_nm=2500.0, seed=2)
    RE(mill_lamella(fib, str(path)))
    assert abs(fib.backend.mill_model.thickness_nm - 1500) <= 60


def test_stage_that_cannot_reach_target_in_time_fails_with_reason(RE, docs):
    fib = make_fib(initial_thickness_nm=3000.0, faults=FaultInjector(probability={"stalled_motion": 1.0}))
    recipe = {
        "stages": [
            {
                "name": "rough",
                "current": "0.74 nA",
                "target_thickness_nm": 1000,
                "angle_deg": 10,
                "max_time_s": 60,
            }
        ]
    }
    with pytest.raises(Exception, match=r"stage 'rough' did not reach 1000 nm in 60 s; EELS reads \d+ nm"):
        RE(mill_lamella(fib, recipe))
    assert docs.stop["exit_status"] == "fail"
    assert fib.backend.mill_model.thickness_nm == 3000.0  # stalled: nothing was removed
