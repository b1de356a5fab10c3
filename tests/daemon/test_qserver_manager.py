"""bluesky-queueserver as the README documents it: a real redis-server and start-re-manager.

The README's start-re-manager command is read from the README itself and run with its
loopback ports changed to free ones; the five plans are queued through the manager's API
(``bluesky_queueserver_api``, ZeroMQ) and must all finish successfully.
"""

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

pytest.importorskip("bluesky_queueserver", reason="bluesky-queueserver is part of the test extra")

README = Path(__file__).resolve().parents[2] / "README.md"
PLANS = ("tomo_scan", "xrf_dpc_tomo", "tilt_series", "mill_lamella", "correlative_acquire")


def documented_command() -> str:
    """The start-re-manager command of the README's queueserver section (continuation lines joined)."""
    text = README.read_text()
    section = text[text.index("**bluesky-queueserver.**") :]
    match = re.search(r"^start-re-manager .*?(?<!\\)$", section, flags=re.MULTILINE | re.DOTALL)
    assert match, "the README's queueserver section has no start-re-manager command"
    return match.group(0).replace("\\\n", " ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group this test started, SIGKILL it if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)


def test_the_readme_command_keeps_every_address_on_loopback():
    command = documented_command()
    args = shlex.split(command)
    assert args[:3] == ["start-re-manager", "--startup-module", "livetomo.daemon.qserver_startup"]
    assert "--keep-re" not in args
    for option in ("--redis-addr", "--zmq-control-addr", "--zmq-info-addr"):
        assert "127.0.0.1" in args[args.index(option) + 1], option
    for option in ("--existing-plans-devices", "--user-group-permissions"):
        assert args[args.index(option) + 1] == "$(python -m livetomo.daemon.qserver_profile)"


def test_the_shipped_plan_list_matches_the_startup_module(tmp_path):
    """The shipped list is what queueserver's own tool makes of the startup module today."""
    from bluesky_queueserver.manager import profile_ops

    from livetomo.daemon import qserver_profile

    tool = Path(sys.executable).parent / "qserver-list-plans-devices"
    command = [str(tool) if tool.exists() else "qserver-list-plans-devices"]
    command += ["--startup-module", "livetomo.daemon.qserver_startup", "--file-dir", str(tmp_path)]
    env = {**os.environ, "LIVETOMO_DATA": str(tmp_path / "data")}  # a process of its own: no module cache
    subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    generated = yaml.safe_load((tmp_path / "existing_plans_and_devices.yaml").read_text())
    shipped = yaml.safe_load(qserver_profile.EXISTING_PLANS_AND_DEVICES.read_text())
    regenerate = (
        "regenerate it: qserver-list-plans-devices --startup-module livetomo.daemon.qserver_startup "
        '--file-dir "$(python -m livetomo.daemon.qserver_profile)"'
    )
    plans = generated["existing_plans"]
    assert set(shipped["existing_plans"]) == set(plans) == set(PLANS), regenerate

    def signature(plan):
        return [(p["name"], p["kind"]["name"], p.get("default")) for p in plan["parameters"]]

    for name, plan in plans.items():
        assert signature(shipped["existing_plans"][name]) == signature(plan), f"{name}: {regenerate}"
    classes = {k: v["classname"] for k, v in generated["existing_devices"].items()}
    assert {k: v["classname"] for k, v in shipped["existing_devices"].items()} == classes, regenerate
    permissions = profile_ops.load_user_group_permissions(str(qserver_profile.USER_GROUP_PERMISSIONS))
    assert permissions["user_groups"]["primary"]["allowed_plans"] == [":.*"]


@pytest.fixture
def redis_port(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)"
        )
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.05)
        yield port
    finally:
        _stop(process)


@contextlib.contextmanager
def documented_manager(tmp_path, redis_port, **env):
    """The README's start-re-manager command on free loopback ports, its environment opened;
    yields its ``REManagerAPI``; closes the environment and stops the manager afterwards."""
    from bluesky_queueserver_api.zmq import REManagerAPI

    control, info = _free_port(), _free_port()
    command = (
        documented_command()
        .replace("127.0.0.1:6379", f"127.0.0.1:{redis_port}")
        .replace("127.0.0.1:60615", f"127.0.0.1:{control}")
        .replace("127.0.0.1:60625", f"127.0.0.1:{info}")
    )
    command += f" --redis-name-prefix livetomo_test_{redis_port}"
    # `python` and `start-re-manager` of this interpreter's environment
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "LIVETOMO_DATA": str(tmp_path / "data"), **env}
    log_path = tmp_path / "manager.log"
    log = log_path.open("w")
    manager = subprocess.Popen(
        ["bash", "-c", command],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    RM = None
    try:
        RM = REManagerAPI(
            zmq_control_addr=f"tcp://127.0.0.1:{control}", zmq_info_addr=f"tcp://127.0.0.1:{info}"
        )
        deadline = time.monotonic() + 60
        while True:  # the manager answers once it is up
            assert manager.poll() is None, log_path.read_text()[-3000:]
            try:
                RM.status()
                break
            except Exception:
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
        RM.environment_open()
        RM.wait_for_idle(timeout=120)
        assert RM.status()["worker_environment_exists"], log_path.read_text()[-3000:]
        yield RM
        RM.environment_close()
        RM.wait_for_idle(timeout=60)
    finally:
        if RM is not None:
            RM.close()
        _stop(manager)
        log.close()


def test_the_documented_manager_runs_all_five_plans(tmp_path, redis_port):
    api = pytest.importorskip(
        "bluesky_queueserver_api", reason="bluesky-queueserver-api is part of the test extra"
    )
    with documented_manager(tmp_path, redis_port) as RM:
        items = [
            api.BPlan("tomo_scan", ["fm"], "rotation", start=0, stop=90, num=3),
            api.BPlan(
                "xrf_dpc_tomo",
                "dpc",
                "xrf",
                "rotation",
                "scan",
                start=0,
                stop=180,
                num=3,
                raster_shape=[8, 8],
                pixel_size_um=0.3,
                dwell_s=0.003,
            ),  # fmt: skip
            api.BPlan("tilt_series", "k3", "tilt", min_deg=-6, max_deg=6, step_deg=3),
            api.BPlan("mill_lamella", "fib", "standard_lamella"),
            api.BPlan("correlative_acquire", "sxt", "fm"),
        ]
        for item in items:
            response = RM.item_add(item)
            assert response["success"], response["msg"]
        RM.queue_start()
        RM.wait_for_idle(timeout=300)
        history = RM.history_get()["items"]
        assert [(h["name"], h["result"]["exit_status"]) for h in history] == [
            (p, "completed") for p in PLANS
        ], [h["result"] for h in history]
        assert all(len(h["result"]["run_uids"]) == 1 for h in history)
        assert sorted(p.name.split("_")[0] for p in (tmp_path / "data").glob("*.h5")) == sorted(
            ["fm", "dpc", "xrf", "k3", "sxt", "fm"]
        )  # every image detector wrote its frames


def test_a_queueserver_run_scan_is_processed_live_by_livetomo_serve(tmp_path, redis_port):
    """LIVETOMO_CONFIG names a running daemon's configuration: the manager's detectors push frames
    to its frames endpoint, its RunEngine publishes documents to its documents_in endpoint."""
    api = pytest.importorskip(
        "bluesky_queueserver_api", reason="bluesky-queueserver-api is part of the test extra"
    )
    from livetomo.daemon.control import ControlClient
    from livetomo.daemon.storage import open_embedded_catalog, tiled_missing
    from livetomo.daemon.testing import daemon_overrides, wait_until

    daemon_dir = tmp_path / "daemon"
    daemon_dir.mkdir()
    overrides = daemon_overrides(
        daemon_dir,
        endpoints={"documents_in": f"ipc://{daemon_dir}/documents_in.sock"},
        processing={"refine": None},
        tiled={"enabled": tiled_missing() is None},  # and catalogued, where Tiled is installed
    )
    config = daemon_dir / "daemon.yaml"
    config.write_text(yaml.safe_dump(overrides))
    daemon_log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "livetomo.daemon.cli", "serve", "--config", str(config)],
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = ControlClient(overrides["endpoints"]["control"], timeout_s=2.0)
    try:

        def answers():
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            try:
                return client("status")
            except Exception:
                return None

        wait_until(answers, timeout=120, what="livetomo serve's control endpoint")
        with documented_manager(tmp_path, redis_port, LIVETOMO_CONFIG=str(config)) as RM:
            angles = [0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0]
            item = api.BPlan(
                "xrf_dpc_tomo", "dpc", "xrf", "rotation", "scan", angles,
                raster_shape=[12, 32], pixel_size_um=0.3, dwell_s=0.003,
            )  # fmt: skip
            response = RM.item_add(item)
            assert response["success"], response["msg"]
            RM.queue_start()
            RM.wait_for_idle(timeout=300)
            (done,) = RM.history_get()["items"]
            assert done["result"]["exit_status"] == "completed", done["result"]
            (uid,) = done["result"]["run_uids"]

            def finished():
                runs = answers()["finished_runs"]
                return next((r for r in runs if r.get("run_uid") == uid), None)

            summary = wait_until(finished, timeout=120, what=f"run {uid} finished in livetomo serve")
            if overrides["tiled"]["enabled"]:  # its documents written to the catalogue, up to the stop

                def catalogued():
                    status = answers()["catalog"]
                    return status["state"] != "starting" and not status["documents_queued"]

                wait_until(catalogued, timeout=300, what="the catalogue written")
        assert summary["complete"] and summary["exit_status"] == "success", summary
        assert summary["frames_received"] == summary["frames_expected"] == len(angles)
        assert not list((tmp_path / "data").glob("*.h5"))  # no frame went to files of the manager's own
        with h5py.File(summary["file"], "r") as f:
            assert Path(summary["file"]).parent == daemon_dir / "data"
            assert f["entry"].attrs["plan_name"] == "xrf_dpc_tomo"
            np.testing.assert_allclose(f["entry/sample/rotation_angle"][()], angles, atol=1e-6)
            assert f["entry/instrument/dpc_segments/data"].shape == (7, 4, 12, 32)
            assert (f["entry/instrument/detector/image_key"][()] == 0).all()
            shifts = f["entry/processing/alignment/shift"][()]
            assert shifts.shape == (7, 2) and np.isfinite(shifts).all()
            reconstruction = f["entry/processing/reconstruction"]
            assert {"phase", "Zn"} <= set(reconstruction)
            phase = reconstruction["phase/data"]  # NXdata (z, y, x)
            assert np.isfinite(phase[()]).all() and phase.shape[0] == 12
    finally:
        _stop(daemon, timeout=60)  # SIGTERM: the daemon closes its files and its catalogue
        daemon_log.close()
    if tiled_missing() is None:  # the queueserver-run scan in the daemon's Tiled catalog, frames included
        catalog = open_embedded_catalog(daemon_dir / "data")
        segments = catalog[uid]["primary"]["dpc_segments"]
        assert catalog[uid].metadata["start"]["plan_name"] == "xrf_dpc_tomo"
        with h5py.File(summary["file"], "r", swmr=True, locking=False) as f:
            np.testing.assert_array_equal(segments.read(), f["entry/instrument/dpc_segments/data"][()])
