"""A daemon with CURVE on: its own detectors get in, listed clients (the CLI with keys) get in,
strangers do not."""

import h5py

from livetomo.daemon.cli import main
from livetomo.daemon.testing import running_daemon, wait_until
from livetomo.daemon.transport import make_keys


def test_a_curve_daemon_takes_its_own_frames_and_listed_clients_only(tmp_path, capsys):
    keys = make_keys(tmp_path / "keys")
    rogue = make_keys(tmp_path / "rogue")  # a self-made pair of someone who knows the server's public key
    curve = {
        "server_secret_key": str(keys["server_secret"]),
        "authorized_clients": str(keys["authorized_clients"]),
    }
    with running_daemon(tmp_path, curve=curve, processing={"refine": None}) as daemon:
        control = ["--control", daemon.config.endpoints.control]
        listed = [*control, "--server-public-key", str(keys["server_public"]), "--client-secret-key"]
        assert main(["status", *control, "--timeout", "1"]) == 1  # no keys: no answer
        assert "no answer from the daemon" in capsys.readouterr().err
        assert main(["status", *listed, str(rogue["client_secret"]), "--timeout", "1"]) == 1  # not listed
        assert "no answer from the daemon" in capsys.readouterr().err
        assert (
            main(
                [
                    "submit",
                    "tomo_scan",
                    "start=0",
                    "stop=180",
                    "num=5",
                    "--start",
                    *listed,
                    str(keys["client_secret"]),
                ]
            )
            == 0
        )
        summary = wait_until(lambda: daemon.pipeline.finished_runs and daemon.pipeline.finished_runs[-1], 120)
        assert (
            summary["complete"] and summary["streams"]["txm_image"]["stored"] == 5
        )  # its own detector got in
        with h5py.File(summary["file"], "r") as f:
            assert (f["entry/instrument/detector/image_key"][()] == 0).sum() == 5
        assert main(["status", *listed, str(keys["client_secret"]), "--json"]) == 0
        assert '"re_state": "idle"' in capsys.readouterr().out
