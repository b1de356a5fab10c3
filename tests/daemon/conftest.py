"""Fixtures the daemon's attack and fuzz tests share."""

import pytest

from livetomo.daemon.testing import running_daemon


@pytest.fixture
def daemon(tmp_path):
    """A daemon without run-end refinement, frames up to 8 MiB (modules may define their own)."""
    with running_daemon(
        tmp_path, processing={"refine": None}, limits={"max_message_bytes": 8 << 20}
    ) as daemon:
        yield daemon
