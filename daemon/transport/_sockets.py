"""Socket helpers shared by every endpoint: what counts as loopback, and the address a local peer uses."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or localhost.

    An endpoint with several addresses (ZeroMQ's ``tcp://source;address``) is loopback only
    if every address is: ``tcp://127.0.0.1:5;0.0.0.0:6`` is not.
    """
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    return bool(rest) and all(_loopback_host(f"{scheme}://{part}") for part in rest.split(";"))


def _loopback_host(address: str) -> bool:
    host = urlparse(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', interface names and DNS names are all non-loopback


def local_address(bound: str) -> str:
    """The address a peer on this machine connects to, for an endpoint bound to ``bound``.

    A wildcard bind (``tcp://*:5577``, ``tcp://0.0.0.0:5577``) is reached through loopback.
    """
    return bound.replace("tcp://*:", "tcp://127.0.0.1:").replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")
