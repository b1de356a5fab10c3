"""Names and times shared by the writers."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


def now_iso() -> str:
    """The current UTC time as ISO 8601, to the second (NeXus start_time/end_time)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_name(name: str, what: str) -> str:
    """``name`` if every '/'-separated part is a safe HDF5 name; ValueError naming ``what`` otherwise."""
    parts = name.split("/")
    if not name or not all(_PART.fullmatch(p) for p in parts):
        raise ValueError(
            f"{what} {name!r} is not allowed; use names of [A-Za-z0-9_.-] (not starting with '.' or '-'), "
            "nested by '/'"
        )
    return name
