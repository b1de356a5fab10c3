import json

import pytest
import zmq

from livetomo.daemon.config import ConfigError, load_config
from livetomo.daemon.security import CurveSecurity, client_socket_options, make_keys


def test_defaults_bind_every_endpoint_to_loopback():
    config = load_config()
    for endpoint in (config.endpoints.frames, config.endpoints.results, config.endpoints.control):
        assert endpoint.startswith("tcp://127.0.0.1:")


@pytest.mark.parametrize(
    "address", ["tcp://0.0.0.0:6000", "tcp://*:6000", "tcp://10.1.2.3:6000", "tcp://beamline-pc:6000"]
)
def test_non_loopback_bind_needs_curve_keys(address):
    with pytest.raises(ConfigError, match=r"bind beyond loopback; configure curve.server_secret_key"):
        load_config(overrides={"endpoints": {"control": address}})


def test_yaml_config_is_checked(tmp_path):
    path = tmp_path / "daemon.yaml"
    path.write_text("endpoints:\n  control: tcp://127.0.0.1:6101\nlimits:\n  ingest_queue: 8\n")
    config = load_config(path)
    assert config.endpoints.control == "tcp://127.0.0.1:6101" and config.limits.ingest_queue == 8
    path.write_text("limits:\n  ingest_queue: 8\n  speed: 3\n")
    with pytest.raises(ConfigError, match=r"limits: unknown key\(s\) \['speed'\]"):
        load_config(path)
    path.write_text("endpoints: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


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
    security = CurveSecurity(config.curve, context)
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
