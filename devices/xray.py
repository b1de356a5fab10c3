"""X-ray microprobe detectors: segmented DPC transmission detector and Vortex XRF (MCA)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .base import finished, reading, run_as_status, waits_on_hardware
from .detector import FrameDetector
from .motion import RasterSpec
from .sinks import FrameSink


def prepare_backend(device, spec: RasterSpec):
    """Let the backend prepare its raster buffers (if it has any to prepare) for ``spec``."""
    prepare = getattr(device.backend, "prepare", None)
    if prepare is None:
        return finished(device)
    return run_as_status(device, lambda: prepare(spec), thread=waits_on_hardware(device.backend))


class SegmentsBackend(Protocol):
    """Optional: ``prepare(spec)`` readies per-pixel buffers for rasters of ``spec``."""

    def read_raster(self) -> np.ndarray | None:
        """Segment intensities of the last raster, (4, rows, cols) for segments 2-5; None if lost."""


class SpectraBackend(Protocol):
    """Optional: ``prepare(spec)`` readies per-pixel buffers for rasters of ``spec``;
    ``spectra_dtype`` names the MCA's count type (default "uint32")."""

    n_channels: int
    ev_per_channel: float
    offset_ev: float

    def read_raster(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(spectra (rows, cols, channels) counts, live fraction (rows, cols)) of the last raster."""

    def roi_windows(self, elements) -> dict[str, tuple[int, int]]:
        """Channel range [lo, hi) of each element's Kα window, as the detector is calibrated."""


def dpc_sensitivity(zone_width_nm: float, pixel_size_nm: float) -> float:
    """Difference-over-sum per unit phase gradient (rad/pixel) of a quadrant detector.

    The zone plate's bright-field cone (semi-angle NA = λ / 2Δr_N) fills the detector. A phase
    gradient g (rad/pixel) deflects the beam by α = λ g / (2π · pixel); shifting a uniform
    disc by α/NA of its radius moves (4/π)·α/NA of its photons across the split line. λ
    cancels: κ = 4 Δr_N / (π² · pixel). Dividing the DPC signal by κ gives rad/pixel.
    """
    if not (zone_width_nm > 0 and pixel_size_nm > 0):
        raise ValueError(f"zone width {zone_width_nm} nm and pixel {pixel_size_nm} nm must be positive")
    return 4.0 * zone_width_nm / (np.pi**2 * pixel_size_nm)


class SegmentedDPCDetector(FrameDetector):
    """Four-segment transmission detector behind the sample (segments 2-5).

    Each raster gives one frame ``{name}_segments`` of shape (4, rows, cols), float32
    photon counts. The event carries the mean total transmission signal. Its configuration
    gives the geometry that turns DPC into a phase gradient: the outermost zone width of the
    zone plate whose cone fills it (``zone_width_nm``, from the backend unless given) and,
    once a raster is prepared, ``{name}_sensitivity`` (difference over sum per rad/pixel).
    """

    summary_units = {"mean_sum": "counts"}

    def __init__(
        self,
        backend: SegmentsBackend,
        sink: FrameSink,
        *,
        name: str = "dpc",
        zone_width_nm: float | None = None,
        parent=None,
    ):
        super().__init__(sink, name=name, parent=parent)
        self.backend = backend
        self.zone_width_nm = (
            zone_width_nm if zone_width_nm is not None else getattr(backend, "zone_width_nm", None)
        )
        self.pixel_size_nm: float | None = None

    @property
    def frame_channels(self) -> dict[str, tuple[str, ...]]:
        """Names along each frame stream's first axis: the segments."""
        return {f"{self.name}_segments": ("t2", "t3", "t4", "t5")}

    def prepare(self, spec: RasterSpec):
        self.frames.declare(f"{self.name}_segments", np.float32, (4, *spec.shape))
        self.pixel_size_nm = float(spec.pixel_size_um) * 1000.0
        return prepare_backend(self, spec)

    @property
    def sensitivity(self) -> float | None:
        """κ for the prepared raster's pixel (None before a raster is prepared or without geometry)."""
        if self.zone_width_nm is None or self.pixel_size_nm is None:
            return None
        return dpc_sensitivity(self.zone_width_nm, self.pixel_size_nm)

    def read_configuration(self) -> dict:
        out = {}
        if self.zone_width_nm is not None:
            out[f"{self.name}_zone_width"] = reading(float(self.zone_width_nm))
        if self.sensitivity is not None:
            out[f"{self.name}_sensitivity"] = reading(float(self.sensitivity))
        return out

    def describe_configuration(self) -> dict:
        out = {}
        if self.zone_width_nm is not None:
            out[f"{self.name}_zone_width"] = {
                "source": "config",
                "dtype": "number",
                "shape": [],
                "units": "nm",
            }
        if self.sensitivity is not None:
            out[f"{self.name}_sensitivity"] = {
                "source": "config",
                "dtype": "number",
                "shape": [],
                "units": "difference over sum per rad/pixel",
            }
        return out

    def _acquire(self):
        segments = self.backend.read_raster()
        return None if segments is None else {f"{self.name}_segments": segments}

    def _summaries(self, frames) -> dict[str, float]:
        # a NaN frame gives a NaN summary: the daemon's validation rejects it, not the device
        return {"mean_sum": float(np.mean(frames[f"{self.name}_segments"].sum(axis=0)))}


class VortexXRF(FrameDetector):
    """Vortex silicon-drift fluorescence detector read as an MCA per raster pixel.

    Frames: ``{name}_roi`` (elements, rows, cols) float32 counts in each element's Kα
    window, and, when ``save_spectra`` is set, ``{name}_spectra`` (rows, cols, channels)
    in the backend's ``spectra_dtype`` (uint32 unless it says otherwise), the full spectra
    PyXRF fits. Events: total counts per element and the mean
    live fraction (dead time).
    """

    def __init__(
        self,
        backend: SpectraBackend,
        sink: FrameSink,
        *,
        elements=("P", "S", "K", "Ca", "Fe", "Cu", "Zn"),
        save_spectra: bool = True,
        name: str = "xrf",
        parent=None,
    ):
        super().__init__(sink, name=name, parent=parent)
        self.backend = backend
        self.elements = tuple(elements)
        self.save_spectra = save_spectra
        self.windows = dict(backend.roi_windows(self.elements))
        self.summary_units = {f"{el}": "counts" for el in self.elements} | {"live_fraction": ""}

    @property
    def frame_channels(self) -> dict[str, tuple[str, ...]]:
        """Names along each frame stream's first axis: the elements of the ROI maps."""
        return {f"{self.name}_roi": self.elements}

    def prepare(self, spec: RasterSpec):
        self.frames.declare(f"{self.name}_roi", np.float32, (len(self.elements), *spec.shape))
        if self.save_spectra:
            self.frames.declare(
                f"{self.name}_spectra", self.spectra_dtype, (*spec.shape, self.backend.n_channels)
            )
        return prepare_backend(self, spec)

    @property
    def spectra_dtype(self) -> np.dtype:
        return np.dtype(getattr(self.backend, "spectra_dtype", "uint32"))

    def roi_maps(self, spectra: np.ndarray) -> np.ndarray:
        """Counts in each element window, (elements, rows, cols), from (rows, cols, channels)."""
        out = np.empty((len(self.windows), *spectra.shape[:-1]), dtype=np.float32)
        # a few raster lines at a time: a cumulative sum over a whole 230 x 230 x 4096 raster
        # would be 1.7 GB of float64
        step = max(1, (1 << 22) // max(1, int(np.prod(spectra.shape[1:]))))
        for r0 in range(0, spectra.shape[0], step):
            block = spectra[r0 : r0 + step]
            cumulative = np.cumsum(block, axis=-1, dtype=np.float64)
            cumulative = np.concatenate([np.zeros((*block.shape[:-1], 1)), cumulative], axis=-1)
            for i, (lo, hi) in enumerate(self.windows.values()):
                out[i, r0 : r0 + step] = cumulative[..., hi] - cumulative[..., lo]
        return out

    def _acquire(self):
        result = self.backend.read_raster()
        if result is None:
            return None
        spectra, live = result
        frames = {f"{self.name}_roi": self.roi_maps(spectra)}
        if self.save_spectra:
            frames[f"{self.name}_spectra"] = spectra.astype(self.spectra_dtype, copy=False)
        self._live = float(np.mean(live))
        return frames

    def _summaries(self, frames) -> dict[str, float]:
        totals = frames[f"{self.name}_roi"].sum(axis=(1, 2))
        out = {el: float(t) for el, t in zip(self.elements, totals, strict=True)}
        out["live_fraction"] = self._live
        return out

    def read_configuration(self) -> dict:
        out = {f"{self.name}_elements": reading(",".join(self.elements))}
        for el, (lo, hi) in self.windows.items():
            out[f"{self.name}_{el}_window"] = reading([lo, hi])
        # the spectra's energy axis: channel i is at energy_offset + i * energy_per_channel (keV)
        out[f"{self.name}_energy_offset"] = reading(float(self.backend.offset_ev) / 1e3)
        out[f"{self.name}_energy_per_channel"] = reading(float(self.backend.ev_per_channel) / 1e3)
        return out

    def describe_configuration(self) -> dict:
        out = {f"{self.name}_elements": {"source": "config", "dtype": "string", "shape": []}}
        for key in ("energy_offset", "energy_per_channel"):
            out[f"{self.name}_{key}"] = {"source": "config", "dtype": "number", "shape": [], "units": "keV"}
        for el in self.windows:
            out[f"{self.name}_{el}_window"] = {
                "source": "config",
                "dtype": "array",
                "shape": [2],
                "units": "channel",
            }
        return out

    @property
    def hints(self) -> dict:
        return {"fields": [f"{self.name}_Zn"] if "Zn" in self.elements else []}
