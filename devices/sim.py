"""Simulated backends: the livetomo devices wired to the physics in ``livetomo.simulators``.

Each ``Sim*`` class owns one simulated instrument (a "world" in which several devices
act on the same specimen) and hands out the backends the devices are built from. The
``make_*`` functions build ready devices, which is what the demo, the tests and the
benchmarks use; plans never see any of this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..simulators import fib as fib_sim
from ..simulators.correlative import CorrelativeScene, make_correlative_scene
from ..simulators.faults import FaultInjector, as_faults
from ..simulators.k3 import K3Camera as K3Model
from ..simulators.k3 import axis_vectors, make_lamella
from ..simulators.microprobe import RasterResult, XRFMicroprobe
from ..simulators.specimen import make_cell
from ..simulators.stages import ImageShiftModel, RotationStageModel, TiltStageModel
from ..simulators.xrf import EMISSION_LINES, XRFDetectorModel
from .base import ParameterError
from .cameras import FluorescenceCamera, K3Camera, SoftXrayCamera, TransmissionCamera
from .fib import CryoFIB
from .image_shift import ImageShift, RasterOffset
from .motion import RasterSpec, RotationStage, ScanStage, TiltStage
from .sinks import FrameSink, MemorySink
from .xray import SegmentedDPCDetector, VortexXRF


class SimAxisBackend:
    """Adapts a stage model (``move``, ``position_deg``) to ``MotorBackend``."""

    def __init__(self, model, truth):
        self.model = model
        self._truth = truth

    def move(self, target: float) -> float:
        return self.model.move(target)

    def position(self) -> float:
        return self.model.position_deg

    def truth(self) -> dict[str, tuple[float, str]]:
        return self._truth(self.model)


class TruthHistory(list):
    """What a simulator did at each acquisition (its truth, for tests and benchmarks), oldest
    first. Once the entries' arrays hold more than ``max_bytes`` together, the oldest entries
    lose their arrays (set to None) and keep their scalars (true shift, angle, dose), so a
    benchmark can score every frame of a long scan while a daemon that runs scan after scan
    keeps its memory flat. The newest entry always keeps its arrays."""

    def __init__(self, max_bytes: int):
        super().__init__()
        self.max_bytes = int(max_bytes)
        self._sizes: list[int] = []
        self._total = 0
        self._heavy = 0  # entries before this index have lost their arrays

    def append(self, item) -> None:
        super().append(item)
        size = _nbytes(item)
        self._sizes.append(size)
        self._total += size
        while self._total > self.max_bytes and self._heavy < len(self) - 1:
            i = self._heavy
            self[i] = _without_arrays(self[i])
            self._total -= self._sizes[i]
            self._sizes[i] = 0
            self._heavy += 1

    def replace(self, index: int, item) -> None:
        """Put ``item`` (e.g. a lighter copy) at ``index``, keeping the byte count right."""
        size = _nbytes(item) if index >= self._heavy else 0
        self._total += size - self._sizes[index]
        self._sizes[index] = size
        self[index] = item if index >= self._heavy else _without_arrays(item)

    def clear(self) -> None:
        super().clear()
        self._sizes.clear()
        self._total = self._heavy = 0


def _without_arrays(item):
    """``item`` with its array fields set to None (a dataclass), or None (anything else)."""
    if not dataclasses.is_dataclass(item):
        return None
    heavy = {
        f.name: None
        for f in dataclasses.fields(item)
        if isinstance(getattr(item, f.name), np.ndarray | dict) and f.init
    }
    return dataclasses.replace(item, **heavy)


def _nbytes(item) -> int:
    if item is None:
        return 0
    if dataclasses.is_dataclass(item):
        values = (getattr(item, f.name) for f in dataclasses.fields(item))
    else:
        values = item if isinstance(item, tuple) else (item,)
    total = 0
    for value in values:
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, dict):
            total += sum(v.nbytes for v in value.values() if isinstance(v, np.ndarray))
    return total


def _runout_truth(model: RotationStageModel) -> dict[str, tuple[float, str]]:
    v, h = model.true_offset_um
    return {"true_offset_v": (float(v), "um"), "true_offset_h": (float(h), "um")}


def _drift_truth(model: TiltStageModel) -> dict[str, tuple[float, str]]:
    v, h = model.true_offset_nm
    return {"true_offset_v": (float(v), "nm"), "true_offset_h": (float(h), "nm")}


def make_rotation_stage(*, seed: int = 0, faults: FaultInjector | None = None, **model) -> RotationStage:
    """A rotation stage on the simulated runout model (``model`` goes to RotationStageModel)."""
    return RotationStage(SimAxisBackend(RotationStageModel(seed=seed, faults=faults, **model), _runout_truth))


class SimMicroprobe:
    """Scanning X-ray microprobe: rotation stage with runout, raster stage, DPC and XRF detectors.

    ``run_raster`` (the scan stage's backend) rasters the specimen at the stage's true
    angle and runout; the two detector backends then read their part of that raster.
    ``history`` keeps the truth (true shift in pixels, true maps) of the current run's rasters
    (``start_run`` clears it when a run stages a detector), up to ``HISTORY_BYTES`` of arrays,
    and the spectra of the last ``SPECTRA_KEPT`` of them only: a daemon that runs scan after
    scan keeps its memory flat. ``camera_history`` likewise for the full-field camera.
    """

    HISTORY_BYTES = 256 * 1024**2
    HISTORY_LIMIT = 4096  # entries of camera_history (angles and shifts only)
    SPECTRA_KEPT = 16

    RASTER_OFFSET_LIMIT_UM = 20.0  # the fine stage's range for moving the raster's centre

    def __init__(self, probe: XRFMicroprobe, rotation: RotationStageModel):
        self.probe = probe
        self.rotation = rotation
        self.raster_offset_um = np.zeros(2)  # (v, h): where the raster's centre was moved
        self.latest: RasterResult | None = None
        self.history: TruthHistory = TruthHistory(self.HISTORY_BYTES)
        self.camera_history: list[tuple[float, tuple[float, float]]] = []  # (angle, true shift px)

    def start_run(self) -> None:
        self.history.clear()
        self.camera_history.clear()
        self.raster_offset_um = np.zeros(2)  # each scan starts at the raster's home position

    def specimen_offset_um(self) -> np.ndarray:
        """Where the specimen is in the raster (v, h) µm: the runout, less the raster's offset."""
        return np.asarray(self.rotation.true_offset_um) - self.raster_offset_um

    def run_raster(self, spec: RasterSpec) -> None:
        if not np.isclose(spec.pixel_size_um * 1000.0, self.probe.pixel_size_nm, rtol=1e-3):
            raise ValueError(
                f"raster pixel {spec.pixel_size_um} um differs from the probe's {self.probe.pixel_size_nm} nm"
            )
        self.latest = self.probe.raster(
            self.rotation.position_deg,
            offset_um=tuple(self.specimen_offset_um()),
            dwell_s=spec.dwell_s,
            shape=spec.shape,
        )
        self.history.append(self.latest)
        old = len(self.history) - self.SPECTRA_KEPT - 1
        if old >= 0 and self.history[old] is not None and self.history[old].spectra is not None:
            self.history.replace(old, dataclasses.replace(self.history[old], spectra=None))
        del self.camera_history[: -self.HISTORY_LIMIT]

    def segments_backend(self):
        return _SegmentsBackend(self)

    def camera_backend(self, shape=None):
        """A full-field transmission camera looking at the same specimen on the same stage, at
        the raster's pixel: frames of ``shape`` (default: the specimen's projection)."""
        self.camera_shape = tuple(shape) if shape is not None else self.probe.default_shape()
        return _CameraBackend(
            self.camera_image, self.camera_shape, self.probe.pixel_size_nm, start_run=self.start_run
        )

    def camera_image(self, exposure_s: float) -> np.ndarray:
        image, shift = self.probe.full_field(
            self.rotation.position_deg,
            offset_um=tuple(self.rotation.true_offset_um),
            exposure_s=exposure_s,
            shape=getattr(self, "camera_shape", None),
        )
        self.camera_history.append((float(self.rotation.position_deg), shift))
        return image

    def spectra_backend(self):
        return _SpectraBackend(self)


class _RasterOffsetAxis:
    """One axis of the simulated raster offset (``MotorBackend``); its truth: where the specimen
    then is in the raster, µm from its centre."""

    def __init__(self, world: SimMicroprobe, axis: int):
        self.world = world
        self.axis = axis

    def move(self, target: float) -> float:
        limit = self.world.RASTER_OFFSET_LIMIT_UM
        if not abs(target) <= limit:
            raise ValueError(f"raster offset {target:g} um outside the fine stage's range ±{limit:g} um")
        offset = self.world.raster_offset_um.copy()
        offset[self.axis] = float(target)
        self.world.raster_offset_um = offset
        return float(target)

    def position(self) -> float:
        return float(self.world.raster_offset_um[self.axis])

    def truth(self) -> dict[str, tuple[float, str]]:
        return {"true_specimen": (float(self.world.specimen_offset_um()[self.axis]), "um")}


class _SegmentsBackend:
    def __init__(self, world: SimMicroprobe):
        self.world = world
        self.start_run = world.start_run

    @property
    def zone_width_nm(self) -> float:
        """Outermost zone width of the zone plate whose bright-field cone fills the detector."""
        return self.world.probe.zone_width_nm

    def read_raster(self):
        latest = self.world.latest
        return None if latest is None else latest.segments.astype(np.float32, copy=False)


class _SpectraBackend:
    def __init__(self, world: SimMicroprobe):
        self.world = world
        self.start_run = world.start_run
        det = world.probe.detector
        self.n_channels = det.n_channels
        self.spectra_dtype = det.spectra_dtype
        self.ev_per_channel = det.ev_per_channel
        self.offset_ev = det.offset_ev

    def read_raster(self):
        latest = self.world.latest
        return None if latest is None else (latest.spectra, latest.live_fraction)

    def roi_windows(self, elements) -> dict[str, tuple[int, int]]:
        detector = self.world.probe.detector
        unknown = [el for el in elements if el not in EMISSION_LINES]
        if unknown:
            raise ParameterError(
                f"element(s) {', '.join(unknown)} have no emission line; allowed: {', '.join(EMISSION_LINES)}"
            )
        windows = {el: detector.roi_channels(el) for el in elements}
        return {el: (w.start, w.stop) for el, w in windows.items()}


@dataclass
class MicroprobeDevices:
    """The devices of the simulated XRF-DPC beamline plus the world that knows the truth."""

    rotation: RotationStage
    scan: ScanStage
    dpc: SegmentedDPCDetector
    xrf: VortexXRF
    txm: TransmissionCamera
    raster_offset: RasterOffset
    world: SimMicroprobe
    sink: FrameSink


def make_microprobe(
    *,
    shape=(24, 48, 48),
    pixel_size_nm: float = 300.0,
    seed: int = 0,
    faults: FaultInjector | None = None,
    sink: FrameSink | None = None,
    save_spectra: bool = True,
    rotation_model: RotationStageModel | None = None,
    voxel_size_nm: float | None = None,
    detector: XRFDetectorModel | None = None,
    camera_shape: tuple[int, int] | None = None,
) -> MicroprobeDevices:
    """Simulated XRF-DPC microprobe at 10.2 keV with a frozen-hydrated cell of ``shape`` voxels.

    ``voxel_size_nm`` (default: the pixel) may be coarser than the raster pixel: a 230 × 230
    raster of a cell at twice the pixel samples a 115³ specimen, not a 230³ one (eight times
    the memory and projection time). ``detector``: the fluorescence detector model (channels,
    gain, count type). ``camera_shape``: the full-field camera's frames (default: the specimen's
    projection at the raster pixel)."""
    faults = as_faults(faults)
    sink = sink if sink is not None else MemorySink()
    specimen = make_cell(shape, voxel_size_nm=voxel_size_nm or pixel_size_nm, seed=seed)
    probe = XRFMicroprobe(
        specimen, pixel_size_nm=pixel_size_nm, seed=seed + 1, faults=faults, detector=detector
    )
    rotation_model = rotation_model or RotationStageModel(seed=seed + 2, faults=faults)
    world = SimMicroprobe(probe, rotation_model)
    return MicroprobeDevices(
        rotation=RotationStage(SimAxisBackend(rotation_model, _runout_truth)),
        # the default raster holds the cell at every angle and the ice cylinder but at the
        # extremes of the runout (up to ±6.6 px at 300 nm): a field cutting the specimen biases
        # the live alignment's absolute centre of mass by 0.1-0.15 px (docs/alignment.md)
        scan=ScanStage(world, default_shape=(shape[0] + 16, shape[2] + 8)),
        dpc=SegmentedDPCDetector(world.segments_backend(), sink),
        xrf=VortexXRF(world.spectra_backend(), sink, save_spectra=save_spectra),
        txm=TransmissionCamera(world.camera_backend(camera_shape), sink),
        raster_offset=RasterOffset(
            _RasterOffsetAxis(world, 0),
            _RasterOffsetAxis(world, 1),
            limits=(-world.RASTER_OFFSET_LIMIT_UM, world.RASTER_OFFSET_LIMIT_UM),
        ),
        world=world,
        sink=sink,
    )


class SimTEM:
    """Cryo-TEM: tilt stage with eucentric error and drift, K3 camera, a lamella specimen."""

    def __init__(
        self,
        camera: K3Model,
        tilt: TiltStageModel,
        pixel_size_nm: float,
        image_shift: ImageShiftModel | None = None,
        dtype="float32",
    ):
        self.camera = camera
        self.dtype = np.dtype(dtype)
        self.tilt = tilt
        self.pixel_size_nm = pixel_size_nm
        self.image_shift = image_shift or ImageShiftModel()
        self.history = TruthHistory(SimMicroprobe.HISTORY_BYTES)  # this run's K3Frames

    def start_run(self) -> None:
        """A tilt series starts: the target is centred again (image shift at zero), and the
        record starts afresh."""
        self.history.clear()
        self.tilt.recentre()
        self.image_shift.recentre()

    def true_shift_px(self) -> tuple[float, float]:
        """The specimen's displacement on the camera (dy, dx) px: the stage's offset along and
        across the tilt axis, turned to the camera's tilt-axis direction, plus what the image
        shift really moved (in the camera's frame)."""
        v, h = self.tilt.true_offset_nm / self.pixel_size_nm
        along, across = axis_vectors(getattr(self.camera, "tilt_axis_deg", 90.0))
        dy, dx = v * along + h * across + self.image_shift.true_shift_nm / self.pixel_size_nm
        return float(dy), float(dx)

    def true_displacement_nm(self) -> float:
        """How far the area of interest is from the field centre now (nm): the tracking's truth."""
        return float(np.hypot(*self.true_shift_px()) * self.pixel_size_nm)

    def acquire(self, dose: float):
        frame = self.camera.acquire(self.tilt.position_deg, dose_e_per_A2=dose, shift_px=self.true_shift_px())
        self.history.append(frame)
        if frame is None:
            return None
        if frame.counts.dtype.kind == "f":  # a nan_frame fault: NaN exists only in floats
            return frame.counts.astype(np.float32)
        return frame.counts.astype(self.dtype)


class _CameraBackend:
    def __init__(self, acquire, shape, pixel_size_nm, start_run=None, **optics):
        self.acquire = acquire
        if start_run is not None:
            self.start_run = start_run
        self.shape = tuple(shape)
        self.pixel_size_nm = pixel_size_nm
        for name, value in optics.items():  # voltage_kv, tilt_axis_deg (the K3's)
            setattr(self, name, value)


class _ImageShiftAxis:
    """One axis of the simulated image shift (``MotorBackend``), its truth what it really moved."""

    def __init__(self, world: SimTEM, axis: int):
        self.world = world
        self.axis = axis

    def move(self, target: float) -> float:
        return self.world.image_shift.move(self.axis, target)

    def position(self) -> float:
        return float(self.world.image_shift.setpoint_nm[self.axis])

    def truth(self) -> dict[str, tuple[float, str]]:
        # where the area of interest really is on the camera, nm from the field centre, this axis
        shift = self.world.true_shift_px()[self.axis] * self.world.pixel_size_nm
        return {
            "true_shift": (float(self.world.image_shift.true_shift_nm[self.axis]), "nm"),
            "true_target": (float(shift), "nm"),
        }


@dataclass
class TEMDevices:
    tilt: TiltStage
    k3: K3Camera
    image_shift: ImageShift
    world: SimTEM
    sink: FrameSink


def make_tem(
    *,
    shape=(64, 24, 64),
    voxel_size_nm: float = 2.0,
    seed: int = 0,
    faults: FaultInjector | None = None,
    sink: FrameSink | None = None,
    tilt_model: TiltStageModel | None = None,
    tilt_axis_deg: float = 90.0,
    stated_axis_error_deg: float = 0.0,
    image_shift_model: ImageShiftModel | None = None,
    image_shape: tuple[int, int] | None = None,
    pixel_size_nm: float | None = None,
    render_binning: int = 1,
    dtype: str = "float32",
    **lamella,
) -> TEMDevices:
    """Simulated cryo-TEM with a K3 in counting mode and a lamella of ``shape`` voxels; the tilt
    axis lies at ``tilt_axis_deg`` on the camera (from the image's x axis towards its rows).
    The camera states its axis (``tilt_axis_angle`` in its configuration) off by
    ``stated_axis_error_deg``, as a real calibration is. ``lamella`` goes to
    ``simulators.k3.make_lamella`` (e.g. more particles for a wider field).

    ``image_shape`` and ``pixel_size_nm`` (default: the volume's (z, x) at the voxel size) make
    the camera's frames finer than the volume (the phase is interpolated to them);
    ``render_binning`` computes the optics at that many detector pixels per side and counts at
    full resolution (``simulators.k3.K3Camera``); ``dtype`` is what the camera delivers:
    float32 electrons (default) or uint16 counts (half the bytes of a counted frame)."""
    faults = as_faults(faults)
    sink = sink if sink is not None else MemorySink()
    potential = make_lamella(shape, voxel_size_nm=voxel_size_nm, seed=seed, **lamella)
    pixel = float(pixel_size_nm or voxel_size_nm)
    camera = K3Model(
        potential,
        voxel_size_nm=voxel_size_nm,
        pixel_size_A=10.0 * pixel,
        image_shape=image_shape,
        render_binning=render_binning,
        seed=seed + 1,
        faults=faults,
        tilt_axis_deg=tilt_axis_deg,
    )
    tilt_model = tilt_model or TiltStageModel(seed=seed + 2, faults=faults)
    world = SimTEM(camera, tilt_model, pixel, image_shift_model, dtype=dtype)
    image_shape = camera.image_shape
    # the device states the axis in SerialEM's and IMOD's convention (counter-clockwise from Y):
    # the camera's 90 deg (vertical) is 0 there
    backend = _CameraBackend(
        world.acquire,
        image_shape,
        pixel,
        start_run=world.start_run,
        dtype=np.dtype(dtype),
        voltage_kv=camera.voltage_kv,
        tilt_axis_deg=round(tilt_axis_deg + stated_axis_error_deg - 90.0, 3),
    )
    return TEMDevices(
        tilt=TiltStage(SimAxisBackend(tilt_model, _drift_truth)),
        k3=K3Camera(backend, sink),
        image_shift=ImageShift(
            _ImageShiftAxis(world, 0),
            _ImageShiftAxis(world, 1),
            limits=(-world.image_shift.limit_nm, world.image_shift.limit_nm),
        ),
        world=world,
        sink=sink,
    )


class SimFIB:
    """FIB backend over ``simulators.fib.CryoFIBMill`` with an EELS probe.

    The milling angle is passed to the simulator as the ion incidence from the milled
    surface's normal (its sputter-yield model); the plan measures the real thinning rate
    by EELS, so a facility whose angle convention differs only changes the first chunk.
    """

    angle_limits_deg = (0.0, 30.0)

    def __init__(
        self,
        mill: fib_sim.CryoFIBMill,
        *,
        eels_counts: float = 1e6,
        mean_free_path_nm: float = 350.0,
        seed: int | None = None,
    ):
        self.mill_model = mill
        self.offered_currents_A = tuple(fib_sim.available_currents())
        self.pattern_area_um2 = mill.pattern_area_um2
        self.current_A = min(self.offered_currents_A)
        self.angle_deg = 10.0
        self.eels_counts = eels_counts
        self.mean_free_path_nm = mean_free_path_nm
        self._rng = np.random.default_rng(seed)

    def set_current(self, current_A: float) -> None:
        self.current_A = current_A

    def set_angle(self, angle_deg: float) -> None:
        self.angle_deg = angle_deg

    def mill(self, duration_s: float) -> None:
        self.mill_model.mill(self.current_A, duration_s, self.angle_deg)

    def measure_eels(self) -> tuple[float, float]:
        return fib_sim.eels_spectrum_ratio(
            self.mill_model.thickness_nm,
            mfp_nm=self.mean_free_path_nm,
            counts=self.eels_counts,
            rng=self._rng,
        )

    def nominal_rate_um3_per_s(self, current_A: float) -> float:
        return fib_sim.SPUTTER_RATES_UM3_PER_S[current_A]

    def truth(self) -> dict[str, tuple[float, str]]:
        return {"true_thickness": (float(self.mill_model.thickness_nm), "nm")}


def make_fib(
    *,
    initial_thickness_nm: float = 3000.0,
    seed: int = 0,
    faults: FaultInjector | None = None,
    mean_free_path_nm: float = 350.0,
) -> CryoFIB:
    """Simulated cryo-FIB with a lamella of ``initial_thickness_nm`` to thin."""
    mill = fib_sim.CryoFIBMill(initial_thickness_nm, seed=seed, faults=as_faults(faults))
    backend = SimFIB(mill, mean_free_path_nm=mean_free_path_nm, seed=seed + 1)
    return CryoFIB(backend, eels_mean_free_path_nm=mean_free_path_nm)


@dataclass
class CorrelativeDevices:
    sxt: SoftXrayCamera
    fm: FluorescenceCamera
    scene: CorrelativeScene
    sink: FrameSink


def make_correlative(*, seed: int = 0, sink: FrameSink | None = None, **scene_kwargs) -> CorrelativeDevices:
    """Simulated cryo-SXT and cryo-FM cameras looking at the same grid region."""
    sink = sink if sink is not None else MemorySink()
    scene = make_correlative_scene(seed=seed, **scene_kwargs)
    sxt = _CameraBackend(lambda exposure: scene.sxt.astype(np.float32), scene.sxt.shape, scene.sxt_pixel_nm)
    fm = _CameraBackend(lambda exposure: scene.fm.astype(np.float32), scene.fm.shape, scene.fm_pixel_nm)
    return CorrelativeDevices(SoftXrayCamera(sxt, sink), FluorescenceCamera(fm, sink), scene, sink)
