import json
from pathlib import Path

import pytest
import zmq

from livetomo.daemon.config import ConfigError, load_config
from livetomo.daemon.transport import CurveSecurity, client_socket_options, make_keys


def _curve(keys) -> dict:
    return {
        "server_secret_key": str(keys["server_secret"]),
        "authorized_clients": str(keys["authorized_clients"]),
    }


def test_curve_keys_make_a_non_loopback_config_valid(tmp_path):
    keys = make_keys(tmp_path / "keys")
    config = load_config(overrides={"endpoints": {"control": "tcp://0.0.0.0:6102"}, "curve": _curve(keys)})
    assert config.curve.server_secret_key.endswith("server.key_secret")


def test_curve_without_an_allow_list_is_refused(tmp_path):
    keys = make_keys(tmp_path / "keys")
    with pytest.raises(
        ConfigError, match=r"curve.authorized_clients must name a directory of client public keys"
    ):
        load_config(overrides={"curve": {"server_secret_key": str(keys["server_secret"])}})


@pytest.mark.parametrize(
    "endpoint", ["tcp://127.0.0.1:6103;0.0.0.0:6104", "tcp://localhost:6103;10.0.0.1:6104", "tcp://*:6103"]
)
def test_every_address_of_an_endpoint_must_be_loopback_without_curve(endpoint):
    with pytest.raises(ConfigError, match=r"bind beyond loopback"):
        load_config(overrides={"endpoints": {"frames": endpoint}})


def test_curve_lets_in_listed_clients_and_the_daemons_own_key_and_refuses_strangers(tmp_path):
    keys = make_keys(tmp_path / "keys")
    rogue = make_keys(tmp_path / "rogue")  # a stranger's self-made pair, who knows the server's public key
    config = load_config(overrides={"curve": _curve(keys)})
    context = zmq.Context()
    security = CurveSecurity(config.curve.server_secret_key, context, config.curve.authorized_clients)
    server = context.socket(zmq.REP)
    security(server)
    port = server.bind_to_random_port("tcp://127.0.0.1")

    def ask(client_secret=None, own=False):
        client = context.socket(zmq.REQ)
        client.setsockopt(zmq.LINGER, 0)
        client.setsockopt(zmq.RCVTIMEO, 1500)
        if own:  # the daemon's own detectors hold the server's pair
            client.curve_serverkey, client.curve_publickey, client.curve_secretkey = (
                security.public,
                security.public,
                security.secret,
            )
        elif client_secret is not None:
            client_socket_options(client, keys["server_public"], client_secret)
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b'{"cmd": "status"}')
        try:
            if server.poll(1500):
                server.send(json.dumps({"ok": True}).encode()) if server.recv() else None
            return client.recv()
        except zmq.Again:
            return None
        finally:
            client.close()

    try:
        assert ask() is None  # no CURVE at all: the handshake fails, nothing reaches the server
        assert ask(rogue["client_secret"]) is None  # CURVE, but a key nobody listed
        assert ask(keys["client_secret"]) == b'{"ok": true}'
        assert ask(own=True) == b'{"ok": true}'
        # revoking: the client's key file removed from the allow-list shuts it out at once
        (Path(config.curve.authorized_clients) / "client.key").unlink()
        assert ask(keys["client_secret"]) is None
        assert ask(own=True) == b'{"ok": true}'
    finally:
        server.close()
        security.close()
        context.term()
