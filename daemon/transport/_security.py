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
    """Create server and client CURVE key pairs in ``directory`` and an allow-list directory
    ``authorized_clients`` holding the client's public key; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("server", "client"):
        public, secret = zmq.auth.create_certificates(directory, name)
        out[f"{name}_public"], out[f"{name}_secret"] = Path(public), Path(secret)
    allowed = directory / "authorized_clients"
    allowed.mkdir(exist_ok=True)
    (allowed / "client.key").write_bytes(out["client_public"].read_bytes())
    out["authorized_clients"] = allowed
    return out


class AllowList:
    """The client keys CURVE lets in: the public keys in a directory, read again when it changes,
    plus ``own`` (the daemon's own key, held by its own detectors)."""

    def __init__(self, directory: str | Path, own: bytes):
        self.directory = Path(directory)
        self.own = own
        self._stamp = None
        self._keys: set[bytes] = set()

    def keys(self) -> set[bytes]:
        # names and times: a key removed (revoked) changes the stamp as much as one added
        stamp = sorted((p.name, p.stat().st_mtime_ns) for p in self.directory.glob("*.key"))
        if stamp != self._stamp:
            self._keys = set(zmq.auth.load_certificates(str(self.directory)))
            self._stamp = stamp
        return self._keys | {self.own}

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys()


class CurveSecurity:
    """Applies CURVE server options to the daemon's sockets and runs the authenticator.

    server_secret_key : the server's ``.key_secret`` file (``livetomo keys DIR``).
    authorized_clients : a directory of the public ``.key`` files of the clients let in. CURVE
        without it would encrypt but let anyone with any key pair in, so it is required. The
        daemon's own detectors hold the server's key pair, which is always let in.
    """

    def __init__(self, server_secret_key: str | Path, context: zmq.Context, authorized_clients=None):
        if not authorized_clients:
            raise ValueError(
                "CURVE needs authorized_clients: a directory of the client public keys to let in"
            )
        public, secret = zmq.auth.load_certificate(server_secret_key)
        if secret is None:
            raise ValueError(f"{server_secret_key} holds no secret key; give the .key_secret file")
        self.public, self.secret = public, secret
        self.allowed = AllowList(authorized_clients, public)
        self.authenticator = ThreadAuthenticator(context)
        self.authenticator.start()
        self.authenticator.configure_curve_callback(domain="*", credentials_provider=self.allowed)

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
