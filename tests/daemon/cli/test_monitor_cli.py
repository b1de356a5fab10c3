"""``livetomo monitor`` driven in a pseudo-terminal while a fake daemon streams a simulated scan."""

import contextlib
import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
import time

import pytest
import zmq

from livetomo.daemon.cli._monitor import progress_bar, render
from livetomo.daemon.monitoring import MonitorState
from livetomo.daemon.testing import SimulatedScan
from livetomo.daemon.transport import ResultsPublisher

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FRAMES = re.compile(r"^frames\s+\[[#.]+\] (\d+)/(\d+)", re.M)


class Terminal:
    """``livetomo monitor`` in a pty; ``screens()`` are the refreshes so far, ANSI stripped."""

    def __init__(self, *args):
        master, slave = pty.openpty()
        env = {**os.environ, "COLUMNS": "100", "LINES": "40", "PYTHONIOENCODING": "utf-8"}
        command = [sys.executable, "-c", "import sys; from livetomo.daemon.cli import main; sys.exit(main())"]
        if not _cli_has_monitor():  # until daemon/cli.py hooks the command in, run the module itself
            command = [sys.executable, "-m", "livetomo.daemon.cli._monitor"]
        else:
            command.append("monitor")
        self.process = subprocess.Popen([*command, *args], stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.master, self.raw, self.lock = master, b"", threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            with self.lock:
                self.raw += chunk

    def screens(self) -> list[str]:
        with self.lock:
            text = self.raw.decode("utf-8", "replace")
        # a refresh is complete once it has cleared the rest of the screen
        complete = [s for s in text.split("\x1b[H")[1:] if "\x1b[J" in s]
        return [ANSI.sub("", s).replace("\r\n", "\n") for s in complete]

    def wait_for(self, predicate, timeout=15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screens = self.screens()
            if screens and predicate(screens[-1]):
                return screens[-1]
            if self.process.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"the terminal never showed it; last screen:\n{(self.screens() or [''])[-1]}")

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(10)
        self.reader.join(5)
        os.close(self.master)


def _cli_has_monitor() -> bool:
    from livetomo.daemon.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["monitor", "--no-control"])
        return True
    except SystemExit:
        return False


@pytest.fixture
def publisher():
    context = zmq.Context()
    pub = ResultsPublisher("tcp://127.0.0.1:*", context)
    yield pub
    pub.close()
    context.term()


def _progress(screen):
    match = FRAMES.search(screen)
    return (int(match.group(1)), int(match.group(2))) if match else None


def test_monitor_shows_progress_quality_and_run_end_in_a_terminal(publisher):
    scan = SimulatedScan(n_angles=24, size=32, low_quality=(14,), seed=2)
    term = Terminal(
        "--results", publisher.endpoint, "--no-control", "--interval", "0.05", "--exit-at-run-end"
    )
    try:
        term.wait_for(lambda s: "livetomo monitor" in s)
        # zmq's slow joiner: probe until the monitor says it receives
        deadline = time.monotonic() + 15
        while "nothing received yet" in (term.screens() or ["nothing received yet"])[-1]:
            assert time.monotonic() < deadline, "the monitor never received the probes"
            publisher.publish("hello", {})
            time.sleep(0.05)
        publisher.publish("run_start", scan.run_start())
        seen = set()
        for i in range(24):
            for topic, payload in scan.frame_messages(i, previews=False):  # the terminal shows no images
                publisher.publish(topic, payload)
            publisher.publish("status", scan.status(i))
            if i in (5, 14, 20):  # let the terminal catch up and show this frame
                screen = term.wait_for(lambda s, n=i + 1: _progress(s) == (n, 24))
                seen.add(i + 1)
                if i == 14:
                    assert "LOW QUALITY" in screen and "(frame 15)" in screen
                    assert "low-quality frames: 1 (frames 15)" in screen
                else:
                    assert "LOW QUALITY" not in screen
        publisher.publish("run_end", scan.run_end(file="/data/run.h5"))
        final = term.wait_for(lambda s: "run end:" in s)
        assert term.process.wait(10) == 0
    finally:
        term.close()
    assert _progress(final) == (24, 24)
    assert "run end: completed, 24/24 frames, complete, file /data/run.h5" in final
    assert "xrf_dpc_tomo (xrf-dpc)" in final and f"run {scan.run_uid[:8]}" in final
    assert re.search(r"^dose\s+\[#+\] 12 MGy of 12 MGy planned", final, re.M)
    # progress grew through the intermediate values while the scan ran
    counts = [p[0] for p in map(_progress, term.screens()) if p]
    assert counts == sorted(counts) and {6, 15, 21, 24} <= set(counts)


def test_monitor_polls_the_control_api_status():
    """With no results at all, progress and pipeline health come from the control API."""
    scan = SimulatedScan(n_angles=40, size=32)
    context = zmq.Context()
    rep = context.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    served = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if rep.poll(50):
                request = json.loads(rep.recv())
                served.append(request["cmd"])
                status = scan.status(
                    min(len(served), 40) - 1, rejected=3, errors=("align: no peak at 31.5 deg",)
                )
                rep.send(json.dumps({"ok": True, "result": status}).encode())

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    unused = "tcp://127.0.0.1:1"  # nothing publishes results here
    term = Terminal(
        "--results",
        unused,
        "--control",
        f"tcp://127.0.0.1:{port}",
        "--interval",
        "0.05",
        "--status-interval",
        "0.1",
    )
    try:
        screen = term.wait_for(lambda s: (_progress(s) or (0, 0))[0] >= 3)
    finally:
        term.close()
        stop.set()
        server.join(5)
        rep.close()
        context.term()
    assert set(served) == {"status"}
    assert "pipeline  RE running  queue 0" in screen and "rejected 3 (non-finite values: 3)" in screen
    assert "align: no peak at 31.5 deg" in screen
    assert re.search(r"^\s+align\s+\d+\s+5\.0\s+–\s+1$", screen, re.M)


def test_render_without_a_run_and_progress_bar_edges():
    lines = render(MonitorState().snapshot(), 80)
    assert lines[0] == "livetomo monitor | no run yet"
    assert progress_bar(0, None, 10) == "[..........]"
    assert progress_bar(5, 10, 10) == "[#####.....]"
    assert progress_bar(12, 10, 10) == "[##########]"


def test_monitor_refuses_a_bad_interval():
    result = subprocess.run(
        [sys.executable, "-m", "livetomo.daemon.cli._monitor", "--interval", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "positive number of seconds" in result.stderr
