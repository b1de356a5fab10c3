"""Seeded fuzzing of a running daemon: thousands of malformed frame messages and control
requests interleaved with a valid scan. The scan is stored complete, every request has a
reply, abort works afterwards and resident memory stays bounded."""

import json
import threading

import h5py
import numpy as np
import zmq

from livetomo.daemon.control import ControlClient
from livetomo.daemon.testing import fuzz_control_request, fuzz_frame_message, wait_until

SCAN = {"start": 0, "stop": 180, "num": 61, "dwell_s": 0.003, "raster_shape": [12, 32]}
N_FRAMES = 4000  # malformed frame messages, at least
N_REQUESTS = 1500  # malformed control requests, at least
RSS_BOUND_MIB = 300  # growth over the fuzzed scan, its own run-end work included


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _request(sock, parts) -> dict:
    sock.send_multipart(parts)
    return json.loads(sock.recv())


def test_a_scan_under_fuzzing_is_stored_complete_and_abort_still_works(daemon):
    endpoint = daemon.config.endpoints
    client = ControlClient(endpoint.control, timeout_s=30.0)
    client(
        "queue_add", plan="tomo_scan", kwargs={"angles": [0.0, 90.0]}
    )  # warm-up: first imports, compilation
    client("queue_start")
    wait_until(lambda: len(daemon.pipeline.finished_runs) == 1, 120, "the warm-up scan")
    rss_before = _rss_mib()

    run = {}
    started, ended = threading.Event(), threading.Event()

    def on_doc(name, doc):
        if name == "start" and doc.get("plan_name") == "xrf_dpc_tomo":
            run["uid"] = doc["uid"]
        if name == "event" and "uid" in run:
            started.set()

    daemon.runner.RE.subscribe(on_doc)
    sent = {"frames": 0, "requests": 0, "frames_during_scan": 0, "requests_during_scan": 0}
    replies: list[dict] = []

    def fuzz_frames():
        rng = np.random.default_rng(1)
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(endpoint.frames)
        shape = (4, *SCAN["raster_shape"])
        while sent["frames"] < N_FRAMES or not ended.is_set():
            push.send_multipart(fuzz_frame_message(rng, run["uid"], "dpc_segments", shape))
            sent["frames"] += 1
            sent["frames_during_scan"] += not ended.is_set()
            if sent["frames"] % 50 == 0:
                ended.wait(0.005)  # a flood, not a denial of service: the sender yields now and then
        push.close()

    def fuzz_requests():
        rng = np.random.default_rng(2)
        req = zmq.Context.instance().socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.setsockopt(zmq.RCVTIMEO, 30_000)
        req.connect(endpoint.control)
        while sent["requests"] < N_REQUESTS or not ended.is_set():
            replies.append(_request(req, fuzz_control_request(rng)))  # zmq.Again here is a missing reply
            sent["requests"] += 1
            sent["requests_during_scan"] += not ended.is_set()
        req.close()

    client("queue_add", plan="xrf_dpc_tomo", kwargs=SCAN)
    client("queue_start")
    assert started.wait(60)
    threads = [threading.Thread(target=fuzz_frames), threading.Thread(target=fuzz_requests)]
    for t in threads:
        t.start()
    summary = wait_until(
        lambda: len(daemon.pipeline.finished_runs) == 2 and daemon.pipeline.finished_runs[-1], 300
    )
    ended.set()
    for t in threads:
        t.join(300)
        assert not t.is_alive()

    assert sent["frames"] >= N_FRAMES and sent["requests"] >= N_REQUESTS
    assert sent["frames_during_scan"] > 200 and sent["requests_during_scan"] > 50, sent
    assert len(replies) == sent["requests"] and all(isinstance(r.get("ok"), bool) for r in replies)
    assert all(len(json.dumps(r)) < 20_000 for r in replies if not r["ok"])

    assert summary["complete"] and summary["exit_status"] == "success", summary
    n = SCAN["num"]
    for stream, counts in summary["streams"].items():
        assert counts["sent"] == counts["stored"] == n, (stream, counts)
    with h5py.File(summary["file"], "r") as f:
        key = f["entry/instrument/dpc_segments/image_key"][()]
        assert (key == 0).sum() == n and key.size == n
        assert np.isfinite(f["entry/instrument/dpc_segments/data"][()]).all()
    rejected = daemon.status()["rejected_by_reason"]
    assert sum(rejected.values()) >= 0.9 * sent["frames"], rejected

    assert daemon.queue.items() == [] and [h.state for h in daemon.queue.history][-1] == "completed"
    assert _rss_mib() - rss_before < RSS_BOUND_MIB

    # abort still works after all that
    client("queue_add", plan="xrf_dpc_tomo", kwargs={**SCAN, "num": 400})
    client("queue_start")
    wait_until(lambda: (daemon.status().get("run") or {}).get("frames_done", 0) > 2, 60, "the next scan")
    assert client("abort").startswith("aborting")
    wait_until(lambda: daemon.queue.history[-1].state == "aborted", 60, "the abort")
