"""The EPICS backends against caproto IOCs that follow the motor record and areaDetector.

The IOCs (``livetomo.devices.epics_testing``) run in child processes on loopback, each on its
own Channel Access port; this module points its Channel Access client at them only
(EPICS_CA_ADDR_LIST, EPICS_CA_AUTO_ADDR_LIST=NO) and stops them at the end.
"""

import os
import threading
import time

import numpy as np
import pytest

pytest.importorskip("caproto", reason="the EPICS tests need caproto (the test extra) for their IOCs")

from bluesky import RunEngine  # noqa: E402
from bluesky import plan_stubs as bps  # noqa: E402
from bluesky.utils import RunEngineInterrupted  # noqa: E402
from ophyd import EpicsSignal, EpicsSignalRO  # noqa: E402

from livetomo.devices import epics_testing as et  # noqa: E402
from livetomo.devices.base import ParameterError  # noqa: E402
from livetomo.devices.cameras import FluorescenceCamera  # noqa: E402
from livetomo.devices.epics import (  # noqa: E402
    AreaDetectorCameraBackend,
    EpicsMotorBackend,
    EpicsRasterBackend,
    EpicsRasterBuffersBackend,
    MotionError,
)
from livetomo.devices.motion import RasterSpec, RotationStage, ScanStage  # noqa: E402
from livetomo.devices.sinks import MemorySink  # noqa: E402
from livetomo.devices.xray import SegmentedDPCDetector, VortexXRF  # noqa: E402
from livetomo.plans import tomo_scan, xrf_dpc_tomo  # noqa: E402
from livetomo.simulators.xrf import EMISSION_LINES, roi_half_width_ev

CAMERA_SHAPE = (24, 32)
N_CHANNELS = 1024  # 10 eV channels up to 10.24 keV: every element window up to Zn Kα


@pytest.fixture(scope="module")
def iocs():
    """A motor IOC (fast rotation, slow axes, a narrow-limit axis), a camera and a raster IOC."""
    motors = {
        "ROT": {"velocity": 360.0, "acceleration_s": 0.05},
        "SLOW": {"velocity": 2.0, "acceleration_s": 0.2},
        "BRAKE": {"velocity": 2.0, "acceleration_s": 0.2},
        "NARROW": {"velocity": 20.0, "limits": (-5.0, 5.0)},
        # a specimen stage's lateral axes in µm, far from zero (tracking works from where they stand)
        "SY": {"velocity": 200.0, "acceleration_s": 0.02, "egu": "um", "limits": (-5000.0, 5000.0),
               "position": 1250.0},
        "SX": {"velocity": 200.0, "acceleration_s": 0.02, "egu": "um", "limits": (-5000.0, 5000.0),
               "position": -380.0},
    }  # fmt: skip
    started = []
    saved = {
        k: os.environ.get(k)
        for k in ("EPICS_CA_ADDR_LIST", "EPICS_CA_AUTO_ADDR_LIST", "EPICS_CA_MAX_ARRAY_BYTES")
    }
    try:
        started.append(et.start_motor_ioc("LTT:", motors))
        started.append(et.start_camera_ioc("LTT:CAM1:", shape=CAMERA_SHAPE))
        started.append(et.start_raster_ioc("LTT:RASTER:", max_pixels=16 * 16, n_channels=N_CHANNELS))
        os.environ.update(et.client_environment(*started))
        yield dict(zip(("motors", "camera", "raster"), started, strict=True))
    finally:
        for ioc in started:
            ioc.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _record(prefix):
    """Fresh reads of a motor record's fields, as an independent client sees them."""
    fields = {f: EpicsSignalRO(f"{prefix}.{f}", name=f) for f in ("RBV", "VAL", "DMOV", "MOVN")}
    for signal in fields.values():
        signal.wait_for_connection(timeout=10)
    return lambda field: fields[field].get(use_monitor=False)


def _wait_until(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def _home(prefix, position=0.0):
    axis = RotationStage(EpicsMotorBackend(prefix).connect())
    axis.set(position).wait(timeout=60)
    return axis


# ------------------------------------------------------------------------------------ motor


def test_a_move_returns_at_once_and_completes_on_dmov_at_the_target(iocs):
    axis = _home("LTT:SLOW")
    record = _record("LTT:SLOW")
    status = axis.set(3.0)  # 1.5 s at 2 deg/s
    assert not status.done  # the status came back while the motor moves
    _wait_until(lambda: record("MOVN") == 1 and record("DMOV") == 0, what="MOVN = 1, DMOV = 0")
    status.wait(timeout=30)
    assert status.success
    assert record("DMOV") == 1 and record("VAL") == 3.0
    assert abs(record("RBV") - 3.0) <= 1e-3 and abs(axis.position - 3.0) <= 1e-3
    reading = axis.read()
    assert (
        reading["rotation"]["value"] == pytest.approx(3.0, abs=1e-3)
        and reading["rotation_setpoint"]["value"] == 3.0
    )
    # a move within the deadband completes too (the record pulses DMOV, the put-callback returns)
    axis.set(3.0).wait(timeout=30)


def test_a_runengine_pause_mid_move_stops_the_motor_before_the_deadline(iocs):
    """Pause 1 s into a 4 s move: the RunEngine is paused, and the motor stopped, within 1.5 s."""
    axis = _home("LTT:SLOW")
    record = _record("LTT:SLOW")
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))

    def plan():
        yield from bps.open_run()
        yield from bps.checkpoint()
        yield from bps.mv(axis, 8.0)
        yield from bps.close_run()

    requested = {}

    def pause():
        requested["at"] = time.monotonic()
        RE.request_pause(defer=False)

    _wait_until(lambda: record("DMOV") == 1, what="motor at rest")
    timer = threading.Timer(1.0, pause)
    timer.start()
    try:
        with pytest.raises(RunEngineInterrupted):
            RE(plan())
        paused_at = time.monotonic()
        _wait_until(lambda: record("DMOV") == 1, timeout=10, what="DMOV = 1 after the pause")
        stopped_at = time.monotonic()
    finally:
        timer.cancel()
    assert RE.state == "paused"
    deadline = requested["at"] + 1.5
    assert paused_at <= deadline, f"paused {paused_at - requested['at']:.2f} s after the request"
    assert stopped_at <= deadline, f"motor stopped {stopped_at - requested['at']:.2f} s after the request"
    stopped_position = record("RBV")
    assert 0.5 < stopped_position < 6.0  # stopped mid-move, not at the target
    RE.resume()  # the plan goes back to its checkpoint and moves again to the target
    assert RE.state == "idle"
    assert abs(record("RBV") - 8.0) <= 1e-3
    assert [doc["exit_status"] for name, doc in docs if name == "stop"] == ["success"]


def test_stop_ends_a_move_where_the_motor_stops_and_fails_its_status(iocs):
    axis = _home("LTT:BRAKE")
    record = _record("LTT:BRAKE")
    status = axis.set(6.0)
    _wait_until(lambda: record("RBV") > 0.5, what="motor under way")
    axis.stop()
    with pytest.raises(MotionError, match=r"rotation was stopped on its way to 6 deg"):
        status.wait(timeout=30)
    _wait_until(lambda: record("DMOV") == 1, what="DMOV = 1 after STOP")
    assert record("MOVN") == 0
    assert 0.5 < record("RBV") < 6.0 and record("VAL") == pytest.approx(record("RBV"), abs=1e-3)


def test_a_move_that_ends_away_from_its_target_fails_and_says_where(iocs):
    axis = _home("LTT:BRAKE")
    record = _record("LTT:BRAKE")
    stop = EpicsSignal("LTT:BRAKE.STOP", name="stop")  # another client (an operator's panel) stops it
    stop.wait_for_connection(timeout=10)
    status = axis.set(6.0)
    _wait_until(lambda: record("RBV") > 0.5, what="motor under way")
    stop.put(1)
    with pytest.raises(
        MotionError, match=r"LTT:BRAKE reached .* from the target 6; allowed: within 0.001 deg"
    ):
        status.wait(timeout=30)
    assert record("DMOV") == 1 and record("RBV") < 6.0


def test_limits_of_the_record_are_refused_before_motion(iocs):
    axis = RotationStage(EpicsMotorBackend("LTT:NARROW").connect())  # stage limits ±360, record ±5
    record = _record("LTT:NARROW")
    before = record("RBV")
    with pytest.raises(
        ParameterError, match=r"LTT:NARROW = 7 deg is outside the motor record's limits \[LLM -5, HLM 5\]"
    ):
        axis.set(7.0).wait(timeout=10)
    assert record("RBV") == before and record("DMOV") == 1


def test_a_pv_that_does_not_connect_is_named_within_the_timeout(iocs):
    with pytest.raises(TimeoutError, match=r"LTT:NOSUCH\.VAL.*LTT:NOSUCH\.RBV"):
        EpicsMotorBackend("LTT:NOSUCH").connect(timeout=1.0)


# ----------------------------------------------------------------------------------- camera


def _counter(pv):
    signal = EpicsSignalRO(pv, name="counter")
    signal.wait_for_connection(timeout=10)
    return int(signal.get(use_monitor=False))


def test_a_camera_acquisition_returns_the_iocs_image(iocs):
    backend = AreaDetectorCameraBackend("LTT:CAM1:", pixel_size_nm=100.0, timeout_s=5.0).connect()
    assert backend.shape == CAMERA_SHAPE
    first = _counter("LTT:CAM1:cam1:ArrayCounter_RBV") + 1
    images = [backend.acquire(0.1) for _ in range(3)]
    for i, image in enumerate(images):
        assert image.dtype == np.float32 and image.shape == CAMERA_SHAPE
        np.testing.assert_array_equal(image, et.camera_frame(first + i, CAMERA_SHAPE))


def test_a_stalled_camera_raises_a_timeout_naming_the_pv_instead_of_hanging(iocs):
    backend = AreaDetectorCameraBackend("LTT:CAM1:", pixel_size_nm=100.0, timeout_s=1.0).connect()
    stall = EpicsSignal("LTT:CAM1:cam1:SimStall", name="stall")
    stall.wait_for_connection(timeout=10)
    stall.put(1)
    try:
        with pytest.raises(
            TimeoutError, match=r"LTT:CAM1:cam1:Acquire did not return to 0 \(Done\) within 1\.1 s"
        ) as info:
            backend.acquire(0.1)
        assert type(info.value) is TimeoutError
    finally:
        stall.put(1 - 1)
    acquire = EpicsSignalRO("LTT:CAM1:cam1:Acquire", name="acquire")
    acquire.wait_for_connection(timeout=10)
    _wait_until(lambda: acquire.get(use_monitor=False) == 0, what="the stuck acquisition stopped")
    assert backend.acquire(0.05).shape == CAMERA_SHAPE  # and the camera works again


def test_an_image_that_never_reaches_the_plugin_is_named(iocs):
    backend = AreaDetectorCameraBackend("LTT:CAM1:", pixel_size_nm=100.0, timeout_s=1.0).connect()
    enable = EpicsSignal("LTT:CAM1:image1:EnableCallbacks", name="enable")
    enable.wait_for_connection(timeout=10)
    enable.put(0)
    try:
        with pytest.raises(TimeoutError, match=r"LTT:CAM1:image1:ArrayCounter_RBV did not advance"):
            backend.acquire(0.05)
    finally:
        enable.put(1)


# ----------------------------------------------------------------------------------- raster


def _rois(ev_per_channel=10.0) -> dict[str, tuple[int, int]]:
    """Each element's Kα window in channels, as a facility would set the MCA's ROIs."""
    out = {}
    for element, lines in EMISSION_LINES.items():
        energy, half = lines["Ka1"] * 1000.0, roi_half_width_ev(lines["Ka1"])
        out[element] = (
            int((energy - half) // ev_per_channel),
            int(-(-(energy + half) // ev_per_channel)) + 1,
        )
    return out


def _buffers():
    prefix = "LTT:RASTER:"
    return EpicsRasterBuffersBackend(
        segment_pvs=tuple(f"{prefix}DPC:Seg{i}" for i in (2, 3, 4, 5)),
        spectra_pv=f"{prefix}XRF:Spectra",
        live_time_pv=f"{prefix}XRF:LiveTime",
        counter_pv=f"{prefix}ArrayCounter_RBV",
        n_channels=N_CHANNELS,
        rois=_rois(),
    ).connect()


def test_a_raster_completes_after_busy_went_1_then_0_and_its_buffers_are_read(iocs):
    spec = RasterSpec(shape=(6, 10), pixel_size_um=0.3, dwell_s=0.01)  # 0.6 s
    scan = ScanStage(EpicsRasterBackend("LTT:RASTER:").connect())
    buffers = _buffers()
    dpc = SegmentedDPCDetector(buffers.segments(), MemorySink())
    busy = EpicsSignalRO("LTT:RASTER:Busy_RBV", name="busy")
    points = EpicsSignalRO("LTT:RASTER:PointsDone_RBV", name="points")
    for signal in (busy, points):
        signal.wait_for_connection(timeout=10)
    seen = []
    busy.subscribe(lambda value, **kw: seen.append(int(value)), run=False)
    with pytest.raises(RuntimeError, match=r"prepare\(RasterSpec\) before reading"):
        dpc.backend.read_raster()
    for device in (scan, dpc):
        device.prepare(spec).wait(timeout=10)
    counter = _counter("LTT:RASTER:ArrayCounter_RBV")
    scan.kickoff().wait(timeout=10)
    scan.complete().wait(timeout=30)
    assert 1 in seen and seen[-1] == 0 and seen.index(1) < len(seen) - 1  # Busy went 1, then 0
    assert int(points.get(use_monitor=False)) == 60 and int(busy.get(use_monitor=False)) == 0
    dpc.stage()
    dpc.trigger().wait(timeout=30)  # waits for the buffers, posted after Busy returned to 0
    list(
        dpc.collect_asset_docs()
    )  # as the RunEngine does when it saves the event: the frame goes to the sink
    frames = dpc.frames._sink.stack("dpc", "dpc_segments")
    expected = et.raster_buffers(counter + 1, spec.shape, dwell_s=spec.dwell_s, n_channels=N_CHANNELS)
    np.testing.assert_array_equal(frames[0], expected["segments"])
    assert scan.read()["scan_rasters"]["value"] == 1


def test_a_raster_larger_than_the_buffers_is_refused_at_prepare(iocs):
    scan = ScanStage(EpicsRasterBackend("LTT:RASTER:").connect())
    with pytest.raises(ParameterError, match=r"400 pixels exceeds the 256 of LTT:RASTER:MaxPixels_RBV"):
        scan.prepare(RasterSpec(shape=(20, 20), pixel_size_um=0.3, dwell_s=0.001)).wait(timeout=10)


# ------------------------------------------------------------------------------------ plans


def test_xrf_dpc_tomo_runs_against_the_iocs(iocs):
    sink = MemorySink()
    rotation = _home("LTT:ROT")
    buffers = _buffers()
    scan = ScanStage(EpicsRasterBackend("LTT:RASTER:").connect())
    dpc = SegmentedDPCDetector(buffers.segments(), sink)
    xrf = VortexXRF(buffers.spectra(), sink)
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    counter = _counter("LTT:RASTER:ArrayCounter_RBV")
    angles = [0.0, 30.0, 60.0, 90.0]
    RE(xrf_dpc_tomo(dpc, xrf, rotation, scan, angles, raster_shape=(5, 8), pixel_size_um=0.3, dwell_s=0.005))
    stop = next(doc for name, doc in docs if name == "stop")
    assert stop["exit_status"] == "success"
    events = [doc for name, doc in docs if name == "event"]
    assert [e["data"]["rotation"] for e in events] == pytest.approx(angles, abs=1e-3)
    descriptor = next(doc for name, doc in docs if name == "descriptor")
    assert descriptor["data_keys"]["dpc_segments"]["shape"] == [4, 5, 8]
    assert descriptor["data_keys"]["xrf_spectra"]["shape"] == [5, 8, N_CHANNELS]
    segments = sink.stack("dpc", "dpc_segments")
    spectra = sink.stack("xrf", "xrf_spectra")
    assert segments.shape == (4, 4, 5, 8) and spectra.shape == (4, 5, 8, N_CHANNELS)
    for i in range(len(angles)):  # raster i's buffers, not the previous raster's
        expected = et.raster_buffers(counter + 1 + i, (5, 8), dwell_s=0.005, n_channels=N_CHANNELS)
        np.testing.assert_array_equal(segments[i], expected["segments"])
        np.testing.assert_array_equal(spectra[i], expected["spectra"].astype(np.uint32))
    assert [e["data"]["xrf_live_fraction"] for e in events] == pytest.approx([0.9] * 4)
    assert [e["data"]["scan_rasters"] for e in events] == [1, 2, 3, 4]


def test_tomo_scan_runs_against_the_iocs_and_frames_reach_the_daemon(iocs, tmp_path):
    """A real camera's frames travel like simulated ones: through the ZeroMQ sink, frame protocol."""
    from livetomo.daemon.storage import stream_location
    from livetomo.daemon.transport import End, Frame, FrameReceiver, Start, ZMQFrameSink

    rotation = _home("LTT:ROT")
    receiver = FrameReceiver("tcp://127.0.0.1:0", maxsize=16).start()
    sink = ZMQFrameSink(receiver.address, locate=stream_location(tmp_path))
    camera = FluorescenceCamera(
        AreaDetectorCameraBackend("LTT:CAM1:", pixel_size_nm=150.0).connect(), sink, exposure_s=0.05
    )
    sink.metadata = lambda device, key: {"angle_deg": rotation.position}
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(sink)
    first = _counter("LTT:CAM1:cam1:ArrayCounter_RBV") + 1
    try:
        RE(tomo_scan([camera], rotation, start=0, stop=180, num=5))
    finally:
        sink.close()
    messages = []
    deadline = time.monotonic() + 30
    while not (messages and isinstance(messages[-1], End)) and time.monotonic() < deadline:
        if not receiver.queue.empty():
            messages.append(receiver.queue.get())
        else:
            time.sleep(0.01)
    receiver.stop()
    angles = [0.0, 45.0, 90.0, 135.0, 180.0]
    events = [doc for name, doc in docs if name == "event"]
    assert [e["data"]["rotation"] for e in events] == pytest.approx(angles, abs=1e-3)
    descriptor = next(doc for name, doc in docs if name == "descriptor")
    assert descriptor["data_keys"]["fm_image"]["shape"] == list(CAMERA_SHAPE)
    assert isinstance(messages[0], Start) and isinstance(messages[-1], End) and messages[-1].count == 5
    frames = [m for m in messages if isinstance(m, Frame)]
    assert [m.angle_deg for m in frames] == pytest.approx(angles, abs=1e-3)
    for i, message in enumerate(frames):
        np.testing.assert_array_equal(
            message.data, et.camera_frame(first + i, CAMERA_SHAPE).astype(np.float32)
        )


# ------------------------------------------------------------------------------- IOC harness


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # exited (a zombie until reaped)
    except FileNotFoundError:
        return True


def test_an_ioc_stops_and_never_outlives_the_process_that_started_it(tmp_path):
    import subprocess
    import sys

    if not os.path.exists("/proc/self/stat"):
        pytest.skip("needs /proc to follow the orphaned IOC")
    ioc = et.start_motor_ioc("LTH:", {"m1": {}})
    assert ioc.address.startswith("127.0.0.1:") and ioc.process.poll() is None
    ioc.stop()
    assert ioc.process.poll() is not None
    # a parent that dies without stopping its IOC: the IOC exits by itself
    script = (
        "import os\n"
        "from livetomo.devices import epics_testing as et\n"
        "ioc = et.start_motor_ioc('LTO:', {'m1': {}})\n"
        "print(ioc.process.pid, ioc.log_path, flush=True)\n"
        "os._exit(0)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=os.environ
    )
    pid, log_path = child.stdout.split()[:2]
    try:
        _wait_until(lambda: _gone(int(pid)), timeout=20, what="the orphaned IOC exits")
    finally:
        os.unlink(log_path)


def _stage_tracking(RE, stage, *, n_tilts_deg=24):
    """A simulated TEM's tilt series tracked by the EPICS ``stage`` (a StageShift over the IOC's
    SY/SX records). A stand-in for the daemon publishes each frame's shift: the simulator's
    drift on the camera less what the stage's offset (as the event read it) took back."""
    from livetomo.devices.measurements import LiveMeasurements, MeasurementBoard
    from livetomo.devices.sim import make_tem
    from livetomo.plans import tilt_series
    from livetomo.simulators.stages import TiltStageModel

    model = TiltStageModel(
        eucentric_error_nm=300.0, drift_rate_nm_per_s=(0.5, 1.0), drift_step_nm=0.0, seed=2
    )
    tem = make_tem(shape=(32, 8, 32), voxel_size_nm=16.0, seed=1, tilt_model=model)
    px_nm = tem.world.pixel_size_nm
    board, residual, streams = MeasurementBoard(), [], {}

    def daemon(name, doc):
        if name == "start":
            board.on_message("run_start", {"run_uid": doc["uid"], "angles_planned": doc["tilt_angles"]})
        elif name == "descriptor":
            streams[doc["uid"]] = doc["name"]
        elif name == "event" and streams[doc["descriptor"]] == "primary":
            drift = np.asarray(tem.world.history[-1].true_shift_px)
            taken = np.array([doc["data"]["stage_shift_y"], doc["data"]["stage_shift_x"]]) * 1000.0 / px_nm
            residual.append(drift + taken)  # where the area really was on the camera
            payload = {
                "run_uid": board.run_uid,
                "seq": doc["seq_num"] - 1,
                "angle": doc["data"]["tilt"],
                "shift": list(-(residual[-1] - residual[0])),
                "quality": {"ok": True, "uncertainty_px": 0.1},
            }
            board.on_message("frame", payload)

    token = RE.subscribe(daemon)
    live = LiveMeasurements(board, pixel_size_nm=px_nm)
    try:
        RE(tilt_series(tem.k3, tem.tilt, min_deg=-n_tilts_deg, max_deg=n_tilts_deg, step_deg=3, dose_per_tilt=1.0,
                       track=True, measurements=live, image_shift=stage, track_max_step_nm=2000.0,  # 2 µm on the stage
                       track_timeout_s=5.0))  # fmt: skip
    finally:
        RE.unsubscribe(token)
    untracked = np.array([f.true_shift_px for f in tem.world.history])
    return np.asarray(residual), untracked


def test_an_epics_specimen_stage_tracks_a_tilt_series_from_where_it_stood(iocs, RE, docs):
    from livetomo.devices.image_shift import StageShift

    sy, sx = _record("LTT:SY"), _record("LTT:SX")
    origin = (sy("RBV"), sx("RBV"))
    stage = StageShift(EpicsMotorBackend("LTT:SY").connect(), EpicsMotorBackend("LTT:SX").connect(),
                       limits=(-3.0, 3.0))  # fmt: skip
    residual, uncorrected = _stage_tracking(RE, stage)
    # the drift alone took the area tens of pixels away; the stage brought it back every tilt
    assert np.abs(uncorrected - uncorrected[0]).max() > 10.0
    # (the first tilt on the far side is unpredicted: the eucentric error's sign is not known yet)
    off = np.hypot(*(residual - residual[0]).T)
    assert np.median(off) < 0.1 and off.max() < 0.3 * np.abs(uncorrected - uncorrected[0]).max(), off
    # the records moved by what the events say, from where they stood when the series began
    events = [e["data"] for e in docs.events["primary"]]
    assert np.ptp([e["stage_shift_x"] for e in events]) > 0.3
    assert sx("RBV") - origin[1] == pytest.approx(events[-1]["stage_shift_x"], abs=0.01)
    assert sy("RBV") - origin[0] == pytest.approx(events[-1]["stage_shift_y"], abs=0.01)
    statuses = docs.column("track_status", stream="tracking")
    assert sum(s == "corrected" for s in statuses) >= len(statuses) - 2, statuses


def test_an_epics_stage_correction_beyond_its_range_is_refused_with_the_limit_named(iocs, RE, docs):
    from livetomo.devices.image_shift import StageShift

    sx = _record("LTT:SX")
    stage = StageShift(EpicsMotorBackend("LTT:SY").connect(), EpicsMotorBackend("LTT:SX").connect(),
                       limits=(-0.05, 0.05))  # fmt: skip
    before = sx("RBV")
    _stage_tracking(RE, stage, n_tilts_deg=9)  # a short series: the untracked drift stays in the field
    refused = [s for s in docs.column("track_status", stream="tracking") if s.startswith("refused")]
    assert refused and "stage_shift_x" in refused[0] and "0.05" in refused[0], refused
    assert abs(sx("RBV") - before) <= 0.05 + 1e-3  # nothing beyond the range ever moved
