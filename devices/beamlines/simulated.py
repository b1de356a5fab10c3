"""The simulated beamline: every simulated instrument of ``livetomo.devices.sim``.

Devices: ``rotation``, ``scan``, ``dpc``, ``xrf`` (XRF-DPC microprobe) and ``txm`` (a full-field
transmission camera on the same rotation stage), ``raster_offset``, ``tilt``, ``k3``,
``image_shift`` (cryo-TEM),
``live`` (the daemon's live measurements, fed in-process),
``fib`` (cryo-FIB with EELS), ``sxt``, ``fm`` (correlative soft X-ray and fluorescence cameras).
``truth`` holds the simulated worlds, for benchmarks and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from bluesky.suspenders import SuspendCeil, SuspendFloor

from ...simulators.facility import BeamModel, CryoStageModel
from ...simulators.faults import FaultInjector
from ...simulators.stages import RotationStageModel
from ...simulators.xrf import XRFDetectorModel
from ..measurements import LiveMeasurements, MeasurementBoard
from ..monitors import PolledSignal
from ..presets import PRESETS, get_preset
from ..sim import make_correlative, make_fib, make_microprobe, make_tem
from ..sinks import FrameSink
from . import Beamline


@dataclass
class Settings:
    """``seed`` for every simulator; specimen volumes as (z, y, x) voxels; the K3's in-plane
    tilt-axis angle (degrees from the image's x axis towards its rows; 90: vertical).

    ``preset`` (``devices.presets``): size the instruments that preset uses for its scans
    (``xrf-dpc-230``: the microprobe, a 64.8 µm cell and a 4096-channel MCA; ``k3-bin4`` and
    ``k3-full``: the TEM's lamella and a 1440 × 1023 or 5760 × 4092 K3; ``sxt-1024``: the
    full-field camera at 1024²), instead of the small defaults; that preset can then be
    submitted by name. ``microprobe_shape``/``tem_shape`` do not apply to a sized instrument."""

    seed: int = 0
    preset: str | None = None
    microprobe_shape: tuple[int, int, int] = (32, 64, 64)
    tem_shape: tuple[int, int, int] = (48, 16, 48)
    tem_tilt_axis_deg: float = 90.0
    # what the simulated K3 states as its axis differs from the truth by this much, as a
    # microscope's tilt-axis calibration does (the daemon starts from the stated value)
    tem_tilt_axis_calibration_error_deg: float = 0.7
    beam_current_min_mA: float = 100.0  # plans suspend below it, resume above twice it
    stage_temperature_max_K: float = 110.0  # plans suspend above it, resume below it less 10 K
    suspend_resume_sleep_s: float = 1.0  # wait after the condition clears before resuming
    # K3 exposures (0-based, counted from the daemon's start) that come out blanked: stray
    # counts only, to rehearse what alignment flags and re-acquisition do (docs/tracking.md)
    tem_blanked_exposures: tuple[int, ...] = ()
    microprobe_blanked_rasters: tuple[int, ...] = ()  # the same for the microprobe's rasters

    def __post_init__(self):
        if self.preset is not None and self.preset not in PRESETS:
            known = ", ".join(PRESETS)
            raise ValueError(f"beamline.preset = {self.preset!r} is not a preset; presets: {known}")
        for name in ("microprobe_shape", "tem_shape"):
            shape = getattr(self, name)
            if len(shape) != 3 or min(shape) < 8 or max(shape) > 1024:
                raise ValueError(f"beamline.{name} = {list(shape)} must be three sizes in [8, 1024] voxels")
        if not 0.0 <= float(self.tem_tilt_axis_deg) < 180.0:
            raise ValueError(f"beamline.tem_tilt_axis_deg = {self.tem_tilt_axis_deg} must be in [0, 180) deg")
        for name in ("tem_blanked_exposures", "microprobe_blanked_rasters"):
            numbers = list(getattr(self, name))
            if any(int(n) < 0 for n in numbers):
                raise ValueError(f"beamline.{name} = {numbers}: exposure numbers must be >= 0")
        if not abs(float(self.tem_tilt_axis_calibration_error_deg)) <= 10.0:
            raise ValueError(
                f"beamline.tem_tilt_axis_calibration_error_deg = {self.tem_tilt_axis_calibration_error_deg} "
                "must be within ±10 deg"
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
    "tilt_series": {"camera": "k3", "tilt": "tilt", "measurements": "live", "image_shift": "image_shift"},
    "mill_lamella": {"fib": "fib"},
    "correlative_acquire": {"sxt": "sxt", "fm": "fm"},
}


def build(settings: Settings, *, sink: FrameSink) -> Beamline:
    """Every simulated instrument, its image detectors writing to ``sink``."""
    seed = settings.seed
    sized = get_preset(settings.preset).simulated if settings.preset else {}
    blanked = settings.microprobe_blanked_rasters
    probe = make_microprobe(
        seed=seed,
        sink=sink,
        faults=FaultInjector(schedule={"blanked_frame": blanked}) if blanked else None,
        **_microprobe_sizes(settings, sized),
    )
    tem = make_tem(
        seed=seed + 10,
        sink=sink,
        tilt_axis_deg=settings.tem_tilt_axis_deg,
        stated_axis_error_deg=settings.tem_tilt_axis_calibration_error_deg,
        faults=FaultInjector(schedule={"blanked_frame": settings.tem_blanked_exposures})
        if settings.tem_blanked_exposures
        else None,
        **_tem_sizes(settings, sized),
    )
    fib = make_fib(seed=seed + 20)
    correlative = make_correlative(seed=seed + 30, sink=sink)
    devices = {
        "rotation": probe.rotation,
        "scan": probe.scan,
        "dpc": probe.dpc,
        "xrf": probe.xrf,
        "txm": probe.txm,
        "raster_offset": probe.raster_offset,
        "tilt": tem.tilt,
        "k3": tem.k3,
        "image_shift": tem.image_shift,
        # the daemon feeds its board with what it publishes (in-process measurements)
        "live": LiveMeasurements(MeasurementBoard(), name="live"),  # plans set its pixel size
        "fib": fib,
        "sxt": correlative.sxt,
        "fm": correlative.fm,
    }
    beam, stage = BeamModel(), CryoStageModel()
    beam_current = PolledSignal(beam.current_mA, name="beam_current", units="mA")
    stage_temperature = PolledSignal(stage.temperature_K, name="stage_temperature", units="K")
    devices |= {"beam_current": beam_current, "stage_temperature": stage_temperature}
    beam_low = f"beam current below {settings.beam_current_min_mA:g} mA"
    stage_warm = f"cryo-stage above {settings.stage_temperature_max_K:g} K"
    suspenders = [
        (
            SuspendFloor(
                beam_current,
                settings.beam_current_min_mA,
                resume_thresh=2 * settings.beam_current_min_mA,
                sleep=settings.suspend_resume_sleep_s,
                tripped_message=beam_low,
            ),
            beam_low,
        ),
        (
            SuspendCeil(
                stage_temperature,
                settings.stage_temperature_max_K,
                resume_thresh=settings.stage_temperature_max_K - 10.0,
                sleep=settings.suspend_resume_sleep_s,
                tripped_message=stage_warm,
            ),
            stage_warm,
        ),
    ]
    truth = {
        "microprobe": probe.world,
        "tem": tem.world,
        "fib": fib.backend,
        "correlative": correlative.scene,
        "beam": beam,
        "cryo_stage": stage,
    }

    def dwell():
        return float(probe.scan.read()["scan_dwell"]["value"]), "s"

    return Beamline(
        presets=(settings.preset,) if settings.preset else (),
        devices=devices,
        plan_defaults=PLAN_DEFAULTS,
        truth=truth,
        angle_axis={"dpc": "rotation", "xrf": "rotation", "txm": "rotation", "k3": "tilt"},
        suspenders=suspenders,
        exposure={
            "dpc": dwell,
            "xrf": dwell,
            "txm": lambda: (float(probe.txm.exposure), "s"),
            "k3": lambda: (float(tem.k3.exposure), "e/A^2"),
        },
    )


def _microprobe_sizes(settings: Settings, sized: dict) -> dict:
    """``make_microprobe`` arguments: the defaults, or a preset's instrument."""
    if "microprobe_shape" not in sized:
        return {"shape": settings.microprobe_shape}
    out = {
        "shape": tuple(sized["microprobe_shape"]),
        "voxel_size_nm": sized["microprobe_voxel_nm"],
        "pixel_size_nm": sized.get("microprobe_pixel_nm", 300.0),
    }
    if "xrf_channels" in sized:
        out["detector"] = XRFDetectorModel(
            n_channels=sized["xrf_channels"],
            ev_per_channel=sized["xrf_ev_per_channel"],
            spectra_dtype=sized["xrf_spectra_dtype"],
        )
    if "camera_frame" in sized:
        out["camera_shape"] = tuple(sized["camera_frame"])
    if "runout_scale" in sized:
        k = sized["runout_scale"]
        defaults = RotationStageModel()
        out["rotation_model"] = RotationStageModel(
            seed=settings.seed + 2,
            wobble_amplitude_um=tuple(k * a for a in defaults.wobble_amplitude_um),
            second_harmonic_um=k * defaults.second_harmonic_um,
            jitter_um=k * defaults.jitter_um,
            axis_offset_um=k * defaults.axis_offset_um,
        )
    return out


def _tem_sizes(settings: Settings, sized: dict) -> dict:
    """``make_tem`` arguments: the defaults, or a preset's lamella and K3."""
    if "tem_shape" not in sized:
        return {"shape": settings.tem_shape}
    nz, _, nx = sized["tem_shape"]
    return {
        "shape": tuple(sized["tem_shape"]),
        "voxel_size_nm": sized["tem_voxel_nm"],
        "pixel_size_nm": sized["k3_pixel_nm"],
        "image_shape": tuple(sized["k3_frame"]),
        "render_binning": sized["k3_render_binning"],
        "dtype": sized["k3_dtype"],
        "n_particles": nz * nx // 80,  # as crowded as the default lamella
    }
