"""Stages: rotation (tomography), tilt (TEM goniometer) and the fine raster scan stage.

Each device is built from a backend (``MotorBackend``); the simulated backends live in
``livetomo.devices.sim`` and the EPICS ones in ``livetomo.devices.epics``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ophyd.status import Status

from .base import (
    MotionError,
    ParameterError,
    check_range,
    failed,
    finished,
    number_key,
    reading,
    run_as_status,
    settle,
    waits_on_hardware,
)


class MotorBackend(Protocol):
    """What an axis needs from hardware. Simulated backends also report their truth.

    A backend that waits on real hardware sets ``threaded = True``: the axis then runs
    ``move`` in a worker thread and returns its status at once, so that a RunEngine pause
    or stop acts during the move (through ``stop``) instead of after it.
    """

    def move(self, target: float) -> float:
        """Move to ``target`` and wait; return the reached position. Raise on failure."""

    def position(self) -> float:
        """Current readback."""

    def truth(self) -> dict[str, tuple[float, str]]:
        """Simulator ground truth as {suffix: (value, units)}; ``{}`` on real hardware."""


class Axis:
    """A movable, readable axis with enforced soft limits (bluesky Movable, Readable, Locatable)."""

    def __init__(
        self,
        backend: MotorBackend,
        *,
        name: str,
        limits: tuple[float, float],
        units: str,
        parent=None,
    ):
        self.name = name
        self.parent = parent
        self.limits = (float(limits[0]), float(limits[1]))
        self.units = units
        self.backend = backend
        self._setpoint = backend.position()
        self._moving: Status | None = None

    def check(self, value: float, parameter: str | None = None) -> None:
        """Raise ParameterError if ``value`` is outside this axis' limits."""
        check_range(parameter or self.name, value, *self.limits, self.units)

    def set(self, value: float):
        self.check(value)
        self._setpoint = float(value)
        status = run_as_status(
            self, lambda: self.backend.move(float(value)), thread=waits_on_hardware(self.backend)
        )
        self._moving = status
        return status

    def locate(self) -> dict:
        return {"setpoint": self._setpoint, "readback": self.backend.position()}

    def resync(self) -> None:
        """Setpoint = readback, after the backend's coordinates changed (a new origin)."""
        self._setpoint = self.backend.position()

    @property
    def position(self) -> float:
        return self.backend.position()

    @property
    def hints(self) -> dict:
        return {"fields": [self.name]}

    def read(self) -> dict:
        now = None
        out = {
            self.name: reading(self.backend.position(), now),
            f"{self.name}_setpoint": reading(self._setpoint, now),
        }
        for suffix, (value, _) in self.backend.truth().items():
            out[f"{self.name}_{suffix}"] = reading(value, now)
        return out

    def describe(self) -> dict:
        out = {
            self.name: number_key(f"{type(self.backend).__name__}:readback", self.units, 4),
            f"{self.name}_setpoint": number_key(f"{type(self.backend).__name__}:setpoint", self.units, 4),
        }
        for suffix, (_, units) in self.backend.truth().items():
            out[f"{self.name}_{suffix}"] = number_key("simulator-truth", units, 5)
        return out

    def read_configuration(self) -> dict:
        return {
            f"{self.name}_low_limit": reading(self.limits[0]),
            f"{self.name}_high_limit": reading(self.limits[1]),
        }

    def describe_configuration(self) -> dict:
        return {
            f"{self.name}_low_limit": number_key("config", self.units),
            f"{self.name}_high_limit": number_key("config", self.units),
        }

    def stop(self, success: bool = False) -> None:
        """Stop the motor; a move in progress ends now (as ophyd's positioners do): its status
        succeeds with ``success=True`` (the RunEngine's pause) and fails otherwise."""
        stop = getattr(self.backend, "stop", None)
        if stop is not None:
            stop()
        moving, self._moving = self._moving, None
        if moving is not None and not moving.done:
            if success:
                settle(moving)
            else:
                settle(
                    moving,
                    MotionError(f"{self.name} was stopped on its way to {self._setpoint:g} {self.units}"),
                )


class RotationStage(Axis):
    """Tomography rotation stage; angles in degrees."""

    def __init__(self, backend: MotorBackend, *, name: str = "rotation", limits=(-360.0, 360.0), parent=None):
        super().__init__(backend, name=name, limits=limits, units="deg", parent=parent)


class TiltStage(Axis):
    """TEM goniometer alpha tilt; degrees. Real goniometers stop at about ±70°."""

    def __init__(self, backend: MotorBackend, *, name: str = "tilt", limits=(-70.0, 70.0), parent=None):
        super().__init__(backend, name=name, limits=limits, units="deg", parent=parent)


@dataclass(frozen=True)
class RasterSpec:
    """A fly-scan raster: ``shape`` (rows, columns) of pixels of ``pixel_size_um`` at ``dwell_s`` each."""

    shape: tuple[int, int]
    pixel_size_um: float
    dwell_s: float

    @property
    def n_pixels(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def duration_s(self) -> float:
        return self.n_pixels * self.dwell_s


class RasterBackend(Protocol):
    """Fly-scan hardware: piezo raster with detectors gated per pixel.

    Optional: ``prepare(spec)`` (write the raster to the controller once per scan) and,
    for hardware that takes time, ``start_raster(spec) -> (started, done)`` returning two
    statuses, so that ``kickoff`` completes when the raster has started and ``complete``
    when it is done, and a RunEngine can pause in between.
    """

    def run_raster(self, spec: RasterSpec) -> None:
        """Execute one raster and wait; detectors sharing the beamline collect meanwhile."""


class ScanStage:
    """Fine raster stage for the X-ray microprobe (bluesky Preparable + Flyable).

    ``prepare(RasterSpec)`` checks the raster against the piezo travel and dwell range;
    ``kickoff`` runs the raster; the detectors then read out what they gated.
    ``default_shape`` (rows, columns) is the raster a plan uses when it is given none: the field
    that covers this instrument's usual specimen and its rotation runout.
    """

    def __init__(
        self,
        backend: RasterBackend,
        *,
        name: str = "scan",
        travel_um: float = 100.0,
        dwell_range_s: tuple[float, float] = (1e-4, 1.0),
        default_shape: tuple[int, int] = (48, 48),
        parent=None,
    ):
        self.name = name
        self.default_shape = (int(default_shape[0]), int(default_shape[1]))
        self.parent = parent
        self.backend = backend
        self.travel_um = travel_um
        self.dwell_range_s = dwell_range_s
        self._spec: RasterSpec | None = None
        self._count = 0
        self._done: Status | None = None

    def check(self, spec: RasterSpec) -> None:
        rows, cols = spec.shape
        if rows < 1 or cols < 1:
            raise ParameterError(f"raster shape {spec.shape} must have at least one row and one column")
        extent = max(rows, cols) * spec.pixel_size_um
        check_range("raster extent", extent, 0.0, self.travel_um, "um")
        check_range("dwell_s", spec.dwell_s, *self.dwell_range_s, "s")

    def prepare(self, spec: RasterSpec):
        self.check(spec)
        self._spec = spec
        prepare = getattr(self.backend, "prepare", None)
        if prepare is None:
            return finished(self)
        return run_as_status(self, lambda: prepare(spec), thread=waits_on_hardware(self.backend))

    def kickoff(self):
        if self._spec is None:
            raise RuntimeError(f"{self.name}: prepare() a RasterSpec before kickoff()")
        start = getattr(self.backend, "start_raster", None)
        if start is not None:
            try:
                started, done = start(self._spec)
            except Exception as exc:
                return failed(self, exc)
            self._done = Status(obj=self)
            done.add_callback(self._relay(self._done))
            return started

        def fly():
            self.backend.run_raster(self._spec)
            self._count += 1

        return run_as_status(self, fly, thread=waits_on_hardware(self.backend))

    def _relay(self, ours: Status):
        """Count the raster before ``ours`` (what the RunEngine waits on) reports it done."""

        def relay(status) -> None:
            if status.success:
                self._count += 1
                settle(ours)
            else:
                settle(ours, status.exception() or RuntimeError(f"{self.name}: raster failed"))

        return relay

    def complete(self):
        done, self._done = self._done, None
        return done if done is not None else finished(self)

    def stop(self, success: bool = False) -> None:
        stop = getattr(self.backend, "stop", None)
        if stop is not None:
            stop()

    def read(self) -> dict:
        spec = self._spec
        return {
            f"{self.name}_rasters": reading(self._count),
            f"{self.name}_dwell": reading(spec.dwell_s if spec else 0.0),
        }

    def describe(self) -> dict:
        return {
            f"{self.name}_rasters": number_key("scan:count"),
            f"{self.name}_dwell": number_key("scan:dwell", "s"),
        }

    def read_configuration(self) -> dict:
        return {f"{self.name}_travel": reading(self.travel_um)}

    def describe_configuration(self) -> dict:
        return {f"{self.name}_travel": number_key("config", "um")}
