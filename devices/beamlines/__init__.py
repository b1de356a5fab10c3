"""Beamline modules, chosen by name (as dodal selects beamlines): each builds one instrument's
named devices from its own settings.

A beamline module has

- ``Settings``: a dataclass of its configuration keys (the daemon checks YAML against it);
- ``PLAN_DEFAULTS``: plan name -> {device parameter: device name} for parameters a submission
  may leave out;
- ``build(settings, *, sink) -> Beamline``: the devices, image detectors writing to ``sink``.

``BEAMLINES`` maps ``beamline.kind`` to its module; modules are imported only when chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

BEAMLINES = {
    "simulated": "livetomo.devices.beamlines.simulated",
    "epics": "livetomo.devices.beamlines.epics",
}


@dataclass
class Beamline:
    """Named devices, the plans' default device choices, and (simulated only) the simulators' truth.

    ``angle_axis`` maps an image detector to the device whose position is the angle of its
    frames; ``exposure`` maps a detector to ``() -> (value, units)``. Together they give the
    per-frame header fields a frame sink cannot know (``frame_metadata``). ``suspenders``
    suspend a plan while the beam is lost or the specimen too warm, and resume it after.
    """

    devices: dict[str, Any]
    plan_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)
    angle_axis: dict[str, str] = field(default_factory=dict)
    exposure: dict[str, Callable[[], tuple[float, str]]] = field(default_factory=dict)
    suspenders: list = field(default_factory=list)  # (bluesky suspender, reason) the RunEngine installs
    # the scan presets (devices.presets) its instruments are sized for; None: any (real hardware,
    # whose frames are what the instrument gives)
    presets: tuple[str, ...] | None = None

    def frame_metadata(self, device: str, data_key: str) -> dict:
        """``angle_deg``, ``exposure`` and ``exposure_units`` of the frame ``device`` writes now, and
        ``channels`` (the names along the frame's first axis) where the device names them."""
        out = {"image_key": 0}
        channels = getattr(self.devices.get(device), "frame_channels", {}).get(data_key)
        if channels is not None:
            out["channels"] = list(channels)
        axis = self.angle_axis.get(device)
        if axis is not None:
            out["angle_deg"] = float(self.devices[axis].position)
        if device in self.exposure:
            out["exposure"], out["exposure_units"] = self.exposure[device]()
        return out


def beamline_module(kind: str) -> ModuleType:
    """The module of beamline ``kind``; KeyError names the known kinds."""
    if kind not in BEAMLINES:
        raise KeyError(f"unknown beamline kind {kind!r}; known: {', '.join(sorted(BEAMLINES))}")
    return importlib.import_module(BEAMLINES[kind])


__all__ = ["BEAMLINES", "Beamline", "beamline_module"]
