"""Real-hardware backends: EPICS (over ophyd's signals) and Thermo Fisher AutoScript for the FIB.

Every PV name is configuration: pass the prefix (and, where a facility's IOC differs,
the suffixes) when building the backend. Nothing connects until ``connect()`` is called,
so these classes import and construct on a laptop without a control system; they need
an EPICS client library (pyepics, or caproto, which the ``test`` extra installs). A PV that
does not connect within the timeout is named in the ``TimeoutError``.

The EPICS backends follow the records' own completion signals and are tested against
caproto IOCs that behave like them (``livetomo.devices.epics_testing``):

- motor record: a move puts VAL with put-callback and completes when DMOV returns to 1;
  the reached RBV must lie within the retry deadband (RDBD) of the target, else the move
  fails; ``stop()`` writes STOP; moves run in a worker thread, so a RunEngine pause or
  stop acts during the move;
- fly-scan raster: writes the raster at ``prepare``, starts it with put-callback and
  completes when Busy has gone 1 then 0; the detectors' buffers are read once the
  controller's buffer counter shows this raster's buffers;
- areaDetector camera: ``cam1:Acquire`` = 1 with put-callback (a plain ``TimeoutError``
  naming the PV if it does not return to 0), then the image once the NDStdArrays plugin's
  ArrayCounter has advanced.

Frames acquired through these backends go to the detector's ``FrameSink`` exactly as the
simulated ones do. PV names and how the test IOCs map to real records:
``docs/hardware-notes.md``.

Example::

    from livetomo.devices.epics import EpicsMotorBackend
    from livetomo.devices.motion import RotationStage
    rotation = RotationStage(EpicsMotorBackend("XF:31ID1-ES{Rot:1}Mtr").connect(), limits=(-190, 190))
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
from ophyd.status import Status

from .base import MotionError, ParameterError, settle
from .motion import RasterSpec

__all__ = [
    "AreaDetectorCameraBackend",
    "AreaDetectorPVs",
    "AutoScriptFIBBackend",
    "EpicsMotorBackend",
    "EpicsRasterBackend",
    "EpicsRasterBuffersBackend",
    "MotionError",
    "RasterPVs",
]


def _connect(signals: dict, timeout: float) -> None:
    """Wait for every signal; TimeoutError naming each PV that did not connect in ``timeout`` s."""
    deadline = time.monotonic() + timeout
    missing = []
    for signal in signals.values():
        try:
            signal.wait_for_connection(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            missing.append(signal.pvname)
    if missing:
        raise TimeoutError(f"EPICS PVs did not connect within {timeout:g} s: {', '.join(missing)}")


def _put_wait(signal, value, timeout: float) -> None:
    """Put with put-callback and wait for it; TimeoutError naming the PV."""
    done = threading.Event()
    signal.put(value, use_complete=True, callback=lambda *args, **kwargs: done.set())
    if not done.wait(timeout):
        raise TimeoutError(f"{signal.pvname}: the put of {value!r} did not complete within {timeout:g} s")


def _fresh(signal):
    """The PV's value read now over the network, not the last monitor update."""
    return signal.get(use_monitor=False)


def _is_on(value) -> bool:
    """A busy/acquire/DMOV-style value: 1 (or its enum string) is on."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "busy", "acquire", "start", "moving", "yes")
    return int(value) == 1


class EpicsMotorBackend:
    """A motor record as a ``MotorBackend``.

    ``prefix`` is the record name (fields ``prefix.VAL``, ``.RBV``, ``.DMOV``, ``.STOP``,
    ``.VELO``, ``.ACCL``, ``.HLM``, ``.LLM``, ``.RDBD``, ``.MRES``, ``.EGU``, ``.LVIO``).
    ``tolerance`` (record units) replaces the record's retry deadband RDBD in the check of
    the reached position; ``timeout`` (s) bounds a move, by default twice the time the
    move should take at VELO (with ACCL ramps) plus 10 s.
    """

    threaded = True  # moves block on hardware: devices run them in a worker thread
    FIELDS = ("VAL", "RBV", "DMOV", "STOP", "VELO", "ACCL", "HLM", "LLM", "RDBD", "MRES", "EGU", "LVIO")

    def __init__(self, prefix: str, *, tolerance: float | None = None, timeout: float | None = None):
        self.prefix = prefix
        self.tolerance = tolerance
        self.timeout = timeout
        self.units = ""
        self._signals: dict | None = None
        self._generation = 0
        self._stopped_generation = -1

    def connect(self, timeout: float = 10.0) -> EpicsMotorBackend:
        from ophyd import EpicsSignal, EpicsSignalRO

        writable = {"VAL", "STOP"}
        self._signals = {
            field: (EpicsSignal if field in writable else EpicsSignalRO)(
                f"{self.prefix}.{field}",
                name=f"{self.prefix}.{field}",
                auto_monitor=field in ("RBV", "DMOV"),
                string=field == "EGU",
            )
            for field in self.FIELDS
        }
        _connect(self._signals, timeout)
        self.units = str(_fresh(self._signals["EGU"]))
        return self

    def _require(self) -> dict:
        if self._signals is None:
            raise RuntimeError(f"EPICS motor {self.prefix} is not connected; call connect() first")
        return self._signals

    def move(self, target: float) -> float:
        """Move to ``target``; return RBV once DMOV is 1 again. MotionError if it ends elsewhere."""
        s = self._require()
        target = float(target)
        lo, hi = float(_fresh(s["LLM"])), float(_fresh(s["HLM"]))
        if hi > lo and not lo <= target <= hi:
            raise ParameterError(
                f"{self.prefix} = {target:g} {self.units} is outside the motor record's limits "
                f"[LLM {lo:g}, HLM {hi:g}] {self.units}"
            )
        self._generation += 1
        generation = self._generation
        timeout = self.timeout
        if timeout is None:
            velocity = abs(float(_fresh(s["VELO"]))) or 1.0
            distance = abs(target - float(_fresh(s["RBV"])))
            timeout = 2.0 * (distance / velocity + 2.0 * float(_fresh(s["ACCL"]))) + 10.0
        finished, moving, sent = threading.Event(), threading.Event(), threading.Event()

        def on_dmov(value, **kwargs):  # DMOV 0 after our put, then 1: done
            if not _is_on(value):
                if sent.is_set():
                    moving.set()
            elif moving.is_set():
                finished.set()

        subscription = s["DMOV"].subscribe(on_dmov, run=False)
        try:
            sent.set()
            # the record's put-callback completes when the move is done (DMOV = 1)
            s["VAL"].put(target, use_complete=True, callback=lambda *args, **kwargs: finished.set())
            deadline = time.monotonic() + timeout
            while True:
                if not finished.wait(max(deadline - time.monotonic(), 0.0)):
                    raise TimeoutError(
                        f"{self.prefix}.DMOV did not return to 1 within {timeout:.3g} s of the move to "
                        f"{target:g} {self.units} (RBV {float(_fresh(s['RBV'])):g})"
                    )
                if _is_on(_fresh(s["DMOV"])):
                    break
                finished.clear()  # a stale completion: keep waiting for DMOV
        finally:
            s["DMOV"].unsubscribe(subscription)
        reached = float(_fresh(s["RBV"]))
        if self._stopped_generation == generation:
            raise MotionError(
                f"{self.prefix} was stopped at {reached:g} {self.units} "
                f"before reaching {target:g} {self.units}"
            )
        if _is_on(_fresh(s["LVIO"])):
            raise MotionError(f"{self.prefix} refused the move to {target:g} {self.units}: soft limit (LVIO)")
        tolerance = self.tolerance
        if tolerance is None:
            tolerance = max(abs(float(_fresh(s["RDBD"]))), abs(float(_fresh(s["MRES"]))))
        if abs(reached - target) > tolerance:
            raise MotionError(
                f"{self.prefix} reached {reached:g} {self.units}, {reached - target:+g} from the target "
                f"{target:g}; allowed: within {tolerance:g} {self.units} (retry deadband)"
            )
        return reached

    def position(self) -> float:
        if self._signals is None:
            return float("nan")
        return float(self._signals["RBV"].get())

    def stop(self) -> None:
        if self._signals is not None:
            self._stopped_generation = self._generation
            self._signals["STOP"].put(1)

    def truth(self) -> dict:
        return {}


@dataclass(frozen=True)
class RasterPVs:
    """PV suffixes of a fly-scan controller IOC (e.g. a PandABox or a scan-engine IOC).

    ``start`` is a busy-style record: writing 1 starts the raster and its put-callback
    completes when the raster has ended; ``busy`` reads 1 while it runs. ``abort`` and
    ``max_pixels`` (the buffers' capacity) may be "" where the IOC has none.
    """

    rows: str = "NumRows"
    cols: str = "NumCols"
    step_um: str = "StepSize"
    dwell_s: str = "Dwell"
    start: str = "Start"
    busy: str = "Busy_RBV"
    abort: str = "Abort"
    max_pixels: str = "MaxPixels_RBV"


class EpicsRasterBackend:
    """Fly-scan raster run by an IOC: writes the raster at ``prepare``, starts it, follows Busy.

    ``start_raster`` returns (started, done) statuses: started when Busy reads 1, done when
    Busy has returned to 0 and the Start put-callback has completed. A raster that does
    not start within ``start_timeout_s`` or does not end within 1.5 × its duration plus
    ``timeout_margin_s`` fails with a ``TimeoutError`` naming the PV (and is aborted).
    """

    threaded = True

    def __init__(
        self,
        prefix: str,
        *,
        pvs: RasterPVs = RasterPVs(),
        timeout_margin_s: float = 30.0,
        start_timeout_s: float = 10.0,
    ):
        self.prefix = prefix
        self.pvs = pvs
        self.timeout_margin_s = timeout_margin_s
        self.start_timeout_s = start_timeout_s
        self._signals = None
        self._prepared: RasterSpec | None = None
        self._generation = 0
        self._aborted_generation = -1

    def connect(self, timeout: float = 10.0) -> EpicsRasterBackend:
        from ophyd import EpicsSignal, EpicsSignalRO

        writable = ("rows", "cols", "step_um", "dwell_s", "start", "abort")
        signals = {}
        for key in (*writable, "busy", "max_pixels"):
            suffix = getattr(self.pvs, key)
            if suffix:
                cls = EpicsSignal if key in writable else EpicsSignalRO
                signals[key] = cls(self.prefix + suffix, name=key, auto_monitor=key == "busy")
        _connect(signals, timeout)
        self._signals = signals
        return self

    def _require(self) -> dict:
        if self._signals is None:
            raise RuntimeError(f"raster controller {self.prefix} is not connected; call connect() first")
        return self._signals

    def prepare(self, spec: RasterSpec) -> None:
        """Write the raster to the controller (checked against its buffers' capacity)."""
        s = self._require()
        if "max_pixels" in s:
            capacity = int(_fresh(s["max_pixels"]))
            if spec.n_pixels > capacity:
                raise ParameterError(
                    f"raster {spec.shape[0]} x {spec.shape[1]} = {spec.n_pixels} pixels exceeds the "
                    f"{capacity} of {s['max_pixels'].pvname}"
                )
        for key, value in (
            ("rows", spec.shape[0]),
            ("cols", spec.shape[1]),
            ("step_um", spec.pixel_size_um),
            ("dwell_s", spec.dwell_s),
        ):
            _put_wait(s[key], value, timeout=10.0)
        self._prepared = spec

    def start_raster(self, spec: RasterSpec) -> tuple[Status, Status]:
        self._require()
        if spec != self._prepared:
            self.prepare(spec)
        started, done = Status(obj=self), Status(obj=self)
        self._generation += 1
        threading.Thread(
            target=self._fly,
            args=(spec, started, done, self._generation),
            name=f"raster {self.prefix}",
            daemon=True,
        ).start()
        return started, done

    def _fly(self, spec: RasterSpec, started: Status, done: Status, generation: int) -> None:
        s = self._signals
        busy_pv, start_pv = s["busy"].pvname, s["start"].pvname
        went_busy, ended, put_done = threading.Event(), threading.Event(), threading.Event()

        def on_busy(value, **kwargs):
            if _is_on(value):
                went_busy.set()
                settle(started)
            elif went_busy.is_set():
                ended.set()

        subscription = s["busy"].subscribe(on_busy, run=False)
        try:
            s["start"].put(1, use_complete=True, callback=lambda *args, **kwargs: put_done.set())
            t0 = time.monotonic()
            while not went_busy.is_set():  # a raster faster than Busy's monitor: the put-callback tells
                if put_done.is_set() and not _is_on(_fresh(s["busy"])):
                    went_busy.set()
                    ended.set()
                    break
                if time.monotonic() - t0 > self.start_timeout_s:
                    raise TimeoutError(
                        f"{busy_pv} did not go to 1 within {self.start_timeout_s:g} s of {start_pv} = 1"
                    )
                went_busy.wait(0.02)
            settle(started)
            limit = 1.5 * spec.duration_s + self.timeout_margin_s
            deadline = time.monotonic() + limit
            for event, pv in ((ended, busy_pv), (put_done, start_pv)):
                if not event.wait(max(deadline - time.monotonic(), 0.0)):
                    raise TimeoutError(
                        f"{pv} did not complete the {spec.shape[0]} x {spec.shape[1]} raster "
                        f"within {limit:.3g} s"
                    )
            if self._aborted_generation == generation:
                raise MotionError(f"the raster of {self.prefix} was aborted ({s['abort'].pvname})")
        except BaseException as exc:
            if not isinstance(exc, MotionError):
                self.stop()
            settle(started, exc)
            settle(done, exc)
        else:
            settle(done)
        finally:
            s["busy"].unsubscribe(subscription)

    def run_raster(self, spec: RasterSpec) -> None:
        """Execute one raster and wait for it (``start_raster`` is what the scan stage uses)."""
        _, done = self.start_raster(spec)
        done.wait()

    def stop(self) -> None:
        """Abort a raster in progress (its ``done`` status fails; no buffers are posted)."""
        if self._signals is not None and "abort" in self._signals:
            self._aborted_generation = self._generation
            self._signals["abort"].put(1)


@dataclass(frozen=True)
class AreaDetectorPVs:
    """PV suffixes of an areaDetector IOC (cam plugin and an NDStdArrays plugin)."""

    acquire: str = "cam1:Acquire"
    acquire_time: str = "cam1:AcquireTime"
    image_mode: str = "cam1:ImageMode"
    num_images: str = "cam1:NumImages"
    array_callbacks: str = "cam1:ArrayCallbacks"
    size_x: str = "cam1:ArraySizeX_RBV"
    size_y: str = "cam1:ArraySizeY_RBV"
    array: str = "image1:ArrayData"
    array_counter: str = "image1:ArrayCounter_RBV"
    enable_callbacks: str = "image1:EnableCallbacks"


class AreaDetectorCameraBackend:
    """An areaDetector camera as a ``CameraBackend``; ``exposure`` is written to AcquireTime.

    At ``connect`` the camera is set to take one image per Acquire (ImageMode Single,
    NumImages 1) and to pass its arrays to the NDStdArrays plugin (ArrayCallbacks,
    EnableCallbacks); pass ``configure=False`` where the IOC is set up otherwise. Each
    ``acquire`` puts Acquire = 1 with put-callback, waits for it to return to 0 within the
    exposure plus ``timeout_s`` (else stops the camera and raises a ``TimeoutError`` naming
    the PV), then for the plugin's ArrayCounter to advance, and reads the image.

    For a K3 the IOC's AcquireTime is the exposure giving the requested dose at the
    calibrated dose rate: pass ``dose_rate_e_per_A2_per_s`` and exposure is read as a dose.
    """

    threaded = True

    def __init__(
        self,
        prefix: str,
        *,
        pixel_size_nm: float,
        pvs: AreaDetectorPVs = AreaDetectorPVs(),
        dose_rate_e_per_A2_per_s: float | None = None,
        timeout_s: float = 10.0,
        configure: bool = True,
    ):
        self.prefix = prefix
        self.pixel_size_nm = pixel_size_nm
        self.pvs = pvs
        self.dose_rate = dose_rate_e_per_A2_per_s
        self.timeout_s = timeout_s
        self.configure = configure
        self.shape: tuple[int, int] = (0, 0)
        self._signals = None

    def connect(self, timeout: float = 10.0) -> AreaDetectorCameraBackend:
        from ophyd import EpicsSignal, EpicsSignalRO

        p = self.pvs
        writable = (
            "acquire",
            "acquire_time",
            "image_mode",
            "num_images",
            "array_callbacks",
            "enable_callbacks",
        )
        signals = {}
        for key in (*writable, "size_x", "size_y", "array", "array_counter"):
            cls = EpicsSignal if key in writable else EpicsSignalRO
            signals[key] = cls(self.prefix + getattr(p, key), name=key, auto_monitor=key == "array_counter")
        _connect(signals, timeout)
        if self.configure:
            for key, value in (
                ("image_mode", 0),
                ("num_images", 1),
                ("array_callbacks", 1),
                ("enable_callbacks", 1),
            ):
                _put_wait(signals[key], value, timeout=timeout)
        self.shape = (int(_fresh(signals["size_y"])), int(_fresh(signals["size_x"])))
        self._signals = signals
        return self

    def acquire(self, exposure: float) -> np.ndarray:
        s = self._signals
        if s is None:
            raise RuntimeError(f"camera {self.prefix} is not connected; call connect() first")
        seconds = exposure / self.dose_rate if self.dose_rate else exposure
        _put_wait(s["acquire_time"], seconds, timeout=self.timeout_s)
        before = int(_fresh(s["array_counter"]))
        done = threading.Event()
        s["acquire"].put(1, use_complete=True, callback=lambda *args, **kwargs: done.set())
        limit = seconds + self.timeout_s
        if not done.wait(limit):
            s["acquire"].put(0)  # stop the stuck acquisition
            raise TimeoutError(
                f"{s['acquire'].pvname} did not return to 0 (Done) within {limit:.3g} s of Acquire = 1 "
                f"(AcquireTime {seconds:g} s)"
            )
        deadline = time.monotonic() + self.timeout_s
        while int(s["array_counter"].get()) <= before:  # the plugin posts the array after the driver
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{s['array_counter'].pvname} did not advance within {self.timeout_s:g} s of the "
                    f"acquisition: no image reached {s['array'].pvname} (are {self.pvs.array_callbacks} "
                    f"and {self.pvs.enable_callbacks} enabled?)"
                )
            time.sleep(0.005)
        rows, cols = self.shape
        data = np.asarray(_fresh(s["array"]))
        if data.size < rows * cols:
            raise RuntimeError(
                f"{s['array'].pvname} holds {data.size} values; the {rows} x {cols} image needs more"
            )
        return data[: rows * cols].astype(np.float32).reshape(rows, cols)


class EpicsRasterBuffersBackend:
    """Per-pixel buffers an IOC fills during a fly scan, read after each raster.

    ``segments()`` reads four waveform PVs (segments 2-5, e.g. a 4-channel scaler's
    arrays) as a ``SegmentsBackend``; ``spectra()`` reads one MCA waveform of
    rows·cols·channels counts plus a live-time waveform (seconds per pixel) as a
    ``SpectraBackend``. PV names are full names. ``counter_pv`` counts the rasters whose
    buffers the IOC has posted: each reader waits (up to ``timeout_s``) until it has
    advanced past the raster it last read, so no detector reads the previous raster's
    buffers; without it, the IOC must post the buffers before Busy returns to 0.
    ``prepare(RasterSpec)`` (the detectors' ``prepare`` calls it) fixes the raster shape and
    checks that the buffers hold it.
    ``rois`` maps each element to its Kα window [lo, hi) in channels, as the facility
    calibrated its detector (the MCA's ROIs).
    """

    threaded = True

    def __init__(
        self,
        *,
        segment_pvs: tuple[str, str, str, str] | None = None,
        spectra_pv: str | None = None,
        live_time_pv: str | None = None,
        counter_pv: str | None = None,
        n_channels: int = 4096,
        ev_per_channel: float = 10.0,
        offset_ev: float = 0.0,
        rois: dict[str, tuple[int, int]] | None = None,
        timeout_s: float = 30.0,
    ):
        self.rois = dict(rois or {})
        self.segment_pvs = segment_pvs
        self.spectra_pv = spectra_pv
        self.live_time_pv = live_time_pv
        self.counter_pv = counter_pv
        self.n_channels = n_channels
        self.ev_per_channel = ev_per_channel
        self.offset_ev = offset_ev
        self.timeout_s = timeout_s
        self.spec: RasterSpec | None = None
        self._signals: dict = {}

    def connect(self, timeout: float = 10.0) -> EpicsRasterBuffersBackend:
        from ophyd import EpicsSignalRO

        pvs = dict(enumerate(self.segment_pvs or ()))
        pvs |= {"spectra": self.spectra_pv, "live": self.live_time_pv, "counter": self.counter_pv}
        signals = {
            key: EpicsSignalRO(pv, name=str(key), auto_monitor=key == "counter")
            for key, pv in pvs.items()
            if pv
        }
        _connect(signals, timeout)
        self._signals = signals
        return self

    def _capacity(self, key) -> int | None:
        pv = getattr(self._signals[key], "_read_pv", None)
        nelm = getattr(pv, "nelm", None)
        return int(nelm) if nelm is not None and nelm > 0 else None

    def prepare(self, spec: RasterSpec) -> None:
        needs = {k: spec.n_pixels for k in (0, 1, 2, 3, "live")} | {
            "spectra": spec.n_pixels * self.n_channels
        }
        for key, n in needs.items():
            if key in self._signals and (capacity := self._capacity(key)) is not None and capacity < n:
                raise ParameterError(
                    f"{self._signals[key].pvname} holds {capacity} values; "
                    f"a {spec.shape[0]} x {spec.shape[1]} raster needs {n}"
                )
        self.spec = spec

    def roi_windows(self, elements) -> dict[str, tuple[int, int]]:
        missing = [el for el in elements if el not in self.rois]
        if missing:
            raise ValueError(
                f"no ROI configured for {', '.join(missing)}; configured: {', '.join(self.rois) or 'none'}"
            )
        return {el: tuple(self.rois[el]) for el in elements}

    def counter(self) -> int | None:
        """Rasters whose buffers the IOC has posted (None without ``counter_pv``)."""
        if "counter" not in self._signals:
            return None
        return int(_fresh(self._signals["counter"]))

    def _wait_after(self, seen: int | None) -> int | None:
        if "counter" not in self._signals or seen is None:
            return self.counter()
        signal = self._signals["counter"]
        deadline = time.monotonic() + self.timeout_s
        while (value := int(signal.get())) <= seen:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{signal.pvname} stayed at {value} for {self.timeout_s:g} s: "
                    "the raster's buffers were not posted"
                )
            time.sleep(0.005)
        return value

    def _shape(self) -> tuple[int, int]:
        if self.spec is None:
            raise RuntimeError("raster buffers: prepare(RasterSpec) before reading")
        return self.spec.shape

    def _array(self, key, n: int, dtype) -> np.ndarray:
        data = np.asarray(_fresh(self._signals[key]))
        if data.size < n:
            raise RuntimeError(f"{self._signals[key].pvname} holds {data.size} values; the raster needs {n}")
        return data[:n].astype(dtype)

    def read_segments(self, seen: int | None = None) -> tuple[int | None, np.ndarray]:
        """(buffer counter, segments (4, rows, cols)) once the counter has passed ``seen``."""
        rows, cols = self._shape()
        counter = self._wait_after(seen)
        arrays = [self._array(k, rows * cols, np.float32) for k in range(4)]
        return counter, np.stack(arrays).reshape(4, rows, cols)

    def read_spectra(self, seen: int | None = None) -> tuple[int | None, tuple[np.ndarray, np.ndarray]]:
        """(buffer counter, (spectra (rows, cols, channels), live fraction (rows, cols)))."""
        rows, cols = self._shape()
        counter = self._wait_after(seen)
        spectra = self._array("spectra", rows * cols * self.n_channels, np.uint32)
        live = self._array("live", rows * cols, np.float64) / self.spec.dwell_s
        return counter, (spectra.reshape(rows, cols, self.n_channels), live.reshape(rows, cols))

    def segments(self):
        """This backend seen as a SegmentsBackend."""
        return _BufferReader(self, self.read_segments)

    def spectra(self):
        """This backend seen as a SpectraBackend."""
        reader = _BufferReader(self, self.read_spectra)
        reader.n_channels, reader.ev_per_channel, reader.offset_ev = (
            self.n_channels,
            self.ev_per_channel,
            self.offset_ev,
        )
        reader.roi_windows = self.roi_windows
        return reader


class _BufferReader:
    """One detector's view of the buffers: remembers the last raster it read."""

    threaded = True

    def __init__(self, backend: EpicsRasterBuffersBackend, read):
        self.backend = backend
        self._read = read
        self._seen: int | None = None

    def prepare(self, spec: RasterSpec) -> None:
        self.backend.prepare(spec)
        self._seen = self.backend.counter()

    def read_raster(self):
        self._seen, data = self._read(self._seen)
        return data


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
