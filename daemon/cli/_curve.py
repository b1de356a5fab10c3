"""CURVE for the command line: the key options every client command takes, and ``livetomo keys``."""

from __future__ import annotations

import functools
import os


def add_curve_arguments(parser) -> None:
    """``--server-public-key`` and ``--client-secret-key`` (defaults from the environment)."""
    parser.add_argument(
        "--server-public-key",
        default=os.environ.get("LIVETOMO_SERVER_PUBLIC_KEY"),
        help="the daemon's CURVE public key file, for a daemon beyond loopback "
        "(default: $LIVETOMO_SERVER_PUBLIC_KEY)",
    )
    parser.add_argument(
        "--client-secret-key",
        default=os.environ.get("LIVETOMO_CLIENT_SECRET_KEY"),
        help="this client's CURVE .key_secret file (default: $LIVETOMO_CLIENT_SECRET_KEY)",
    )


def curve_options(args):
    """A socket-options callable for ``ControlClient``/``ResultsFollower``, or None without keys."""
    if not args.server_public_key:
        return None
    from ..transport import client_socket_options

    if not args.client_secret_key:
        raise SystemExit("--server-public-key needs --client-secret-key (the client's .key_secret file)")
    return functools.partial(
        client_socket_options,
        server_public_key=args.server_public_key,
        client_secret_key=args.client_secret_key,
    )


def cmd_keys(args) -> int:
    from ..transport import make_keys

    for name, path in make_keys(args.directory).items():
        print(f"{name}: {path}")
    print(
        f"in the daemon's config:  curve: {{server_secret_key: {args.directory}/server.key_secret, "
        f"authorized_clients: {args.directory}/authorized_clients}}"
    )
    print(
        "clients: --server-public-key DIR/server.key --client-secret-key DIR/client.key_secret "
        "(or LIVETOMO_SERVER_PUBLIC_KEY / LIVETOMO_CLIENT_SECRET_KEY); give each client its own pair "
        "(livetomo keys elsewhere) and copy its .key into authorized_clients"
    )
    return 0
