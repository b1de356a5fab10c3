"""What a run's bluesky documents say that belongs in its file: sample, proposal, plain metadata."""

from __future__ import annotations

import json
from importlib import metadata as _pkg

import numpy as np

UNNAMED_SAMPLE = "unnamed sample"


def livetomo_version() -> str:
    try:
        return _pkg.version("livetomo")
    except _pkg.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def sample_name_of(start: dict) -> str:
    """The sample's name from a start document: ``sample`` (a name, or a mapping with ``name``),
    else ``sample_name``; "unnamed sample" when neither is given."""
    sample = start.get("sample")
    if isinstance(sample, dict):
        sample = sample.get("name")
    if sample in (None, ""):
        sample = start.get("sample_name")
    return str(sample) if sample not in (None, "") else UNNAMED_SAMPLE


def proposal_of(start: dict) -> str | None:
    """The proposal (experiment identifier) from ``proposal``, ``proposal_id`` or ``proposal_num``."""
    for key in ("proposal", "proposal_id", "proposal_num"):
        value = start.get(key)
        if isinstance(value, dict):
            value = value.get("proposal_id") or value.get("id")
        if value not in (None, ""):
            return str(value)
    return None


def plain_metadata(doc: dict) -> dict:
    """The document as HDF5-storable values: numbers, strings, flat lists of either; anything
    else (mappings, mixed lists) as JSON text."""
    out = {}
    for key, value in doc.items():
        if isinstance(value, bool | int | float | str) and not (isinstance(value, float) and np.isnan(value)):
            out[key] = value
        elif isinstance(value, list | tuple) and value and all(isinstance(v, int | float) for v in value):
            out[key] = np.asarray(value, dtype=np.float64)
        elif isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
            out[key] = np.array([v.encode() for v in value])
        elif value is not None:
            out[key] = json.dumps(value, default=str)
    return out
