import threading
import time

import pytest

from livetomo.daemon.beamline import SubmissionError, simulated_beamline
from livetomo.daemon.control import ControlAPI
from livetomo.daemon.queue import PlanQueue, PlanRunner
from livetomo.daemon.runs import RunCollector
from livetomo.devices.sinks import MemorySink


@pytest.fixture
def api():
    beamline = simulated_beamline(MemorySink(), microprobe_shape=(8, 24, 24), tem_shape=(16, 8, 16))
    queue = PlanQueue()
    collector = RunCollector(validate=True)
    runner = PlanRunner(beamline, queue, subscribers=[collector])
    runner.start()
    api = ControlAPI(runner, queue, status=lambda: {}, config={})
    api.collector = collector
    yield api
    runner.close()


def _wait(predicate, timeout=30.0):
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def test_impossible_plan_is_refused_at_submission_and_nothing_moves(api):
    rotation = api.runner.beamline.devices["rotation"]
    with pytest.raises(
        SubmissionError, match=r"angles\[1\] = 500 deg is outside the allowed range \[-360, 360\] deg"
    ):
        api.queue_add("xrf_dpc_tomo", {"angles": [0, 500], "dwell_s": 0.003, "raster_shape": [8, 24]})
    with pytest.raises(SubmissionError, match=r"total dose .* exceeds dose_budget"):
        api.queue_add("tilt_series", {"dose_per_tilt": 3.0, "dose_budget": 10.0})
    with pytest.raises(SubmissionError, match=r"FIB current 1 nA is not offered"):
        api.queue_add(
            "mill_lamella",
            {"recipe": {"stages": [{"current": "1 nA", "target_thickness_nm": 200, "angle_deg": 10}]}},
        )
    with pytest.raises(
        SubmissionError, match=r"unknown plan 'spin'; plans: correlative_acquire, mill_lamella"
    ):
        api.queue_add("spin", {})
    with pytest.raises(SubmissionError, match=r"unknown device 'det9' for detectors"):
        api.queue_add("tomo_scan", {"detectors": ["det9"], "angles": [0]})
    with pytest.raises(SubmissionError, match=r"tomo_scan: got an unexpected keyword argument 'speed'"):
        api.queue_add("tomo_scan", {"angles": [0], "speed": 3})
    assert api.queue.items() == [] and rotation.position == 0.0
    assert api.collector.names == []


def test_queue_runs_plans_in_order_and_keeps_history(api):
    first = api.queue_add("tilt_series", {"min_deg": -6, "max_deg": 6, "step_deg": 3})
    second = api.queue_add("tomo_scan", {"detectors": ["dpc"], "angles": [0, 90]}, position=0)
    assert [i.uid for i in api.queue.items()] == [second["uid"], first["uid"]]
    api.handle(b'{"cmd": "queue_start"}')
    _wait(lambda: len(api.queue.history) == 2 and api.runner.state == "idle")
    assert [h.plan for h in api.queue.history] == ["tomo_scan", "tilt_series"]
    assert all(h.state == "success" and len(h.run_uids) == 1 for h in api.queue.history)
    assert api.collector.stop["exit_status"] == "success"
    assert api.collector.start["queue_item_uid"] == first["uid"]


def test_abort_a_running_plan(api):
    seen = threading.Event()
    api.runner.RE.subscribe(lambda name, doc: seen.set() if name == "event" else None)
    api.queue_add(
        "xrf_dpc_tomo", {"start": 0, "stop": 180, "num": 400, "dwell_s": 0.003, "raster_shape": [8, 24]}
    )
    api.runner.start_queue()
    assert seen.wait(30)
    reply = api.handle(b'{"cmd": "abort"}')
    assert reply == {"ok": True, "result": None}
    _wait(lambda: api.queue.history)
    assert api.queue.history[0].state == "abort"
    assert api.collector.stop["exit_status"] == "abort"
    assert len(api.collector.events["primary"]) < 400


def test_pause_then_resume_finishes_the_plan(api):
    seen = threading.Event()
    api.runner.RE.subscribe(lambda name, doc: seen.set() if name == "event" else None)
    api.queue_add(
        "xrf_dpc_tomo", {"start": 0, "stop": 180, "num": 60, "dwell_s": 0.003, "raster_shape": [8, 24]}
    )
    api.runner.start_queue()
    assert seen.wait(30)
    api.runner.pause()
    _wait(lambda: api.runner.state == "paused")
    _wait(
        lambda: api.status()["current"]["state"] == "paused"
    )  # the worker notices right after the RunEngine
    api.runner.command("resume")
    _wait(lambda: api.queue.history)
    assert api.queue.history[0].state == "success"
    assert len(api.collector.events["primary"]) == 60


def test_malformed_requests_get_reasons(api):
    assert api.handle(b"\x80\x04\x95 pickle")["error"].startswith("request is not JSON")
    assert api.handle(b"[1, 2]")["error"] == 'request must be a JSON object with a "cmd" field'
    assert "unknown command 'fly'" in api.handle(b'{"cmd": "fly"}')["error"]
    assert "nothing to resume: the RunEngine is idle" in api.handle(b'{"cmd": "resume"}')["error"]
    assert "queue_move: bad arguments" in api.handle(b'{"cmd": "queue_move"}')["error"]
