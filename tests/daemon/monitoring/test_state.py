"""MonitorState against a simulated scan's results stream (true runout from the stage simulator)."""

import threading

import numpy as np
import pytest

from livetomo.daemon.monitoring import MonitorState, apply_delta, coalesce
from livetomo.daemon.testing import SimulatedScan
from livetomo.daemon.transport import decode_image, encode_image
from livetomo.simulators.stages import RotationStageModel

PIXEL_NM = 300.0


def feed(state, messages):
    for topic, payload in messages:
        state.update(topic, payload)


@pytest.fixture(scope="module")
def scan():
    return SimulatedScan(n_angles=40, size=32, low_quality=(7, 23), seed=3)


@pytest.fixture(scope="module")
def messages(scan):
    return list(scan.messages())


def test_full_run_progress_traces_and_quality_follow_the_scan(scan, messages):
    state = MonitorState()
    feed(state, messages)
    snap = state.snapshot()
    run, p = snap["run"], snap["progress"]
    assert run["uid"] == scan.run_uid and run["method"] == "xrf-dpc" and run["ended"] and run["complete"]
    assert p["frames_done"] == p["frames_planned"] == 40 and p["angles_done"] == p["angles_planned"] == 40
    assert p["dose_so_far"] == pytest.approx(40 * scan.dose_per_frame)
    assert p["dose_planned"] == pytest.approx(40 * scan.dose_per_frame)
    assert p["elapsed_s"] == pytest.approx(scan.time_of(39) - scan.t0) and p["eta_s"] == 0
    # the trace is the stage's true runout for every good frame; failed frames are marked
    arrays = state.frame_arrays()
    np.testing.assert_allclose(arrays["angle"], scan.angles)
    good = arrays["ok"]
    assert list(np.flatnonzero(~good)) == [7, 23] and p["low_quality"] == 2
    assert np.abs(arrays["shift"][good] - scan.true_shifts[good]).max() < 0.25
    assert np.abs(arrays["shift"][~good] - scan.true_shifts[~good]).max() > 1.0
    assert (arrays["fwhm"][~good] > 20).all() and (arrays["psr"][~good] < 5).all()
    # the fitted runout shown is the stage's true runout model (µm -> px)
    fit_angles, fit = np.asarray(snap["runout"]["fit_angles"]), np.asarray(snap["runout"]["fit"])
    truth = RotationStageModel(seed=3).runout_um(fit_angles).T * 1e3 / PIXEL_NM
    assert fit.shape == truth.shape and np.abs(fit - truth).max() < 0.3
    assert snap["runout"]["centre_px"] is not None


def test_latest_images_per_channel_are_kept_encoded(scan, messages):
    state = MonitorState()
    feed(state, messages)
    snap = state.snapshot()
    assert set(snap["projections"]) == set(snap["slices"]) == {"dpc", "Zn"}
    projection = snap["projections"]["Zn"]
    assert projection["seq"] == 40
    np.testing.assert_array_equal(
        decode_image(projection["raw"]), scan.projection_image("Zn", 39, shifted=True)
    )
    np.testing.assert_array_equal(
        decode_image(projection["aligned"]), scan.projection_image("Zn", 39, shifted=False)
    )
    slices = snap["slices"]["dpc"]
    assert slices["n_projections"] == 40
    truth = scan.slice_images("dpc", 39)
    for plane in ("xy", "xz", "yz"):
        np.testing.assert_allclose(decode_image(slices[plane]), truth[plane], rtol=1e-5, atol=1e-9)


def test_mid_run_eta_and_dose(scan, messages):
    state = MonitorState()
    half = messages.index(("status", scan.status(19))) + 1
    feed(state, messages[:half])
    p = state.snapshot()["progress"]
    assert p["frames_done"] == 20 and p["angles_done"] == 20
    elapsed = scan.time_of(19) - scan.t0
    assert p["elapsed_s"] == pytest.approx(elapsed)
    assert p["eta_s"] == pytest.approx(elapsed / 20 * 20)
    assert p["dose_so_far"] == pytest.approx(20 * scan.dose_per_frame)


def test_viewer_joining_mid_run_sees_the_state_so_far(scan, messages):
    """A monitor started mid-run (no run_start seen) still builds the run from what follows."""
    state = MonitorState()
    start = messages.index(("frame", scan.frame(10)))
    feed(state, messages[start:])
    snap = state.snapshot()
    assert snap["run"]["uid"] == scan.run_uid and snap["run"]["joined_mid_run"]
    assert [f["seq"] for f in snap["frames"]] == list(range(11, 41))
    assert snap["progress"]["frames_done"] == 40 and snap["progress"]["frames_planned"] == 40
    assert snap["run"]["ended"] and snap["run"]["frames_received"] == 40


def test_snapshot_plus_deltas_equals_the_live_state(scan, messages):
    """What the page does: a snapshot at any point, then the deltas after it."""
    state = MonitorState()
    deltas = []
    state.add_listener(deltas.append)
    cut = len(messages) // 3
    feed(state, messages[:cut])
    view = state.snapshot()
    # deltas that raced the snapshot (not newer) must be ignored, not applied twice
    for delta in deltas[-5:]:
        view = apply_delta(view, delta)
    assert view == state.snapshot()
    n_before = len(deltas)
    feed(state, messages[cut:])
    for delta in deltas[n_before:]:
        view = apply_delta(view, delta)
    assert view == state.snapshot()


def test_coalesced_deltas_have_the_same_effect(scan, messages):
    state = MonitorState()
    deltas = []
    state.add_listener(deltas.append)
    feed(state, messages[:30])
    early = state.snapshot()
    feed(state, messages[30:])
    combined = coalesce(deltas)
    assert len(combined) < len(deltas) / 10
    view = None
    for delta in combined:
        view = apply_delta(view, delta)
    assert view == state.snapshot()
    # a viewer whose snapshot falls inside a coalesced group gets no duplicate frames
    view = early
    for delta in coalesce(deltas[5:]):
        view = apply_delta(view, delta)
    assert view == state.snapshot()


def test_frames_are_bounded_per_run():
    scan = SimulatedScan(n_angles=50, size=32)
    state = MonitorState(max_frames=16)
    feed(state, scan.messages(previews=False))
    snap = state.snapshot()
    assert [f["seq"] for f in snap["frames"]] == list(range(35, 51))
    assert snap["progress"]["frames_done"] == 50 and snap["progress"]["angles_done"] == 50
    assert state.frame_arrays()["shift"].shape == (16, 2)


def test_a_new_run_resets_and_late_messages_of_the_old_run_are_ignored():
    first, second = SimulatedScan(n_angles=6, size=32, seed=1), SimulatedScan(n_angles=4, size=32, seed=2)
    state = MonitorState()
    feed(state, first.messages())
    state.update("run_start", second.run_start())
    version = state.version
    assert state.update("frame", first.frame(5)) is None  # late message of the finished run
    assert state.version == version
    snap = state.snapshot()
    assert snap["run"]["uid"] == second.run_uid and snap["frames"] == [] and snap["projections"] == {}
    assert snap["progress"]["frames_planned"] == 4


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("frame", {"shift": "abc"}, "shift"),
        ("frame", {"angle": "north"}, "angle"),
        ("frame", {"quality": {"psr": [1]}}, "psr"),
        (
            "projection",
            {"channel": "dpc", "raw": {"shape": [2, 2], "dtype": "float32", "data": "AAAA"}},
            "raw",
        ),
        ("slices", {"channel": None}, "channel"),
        ("run_start", {"run_uid": 7}, "run_uid"),
    ],
)
def test_malformed_messages_are_counted_not_raised(scan, topic, payload, reason):
    state = MonitorState()
    state.update("run_start", scan.run_start())
    state.update("frame", scan.frame(0))
    before = state.snapshot()
    delta = state.update(topic, {"run_uid": scan.run_uid, **payload})
    after = state.snapshot()
    assert state.rejected == 1 and reason in after["health"]["monitor_errors"][-1]
    assert delta["merge"]["health"]["monitor_rejected"] == 1
    assert after["frames"] == before["frames"] and after["projections"] == before["projections"]


def test_status_fills_health_and_starts_a_run_seen_only_through_status(scan):
    state = MonitorState()
    state.update("status", scan.status(9, rejected=2, errors=("align: peak not found at 27.0 deg",)))
    snap = state.snapshot()
    assert snap["run"]["uid"] == scan.run_uid and snap["run"]["joined_mid_run"]
    assert snap["progress"]["frames_done"] == 10 and snap["progress"]["frames_planned"] == 40
    assert snap["progress"]["eta_s"] == pytest.approx((scan.time_of(9) - scan.t0) / 10 * 30)
    health = snap["health"]
    assert health["frames_received"] == 12 and health["frames_rejected"] == 2
    assert health["rejected_by_reason"] == {"non-finite values": 2}
    assert health["stages"]["align"]["queue_depth"] == 1
    assert health["last_errors"] == ["align: peak not found at 27.0 deg"]


def test_milling_stages_against_target():
    state = MonitorState()
    readings = [
        ("rough", 1000, 1600),
        ("rough", 1000, 1050),
        ("fine", 400, 700),
        ("fine", 400, 420),
        ("polish", 200, 210),
    ]
    for k, (stage, target, thickness) in enumerate(readings):
        state.update(
            "milling",
            {
                "run_uid": "mill",
                "stage": stage,
                "target_nm": target,
                "thickness_nm": thickness,
                "current_A": 2e-10,
                "elapsed_s": 10.0 * k,
            },
        )
    stages = state.snapshot()["milling"]["stages"]
    assert [s["stage"] for s in stages] == ["rough", "fine", "polish"]
    assert [s["target_nm"] for s in stages] == [1000, 400, 200]
    assert [r[1] for r in stages[1]["readings"]] == [700, 420]


def test_correlative_overlay_and_sigma_t():
    rng = np.random.default_rng(0)
    fused = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    sigma = np.sqrt(31.0**2 + 42.0**2 + 85.0**2)
    state = MonitorState()
    state.update(
        "correlative",
        {
            "run_uid": "c",
            "sigma_t_nm": sigma,
            "sigma_x_nm": 31.0,
            "sigma_f_nm": 42.0,
            "sigma_a_nm": 85.0,
            "fused": encode_image(fused),
        },
    )
    corr = state.snapshot()["correlative"]
    assert corr["sigma_t_nm"] == pytest.approx(100.0, abs=1.0)
    np.testing.assert_array_equal(decode_image(corr["fused"]), fused)


def test_concurrent_updates_keep_every_frame_and_version_order():
    scan = SimulatedScan(n_angles=200, size=32)
    state = MonitorState()
    state.update("run_start", scan.run_start())
    versions = []
    state.add_listener(lambda d: versions.append(d["version"]))

    def worker(k):
        for i in range(k, 200, 4):
            state.update("frame", scan.frame(i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = state.snapshot()
    assert sorted(f["seq"] for f in snap["frames"]) == list(range(1, 201))
    assert versions == list(range(2, 202))
    assert snap["progress"]["angles_done"] == 200
