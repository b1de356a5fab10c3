"""A ``livetomo serve`` in a subprocess, as at an instrument, for benchmarks that measure the
daemon from outside (its control latency, its memory and file descriptors)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from ..control import ControlClient
from ..testing import wait_until
from .timing import answers


@contextlib.contextmanager
def served_daemon(
    directory: str | Path, overrides: dict, *, command: list[str] | None = None
) -> Iterator[tuple[subprocess.Popen, ControlClient]]:
    """Start ``livetomo serve`` with ``overrides`` written to ``directory/daemon.yaml`` (or
    ``command`` instead), wait until it answers, yield (process, client); shut it down after.

    Its output goes to ``directory/serve.log``.
    """
    directory = Path(directory)
    config = directory / "daemon.yaml"
    config.write_text(yaml.safe_dump(overrides))
    command = command or [sys.executable, "-m", "livetomo.daemon.cli", "serve", "--config", str(config)]
    with open(directory / "serve.log", "w") as log_file:
        server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        client = ControlClient(overrides["endpoints"]["control"], timeout_s=120.0)
        try:
            wait_until(lambda: answers(client), 120, "the daemon to answer")
            yield server, client
            try:
                client("shutdown")
            except (RuntimeError, TimeoutError):
                server.terminate()
            server.wait(timeout=120)
        finally:
            if server.poll() is None:
                server.kill()
