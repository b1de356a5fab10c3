"""Real-hardware backends: EPICS (over ophyd's signals) and Thermo Fisher AutoScript for the FIB.

Every PV name is configuration: pass the prefix (and, where a facility's IOC differs,
the suffixes) when building the backend. Nothing connects until ``connect()`` is called,
so these classes import and construct on a laptop without a control system; they need
an EPICS client library (pyepics or caproto) to connect. They have not been run against
hardware in this repository's tests; the simulated backends in ``livetomo.devices.sim``
implement the same protocols and are what CI exercises.

Example::

    from livetomo.devices.epics import EpicsMotorBackend
    from livetomo.devices.motion import RotationStage
    rotation = RotationStage(EpicsMotorBackend("XF:31ID1-ES{Rot:1}Mtr").connect(), limits=(-190, 190))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .motion import RasterSpec


class EpicsMotorBackend:
    """A motor record (``ophyd.EpicsMotor``) as a ``MotorBackend``; timeout in seconds."""

    def __init__(self, prefix: str, *, timeout: float = 120.0):
        self.prefix = prefix
        self.timeout = timeout
        self._motor = None

    def connect(self) -> EpicsMotorBackend:
        from ophyd import EpicsMotor

        self._motor = EpicsMotor(self.prefix, name=self.prefix.replace(":", "_"))
        self._motor.wait_for_connection(timeout=10.0)
        return self

    def _require(self):
        if self._motor is None:
            raise RuntimeError(f"EPICS motor {self.prefix} is not connected; call connect() first")
        return self._motor

    def move(self, target: float) -> float:
        motor = self._require()
        motor.move(target, wait=True, timeout=self.timeout)
        return float(motor.position)

    def position(self) -> float:
        return float(self._require().position) if self._motor is not None else float("nan")

    def stop(self) -> None:
        if self._motor is not None:
            self._motor.stop()

    def truth(self) -> dict:
        return {}


@dataclass(frozen=True)
class RasterPVs:
    """PV suffixes of a fly-scan controller IOC (e.g. a PandABox or a scan-engine IOC)."""

    rows: str = "NumRows"
    cols: str = "NumCols"
    step_um: str = "StepSize"
    dwell_s: str = "Dwell"
    start: str = "Start"
    busy: str = "Busy_RBV"


class EpicsRasterBackend:
    """Fly-scan raster run by an IOC: writes the raster, starts it, waits until not busy."""

    def __init__(self, prefix: str, *, pvs: RasterPVs = RasterPVs(), timeout_margin_s: float = 30.0):
        self.prefix = prefix
        self.pvs = pvs
        self.timeout_margin_s = timeout_margin_s
        self._signals = None

    def connect(self) -> EpicsRasterBackend:
        from ophyd import EpicsSignal, EpicsSignalRO

        names = ("rows", "cols", "step_um", "dwell_s", "start")
        self._signals = {n: EpicsSignal(self.prefix + getattr(self.pvs, n), name=n) for n in names}
        self._signals["busy"] = EpicsSignalRO(self.prefix + self.pvs.busy, name="busy")
        for signal in self._signals.values():
            signal.wait_for_connection(timeout=10.0)
        return self

    def run_raster(self, spec: RasterSpec) -> None:
        from ophyd.status import SubscriptionStatus

        if self._signals is None:
            raise RuntimeError(f"raster controller {self.prefix} is not connected; call connect() first")
        s = self._signals
        s["rows"].put(spec.shape[0], wait=True)
        s["cols"].put(spec.shape[1], wait=True)
        s["step_um"].put(spec.pixel_size_um, wait=True)
        s["dwell_s"].put(spec.dwell_s, wait=True)
        done = SubscriptionStatus(s["busy"], lambda value, **_: value == 0, run=False)
        s["start"].put(1)
        done.wait(timeout=spec.duration_s * 1.5 + self.timeout_margin_s)


@dataclass(frozen=True)
class AreaDetectorPVs:
    """PV suffixes of an areaDetector IOC (cam plugin and an NDStdArrays plugin)."""

    acquire: str = "cam1:Acquire"
    acquire_time: str = "cam1:AcquireTime"
    size_x: str = "cam1:ArraySizeX_RBV"
    size_y: str = "cam1:ArraySizeY_RBV"
    array: str = "image1:ArrayData"


class AreaDetectorCameraBackend:
    """An areaDetector camera as a ``CameraBackend``; ``exposure`` is written to AcquireTime.

    For a K3 the IOC's AcquireTime is the exposure giving the requested dose at the
    calibrated dose rate: pass ``dose_rate_e_per_A2_per_s`` and exposure is read as a dose.
    """

    def __init__(
        self,
        prefix: str,
        *,
        pixel_size_nm: float,
        pvs: AreaDetectorPVs = AreaDetectorPVs(),
        dose_rate_e_per_A2_per_s: float | None = None,
        timeout_s: float = 60.0,
    ):
        self.prefix = prefix
        self.pixel_size_nm = pixel_size_nm
        self.pvs = pvs
        self.dose_rate = dose_rate_e_per_A2_per_s
        self.timeout_s = timeout_s
        self.shape: tuple[int, int] = (0, 0)
        self._signals = None

    def connect(self) -> AreaDetectorCameraBackend:
        from ophyd import EpicsSignal, EpicsSignalRO

        p = self.pvs
        self._signals = {
            "acquire": EpicsSignal(self.prefix + p.acquire, name="acquire"),
            "acquire_time": EpicsSignal(self.prefix + p.acquire_time, name="acquire_time"),
            "size_x": EpicsSignalRO(self.prefix + p.size_x, name="size_x"),
            "size_y": EpicsSignalRO(self.prefix + p.size_y, name="size_y"),
            "array": EpicsSignalRO(self.prefix + p.array, name="array"),
        }
        for signal in self._signals.values():
            signal.wait_for_connection(timeout=10.0)
        self.shape = (int(self._signals["size_y"].get()), int(self._signals["size_x"].get()))
        return self

    def acquire(self, exposure: float) -> np.ndarray:
        if self._signals is None:
            raise RuntimeError(f"camera {self.prefix} is not connected; call connect() first")
        seconds = exposure / self.dose_rate if self.dose_rate else exposure
        self._signals["acquire_time"].put(seconds, wait=True)
        self._signals["acquire"].set(1).wait(timeout=seconds + self.timeout_s)
        return np.asarray(self._signals["array"].get(), dtype=np.float32).reshape(self.shape)


class EpicsRasterBuffersBackend:
    """Per-pixel buffers an IOC fills during a fly scan, read after each raster.

    ``segments`` reads four waveform PVs (segments 2-5, e.g. a 4-channel scaler's
    arrays) as a ``SegmentsBackend``; ``spectra`` reads one MCA waveform of
    rows·cols·channels counts plus a live-time waveform as a ``SpectraBackend``.
    The raster shape comes from the ``RasterSpec`` the scan stage was prepared with.
    ``rois`` maps each element to its Kα window [lo, hi) in channels, as the facility
    calibrated its detector (the MCA's ROIs).
    """

    def __init__(
        self,
        *,
        segment_pvs: tuple[str, str, str, str] | None = None,
        spectra_pv: str | None = None,
        live_time_pv: str | None = None,
        n_channels: int = 4096,
        ev_per_channel: float = 10.0,
        offset_ev: float = 0.0,
        rois: dict[str, tuple[int, int]] | None = None,
    ):
        self.rois = dict(rois or {})
        self.segment_pvs = segment_pvs
        self.spectra_pv = spectra_pv
        self.live_time_pv = live_time_pv
        self.n_channels = n_channels
        self.ev_per_channel = ev_per_channel
        self.offset_ev = offset_ev
        self.spec: RasterSpec | None = None
        self._signals: dict = {}

    def connect(self) -> EpicsRasterBuffersBackend:
        from ophyd import EpicsSignalRO

        pvs = dict(enumerate(self.segment_pvs or ()))
        pvs |= {"spectra": self.spectra_pv, "live": self.live_time_pv}
        for key, pv in pvs.items():
            if pv:
                self._signals[key] = EpicsSignalRO(pv, name=str(key))
                self._signals[key].wait_for_connection(timeout=10.0)
        return self

    def prepare(self, spec: RasterSpec) -> None:
        self.spec = spec

    def roi_windows(self, elements) -> dict[str, tuple[int, int]]:
        missing = [el for el in elements if el not in self.rois]
        if missing:
            raise ValueError(
                f"no ROI configured for {', '.join(missing)}; configured: {', '.join(self.rois) or 'none'}"
            )
        return {el: tuple(self.rois[el]) for el in elements}

    def _shape(self) -> tuple[int, int]:
        if self.spec is None:
            raise RuntimeError("raster buffers: prepare(RasterSpec) before reading")
        return self.spec.shape

    def read_segments(self) -> np.ndarray:
        rows, cols = self._shape()
        arrays = [np.asarray(self._signals[k].get(), np.float32)[: rows * cols] for k in range(4)]
        return np.stack(arrays).reshape(4, rows, cols)

    def read_spectra(self) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = self._shape()
        spectra = np.asarray(self._signals["spectra"].get(), np.uint32)[: rows * cols * self.n_channels]
        live = np.asarray(self._signals["live"].get(), np.float64)[: rows * cols] / self.spec.dwell_s
        return spectra.reshape(rows, cols, self.n_channels), live.reshape(rows, cols)

    def segments(self):
        """This backend seen as a SegmentsBackend."""
        return _Reader(self.read_segments)

    def spectra(self):
        """This backend seen as a SpectraBackend."""
        reader = _Reader(self.read_spectra)
        reader.n_channels, reader.ev_per_channel, reader.offset_ev = (
            self.n_channels,
            self.ev_per_channel,
            self.offset_ev,
        )
        return reader


class _Reader:
    def __init__(self, read):
        self.read_raster = read


class AutoScriptFIBBackend:
    """Thermo Fisher AutoScript (``autoscript_sdb_microscope_client``) as a ``FIBBackend``.

    ``microscope`` is a connected ``SdbMicroscopeClient``; ``eels_reader()`` returns
    (I_total, I_zero_loss) from the facility's EELS acquisition (e.g. a Gatan
    DigitalMicrograph socket script). ``pattern`` gives the milling box in µm
    (centre x, centre y, width, height, depth) and ``rates_um3_per_s`` the calibrated
    volume rate per offered current (defaults: the 30 kV table of DESIGN.md).
    """

    def __init__(
        self,
        microscope,
        eels_reader,
        *,
        pattern=(0.0, 0.0, 10.0, 2.0, 1.0),
        rates_um3_per_s=None,
        angle_limits_deg=(0.0, 30.0),
    ):
        self.microscope = microscope
        self.eels_reader = eels_reader
        self.pattern = pattern
        self.rates = dict(
            rates_um3_per_s or {20e-12: 0.0069, 0.2e-9: 0.066, 0.74e-9: 0.335, 2e-9: 0.955, 7.6e-9: 3.04}
        )
        self.offered_currents_A = tuple(sorted(self.rates))
        self.angle_limits_deg = angle_limits_deg
        self.pattern_area_um2 = pattern[2] * pattern[3]

    def set_current(self, current_A: float) -> None:
        self.microscope.beams.ion_beam.beam_current.value = current_A

    def set_angle(self, angle_deg: float) -> None:
        from autoscript_sdb_microscope_client.structures import StagePosition

        # AutoScript stage tilt is in radians; the facility's pretilt offset belongs in angle_deg
        self.microscope.specimen.stage.absolute_move(StagePosition(t=float(np.deg2rad(angle_deg))))

    def mill(self, duration_s: float) -> None:
        patterning = self.microscope.patterning
        patterning.clear_patterns()
        x, y, width, height, depth = self.pattern
        box = patterning.create_cleaning_cross_section(
            x * 1e-6, y * 1e-6, width * 1e-6, height * 1e-6, depth * 1e-6
        )
        box.time = duration_s
        patterning.run()

    def measure_eels(self) -> tuple[float, float]:
        return self.eels_reader()

    def nominal_rate_um3_per_s(self, current_A: float) -> float:
        return self.rates[current_A]

    def truth(self) -> dict:
        return {}
