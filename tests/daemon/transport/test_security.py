import json

import zmq

from livetomo.daemon.config import load_config
from livetomo.daemon.transport import CurveSecurity, client_socket_options, make_keys


def test_curve_keys_make_a_non_loopback_config_valid(tmp_path):
    keys = make_keys(tmp_path / "keys")
    config = load_config(
        overrides={
            "endpoints": {"control": "tcp://0.0.0.0:6102"},
            "curve": {"server_secret_key": str(keys["server_secret"])},
        }
    )
    assert config.curve.server_secret_key.endswith("server.key_secret")


def test_curve_server_refuses_plain_clients_and_serves_keyed_ones(tmp_path):
    keys = make_keys(tmp_path / "keys")
    config = load_config(overrides={"curve": {"server_secret_key": str(keys["server_secret"])}})
    context = zmq.Context()
    security = CurveSecurity(config.curve.server_secret_key, context)
    server = context.socket(zmq.REP)
    security(server)
    port = server.bind_to_random_port("tcp://127.0.0.1")

    def ask(keyed: bool):
        client = context.socket(zmq.REQ)
        client.setsockopt(zmq.LINGER, 0)
        client.setsockopt(zmq.RCVTIMEO, 1500)
        if keyed:
            client_socket_options(client, keys["server_public"], keys["client_secret"])
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
        assert ask(keyed=False) is None  # the handshake fails: nothing reaches the server
        assert ask(keyed=True) == b'{"ok": true}'
    finally:
        server.close()
        security.close()
        context.term()
