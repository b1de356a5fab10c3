"""A two-axis image shift (TEM beam deflection) in the camera's frame, nm on the specimen.

Tracking re-centres the area of interest with it between exposures (as SerialEM and PACEtomo
do); each axis is an :class:`~livetomo.devices.motion.Axis` with enforced limits, so a
correction beyond them is refused before anything moves, with the limit named.
"""

from __future__ import annotations

from .base import ParameterError
from .motion import Axis, MotorBackend


class ImageShift:
    """Image shift ``y`` (camera rows) and ``x`` (camera columns), nm (bluesky Movable, Readable).

    ``set((y, x))`` moves both axes; ``check((y, x))`` raises ParameterError naming the axis and
    its limit. Readings are both axes' (readback, setpoint and, on the simulator, the truth).
    """

    def __init__(
        self,
        y: MotorBackend,
        x: MotorBackend,
        *,
        name: str = "image_shift",
        limits_nm: tuple[float, float] = (-2000.0, 2000.0),
        parent=None,
    ):
        self.name = name
        self.parent = parent
        self.y = Axis(y, name=f"{name}_y", limits=limits_nm, units="nm", parent=self)
        self.x = Axis(x, name=f"{name}_x", limits=limits_nm, units="nm", parent=self)

    def check(self, value, parameter: str | None = None) -> None:
        try:
            y, x = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ParameterError(f"{parameter or self.name} takes (y, x) in nm, got {value!r}") from None
        self.y.check(y)
        self.x.check(x)

    def set(self, value):
        self.check(value)
        y, x = (float(v) for v in value)
        status = self.y.set(y)
        return status & self.x.set(x)

    @property
    def position(self) -> tuple[float, float]:
        return (self.y.position, self.x.position)

    @property
    def hints(self) -> dict:
        return {"fields": [self.y.name, self.x.name]}

    def read(self) -> dict:
        return {**self.y.read(), **self.x.read()}

    def describe(self) -> dict:
        return {**self.y.describe(), **self.x.describe()}

    def read_configuration(self) -> dict:
        return {**self.y.read_configuration(), **self.x.read_configuration()}

    def describe_configuration(self) -> dict:
        return {**self.y.describe_configuration(), **self.x.describe_configuration()}

    def stop(self, success: bool = False) -> None:
        self.y.stop(success)
        self.x.stop(success)
