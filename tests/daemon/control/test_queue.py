"""The plan queue and its worker: order, history, pause/resume, and queueserver's stopping rules."""

import threading

import pytest

from livetomo.daemon.control import (
    ControlAPI,
    PlanCatalog,
    PlanQueue,
    PlanRunner,
    QueueItem,
    QueueStore,
    SubmissionError,
)
from livetomo.daemon.pipeline import RunCollector
from livetomo.daemon.testing import wait_until
from livetomo.devices.beamlines import beamline_module
from livetomo.devices.sinks import MemorySink

SCAN = {"start": 0, "stop": 180, "num": 400, "dwell_s": 0.003, "raster_shape": [8, 24]}


def make_api(store=None):
    module = beamline_module("simulated")
    beamline = module.build(
        module.Settings(microprobe_shape=(8, 24, 24), tem_shape=(16, 8, 16)), sink=MemorySink()
    )
    catalog = PlanCatalog(beamline.devices, plan_defaults=beamline.plan_defaults)
    queue = PlanQueue(store)
    collector = RunCollector(validate=True)
    runner = PlanRunner(catalog, queue, subscribers=[collector])
    runner.start()
    api = ControlAPI(runner, queue, catalog)
    api.collector, api.beamline = collector, beamline
    return api


@pytest.fixture
def api():
    api = make_api()
    yield api
    api.runner.close()


def _started(api) -> threading.Event:
    seen = threading.Event()
    api.runner.RE.subscribe(lambda name, doc: seen.set() if name == "event" else None)
    return seen


def test_impossible_plan_is_refused_at_submission_and_nothing_moves(api):
    rotation = api.beamline.devices["rotation"]
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
    with pytest.raises(
        SubmissionError, match=r"detectors = 'det9' is not a device name; devices: beam_current, dpc, fib"
    ):
        api.queue_add("tomo_scan", {"detectors": ["det9"], "angles": [0]})
    with pytest.raises(SubmissionError, match=r"tomo_scan has no parameter 'speed'; parameters: detectors"):
        api.queue_add("tomo_scan", {"angles": [0], "speed": 3})
    assert api.queue.items() == [] and rotation.position == 0.0
    assert api.collector.names == []


def test_queue_runs_plans_in_order_and_keeps_history(api):
    first = api.queue_add("tilt_series", {"min_deg": -6, "max_deg": 6, "step_deg": 3})
    second = api.queue_add("tomo_scan", {"detectors": ["dpc"], "angles": [0, 90]}, position=0)
    assert [i.uid for i in api.queue.items()] == [second["uid"], first["uid"]]
    assert api.handle(b'{"cmd": "queue_start"}') == {"ok": True, "result": "queue started"}
    wait_until(lambda: len(api.queue.history) == 2 and api.runner.state == "idle", what="both plans")
    assert [h.plan for h in api.queue.history] == ["tomo_scan", "tilt_series"]
    assert all(h.state == "completed" and len(h.run_uids) == 1 for h in api.queue.history)
    assert api.collector.stop["exit_status"] == "success"
    assert api.collector.start["queue_item_uid"] == first["uid"]
    assert api.runner.running_queue.is_set()  # completed plans keep the queue going


def test_abort_stops_the_queue_so_the_milling_behind_it_never_starts(api):
    seen = _started(api)
    scan = api.queue_add("xrf_dpc_tomo", SCAN)
    mill = api.queue_add("mill_lamella", {"recipe": "standard_lamella"})
    api.runner.start_queue()
    assert seen.wait(30)
    reply = api.handle(b'{"cmd": "abort"}')
    assert (
        reply["ok"]
        and reply["result"].startswith("aborting xrf_dpc_tomo")
        and "the queue stops" in reply["result"]
    )
    wait_until(lambda: api.queue.history and api.runner.state == "idle", what="the abort")
    assert api.queue.history[-1].uid == scan["uid"] and api.queue.history[-1].state == "aborted"
    assert api.collector.stop["exit_status"] == "abort"
    assert len(api.collector.events["primary"]) < 400
    # queueserver's rule: the queue stops, and the aborted item waits at the front under a new uid
    assert not api.runner.running_queue.is_set()
    queued = api.queue.items()
    assert [i.plan for i in queued] == ["xrf_dpc_tomo", "mill_lamella"]
    assert queued[0].requeued_from == scan["uid"] and queued[1].uid == mill["uid"]
    threading.Event().wait(1.0)  # time for a wrongly started plan to show up
    assert api.collector.start["plan_name"] == "xrf_dpc_tomo"
    assert api.beamline.truth["fib"].mill_model.thickness_nm == 3000.0  # not one ion on the lamella
    # the operator removes the aborted scan and starts the queue: now the milling runs
    api.queue.remove(queued[0].uid)
    api.handle(b'{"cmd": "queue_start"}')
    wait_until(lambda: len(api.queue.history) == 2, timeout=120, what="the milling")
    assert api.queue.history[-1].uid == mill["uid"] and api.queue.history[-1].state == "completed"
    assert api.collector.start["plan_name"] == "mill_lamella"


@pytest.mark.parametrize("command, outcome, requeued", [("stop", "stopped", False), ("halt", "halted", True)])
def test_stop_and_halt_also_stop_the_queue(api, command, outcome, requeued):
    seen = _started(api)
    api.queue_add("xrf_dpc_tomo", SCAN)
    api.queue_add("tomo_scan", {"angles": [0, 90]})
    api.runner.start_queue()
    assert seen.wait(30)
    assert api.handle(f'{{"cmd": "{command}"}}'.encode())["ok"]
    wait_until(lambda: api.queue.history and api.runner.state == "idle", what=command)
    assert api.queue.history[-1].state == outcome
    assert not api.runner.running_queue.is_set()
    plans = [i.plan for i in api.queue.items()]
    assert plans == (["xrf_dpc_tomo", "tomo_scan"] if requeued else ["tomo_scan"])


def test_a_failed_plan_stops_the_queue(api):
    faults = api.beamline.truth["microprobe"].rotation.faults
    faults.schedule = {"stalled_motion": frozenset({faults.opportunities["stalled_motion"] + 1})}  # 2nd move
    failing = api.queue_add("tomo_scan", {"angles": [0, 10, 20]})
    api.queue_add("tomo_scan", {"angles": [0]})
    api.runner.start_queue()
    wait_until(lambda: api.queue.history and api.runner.state == "idle", what="the failure")
    item = api.queue.history[-1]
    assert item.uid == failing["uid"] and item.state == "failed" and "stalled" in item.error
    assert not api.runner.running_queue.is_set() and len(api.queue.items()) == 2


def test_pause_shows_as_paused_then_resume_finishes_the_plan(api):
    seen = _started(api)
    api.queue_add("xrf_dpc_tomo", {**SCAN, "num": 60})
    api.runner.start_queue()
    assert seen.wait(30)
    assert api.handle(b'{"cmd": "pause"}')["result"].startswith("pausing xrf_dpc_tomo")
    wait_until(lambda: api.status()["current"]["state"] == "paused", what="the pause")
    assert api.status()["re_state"] == "paused"
    assert api.handle(b'{"cmd": "resume"}')["result"].startswith("resuming xrf_dpc_tomo")
    wait_until(lambda: api.queue.history, what="the plan's end")
    assert api.queue.history[0].state == "completed"
    assert len(api.collector.events["primary"]) == 60


def test_queue_stop_lets_the_running_plan_finish_and_starts_no_other(api):
    seen = _started(api)
    api.queue_add("xrf_dpc_tomo", {**SCAN, "num": 20})
    api.queue_add("tomo_scan", {"angles": [0]})
    api.runner.start_queue()
    assert seen.wait(30)
    assert "stops after xrf_dpc_tomo" in api.handle(b'{"cmd": "queue_stop"}')["result"]
    wait_until(lambda: api.queue.history and api.runner.state == "idle", what="the plan's end")
    assert api.queue.history[-1].state == "completed"
    assert [i.plan for i in api.queue.items()] == ["tomo_scan"] and not api.runner.running_queue.is_set()


def test_the_queue_and_history_survive_a_new_queue_on_the_same_store(tmp_path):
    store = QueueStore(tmp_path / "queue.sqlite")
    api = make_api(store)
    try:
        api.queue_add("tomo_scan", {"angles": [0, 90]})
        api.runner.start_queue()
        wait_until(lambda: api.queue.history, what="the first plan")
        assert api.handle(b'{"cmd": "queue_stop"}')["result"] == "queue stopped"
        api.queue_add("tilt_series", {"min_deg": -3, "max_deg": 3, "step_deg": 3})
        api.queue_add("tomo_scan", {"angles": [45]}, position=0)
    finally:
        api.runner.close()
        store.close()
    queue = PlanQueue(QueueStore(tmp_path / "queue.sqlite"))
    assert [i.plan for i in queue.items()] == ["tomo_scan", "tilt_series"]
    assert queue.items()[0].kwargs == {"angles": [45]}
    assert [(h.plan, h.state) for h in queue.history] == [("tomo_scan", "completed")]
    assert queue.recovered is None


def test_an_item_left_running_comes_back_as_interrupted(tmp_path):
    store = QueueStore(tmp_path / "queue.sqlite")
    queue = PlanQueue(store)
    queue.add(QueueItem(plan="tomo_scan", kwargs={"angles": [0]}))
    item = queue.pop(timeout=0)
    item.files.append("/data/run-abc.h5")
    queue.update_running(item)  # the daemon dies here
    store.close()
    again = PlanQueue(QueueStore(tmp_path / "queue.sqlite"))
    assert again.recovered.uid == item.uid and again.recovered.state == "interrupted"
    assert "run-abc.h5" in again.recovered.error
    assert again.history[-1].state == "interrupted"
    assert again.items()[0].requeued_from == item.uid


def test_malformed_requests_get_reasons_and_the_api_keeps_answering(api):
    assert api.handle(b"\x80\x04\x95 pickle")["error"].startswith("request is not valid JSON")
    assert api.handle(b"[1, 2]")["error"] == 'a request is a JSON object with a "cmd" string'
    assert api.handle(b'{"cmd": []}')["error"] == 'a request is a JSON object with a "cmd" string'
    assert "unknown command 'fly'" in api.handle(b'{"cmd": "fly"}')["error"]
    assert "nothing to resume: the RunEngine is idle" in api.handle(b'{"cmd": "resume"}')["error"]
    assert "queue_move: missing a required argument: 'uid'" in api.handle(b'{"cmd": "queue_move"}')["error"]
    assert not api.handle(b'{"cmd": "status", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")["ok"]
    assert not api.handle(b'{"cmd": "history", "limit": ' + b"9" * 5001 + b"}")["ok"]
    assert "not a JSON number" in api.handle(b'{"cmd": "history", "limit": Infinity}')["error"]
    assert api.handle(b'{"cmd": "ping"}') == {"ok": True, "result": "pong"}
