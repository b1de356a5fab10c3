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


class _FromOrigin:
    """A motor backend seen from an origin, in µm: positions are offsets from where it stood
    when :meth:`rebase` was called (a stage's absolute coordinates mean nothing to tracking);
    ``um_per_unit`` converts the record's units (1000 for mm)."""

    def __init__(self, backend: MotorBackend, um_per_unit: float = 1.0):
        self.backend = backend
        self.threaded = getattr(backend, "threaded", False)
        self.scale = float(um_per_unit)
        self.origin = float(backend.position())

    def rebase(self) -> None:
        self.origin = float(self.backend.position())

    def move(self, target: float) -> float:
        return (self.backend.move(self.origin + float(target) / self.scale) - self.origin) * self.scale

    def position(self) -> float:
        return (float(self.backend.position()) - self.origin) * self.scale

    def truth(self) -> dict:
        return self.backend.truth()

    def stop(self) -> None:
        stop = getattr(self.backend, "stop", None)
        if stop is not None:
            stop()


class StageShift(ImageShift):
    """The specimen stage's two lateral axes as a tracking corrector (bluesky Movable, Readable,
    Stageable): ``y`` along the camera's rows, ``x`` along its columns, in µm **from where the
    stage stood when the scan began** (staging takes that origin), as the stage moves that
    SerialEM's and PACEtomo's realignment make. ``limits`` bound the excursion from that origin
    (the motor records' own limits still apply: a move beyond them fails naming the record).
    ``image_sign``: +1 when moving the stage by +c moves the image by +c on the camera along that
    axis, −1 when the camera sees it mirrored (a property of the microscope's optics: calibrate
    it once, as SerialEM's stage-to-camera matrix). ``um_per_unit``: µm per unit of the motors
    (1000 for records in mm)."""

    units = "um"
    nm_per_unit = 1000.0

    def __init__(
        self,
        y: MotorBackend,
        x: MotorBackend,
        *,
        name: str = "stage_shift",
        limits=(-5.0, 5.0),
        image_sign: float = 1.0,
        um_per_unit: float = 1.0,
        parent=None,
    ):
        if image_sign not in (1.0, -1.0):
            raise ParameterError(f"image_sign = {image_sign} must be +1 or -1")
        self.image_sign = float(image_sign)
        self._backends = (_FromOrigin(y, um_per_unit), _FromOrigin(x, um_per_unit))
        super().__init__(*self._backends, name=name, limits=limits, parent=parent)

    def stage(self) -> list:
        for backend in self._backends:
            backend.rebase()
        self.y.resync()
        self.x.resync()
        return [self]

    def unstage(self) -> list:
        return [self]
