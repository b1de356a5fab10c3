"""Each attack that once broke the daemon, against a running daemon: it answers, keeps abort,
stores every good frame, and stays small."""

import json
import re
import threading
import time

import h5py
import numpy as np
import pytest
import zmq

from livetomo.daemon.control import ControlClient
from livetomo.daemon.testing import wait_until
from livetomo.daemon.transport import encode_frame, encode_start

SCAN = {"start": 0, "stop": 180, "num": 41, "dwell_s": 0.003, "raster_shape": [12, 32]}


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _raw(endpoint, *parts, timeout_ms=5000):
    """One request exactly as given (any bytes, any number of parts); the reply decoded."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    try:
        sock.connect(endpoint)
        sock.send_multipart(list(parts))
        return json.loads(sock.recv())
    finally:
        sock.close()


def _deep(n):
    return b'{"cmd": "status", "x": ' + b"[" * n + b"]" * n + b"}"


KILLERS = [
    b'{"cmd": []}',
    b'{"cmd": {"a": 1}}',
    b'{"cmd": null}',
    _deep(100_000),
    b'{"cmd": "history", "limit": ' + b"9" * 5001 + b"}",
    b'{"cmd": "queue_add", "plan": "xrf_dpc_tomo", "kwargs": {"start": 0, "stop": 180, "num": 1e999, "dwell_s": 0.003}}',
    b'{"cmd": "queue_add", "plan": "xrf_dpc_tomo", "kwargs": {"start": 0, "stop": 180, "num": Infinity, "dwell_s": 0.003}}',
    b'{"cmd": "queue_add", "plan": "xrf_dpc_tomo", "kwargs": {"angles": [0, 90], "dwell_s": 0.003, "raster_shape": [1e999, 3]}}',
    b'{"cmd": "queue_add", "plan": "tomo_scan", "kwargs": {"rotation": "k3", "angles": [0]}}',
    b'{"cmd": "queue_move", "uid": "x", "position": 1e999}',
    b'{"cmd": "queue_move", "uid": [], "position": "a"}',
    b'{"cmd": "queue_add", "plan": [], "kwargs": []}',
    b'{"cmd": "queue_add", "plan": "tomo_scan", "kwargs": {"angles": [0]}, "md": {"x": NaN}}',
    b'{"cmd": "pause", "defer": {"x": []}}',
    b"\xff\xfe\x00",
    b"[" * 200,
    b"",
]


def test_no_control_request_silences_the_daemon_and_abort_works_after_them(daemon):
    endpoint = daemon.config.endpoints.control
    for payload in KILLERS:
        reply = _raw(endpoint, payload)
        assert reply["ok"] is False and len(json.dumps(reply)) < 2000, (payload[:60], reply)
    assert _raw(endpoint, b'{"cmd": "status"}', b'{"cmd": "abort"}')["error"].startswith(
        "a request is one message part"
    )
    assert "exceeds" in _raw(endpoint, b'{"cmd": "ping", "pad": "' + b"x" * (2 << 20) + b'"}')["error"]
    client = ControlClient(endpoint)
    assert client("ping") == "pong" and daemon.queue.items() == []
    started = threading.Event()
    daemon.runner.RE.subscribe(lambda name, doc: started.set() if name == "event" else None)
    client("queue_add", plan="xrf_dpc_tomo", kwargs={**SCAN, "num": 400})
    client("queue_start")
    assert started.wait(60)
    for payload in KILLERS:  # again, while the scan runs
        assert _raw(endpoint, payload)["ok"] is False
    assert client("abort").startswith("aborting")
    wait_until(lambda: daemon.queue.history, 60, "the abort")
    assert daemon.queue.history[-1].state == "aborted"


def test_validation_is_bounded_in_time_and_memory(daemon):
    client = ControlClient(daemon.config.endpoints.control, timeout_s=5.0)
    before = _rss_mib()
    for kwargs, message in [
        ({"min_deg": -1e308, "max_deg": 1e308}, "at most 10000 are allowed"),
        ({"min_deg": -60, "max_deg": 60, "step_deg": 1e-9}, "at most 10000 are allowed"),
    ]:
        with pytest.raises(RuntimeError, match=message):
            client("queue_add", plan="tilt_series", kwargs=kwargs)
    with pytest.raises(RuntimeError, match=r"num = 1000000 is outside the allowed range \[1, 10000\]"):
        client("queue_add", plan="tomo_scan", kwargs={"start": 0, "stop": 180, "num": 10**6})
    with pytest.raises(
        RuntimeError, match=r"angles has 100000 entries; at most 100000|angles has 100000 entries"
    ):
        client("queue_add", plan="tomo_scan", kwargs={"angles": [0.0] * 100_000})
    assert _rss_mib() - before < 100


def test_the_dose_budget_cannot_be_bypassed(daemon):
    endpoint = daemon.config.endpoints.control
    for flux, message in [
        ("NaN", "NaN is not a JSON number"),
        ("1e999", "flux_photons_per_s = inf is not a finite number"),
        ("-5e9", r"flux_photons_per_s = -5e\+09 photons/s is outside the allowed range"),
        ("0", "flux_photons_per_s = 0 photons/s is outside the allowed range"),
    ]:
        kwargs = json.dumps(SCAN)[:-1] + f', "flux_photons_per_s": {flux}}}'
        reply = _raw(endpoint, f'{{"cmd": "queue_add", "plan": "xrf_dpc_tomo", "kwargs": {kwargs}}}'.encode())
        assert not reply["ok"] and re.search(message, reply["error"]), reply
    assert daemon.queue.items() == []


def test_recipes_load_only_by_name_and_errors_never_echo_files(daemon, tmp_path):
    secret = tmp_path / "secret.yaml"
    secret.write_text("stages: the password is hunter2\n")
    client = ControlClient(daemon.config.endpoints.control)
    for recipe in (str(secret), "/etc/passwd", "../../etc/hosts.yaml", "stages: [1]\nname: x"):
        with pytest.raises(RuntimeError, match="unknown recipe|recipe") as info:
            client("queue_add", plan="mill_lamella", kwargs={"recipe": recipe})
        assert "hunter2" not in str(info.value) and "root:" not in str(info.value)


def test_bad_md_is_refused_at_submission_and_status_keeps_working(daemon):
    client = ControlClient(daemon.config.endpoints.control)
    with pytest.raises(RuntimeError, match="md must be a mapping of metadata"):
        client("queue_add", plan="tomo_scan", kwargs={"angles": [0]}, md=["sample"])
    with pytest.raises(RuntimeError, match="md is .* bytes of JSON; at most"):
        client("queue_add", plan="tomo_scan", kwargs={"angles": [0]}, md={"x": "y" * 100_000})
    assert client("status")["queue_length"] == 0


def _run_scan_under_attack(daemon, attack):
    """Run SCAN; once its first event is out, ``attack(push, run_uid)``; the run's summary."""
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(daemon.config.endpoints.frames)
    uid = {}
    started = threading.Event()

    def on_doc(name, doc):
        if name == "start":
            uid["run"] = doc["uid"]
        if name == "event":
            started.set()

    daemon.runner.RE.subscribe(on_doc)
    done = len(daemon.pipeline.finished_runs)
    daemon.api.queue_add("xrf_dpc_tomo", SCAN)
    daemon.api.handle(b'{"cmd": "queue_start"}')
    assert started.wait(60)
    # the detectors' own stream start may still be on its way when the first event is out: an
    # attack before it would be refused as an unknown stream, not tested as meant
    wait_until(
        lambda: (run := daemon.pipeline.runs.get(uid["run"])) is not None and run.stored.get("dpc_segments"),
        30,
        "the first stored frame",
    )
    attack(push, uid["run"])
    summary = wait_until(
        lambda: len(daemon.pipeline.finished_runs) > done and daemon.pipeline.finished_runs[-1], 120
    )
    push.close()
    return summary


def test_a_far_sequence_number_with_the_real_run_uid_loses_no_frame(daemon):
    frame = np.ones((4, 12, 32), np.float32)

    def attack(push, run):
        push.send_multipart(encode_frame(run, "dpc_segments", 10**9, frame))

    summary = _run_scan_under_attack(daemon, attack)
    assert summary["complete"] and summary["streams"]["dpc_segments"] == {
        "sent": 41,
        "stored": 41,
        "superseded": 0,
    }
    with h5py.File(summary["file"], "r") as f:
        assert (f["entry/instrument/dpc_segments/image_key"][()] == 0).sum() == 41
    assert daemon.status()["rejected_by_reason"]["out_of_window"] == 1


def test_many_sequence_jumps_cost_nothing(daemon):
    frame = np.ones((4, 12, 32), np.float32)

    def attack(push, run):
        for i in range(1000):
            push.send_multipart(encode_frame(run, "dpc_segments", 10**6 + 1000 * i, frame))

    summary = _run_scan_under_attack(daemon, attack)
    assert summary["complete"]
    reply = ControlClient(daemon.config.endpoints.control)("status")
    assert len(json.dumps(reply)) < 50_000  # the jumps' missing ranges are bounded, not copied whole


def test_an_injected_stream_is_bounded(daemon):
    def attack(push, run):
        push.send_multipart(encode_start(run, "injected", device="x", dtype=np.float32, shape=(64, 64)))
        for seq in (2 * 10**7, 2 * 10**7 + 1, 2 * 10**7 + 2, 5, 6):
            push.send_multipart(encode_frame(run, "injected", seq, np.zeros((64, 64), np.float32)))

    summary = _run_scan_under_attack(daemon, attack)
    with h5py.File(summary["file"], "r") as f:
        injected = f.get("entry/instrument/injected/data")
        rows = 0 if injected is None else injected.shape[0]
    assert rows <= 41 + 16  # never more than the plan's frames and a margin
    assert summary["streams"]["dpc_segments"]["stored"] == 41


def test_an_oversized_message_is_not_read_whole(daemon):
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(daemon.config.endpoints.frames)
    big = np.ones(50 << 20, np.uint8)  # 50 MiB against an 8 MiB limit; its pages touched before measuring
    before = _rss_mib()
    push.send_multipart(encode_frame("whoever", "s", 0, big), copy=False)
    time.sleep(2.0)
    push.close()
    received = daemon.receiver.status()["received_bytes"]
    assert received < 1 << 20 and _rss_mib() - before < 40  # the 50 MiB never landed (the sender holds it)
    assert ControlClient(daemon.config.endpoints.control)("ping") == "pong"
