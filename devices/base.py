"""Plumbing every livetomo device shares: readings, statuses, limit checks, external frames.

Devices are composed (ophyd-async style): each is built from a backend it is given and,
for image detectors, a frame sink it is given; nothing here knows about simulators.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from event_model import ComposeStreamResourceBundle, compose_stream_resource
from ophyd.status import Status
from ophyd.utils import InvalidState

from .sinks import FrameSink


class ParameterError(ValueError):
    """A parameter is outside what the hardware offers; raised before anything moves."""


class MotionError(RuntimeError):
    """A move ended away from its target: stopped, refused by the hardware, or outside its deadband."""


def check_range(name: str, value: float, lo: float, hi: float, unit: str) -> None:
    """Raise ParameterError naming ``name`` and the allowed range unless lo <= value <= hi."""
    if not np.isfinite(value) or not lo <= value <= hi:
        raise ParameterError(
            f"{name} = {value:g} {unit} is outside the allowed range [{lo:g}, {hi:g}] {unit}"
        )


def reading(value: Any, timestamp: float | None = None) -> dict:
    """One bluesky Reading."""
    return {"value": value, "timestamp": time.time() if timestamp is None else timestamp}


def number_key(source: str, units: str = "", precision: int | None = None) -> dict:
    """Descriptor entry for a scalar."""
    key = {"source": source, "dtype": "number", "shape": [], "units": units}
    if precision is not None:
        key["precision"] = precision
    return key


def finished(obj: Any) -> Status:
    """A status that is already done (simulated hardware answers at once)."""
    status = Status(obj=obj)
    status.set_finished()
    return status


def failed(obj: Any, exc: BaseException) -> Status:
    """A status that already failed with ``exc``, so the RunEngine reports it."""
    status = Status(obj=obj)
    status.set_exception(exc)
    return status


def run_as_status(obj: Any, action: Callable[[], Any], *, thread: bool = False) -> Status:
    """Run ``action`` and wrap its outcome in a status (failure included).

    With ``thread=False`` the action runs now, in the caller's thread (simulated hardware
    answers at once). With ``thread=True`` it runs in a worker thread and the status is
    returned at once, so a RunEngine waiting on it can still pause or stop: backends that
    wait on real hardware (``threaded = True``) are run this way.
    """
    if not thread:
        try:
            action()
        except Exception as exc:  # the RunEngine must see hardware errors through the status
            return failed(obj, exc)
        return finished(obj)
    status = Status(obj=obj)

    def work():
        try:
            action()
        except Exception as exc:
            settle(status, exc)
        else:
            settle(status)

    name = getattr(obj, "name", type(obj).__name__)
    threading.Thread(target=work, name=f"livetomo {name}", daemon=True).start()
    return status


def settle(status: Status, exc: BaseException | None = None) -> None:
    """Finish ``status`` (with ``exc``, if given) unless something finished it already (a stop)."""
    if status.done:
        return
    try:
        if exc is None:
            status.set_finished()
        else:
            status.set_exception(exc)
    except InvalidState:  # finished meanwhile by another thread
        pass


def waits_on_hardware(backend: Any) -> bool:
    """True for backends whose calls block on real hardware (they set ``threaded = True``)."""
    return bool(getattr(backend, "threaded", False))


class ExternalFrames:
    """Writes a detector's frames to its sink and yields stream_resource / stream_datum.

    One instance per detector. ``declare`` fixes each data key's dtype and frame shape
    (they go into the descriptor: its ``shape`` is one event's frame, e.g. ``[48, 48]``, so
    a run of 41 events reads back as (41, 48, 48)); ``write`` takes one frame per data key;
    ``collect`` (bluesky's ``collect_asset_docs``, called when the event that reads them is
    saved) hands them to the sink and yields their documents.

    Frames wait for their event: when a pause rewinds a step after the trigger, the RunEngine
    discards that event and triggers again, and the new frames replace the waiting ones, so
    a repeated step stores its frames once and every stored frame has its event.
    """

    def __init__(self, owner: str, sink: FrameSink):
        self._owner = owner
        self._sink = sink
        self._layout: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._bundles: dict[str, ComposeStreamResourceBundle] = {}
        self._pending: list[tuple[str, dict]] = []
        self._waiting: dict[str, np.ndarray] = {}
        self._index = 0
        self.replaced = 0  # acquisitions whose event was never saved (repeated after a pause)

    def declare(self, data_key: str, dtype: np.dtype | str, shape: tuple[int, ...]) -> None:
        self._layout[data_key] = (np.dtype(dtype), tuple(int(n) for n in shape))

    def describe(self, source: str) -> dict:
        return {
            key: {
                "source": source,
                "dtype": "array",
                "dtype_numpy": dtype.str,
                "shape": list(shape),
                "external": "STREAM:",
            }
            for key, (dtype, shape) in self._layout.items()
        }

    def write(self, frames: dict[str, np.ndarray]) -> None:
        """Take one frame for every declared key (stored, with the same index, at ``collect``)."""
        for key, frame in frames.items():
            _, shape = self._layout[key]
            if frame.shape != shape:
                raise ValueError(f"{self._owner}: frame {key} has shape {frame.shape}, declared {shape}")
        if self._waiting:
            self.replaced += 1
        self._waiting = dict(frames)

    def _store_waiting(self) -> None:
        frames, self._waiting = self._waiting, {}
        for key, frame in frames.items():
            dtype, shape = self._layout[key]
            if key not in self._bundles:
                target = self._sink.open_stream(self._owner, key, dtype, shape)
                bundle = compose_stream_resource(
                    mimetype=target.mimetype,
                    uri=target.uri,
                    data_key=key,
                    parameters=target.parameters,
                )
                self._bundles[key] = bundle
                self._pending.append(("stream_resource", bundle.stream_resource_doc))
            index = self._sink.write(self._owner, key, np.ascontiguousarray(frame, dtype=dtype))
            self._pending.append(
                ("stream_datum", self._bundles[key].compose_stream_datum({"start": index, "stop": index + 1}))
            )
        self._index += 1

    @property
    def index(self) -> int:
        """Frames taken since the last ``reset`` (stored, or waiting for their event)."""
        return self._index + bool(self._waiting)

    def collect(self) -> Iterator[tuple[str, dict]]:
        if self._waiting:
            self._store_waiting()
        docs, self._pending = self._pending, []
        yield from docs

    def reset(self) -> None:
        """Start a new set of streams (at stage): a new run gets new resources."""
        for key in self._bundles:
            self._sink.close_stream(self._owner, key)
        self._bundles.clear()
        self._pending.clear()
        self._waiting.clear()
        self._index = 0
