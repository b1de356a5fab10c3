"""Facility signals a plan must not run without: the beam current, the cryo-stage temperature.

``PolledSignal`` is an ophyd ``Signal`` whose value a thread reads from ``read()`` every
``period_s`` while anyone is subscribed, so bluesky's suspenders (``SuspendFloor``,
``SuspendCeil``) follow it. At a beamline the same suspenders take the EPICS PVs directly
(``ophyd.EpicsSignalRO``), which ophyd keeps up to date by itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ophyd import Signal


class PolledSignal(Signal):
    """A read-only signal polled from ``read()`` while it has subscribers."""

    def __init__(self, read: Callable[[], float], *, name: str, units: str = "", period_s: float = 0.05):
        super().__init__(name=name, value=float(read()))
        self._read_value = read
        self.units = units
        self.period_s = float(period_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, callback, event_type=None, run=True):
        cid = super().subscribe(callback, event_type=event_type, run=run)
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name=f"livetomo-poll-{self.name}", daemon=True)
            self._thread.start()
        return cid

    def _poll(self) -> None:
        while not self._stop.wait(self.period_s):
            value = float(self._read_value())
            if value != self._readback:
                super().put(value)

    def describe(self) -> dict:
        out = super().describe()
        out[self.name]["units"] = self.units
        return out

    def put(self, value, **kwargs):
        raise PermissionError(f"{self.name} is read-only")

    def close(self) -> None:
        """Stop polling (subscribers keep the last value)."""
        self._stop.set()
