"""Area cameras: Gatan K3 (cryo-ET tilt series), cryo-fluorescence and soft X-ray cameras."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .base import check_range, finished, number_key, reading
from .detector import FrameDetector
from .sinks import FrameSink


class CameraBackend(Protocol):
    """Optional: ``dtype``, what the camera delivers (default float32; a counting camera may
    give uint16 counts, half the bytes)."""

    shape: tuple[int, int]
    pixel_size_nm: float

    def acquire(self, exposure: float) -> np.ndarray | None:
        """One image, (rows, cols) float32; ``exposure`` is a dose (e/Å²) or seconds; None if lost."""

    # Optional: ``start_run()``, called when a run stages the camera (FrameDetector.stage).


@dataclass(frozen=True)
class K3Settings:
    """Dose per tilt image, e/Å² (counting mode; about 3 e/Å² in a dose-symmetric series)."""

    dose_e_per_A2: float = 3.0


class Camera(FrameDetector):
    """A camera that takes one image per trigger into ``{name}_image``."""

    exposure_units = "s"
    exposure_range = (1e-4, 100.0)

    def __init__(self, backend: CameraBackend, sink: FrameSink, *, exposure: float, name: str, parent=None):
        super().__init__(sink, name=name, parent=parent)
        self.backend = backend
        self.check_exposure(exposure)
        self.exposure = float(exposure)
        self.frames.declare(
            f"{name}_image", np.dtype(getattr(backend, "dtype", np.float32)), tuple(backend.shape)
        )

    def check_exposure(self, exposure: float) -> None:
        check_range(f"{self.name} exposure", exposure, *self.exposure_range, self.exposure_units)

    def _acquire(self):
        image = self.backend.acquire(self.exposure)
        return None if image is None else {f"{self.name}_image": image}

    def _summaries(self, frames) -> dict[str, float]:
        return {"mean": float(np.mean(frames[f"{self.name}_image"]))}

    summary_units = {"mean": "counts"}

    def read_configuration(self) -> dict:
        return {
            f"{self.name}_exposure": reading(self.exposure),
            f"{self.name}_pixel_size": reading(self.backend.pixel_size_nm),
        }

    def describe_configuration(self) -> dict:
        return {
            f"{self.name}_exposure": number_key("config", self.exposure_units),
            f"{self.name}_pixel_size": number_key("config", "nm"),
        }


class K3Camera(Camera):
    """Gatan K3 direct electron detector in counting mode; exposure is the dose per image in e/Å².

    ``prepare(K3Settings(dose_e_per_A2=...))`` sets the dose of the next images.
    Counting-mode frames are float32 electrons per pixel, or the backend's ``dtype`` (uint16 counts).
    """

    exposure_units = "e/A^2"
    exposure_range = (0.05, 20.0)

    def __init__(
        self, backend: CameraBackend, sink: FrameSink, *, dose_e_per_A2: float = 3.0, name="k3", parent=None
    ):
        super().__init__(backend, sink, exposure=dose_e_per_A2, name=name, parent=parent)

    def prepare(self, settings: K3Settings):
        self.check_exposure(settings.dose_e_per_A2)
        self.exposure = float(settings.dose_e_per_A2)
        return finished(self)

    # what IMOD's .mdoc carries: the microscope's voltage and the tilt axis in the camera image
    # (SerialEM's and IMOD's convention: degrees counter-clockwise from the image's Y axis)
    _OPTICS = {"voltage": ("voltage_kv", "kV"), "tilt_axis_angle": ("tilt_axis_deg", "deg")}

    def read_configuration(self) -> dict:
        out = super().read_configuration()
        for key, (attr, _) in self._OPTICS.items():
            value = getattr(self.backend, attr, None)
            if value is not None:
                out[f"{self.name}_{key}"] = reading(float(value))
        return out

    def describe_configuration(self) -> dict:
        out = super().describe_configuration()
        for key, (attr, units) in self._OPTICS.items():
            if getattr(self.backend, attr, None) is not None:
                out[f"{self.name}_{key}"] = number_key("config", units)
        return out


class FluorescenceCamera(Camera):
    """Wide-field cryo-fluorescence camera (sCMOS); exposure in seconds."""

    def __init__(
        self, backend: CameraBackend, sink: FrameSink, *, exposure_s: float = 0.2, name="fm", parent=None
    ):
        super().__init__(backend, sink, exposure=exposure_s, name=name, parent=parent)


class TransmissionCamera(Camera):
    """Full-field transmission X-ray microscope camera (Zernike phase contrast); exposure in seconds."""

    def __init__(
        self, backend: CameraBackend, sink: FrameSink, *, exposure_s: float = 1e-3, name="txm", parent=None
    ):
        super().__init__(backend, sink, exposure=exposure_s, name=name, parent=parent)


class SoftXrayCamera(Camera):
    """Cryo soft X-ray transmission camera (water window); exposure in seconds."""

    def __init__(
        self, backend: CameraBackend, sink: FrameSink, *, exposure_s: float = 1.0, name="sxt", parent=None
    ):
        super().__init__(backend, sink, exposure=exposure_s, name=name, parent=parent)
