"""Two-axis corrections: a TEM's image shift (beam deflection, nm on the specimen, camera frame)
and a microprobe's raster offset (µm).

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
    Tracking needs two facts: ``nm_per_unit`` (of the axes' units) and ``image_sign``, how a
    positive move displaces the image (+1: the image moves with it).
    """

    units = "nm"
    nm_per_unit = 1.0
    image_sign = 1.0

    def __init__(
        self,
        y: MotorBackend,
        x: MotorBackend,
        *,
        name: str = "image_shift",
        limits: tuple[float, float] = (-2000.0, 2000.0),
        parent=None,
    ):
        self.name = name
        self.parent = parent
        self.y = Axis(y, name=f"{name}_y", limits=limits, units=self.units, parent=self)
        self.x = Axis(x, name=f"{name}_x", limits=limits, units=self.units, parent=self)

    def image_px(self, position, pixel_size_nm: float) -> tuple[float, float]:
        """How far ``position`` (y, x) displaces the image on the camera, px."""
        scale = self.image_sign * self.nm_per_unit / pixel_size_nm
        return (scale * float(position[0]), scale * float(position[1]))

    def target_for(self, image_px, pixel_size_nm: float) -> tuple[float, float]:
        """The position (y, x) that displaces the image by ``image_px`` (px)."""
        scale = pixel_size_nm / (self.image_sign * self.nm_per_unit)
        return (scale * float(image_px[0]), scale * float(image_px[1]))

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


class RasterOffset(ImageShift):
    """The centre of a fly-scan raster, ``y`` (rows) and ``x`` (columns), µm from where the raster
    was put (bluesky Movable, Readable). Moving the raster by +c shows the specimen at −c in
    the map, hence ``image_sign`` −1."""

    units = "um"
    nm_per_unit = 1000.0
    image_sign = -1.0

    def __init__(
        self,
        y: MotorBackend,
        x: MotorBackend,
        *,
        name: str = "raster_offset",
        limits=(-20.0, 20.0),
        parent=None,
    ):
        super().__init__(y, x, name=name, limits=limits, parent=parent)
