"""CURVE encryption and authentication for sockets bound beyond loopback.

``livetomo keys DIR`` writes a server and a client key pair with ``zmq.auth``. The daemon
loads ``curve.server_secret_key`` (the server's ``.key_secret`` file); with
``curve.authorized_clients`` (a directory of client ``.key`` files) only those clients get in.
A client needs the server's public key and its own key pair (see ``client_socket_options``).
"""

from __future__ import annotations

from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


def make_keys(directory: str | Path) -> dict[str, Path]:
    """Create server and client CURVE key pairs in ``directory``; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("server", "client"):
        public, secret = zmq.auth.create_certificates(directory, name)
        out[f"{name}_public"], out[f"{name}_secret"] = Path(public), Path(secret)
    return out


class CurveSecurity:
    """Applies CURVE server options to the daemon's sockets (and runs the authenticator).

    server_secret_key : the server's ``.key_secret`` file (``livetomo keys DIR``).
    authorized_clients : a directory of client public ``.key`` files; None lets any CURVE client in.
    """

    def __init__(self, server_secret_key: str | Path, context: zmq.Context, authorized_clients=None):
        public, secret = zmq.auth.load_certificate(server_secret_key)
        if secret is None:
            raise ValueError(f"{server_secret_key} holds no secret key; give the .key_secret file")
        self.public, self.secret = public, secret
        self.authenticator = ThreadAuthenticator(context)
        self.authenticator.start()
        location = str(authorized_clients) if authorized_clients else zmq.auth.CURVE_ALLOW_ANY
        self.authenticator.configure_curve(domain="*", location=location)

    def __call__(self, socket: zmq.Socket) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def close(self) -> None:
        self.authenticator.stop()


def client_socket_options(
    socket: zmq.Socket, server_public_key: str | Path, client_secret_key: str | Path
) -> None:
    """Make ``socket`` a CURVE client of a daemon whose public key file is given."""
    server_public, _ = zmq.auth.load_certificate(server_public_key)
    public, secret = zmq.auth.load_certificate(client_secret_key)
    socket.curve_serverkey = server_public
    socket.curve_publickey = public
    socket.curve_secretkey = secret
