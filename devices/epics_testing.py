"""Small EPICS IOCs, written with caproto, that behave like the real records livetomo drives.

For tests and for trying the EPICS backends (``livetomo.devices.epics``) without hardware.
Needs caproto (the ``test`` extra). Three kinds of IOC, each served by its own process on
loopback and its own Channel Access port:

``motors``
    motor records (``<prefix><name>``, fields ``.VAL .RBV .DMOV .MOVN .STOP .VELO .ACCL .HLM
    .LLM .EGU .RDBD .MRES .LVIO`` and the rest of the record's fields): a write to VAL
    starts a trapezoidal move at VELO (ACCL seconds to reach it), RBV follows at the
    record's polling rate, DMOV goes 1 → 0 → 1 around the move, the put-callback on VAL
    completes when DMOV returns to 1, STOP decelerates and ends the move where it stops,
    a target outside [LLM, HLM] sets LVIO and does not move.
``camera``
    an areaDetector IOC (``cam1:`` driver and an ``image1:`` NDStdArrays plugin):
    ``cam1:Acquire`` 1 → 0 with put-completion when the exposure ends, ``cam1:ArrayCounter_RBV``,
    the image posted to ``image1:ArrayData`` a little later by the (asynchronous) plugin
    with ``image1:ArrayCounter_RBV``; images only flow with ``cam1:ArrayCallbacks`` and
    ``image1:EnableCallbacks`` enabled, as on a real IOC. ``cam1:SimStall`` = 1 makes
    acquisitions never end (a lost trigger), for timeout tests.
``raster``
    a fly-scan controller (``NumRows NumCols StepSize Dwell``; ``Start`` 1 → 0 with
    put-completion, ``Busy_RBV``, ``PointsDone_RBV``, ``Abort``, ``MaxPixels_RBV``) and the
    per-pixel buffers its detectors fill (``DPC:Seg2`` … ``DPC:Seg5``, ``XRF:Spectra``,
    ``XRF:LiveTime``), posted a little after Busy returns to 0, then ``ArrayCounter_RBV``
    is incremented, as a scaler/MCA readout after a fly scan.

Frames and buffers are deterministic (``camera_frame``, ``raster_buffers``), so a test can
check what arrived bit for bit. Start one with ``start_motor_ioc``, ``start_camera_ioc``,
``start_raster_ioc`` (or ``start_ioc``): each returns when every PV answers a Channel Access
search and a channel to it connects, and ``stop()`` (or leaving its ``with`` block) ends it.
A client finds them with ``client_environment(*iocs)`` set in ``os.environ`` before its first
connection (EPICS_CA_ADDR_LIST of ``127.0.0.1:<port>`` entries, EPICS_CA_AUTO_ADDR_LIST=NO).
The IOC exits by itself if the process that started it dies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from caproto import ChannelType, SkipWrite
from caproto.server import PVGroup, pvproperty

# Kα1 lines (keV, DESIGN.md) the simulated XRF buffers put counts in, with relative amplitudes.
_XRF_LINES = {"P": (2.013, 0.2), "S": (2.307, 0.3), "K": (3.313, 0.4), "Ca": (3.691, 0.5),
              "Fe": (6.403, 0.8), "Cu": (8.046, 0.3), "Zn": (8.637, 1.0)}  # fmt: skip

LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------------------------
# motor records


class MotorRecord(PVGroup):
    """One motor record at ``prefix`` (no trailing separator: fields are ``prefix.RBV``)."""

    motor = pvproperty(value=0.0, name="", record="motor", precision=4)

    def __init__(
        self,
        *args,
        velocity: float = 10.0,
        acceleration_s: float = 0.2,
        limits: tuple[float, float] = (-360.0, 360.0),
        egu: str = "deg",
        deadband: float = 1e-3,
        resolution: float = 1e-4,
        position: float = 0.0,
        poll_s: float = 0.02,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.defaults = dict(
            velocity=velocity,
            acceleration_s=acceleration_s,
            limits=limits,
            egu=egu,
            deadband=deadband,
            resolution=resolution,
            position=position,
        )
        self.poll_s = poll_s
        self._target = position
        self._wake: asyncio.Event | None = None
        self._pending: list[asyncio.Event] = []  # put-callbacks of writes not yet taken by a move
        self._active: list[asyncio.Event] = []  # put-callbacks completed when this move ends

    @motor.putter
    async def motor(self, instance, value):
        fields = instance.field_inst
        lo, hi = fields.user_low_limit.value, fields.user_high_limit.value
        if hi > lo and not lo <= value <= hi:  # the record refuses it: LVIO, no motion, VAL unchanged
            await fields.limit_violation.write(1)
            raise SkipWrite()
        await fields.limit_violation.write(0)
        await instance.write(value, verify_value=False)  # VAL is posted at once
        done = asyncio.Event()
        self._pending.append(done)
        self._target = float(value)
        self._wake.set()
        await done.wait()  # the put-callback completes with DMOV = 1
        raise SkipWrite()

    @motor.startup
    async def motor(self, instance, async_lib):
        fields = instance.field_inst
        d = self.defaults
        self._wake = asyncio.Event()
        await fields.velocity.write(d["velocity"])
        await fields.seconds_to_velocity.write(d["acceleration_s"])
        await fields.user_low_limit.write(d["limits"][0])
        await fields.user_high_limit.write(d["limits"][1])
        await fields.dial_low_limit.write(d["limits"][0])
        await fields.dial_high_limit.write(d["limits"][1])
        await fields.engineering_units.write(d["egu"])
        await fields.retry_deadband.write(d["deadband"])
        await fields.motor_step_size.write(d["resolution"])
        await fields.display_precision.write(4)
        await instance.write(d["position"], verify_value=False)
        await self._post_position(fields, d["position"])
        await fields.motor_is_moving.write(0)
        await fields.done_moving_to_value.write(1)
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
            except TimeoutError:
                if fields.stop.value != 0:  # STOP while idle: nothing to stop
                    await fields.stop.write(0)
                continue
            await self._move(instance, fields)

    def _take_target(self) -> float:
        self._wake.clear()
        self._active.extend(self._pending)
        self._pending.clear()
        return self._target

    async def _post_position(self, fields, position: float) -> None:
        mres = fields.motor_step_size.value or 1e-9
        readback = round(position / mres) * mres
        await fields.user_readback_value.write(readback)
        await fields.dial_readback_value.write(readback)
        await fields.raw_readback_value.write(int(round(position / mres)))

    async def _move(self, instance, fields) -> None:
        if fields.stop.value != 0:  # a STOP written before this move was processed then, at rest
            await fields.stop.write(0)
        target = self._take_target()
        await fields.done_moving_to_value.write(0)
        position = fields.user_readback_value.value
        if abs(target - position) > fields.retry_deadband.value:
            await fields.motor_is_moving.write(1)
            await fields.direction_of_travel.write(int(target >= position))
            speed, stopping, dt = 0.0, False, self.poll_s
            while True:
                velocity = fields.velocity.value if fields.velocity.value > 0 else 1.0
                accel = velocity / max(fields.seconds_to_velocity.value, 1e-3)
                if fields.stop.value != 0:  # decelerate and end where the motor stops
                    await fields.stop.write(0)
                    if not stopping:
                        stopping = True
                        heading = math.copysign(1.0, target - position)
                        target = position + heading * speed * speed / (2 * accel)
                elif self._wake.is_set() and not stopping:  # a new VAL during the move: retarget
                    target = self._take_target()
                remaining = target - position
                if abs(remaining) < 1e-12:
                    break
                speed = min(velocity, speed + accel * dt, math.sqrt(2 * accel * abs(remaining)))
                position += math.copysign(min(speed * dt, abs(remaining)), remaining)
                await self._post_position(fields, position)
                await asyncio.sleep(dt)
            if stopping:
                await instance.write(position, verify_value=False)
            await fields.motor_is_moving.write(0)
        await self._post_position(fields, position)
        await fields.done_moving_to_value.write(1)
        for done in self._active:
            done.set()
        self._active.clear()


# --------------------------------------------------------------------------------------------
# areaDetector camera


def camera_frame(counter: int, shape: tuple[int, int]) -> np.ndarray:
    """The image the camera IOC produces as its ``counter``-th array (1-based), int32 counts."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols]
    cy, cx = rows / 2 + (counter % 7) - 3, cols / 2 + (counter % 5) - 2
    spot = 900.0 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (min(rows, cols) / 6) ** 2))
    return (100 + ((7 * y + 3 * x) % 17) + np.rint(spot) + 10 * counter).astype(np.int32)


_DONE_ACQUIRE = ("Done", "Acquire")
_DISABLE_ENABLE = ("Disable", "Enable")
_IMAGE_MODES = ("Single", "Multiple", "Continuous")
_DETECTOR_STATES = ("Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error", "Waiting")


def _enum(value: int, strings, *, name: str, read_only: bool = False, doc: str = ""):
    return pvproperty(
        value=strings[value],
        name=name,
        dtype=ChannelType.ENUM,
        enum_strings=strings,
        read_only=read_only,
        doc=doc,
    )


def _is(value, strings, index: int) -> bool:
    return value == strings[index] or value == index


class AreaDetectorCamera(PVGroup):
    """An areaDetector camera: ``cam1:`` driver records and an ``image1:`` NDStdArrays plugin."""

    acquire = _enum(0, _DONE_ACQUIRE, name="cam1:Acquire")
    acquire_rbv = _enum(0, _DONE_ACQUIRE, name="cam1:Acquire_RBV", read_only=True)
    acquire_time = pvproperty(value=0.1, name="cam1:AcquireTime", precision=4)
    acquire_time_rbv = pvproperty(value=0.1, name="cam1:AcquireTime_RBV", read_only=True, precision=4)
    image_mode = _enum(0, _IMAGE_MODES, name="cam1:ImageMode")
    image_mode_rbv = _enum(0, _IMAGE_MODES, name="cam1:ImageMode_RBV", read_only=True)
    num_images = pvproperty(value=1, name="cam1:NumImages")
    num_images_rbv = pvproperty(value=1, name="cam1:NumImages_RBV", read_only=True)
    array_counter = pvproperty(value=0, name="cam1:ArrayCounter")
    array_counter_rbv = pvproperty(value=0, name="cam1:ArrayCounter_RBV", read_only=True)
    array_callbacks = _enum(0, _DISABLE_ENABLE, name="cam1:ArrayCallbacks")
    array_callbacks_rbv = _enum(0, _DISABLE_ENABLE, name="cam1:ArrayCallbacks_RBV", read_only=True)
    size_x = pvproperty(value=0, name="cam1:ArraySizeX_RBV", read_only=True)
    size_y = pvproperty(value=0, name="cam1:ArraySizeY_RBV", read_only=True)
    state = _enum(0, _DETECTOR_STATES, name="cam1:DetectorState_RBV", read_only=True)
    stall = _enum(0, ("No", "Yes"), name="cam1:SimStall", doc="test IOC only: acquisitions never end")

    image_enable = _enum(0, _DISABLE_ENABLE, name="image1:EnableCallbacks")
    image_enable_rbv = _enum(0, _DISABLE_ENABLE, name="image1:EnableCallbacks_RBV", read_only=True)
    image_counter_rbv = pvproperty(value=0, name="image1:ArrayCounter_RBV", read_only=True)
    image_size0 = pvproperty(value=0, name="image1:ArraySize0_RBV", read_only=True)
    image_size1 = pvproperty(value=0, name="image1:ArraySize1_RBV", read_only=True)
    image_unique_id = pvproperty(value=0, name="image1:UniqueId_RBV", read_only=True)

    image_data = pvproperty(value=[0], name="image1:ArrayData", max_length=1)  # sized in camera_ioc

    def __init__(self, *args, shape=(32, 48), plugin_delay_s: float = 0.05, **kwargs):
        self.shape = (int(shape[0]), int(shape[1]))
        super().__init__(*args, **kwargs)
        self.plugin_delay_s = plugin_delay_s
        self._abort = asyncio.Event()
        self._acquiring: asyncio.Event | None = None
        self._tasks: set = set()

    @acquire.startup
    async def acquire(self, instance, async_lib):
        await self.size_x.write(self.shape[1])
        await self.size_y.write(self.shape[0])

    @acquire.putter
    async def acquire(self, instance, value):
        if not _is(value, _DONE_ACQUIRE, 1):  # Acquire = 0 stops an acquisition
            self._abort.set()
            return _DONE_ACQUIRE[0]
        if self._acquiring is not None:  # already acquiring: completes with the running acquisition
            await self._acquiring.wait()
            raise SkipWrite()
        self._acquiring = asyncio.Event()
        self._abort.clear()
        await instance.write(_DONE_ACQUIRE[1], verify_value=False)
        await self.acquire_rbv.write(_DONE_ACQUIRE[1])
        try:
            mode = _IMAGE_MODES.index(self.image_mode.value)
            n_images = 1 if mode == 0 else (self.num_images.value if mode == 1 else None)
            taken = 0
            while n_images is None or taken < n_images:
                await self.state.write("Acquire")
                exposure = 1e9 if _is(self.stall.value, ("No", "Yes"), 1) else self.acquire_time.value
                try:
                    await asyncio.wait_for(self._abort.wait(), timeout=max(exposure, 0.0))
                    break  # aborted
                except TimeoutError:
                    pass
                await self.state.write("Readout")
                taken += 1
                counter = self.array_counter_rbv.value + 1
                await self.array_counter.write(counter, verify_value=False)
                await self.array_counter_rbv.write(counter)
                if _is(self.array_callbacks.value, _DISABLE_ENABLE, 1):
                    task = asyncio.get_running_loop().create_task(self._plugin(counter))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            await self.state.write("Idle")
            await self.acquire_rbv.write(_DONE_ACQUIRE[0])
            done, self._acquiring = self._acquiring, None
            done.set()
        return _DONE_ACQUIRE[0]

    async def _plugin(self, counter: int) -> None:
        """NDStdArrays: receives the array from the driver's callback and posts it."""
        await asyncio.sleep(self.plugin_delay_s)
        if not _is(self.image_enable.value, _DISABLE_ENABLE, 1):
            return
        await self.image_data.write(camera_frame(counter, self.shape).ravel())
        await self.image_size0.write(self.shape[1])
        await self.image_size1.write(self.shape[0])
        await self.image_unique_id.write(counter)
        await self.image_counter_rbv.write(self.image_counter_rbv.value + 1)

    @acquire_time.putter
    async def acquire_time(self, instance, value):
        await self.acquire_time_rbv.write(value)
        return value

    @image_mode.putter
    async def image_mode(self, instance, value):
        await self.image_mode_rbv.write(value)
        return value

    @num_images.putter
    async def num_images(self, instance, value):
        await self.num_images_rbv.write(value)
        return value

    @array_counter.putter
    async def array_counter(self, instance, value):
        await self.array_counter_rbv.write(value)
        return value

    @array_callbacks.putter
    async def array_callbacks(self, instance, value):
        await self.array_callbacks_rbv.write(value)
        return value

    @image_enable.putter
    async def image_enable(self, instance, value):
        await self.image_enable_rbv.write(value)
        return value


# --------------------------------------------------------------------------------------------
# fly-scan raster controller and its detector buffers


def raster_buffers(
    counter: int,
    shape: tuple[int, int],
    *,
    dwell_s: float,
    n_channels: int = 1024,
    ev_per_channel: float = 10.0,
) -> dict[str, np.ndarray]:
    """What the raster IOC's buffers hold after its ``counter``-th raster (1-based).

    ``segments`` (4, rows, cols) float32 counts of DPC segments 2-5, ``spectra``
    (rows, cols, channels) int32 counts with Kα peaks of P…Zn, ``live_time`` (rows, cols)
    seconds (90 % of the dwell).
    """
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    phase = 0.3 * counter
    gx = np.sin(2 * np.pi * x / max(cols, 2) + phase)
    gy = np.cos(2 * np.pi * y / max(rows, 2) - phase)
    total = 4000.0 * (
        1.0 - 0.2 * np.exp(-((x - cols / 2) ** 2 + (y - rows / 2) ** 2) / (0.1 * rows * cols + 1))
    )
    h, v = 0.05 * gx, 0.05 * gy
    segments = (
        np.stack([total * (1 + h + v), total * (1 - h + v), total * (1 - h - v), total * (1 + h - v)]) / 4.0
    )
    energies = np.arange(n_channels) * ev_per_channel / 1000.0
    spectra = np.zeros((rows, cols, n_channels))
    amplitude = 50.0 * (1.0 + 0.5 * np.sin(0.7 * x + 0.4 * y + phase))
    for energy, weight in _XRF_LINES.values():
        sigma = math.sqrt((0.097 / 2.3548) ** 2 + 2.96e-3 * energy * 2.24e-4)  # keV, DESIGN.md SDD model
        line = np.exp(-((energies - energy) ** 2) / (2 * sigma**2))
        spectra += (weight * amplitude)[..., None] * line[None, None, :]
    return {
        "segments": np.rint(segments).astype(np.float32),
        "spectra": np.rint(spectra).astype(np.int32),
        "live_time": np.full((rows, cols), 0.9 * dwell_s),
    }


class RasterController(PVGroup):
    """A fly-scan controller and the per-pixel buffers its detectors fill (see ``raster_controller``)."""

    num_rows = pvproperty(value=1, name="NumRows")
    num_cols = pvproperty(value=1, name="NumCols")
    step_size = pvproperty(value=0.1, name="StepSize", precision=4, units="um")
    dwell = pvproperty(value=0.001, name="Dwell", precision=5, units="s")
    start = _enum(0, ("Done", "Start"), name="Start")
    busy = _enum(0, ("Idle", "Busy"), name="Busy_RBV", read_only=True)
    abort = pvproperty(value=0, name="Abort")
    points_done = pvproperty(value=0, name="PointsDone_RBV", read_only=True)
    max_pixels = pvproperty(value=0, name="MaxPixels_RBV", read_only=True)
    counter = pvproperty(value=0, name="ArrayCounter_RBV", read_only=True)
    n_channels_rbv = pvproperty(value=0, name="XRF:NumChannels_RBV", read_only=True)

    def __init__(
        self,
        *args,
        max_pixels: int = 32 * 32,
        n_channels: int = 1024,
        ev_per_channel: float = 10.0,
        buffer_delay_s: float = 0.1,
        **kwargs,
    ):
        self.n_max, self.n_channels, self.ev_per_channel = int(max_pixels), int(n_channels), ev_per_channel
        super().__init__(*args, **kwargs)
        self.buffer_delay_s = buffer_delay_s
        self._abort = asyncio.Event()
        self._running: asyncio.Event | None = None
        self._tasks: set = set()

    @start.startup
    async def start(self, instance, async_lib):
        await self.max_pixels.write(self.n_max)
        await self.n_channels_rbv.write(self.n_channels)

    @abort.putter
    async def abort(self, instance, value):
        if value:
            self._abort.set()
        return 0

    @start.putter
    async def start(self, instance, value):
        if not _is(value, ("Done", "Start"), 1):
            return "Done"
        if self._running is not None:
            await self._running.wait()
            raise SkipWrite()
        rows, cols, dwell = int(self.num_rows.value), int(self.num_cols.value), float(self.dwell.value)
        if rows < 1 or cols < 1 or rows * cols > self.n_max:
            raise ValueError(f"raster {rows} x {cols} does not fit the buffers of {self.n_max} pixels")
        self._running = asyncio.Event()
        self._abort.clear()
        await instance.write("Start", verify_value=False)
        await self.busy.write("Busy")
        await self.points_done.write(0)
        try:
            n, t0 = rows * cols, time.monotonic()
            while True:
                done_points = min(n, int((time.monotonic() - t0) / dwell) if dwell > 0 else n)
                await self.points_done.write(done_points)
                if done_points >= n or self._abort.is_set():
                    break
                await asyncio.sleep(min(0.05, max(dwell, 0.001)))
            aborted = self._abort.is_set()
        finally:
            await self.busy.write("Idle")
            running, self._running = self._running, None
            running.set()
        if not aborted:  # the detectors' buffers arrive after the motion has ended
            task = asyncio.get_running_loop().create_task(self._post_buffers((rows, cols), dwell))
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._tasks.discard)
        return "Done"

    async def _post_buffers(self, shape, dwell: float) -> None:
        await asyncio.sleep(self.buffer_delay_s)
        counter = self.counter.value + 1
        data = raster_buffers(
            counter, shape, dwell_s=dwell, n_channels=self.n_channels, ev_per_channel=self.ev_per_channel
        )
        for i, seg in enumerate((2, 3, 4, 5)):
            await getattr(self, f"seg{seg}").write(data["segments"][i].ravel())
        await self.spectra.write(data["spectra"].ravel())
        await self.live_time.write(data["live_time"].ravel())
        await self.counter.write(counter)


_CHANNEL_TYPES = {np.int32: ChannelType.LONG, np.float32: ChannelType.FLOAT, np.float64: ChannelType.DOUBLE}


def _waveform(n: int, dtype, name: str):
    # a few monitor updates of a big array may queue per client (caproto warns above ~1e7 elements)
    backlog = max(2, min(1000, 10_000_000 // max(n, 1)))
    return pvproperty(
        value=np.zeros(n, dtype),
        name=name,
        max_length=n,
        dtype=_CHANNEL_TYPES[dtype],
        max_subscription_backlog=backlog,
    )


def camera_ioc(prefix: str, *, shape=(32, 48), **options) -> AreaDetectorCamera:
    """The camera IOC, its ``image1:ArrayData`` sized (NELM) for ``shape``."""
    n = int(shape[0]) * int(shape[1])
    cls = type(
        "AreaDetectorCamera",
        (AreaDetectorCamera,),
        {"image_data": _waveform(n, np.int32, "image1:ArrayData")},
    )
    return cls(prefix=prefix, shape=shape, **options)


def raster_controller(prefix: str, *, max_pixels: int = 32 * 32, n_channels: int = 1024, **options):
    """The raster IOC, its buffers sized (NELM) for ``max_pixels`` pixels of ``n_channels`` channels."""
    n = int(max_pixels)
    body = {f"seg{seg}": _waveform(n, np.float32, f"DPC:Seg{seg}") for seg in (2, 3, 4, 5)}
    body["spectra"] = _waveform(n * int(n_channels), np.int32, "XRF:Spectra")
    body["live_time"] = _waveform(n, np.float64, "XRF:LiveTime")
    cls = type("RasterController", (RasterController,), body)
    return cls(prefix=prefix, max_pixels=max_pixels, n_channels=n_channels, **options)


# --------------------------------------------------------------------------------------------
# running IOCs in subprocesses


def _motor_pvdb(prefix: str, motors: dict | None = None) -> dict:
    motors = motors if motors is not None else {"m1": {}}
    pvdb: dict = {}
    for name, options in motors.items():
        pvdb.update(MotorRecord(prefix=f"{prefix}{name}", **options).pvdb)
    return pvdb


IOC_KINDS = {
    "motors": _motor_pvdb,
    "camera": lambda prefix, **options: camera_ioc(prefix, **options).pvdb,
    "raster": lambda prefix, **options: raster_controller(prefix, **options).pvdb,
}

# motor record fields a client must reach (the rest of the record is served as well)
MOTOR_FIELDS = (
    "VAL",
    "RBV",
    "DMOV",
    "MOVN",
    "STOP",
    "VELO",
    "ACCL",
    "HLM",
    "LLM",
    "EGU",
    "RDBD",
    "MRES",
    "LVIO",
)


def _checked_pvs(kind: str, pvdb: dict) -> list[str]:
    if kind == "motors":
        records = [name for name in pvdb if "." not in name]
        return records + [f"{r}.{f}" for r in records for f in MOTOR_FIELDS if f != "VAL"]
    return list(pvdb)


def free_port() -> int:
    """A UDP and TCP port free on loopback now (for an IOC's Channel Access server port)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free loopback port for an IOC")


def server_environment(port: int) -> dict[str, str]:
    """Environment of an IOC that serves Channel Access on loopback only, at ``port``."""
    return {
        "EPICS_CA_SERVER_PORT": str(port),
        "EPICS_CAS_INTF_ADDR_LIST": LOOPBACK,
        "EPICS_CAS_BEACON_ADDR_LIST": LOOPBACK,
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CA_ADDR_LIST": LOOPBACK,
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
    }


def client_environment(*iocs: RunningIOC) -> dict[str, str]:
    """Environment with which Channel Access clients (ophyd, pyepics, caproto) find ``iocs``."""
    return {
        "EPICS_CA_ADDR_LIST": " ".join(ioc.address for ioc in iocs),
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_MAX_ARRAY_BYTES": str(256 * 1024 * 1024),
    }


@dataclass
class RunningIOC:
    """An IOC served by a child process on ``127.0.0.1:port``."""

    kind: str
    prefix: str
    port: int
    process: subprocess.Popen
    pvs: list[str]
    log_path: Path
    options: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """End the IOC's process (SIGTERM, then SIGKILL after ``timeout``) and remove its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> RunningIOC:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _python_path() -> str:
    """PYTHONPATH for the child: the directory holding this ``livetomo`` package first."""
    import livetomo

    parts = [os.environ.get("PYTHONPATH", "")]
    holder = Path(livetomo.__file__).parent.parent  # not resolved: a symlinked package stays itself
    if (holder / "livetomo" / "__init__.py").exists():
        parts.insert(0, str(holder))
    return os.pathsep.join(p for p in parts if p)


def start_ioc(
    kind: str, prefix: str, *, port: int | None = None, timeout: float = 30.0, **options
) -> RunningIOC:
    """Start an IOC of ``kind`` ("motors", "camera", "raster") in a child process on loopback.

    Returns once every PV answers a Channel Access search on ``127.0.0.1:port`` and a
    channel to it connects; raises ``TimeoutError`` (with the IOC's log) otherwise.
    ``options`` go to the IOC (e.g. ``motors={"ROT": {"velocity": 20}}``, ``shape=(32, 48)``).
    """
    if kind not in IOC_KINDS:
        raise ValueError(f"unknown IOC kind {kind!r}; kinds: {', '.join(IOC_KINDS)}")
    pvs = _checked_pvs(kind, IOC_KINDS[kind](prefix, **options))
    port = port or free_port()
    env = {**os.environ, **server_environment(port), "PYTHONPATH": _python_path()}
    fd, log_name = tempfile.mkstemp(prefix=f"livetomo-ioc-{kind}-", suffix=".log")
    log_path = Path(log_name)
    command = [sys.executable, "-m", "livetomo.devices.epics_testing", kind, prefix, json.dumps(options)]
    command += ["--parent", str(os.getpid())]
    with os.fdopen(fd, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    ioc = RunningIOC(kind, prefix, port, process, pvs, log_path, options)
    try:
        wait_for_pvs(pvs, port, timeout=timeout, process=process)
    except BaseException as exc:
        log_text = ioc.log()
        ioc.stop()
        if isinstance(exc, TimeoutError | RuntimeError):
            raise type(exc)(f"{exc}\nIOC log:\n{log_text[-4000:]}") from None
        raise
    return ioc


def start_motor_ioc(prefix: str, motors: dict[str, dict] | None = None, **kwargs) -> RunningIOC:
    """Motor records ``prefix + name`` for each ``name: options`` (see ``MotorRecord``)."""
    return start_ioc("motors", prefix, motors=motors if motors is not None else {"m1": {}}, **kwargs)


def start_camera_ioc(prefix: str, *, shape=(32, 48), plugin_delay_s: float = 0.05, **kwargs) -> RunningIOC:
    """An areaDetector camera at ``prefix`` (``prefix + "cam1:Acquire"``, …) of ``shape`` pixels."""
    return start_ioc("camera", prefix, shape=list(shape), plugin_delay_s=plugin_delay_s, **kwargs)


def start_raster_ioc(
    prefix: str,
    *,
    max_pixels: int = 32 * 32,
    n_channels: int = 1024,
    ev_per_channel: float = 10.0,
    buffer_delay_s: float = 0.1,
    **kwargs,
) -> RunningIOC:
    """A fly-scan controller with its DPC and XRF buffers at ``prefix``."""
    options = dict(max_pixels=max_pixels, n_channels=n_channels, ev_per_channel=ev_per_channel)
    return start_ioc("raster", prefix, buffer_delay_s=buffer_delay_s, **options, **kwargs)


def wait_for_pvs(names: list[str], port: int, *, timeout: float = 30.0, process=None) -> None:
    """Wait until every PV in ``names`` answers a search at 127.0.0.1:``port`` and its channel connects."""
    import caproto as ca

    deadline = time.monotonic() + timeout
    address = None
    pending = set(names)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((LOOPBACK, 0))
        udp.settimeout(0.1)
        broadcaster = ca.Broadcaster(our_role=ca.CLIENT)
        cids = {}
        while pending:
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"the IOC exited with status {process.returncode} before its PVs connected"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"IOC PVs did not answer within {timeout:g} s: {', '.join(sorted(pending)[:8])}"
                )
            cids = {i: name for i, name in enumerate(sorted(pending))}
            for start in range(0, len(cids), 20):
                batch = [
                    ca.SearchRequest(cids[i], i, ca.DEFAULT_PROTOCOL_VERSION)
                    for i in range(start, min(start + 20, len(cids)))
                ]
                payload = broadcaster.send(ca.VersionRequest(0, ca.DEFAULT_PROTOCOL_VERSION), *batch)
                udp.sendto(payload, (LOOPBACK, port))
            until = time.monotonic() + 0.3
            while time.monotonic() < until and pending:
                try:
                    data, source = udp.recvfrom(ca.MAX_UDP_RECV)
                except (TimeoutError, ConnectionRefusedError):
                    continue
                for command in broadcaster.recv(data, source):
                    if isinstance(command, ca.SearchResponse) and command.cid in cids:
                        pending.discard(cids[command.cid])
                        address = ca.extract_address(command)
                        if address[0] in ("0.0.0.0", ""):
                            address = (LOOPBACK, address[1])
    _connect_channels(names, address, deadline)


def _connect_channels(names: list[str], address, deadline: float) -> None:
    import caproto as ca

    circuit = ca.VirtualCircuit(our_role=ca.CLIENT, address=address, priority=0)
    with socket.create_connection(address, timeout=max(deadline - time.monotonic(), 0.1)) as sock:
        sock.settimeout(0.2)
        channels = [ca.ClientChannel(name, circuit) for name in names]
        sock.sendmsg(
            circuit.send(
                ca.VersionRequest(priority=0, version=ca.DEFAULT_PROTOCOL_VERSION),
                channels[0].host_name("localhost"),
                channels[0].client_name("livetomo-ioc-check"),
            )
        )
        for start in range(0, len(channels), 50):
            sock.sendmsg(circuit.send(*(chan.create() for chan in channels[start : start + 50])))
        while any(chan.states[ca.CLIENT] is not ca.CONNECTED for chan in channels):
            if time.monotonic() > deadline:
                missing = [c.name for c in channels if c.states[ca.CLIENT] is not ca.CONNECTED]
                raise TimeoutError(f"IOC channels did not connect: {', '.join(missing[:8])}")
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise RuntimeError("the IOC closed the connection before its channels connected")
            commands, _ = circuit.recv(data)
            for command in commands:
                if command is ca.DISCONNECTED:
                    raise RuntimeError("the IOC closed the connection before its channels connected")
                circuit.process_command(command)


def _watch_parent(parent: int) -> None:
    """Exit when the process that started this IOC is gone (no IOC outlives its test)."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass
        if os.getppid() == 1:
            os._exit(0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Serve one livetomo test IOC on loopback")
    parser.add_argument("kind", choices=sorted(IOC_KINDS))
    parser.add_argument("prefix")
    parser.add_argument("options", nargs="?", default="{}", help="JSON object of IOC options")
    parser.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    from caproto.server import run

    options = json.loads(args.options)
    pvdb = IOC_KINDS[args.kind](args.prefix, **options)
    if args.parent:
        threading.Thread(target=_watch_parent, args=(args.parent,), daemon=True).start()
    interfaces = os.environ.get("EPICS_CAS_INTF_ADDR_LIST", LOOPBACK).split()
    run(pvdb, interfaces=interfaces, log_pv_names=False)


if __name__ == "__main__":
    main()
