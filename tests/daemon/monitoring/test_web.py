"""The monitor page's server: push to several viewers at once, mid-run join, read-only, clean stop.

A fake publisher streams a simulated scan through the real results encoding and ZeroMQ PUB
socket; the server follows it with ``follow_results``; viewers are real HTTP clients (httpx)
reading the server-sent events and rebuilding the state with ``apply_delta``, as the page does.
"""

import asyncio
import json
import threading
import time

import httpx
import pytest
import zmq

from livetomo.daemon.monitoring import MonitorState, apply_delta, follow_results, start_web_server
from livetomo.daemon.monitoring import _web as web
from livetomo.daemon.testing import SimulatedScan
from livetomo.daemon.transport import ResultsPublisher


class Viewer(threading.Thread):
    """Reads /events until the run has ended; keeps the first event and the rebuilt model."""

    def __init__(self, url, *, until_ended=True):
        super().__init__(daemon=True)
        self.url, self.until_ended = url, until_ended
        self.model, self.first, self.events, self.error = None, None, 0, None
        self.connected = threading.Event()

    def run(self):
        try:
            with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
                with client.stream("GET", self.url + "events") as response:
                    assert response.headers["content-type"].startswith("text/event-stream")
                    self.connected.set()
                    event = None
                    for line in response.iter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data = json.loads(line[5:])
                            self.events += 1
                            self.model = data if event == "snapshot" else apply_delta(self.model, data)
                            self.first = self.first or (event, json.loads(json.dumps(self.model)))
                            run = self.model.get("run") or {}
                            if self.until_ended and run.get("ended"):
                                return
        except Exception as exc:  # reported by the test
            self.error = exc


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


@pytest.fixture
def live():
    """A state following a results PUB socket, served on a free loopback port."""
    context = zmq.Context()
    publisher = ResultsPublisher("tcp://127.0.0.1:*", context)
    state = MonitorState()
    follower = follow_results(state, publisher.endpoint, context=context)
    server = start_web_server(state, port=0)

    def wait_connected():
        for _ in range(300):
            publisher.publish("hello", {})
            if follower.received:
                return
            time.sleep(0.01)
        raise AssertionError("follower never connected")

    wait_connected()
    yield state, publisher, server
    server.stop()
    follower.stop()
    publisher.close()
    context.term()


def test_two_viewers_one_joining_mid_run_end_with_the_run_counts(live):
    state, publisher, server = live
    assert server.host == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
    scan = SimulatedScan(n_angles=40, size=32, low_quality=(12,), seed=5)
    messages = list(scan.messages())
    early = Viewer(server.url)
    early.start()
    wait_for(lambda: server.viewers == 1)
    half = messages.index(("frame", scan.frame(20)))
    for topic, payload in messages[:half]:
        publisher.publish(topic, payload)
    wait_for(lambda: state.snapshot()["progress"]["frames_done"] == 20)
    late = Viewer(server.url)
    late.start()
    wait_for(lambda: late.first is not None and server.viewers == 2)
    for topic, payload in messages[half:]:
        publisher.publish(topic, payload)
    early.join(20)
    late.join(20)
    assert early.error is None and late.error is None
    final = state.snapshot()
    assert final["run"]["ended"] and final["progress"]["frames_done"] == 40
    # the late viewer started from the state so far, not from nothing
    kind, first = late.first
    assert kind == "snapshot" and first["run"]["uid"] == scan.run_uid
    assert [f["seq"] for f in first["frames"]] == list(range(1, 21))
    assert first["projections"]["dpc"]["seq"] == 20
    # both end with exactly the daemon's state: every frame once, final counts of the run
    for viewer in (early, late):
        assert viewer.model == final
        assert [f["seq"] for f in viewer.model["frames"]] == list(range(1, 41))
        assert viewer.model["run"]["frames_received"] == viewer.model["run"]["frames_expected"] == 40
        assert [f["seq"] for f in viewer.model["frames"] if f["ok"] is False] == [13]
    # deltas are coalesced: far fewer pushes than results messages
    assert early.events < len(messages) / 2


def test_page_assets_and_snapshot_are_served_read_only(live):
    state, publisher, server = live
    scan = SimulatedScan(n_angles=5, size=32)
    for topic, payload in scan.messages():
        publisher.publish(topic, payload)
    wait_for(lambda: (state.snapshot()["run"] or {}).get("ended"))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200 and '<canvas id="trace"' in page.text
        for asset in ("static/app.js", "static/plot.js", "static/style.css"):
            assert client.get(asset).status_code == 200
        assert "https://" not in page.text and "http://" not in client.get("static/app.js").text  # no CDN
        assert client.get("/snapshot").json() == json.loads(json.dumps(state.snapshot()))
        assert client.get("/healthz").json()["ok"] is True
        for method in ("POST", "PUT", "DELETE"):
            assert client.request(method, "/snapshot").status_code == 405
            assert client.request(method, "/events").status_code == 405


def test_stop_ends_every_viewer_stream(live):
    state, publisher, server = live
    viewer = Viewer(server.url, until_ended=False)
    viewer.start()
    wait_for(lambda: viewer.first is not None)
    server.stop()
    viewer.join(10)
    assert not viewer.is_alive()
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "healthz", timeout=2)


def test_taken_port_fails_at_start_with_the_address():
    state = MonitorState()
    with start_web_server(state, port=0) as first:
        with pytest.raises(OSError, match=f"127.0.0.1:{first.port}"):
            start_web_server(state, port=first.port)


def test_a_stalled_viewer_is_resynchronised_not_buffered(monkeypatch):
    monkeypatch.setattr(web, "VIEWER_QUEUE", 2)
    scan = SimulatedScan(n_angles=5, size=32)
    state = MonitorState()
    broadcaster = web._Broadcaster(state)

    async def scenario():
        broadcaster.loop = asyncio.get_running_loop()
        queue = broadcaster.register()
        state.update("run_start", scan.run_start())
        for i in range(3):  # pushes of 2, 1 and 1 deltas to a viewer that reads nothing (room for 2)
            state.update("frame", scan.frame(i))
            broadcaster._flush()
        return [queue.get_nowait() for _ in range(queue.qsize())]

    backlog = asyncio.run(scenario())
    assert [kind for kind, _ in backlog] == ["resync", "delta"]


def test_head_requests_leave_no_viewer_behind_and_strange_hosts_are_refused(live):
    state, publisher, server = live
    with httpx.Client(timeout=5.0) as client:
        for _ in range(200):
            assert client.head(server.url + "events").status_code == 200
        assert client.get(server.url + "healthz").json()["viewers"] == 0
        assert server.viewers == 0
        # DNS rebinding: a page served under another name must not read this one
        assert client.get(server.url + "snapshot", headers={"Host": "attacker.example"}).status_code == 400
        assert client.get(server.url + "snapshot", headers={"Host": "localhost"}).status_code == 200
