"""An EPICS beamline built from PV names in the daemon's configuration (``beamline.kind: epics``).

Every section is optional; configure the hardware the beamline has (at least one device):

- ``rotation``, ``tilt``: motor records (``EpicsMotorBackend``), the record name as ``prefix``;
- ``raster``: a fly-scan controller (``EpicsRasterBackend``) and, under ``raster.buffers``, the
  per-pixel DPC and XRF buffers its detectors fill (``EpicsRasterBuffersBackend``), with each
  element's Kα window in MCA channels (``rois``): devices ``scan``, ``dpc``, ``xrf``;
- ``cameras.txm``, ``cameras.k3``, ``cameras.sxt``, ``cameras.fm``: areaDetector cameras
  (``AreaDetectorCameraBackend``): a full-field transmission camera on the rotation stage,
  a K3 on the tilt stage (exposure is a dose: give the calibrated dose rate), and the soft
  X-ray and fluorescence cameras of correlative imaging.

PV names are a ``prefix`` plus suffixes whose defaults follow the records (``pvs``: the
suffixes of ``RasterPVs`` and ``AreaDetectorPVs``; write only those your IOC names otherwise).
``build`` connects every device at once and fails within ``connect_timeout_s`` with a
``TimeoutError`` naming each setting and PV that did not connect. docs/examples/epics-beamline.yaml
is a complete example; docs/hardware-notes.md describes the PVs and the records' behaviour.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from ..cameras import FluorescenceCamera, K3Camera, SoftXrayCamera, TransmissionCamera
from ..epics import (
    AreaDetectorCameraBackend,
    AreaDetectorPVs,
    EpicsMotorBackend,
    EpicsRasterBackend,
    EpicsRasterBuffersBackend,
    RasterPVs,
)
from ..image_shift import StageShift
from ..measurements import LiveMeasurements, MeasurementBoard
from ..motion import RotationStage, ScanStage, TiltStage
from ..sinks import FrameSink
from ..xray import SegmentedDPCDetector, VortexXRF
from . import Beamline


def _positive(high=None) -> dict:
    return {"range": (0.0, high)}


@dataclass
class Motor:
    """A motor record: ``prefix`` is the record name (``prefix.VAL``, ``.RBV``, ``.DMOV``, …)."""

    prefix: str
    limits: tuple[float, float] | None = None  # the stage's own limits, deg (None: its defaults)
    tolerance: float | None = None  # deg, replaces the record's retry deadband RDBD
    timeout_s: float | None = None  # per move (None: from VELO and ACCL)


@dataclass
class Corrector:
    """Two motor records that tracking moves (``devices.image_shift.StageShift``): ``y`` along the
    camera's (or the raster's) rows, ``x`` along its columns; ``range_um`` bounds the excursion
    from where a scan began; ``image_sign`` +1 when a positive move displaces the image (or the
    specimen in the raster) the same way, −1 when mirrored; ``um_per_unit``: µm per unit of the
    records (1000 for mm)."""

    y: Motor
    x: Motor
    range_um: float = field(default=5.0, metadata={"range": (0.0, 1e4)})
    image_sign: float = 1.0
    um_per_unit: float = field(default=1.0, metadata={"range": (1e-6, 1e6)})


@dataclass
class RasterSuffixes:
    """PV suffixes of the fly-scan controller (``RasterPVs``); "" where the IOC has none
    (``abort``, ``max_pixels``)."""

    rows: str = RasterPVs.rows
    cols: str = RasterPVs.cols
    step_um: str = RasterPVs.step_um
    dwell_s: str = RasterPVs.dwell_s
    start: str = RasterPVs.start
    busy: str = RasterPVs.busy
    abort: str = RasterPVs.abort
    max_pixels: str = RasterPVs.max_pixels


@dataclass
class Buffers:
    """The detectors' per-pixel buffers: ``prefix`` (default: the raster's) plus each suffix.

    ``segments``: four waveforms, DPC segments 2-5 (``[]`` for no DPC detector); ``spectra``:
    rows·cols·channels MCA counts and ``live_time`` seconds per pixel ("" for no XRF
    detector); ``counter``: rasters whose buffers are posted ("" if the IOC posts them before
    Busy returns to 0). ``rois``: each element's Kα window [lo, hi) in channels; the XRF
    detector's elements are these keys, in this order.
    """

    rois: dict[str, tuple[int, int]]
    prefix: str | None = None
    segments: tuple[str, ...] = ("DPC:Seg2", "DPC:Seg3", "DPC:Seg4", "DPC:Seg5")
    spectra: str = "XRF:Spectra"
    live_time: str = "XRF:LiveTime"
    counter: str = "ArrayCounter_RBV"
    n_channels: int = field(default=4096, metadata={"range": (1, None)})
    ev_per_channel: float = field(default=10.0, metadata=_positive())
    offset_ev: float = 0.0
    timeout_s: float = field(default=30.0, metadata=_positive())


@dataclass
class Raster:
    """A fly-scan controller at ``prefix`` and the buffers of its DPC and XRF detectors."""

    prefix: str
    buffers: Buffers
    pvs: RasterSuffixes = field(default_factory=RasterSuffixes)
    travel_um: float = field(default=100.0, metadata=_positive())
    dwell_range_s: tuple[float, float] = (1e-4, 1.0)
    default_shape: tuple[int, int] = (48, 48)  # the raster plans use when given none (rows, cols)
    start_timeout_s: float = field(default=10.0, metadata=_positive())
    timeout_margin_s: float = field(default=30.0, metadata=_positive())


@dataclass
class CameraSuffixes:
    """PV suffixes of an areaDetector camera (``AreaDetectorPVs``): driver ``cam1:``, NDStdArrays
    plugin ``image1:``."""

    acquire: str = AreaDetectorPVs.acquire
    acquire_time: str = AreaDetectorPVs.acquire_time
    image_mode: str = AreaDetectorPVs.image_mode
    num_images: str = AreaDetectorPVs.num_images
    array_callbacks: str = AreaDetectorPVs.array_callbacks
    size_x: str = AreaDetectorPVs.size_x
    size_y: str = AreaDetectorPVs.size_y
    array: str = AreaDetectorPVs.array
    array_counter: str = AreaDetectorPVs.array_counter
    enable_callbacks: str = AreaDetectorPVs.enable_callbacks


@dataclass
class Camera:
    """An areaDetector camera at ``prefix`` (e.g. ``"XF:31ID1-ES{Cam:1}"``).

    ``exposure``: seconds (a K3: the dose per image in e/Å²), None for the camera's default;
    ``dose_rate_e_per_A2_per_s``: a K3's calibrated dose rate (AcquireTime = dose / rate);
    ``configure``: set ImageMode Single, NumImages 1 and enable the array callbacks at start-up.
    """

    prefix: str
    pixel_size_nm: float = field(metadata=_positive())
    exposure: float | None = None
    dose_rate_e_per_A2_per_s: float | None = None
    pvs: CameraSuffixes = field(default_factory=CameraSuffixes)
    timeout_s: float = field(default=10.0, metadata=_positive())
    configure: bool = True


@dataclass
class Cameras:
    """``txm`` images on the rotation stage, ``k3`` on the tilt stage; ``sxt`` and ``fm`` for
    correlative imaging."""

    txm: Camera | None = None
    k3: Camera | None = None
    sxt: Camera | None = None
    fm: Camera | None = None


@dataclass
class Settings:
    """The devices of an EPICS beamline (see the module's docstring); ``connect_timeout_s`` bounds
    the connection of all of them at start-up."""

    rotation: Motor | None = None
    tilt: Motor | None = None
    raster: Raster | None = None
    cameras: Cameras = field(default_factory=Cameras)
    stage_shift: Corrector | None = None  # tracking in tilt_series: the specimen stage's x and y
    raster_offset: Corrector | None = None  # following in xrf_dpc_tomo: what moves the raster's centre
    connect_timeout_s: float = field(default=10.0, metadata={"range": (0.1, 600.0)})

    def __post_init__(self):
        cameras = {k: v for k, v in asdict(self.cameras).items() if v is not None}
        if not (self.rotation or self.tilt or self.raster or cameras):
            raise ValueError(
                "beamline (kind epics) configures no device: set at least one of beamline.rotation, "
                "beamline.tilt, beamline.raster, beamline.cameras.txm, .k3, .sxt, .fm"
            )
        for name in ("rotation", "tilt"):
            motor = getattr(self, name)
            if motor is not None and motor.limits is not None and motor.limits[0] >= motor.limits[1]:
                raise ValueError(f"beamline.{name}.limits = {list(motor.limits)} must be [low, high]")
        if self.raster is not None:
            self._check_buffers(self.raster.buffers)
        for name in ("stage_shift", "raster_offset"):
            corrector = getattr(self, name)
            if corrector is not None and corrector.image_sign not in (1.0, -1.0):
                raise ValueError(f"beamline.{name}.image_sign = {corrector.image_sign} must be 1 or -1")
        if self.cameras.k3 is not None and not self.cameras.k3.dose_rate_e_per_A2_per_s:
            raise ValueError(
                "beamline.cameras.k3.dose_rate_e_per_A2_per_s is required: the K3's exposure is a dose "
                "(e/A^2), written to AcquireTime as dose / rate"
            )

    @staticmethod
    def _check_buffers(buffers: Buffers) -> None:
        where = "beamline.raster.buffers"
        if len(buffers.segments) not in (0, 4):
            raise ValueError(
                f"{where}.segments = {list(buffers.segments)} must name the 4 segment waveforms (2-5) or none"
            )
        if bool(buffers.spectra) != bool(buffers.live_time):
            raise ValueError(f'{where}.spectra and {where}.live_time go together (both, or both "")')
        if buffers.spectra and not buffers.rois:
            raise ValueError(f"{where}.rois must give at least one element's window for the XRF detector")
        for element, (lo, hi) in buffers.rois.items():
            if not 0 <= lo < hi <= buffers.n_channels:
                raise ValueError(
                    f"{where}.rois.{element} = [{lo}, {hi}] must be a channel window [lo, hi) within "
                    f"[0, {buffers.n_channels}] (n_channels)"
                )


PLAN_DEFAULTS = {
    "tomo_scan": {"detectors": ["txm"], "rotation": "rotation"},
    "xrf_dpc_tomo": {
        "dpc": "dpc",
        "xrf": "xrf",
        "rotation": "rotation",
        "scan": "scan",
        "measurements": "live",
        "raster_offset": "raster_offset",
    },
    "tilt_series": {"camera": "k3", "tilt": "tilt", "measurements": "live", "image_shift": "stage_shift"},
    "correlative_acquire": {"sxt": "sxt", "fm": "fm"},
}

CAMERA_CLASSES = {"txm": TransmissionCamera, "k3": K3Camera, "sxt": SoftXrayCamera, "fm": FluorescenceCamera}
CAMERA_AXES = {"txm": "rotation", "k3": "tilt"}  # the stage whose position is the angle of a frame


def _backends(settings: Settings) -> dict:
    """Unconnected backends by setting name (``rotation``, ``raster``, ``cameras.txm``, …)."""
    out = {}
    for name in ("rotation", "tilt"):
        motor = getattr(settings, name)
        if motor is not None:
            out[name] = EpicsMotorBackend(motor.prefix, tolerance=motor.tolerance, timeout=motor.timeout_s)
    for name in ("stage_shift", "raster_offset"):
        corrector = getattr(settings, name)
        if corrector is not None:
            for axis in ("y", "x"):
                motor = getattr(corrector, axis)
                out[f"{name}.{axis}"] = EpicsMotorBackend(
                    motor.prefix, tolerance=motor.tolerance, timeout=motor.timeout_s
                )
    raster = settings.raster
    if raster is not None:
        out["raster"] = EpicsRasterBackend(
            raster.prefix,
            pvs=RasterPVs(**asdict(raster.pvs)),
            timeout_margin_s=raster.timeout_margin_s,
            start_timeout_s=raster.start_timeout_s,
        )
        b = raster.buffers
        prefix = raster.prefix if b.prefix is None else b.prefix
        out["raster.buffers"] = EpicsRasterBuffersBackend(
            segment_pvs=tuple(prefix + s for s in b.segments) or None,
            spectra_pv=prefix + b.spectra if b.spectra else None,
            live_time_pv=prefix + b.live_time if b.live_time else None,
            counter_pv=prefix + b.counter if b.counter else None,
            n_channels=b.n_channels,
            ev_per_channel=b.ev_per_channel,
            offset_ev=b.offset_ev,
            rois=b.rois,
            timeout_s=b.timeout_s,
        )
    for name, camera in vars(settings.cameras).items():
        if camera is not None:
            out[f"cameras.{name}"] = AreaDetectorCameraBackend(
                camera.prefix,
                pixel_size_nm=camera.pixel_size_nm,
                pvs=AreaDetectorPVs(**asdict(camera.pvs)),
                dose_rate_e_per_A2_per_s=camera.dose_rate_e_per_A2_per_s,
                timeout_s=camera.timeout_s,
                configure=camera.configure,
            )
    return out


def connect_all(backends: dict, timeout: float) -> None:
    """Connect every backend at once; one ``TimeoutError`` naming each setting and its missing PVs."""
    if not backends:
        return

    def connect(item):
        name, backend = item
        try:
            backend.connect(timeout=timeout)
        except TimeoutError as exc:
            return f"beamline.{name}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=len(backends), thread_name_prefix="epics-connect") as pool:
        failures = [f for f in pool.map(connect, backends.items()) if f]
    if failures:
        raise TimeoutError(
            "the EPICS beamline did not connect (check the PV names and EPICS_CA_ADDR_LIST): "
            + "; ".join(failures)
        )


def build(settings: Settings, *, sink: FrameSink) -> Beamline:
    """Connect the configured EPICS devices; image detectors write to ``sink``."""
    backends = _backends(settings)
    connect_all(backends, settings.connect_timeout_s)
    devices: dict = {}
    for name, cls in (("rotation", RotationStage), ("tilt", TiltStage)):
        motor = getattr(settings, name)
        if motor is not None:
            limits = {"limits": tuple(motor.limits)} if motor.limits is not None else {}
            devices[name] = cls(backends[name], **limits)
    for name in ("stage_shift", "raster_offset"):
        corrector = getattr(settings, name)
        if corrector is not None:
            devices[name] = StageShift(
                backends[f"{name}.y"],
                backends[f"{name}.x"],
                name=name,
                limits=(-corrector.range_um, corrector.range_um),
                image_sign=corrector.image_sign,
                um_per_unit=corrector.um_per_unit,
            )
    # the daemon feeds its board with what it publishes: plans read livetomo's live measurements
    devices["live"] = LiveMeasurements(MeasurementBoard(), name="live")
    exposure = {}
    if settings.raster is not None:
        raster = settings.raster
        scan = ScanStage(
            backends["raster"],
            travel_um=raster.travel_um,
            dwell_range_s=tuple(raster.dwell_range_s),
            default_shape=tuple(raster.default_shape),
        )
        devices["scan"] = scan
        buffers = backends["raster.buffers"]

        def dwell():
            return float(scan.read()["scan_dwell"]["value"]), "s"

        if buffers.segment_pvs:
            devices["dpc"] = SegmentedDPCDetector(buffers.segments(), sink)
            exposure["dpc"] = dwell
        if buffers.spectra_pv:
            devices["xrf"] = VortexXRF(buffers.spectra(), sink, elements=tuple(raster.buffers.rois))
            exposure["xrf"] = dwell
    for name, camera in vars(settings.cameras).items():
        if camera is None:
            continue
        cls = CAMERA_CLASSES[name]
        options = {}
        if camera.exposure is not None:
            options = {"dose_e_per_A2" if name == "k3" else "exposure_s": camera.exposure}
        device = cls(backends[f"cameras.{name}"], sink, **options)
        devices[name] = device
        units = "e/A^2" if name == "k3" else "s"
        exposure[name] = lambda device=device, units=units: (float(device.exposure), units)
    angle_axis = {d: "rotation" for d in ("dpc", "xrf") if d in devices and "rotation" in devices}
    angle_axis |= {d: a for d, a in CAMERA_AXES.items() if d in devices and a in devices}
    return Beamline(
        devices=devices,
        plan_defaults=plan_defaults(devices),
        angle_axis=angle_axis,
        exposure=exposure,
    )


def plan_defaults(devices: dict) -> dict:
    """PLAN_DEFAULTS limited to the devices this beamline has (``tomo_scan``: its first camera)."""
    out = {}
    for plan, defaults in PLAN_DEFAULTS.items():
        chosen = {}
        for parameter, device in defaults.items():
            if parameter == "detectors":
                first = next((c for c in ("txm", "sxt", "fm", "k3") if c in devices), None)
                if first is not None:
                    chosen[parameter] = [first]
            elif device in devices:
                chosen[parameter] = device
        if chosen:
            out[plan] = chosen
    return out
