"""Realistic scan presets: what a real instrument's scan looks like, by name.

A preset is a named submission (a plan with its parameters and metadata, as a queueserver
user submits it: ``livetomo submit k3-bin4``) plus what the instrument takes per frame (its
frame interval, the time the daemon has to keep pace with) and, for the simulated beamline,
the sizes its simulators need to produce such frames (``beamline.preset`` in the daemon's
configuration). Plain data: no simulator or plan is imported here.

- ``xrf-dpc-230``: ``xrf_dpc_tomo``, 61 angles over 0–180°, each a 230 × 230 raster of DPC
  and 4096-channel spectra at 3 ms dwell; frame interval dwell × pixels = 158.7 s.
- ``k3-bin4``: ``tilt_series``, ±60°/3° dose-symmetric (41 tilts) of 1440 × 1023 K3 frames
  binned by 4; 3 s per tilt (PACEtomo-style).
- ``k3-full``: the same series of 5760 × 4092 counted frames, stored in full, processed and
  previewed binned; 3 s per tilt.
- ``sxt-1024``: ``tomo_scan`` of the full-field camera ``txm``, 181 angles over 0–180°, 1024²
  projections; 1 s per projection.

The simulated ``sxt-1024`` uses the full-field Zernike transmission camera of the simulated
microprobe (the only rotation full-field camera simulated): its frames have the size and rate
of a cryo-SXT projection, not the physics of the water window.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScanPreset:
    """One preset.

    ``parameters`` and ``md``: the plan's submission (JSON values; device parameters are left
    to the beamline's defaults). ``frame_interval_s``: how long the real instrument takes per
    frame (``interval_basis`` says how that was reckoned). ``frame_shape``: (rows, cols) of the
    instrument's frames. ``bench``: the parameters ``livetomo bench scale`` overrides to run a
    documented fraction of the scan. ``simulated``: sizes of the simulated beamline's
    instruments for this preset (read by ``devices.beamlines.simulated``).
    """

    name: str
    description: str
    plan: str
    parameters: dict
    frame_interval_s: float
    interval_basis: str
    frame_shape: tuple[int, int]
    md: dict = field(default_factory=dict)
    bench: dict = field(default_factory=dict)
    bench_fraction: str = ""
    simulated: dict = field(default_factory=dict)


K3_BIN4_PIXEL_NM = 0.68  # K3 at 1.7 Å per counted pixel (a typical tomography magnification), binned by 4
K3_TILT_PERIOD_S = 3.0  # PACEtomo-style fast collection: one tilt every few seconds

# both K3 presets: ±60° in 3° steps, dose-symmetric, 3 e/Å² per tilt (41 tilts)
K3_SERIES = {
    "min_deg": -60.0,
    "max_deg": 60.0,
    "step_deg": 3.0,
    "order": "dose-symmetric",
    "dose_per_tilt": 3.0,
}

PRESETS: dict[str, ScanPreset] = {
    p.name: p
    for p in (
        ScanPreset(
            name="xrf-dpc-230",
            description="XRF-DPC nanotomography: 230 x 230 rasters of 4096-channel spectra, 3 ms dwell, "
            "61 angles over 0-180 deg",
            plan="xrf_dpc_tomo",
            parameters={
                "start": 0.0,
                "stop": 180.0,
                "num": 61,
                "raster_shape": [230, 230],
                "pixel_size_um": 0.3,
                "dwell_s": 0.003,
            },
            frame_interval_s=0.003 * 230 * 230,
            interval_basis="3 ms dwell x 230 x 230 pixels",
            frame_shape=(230, 230),
            bench={"num": 10, "stop": 162.0},
            bench_fraction="10 of 61 angles (0-162 deg in 18 deg steps)",
            simulated={
                # a 64.8 µm cell at 600 nm voxels, rastered at 300 nm: 230 px hold it with a margin
                "microprobe_shape": [108, 108, 108],
                "microprobe_voxel_nm": 600.0,
                "xrf_channels": 4096,
                "xrf_ev_per_channel": 5.0,
                "xrf_spectra_dtype": "uint16",
            },
        ),
        ScanPreset(
            name="k3-bin4",
            description="cryo-ET tilt series: K3 frames binned by 4 (1440 x 1023), +-60 deg in 3 deg "
            "steps dose-symmetric (41 tilts), 3 e/A^2 per tilt",
            plan="tilt_series",
            parameters=K3_SERIES,
            # the tomogram of the issue: 1440 x 1023 x 300 voxels
            md={"volume_thickness_nm": 300 * K3_BIN4_PIXEL_NM},
            frame_interval_s=K3_TILT_PERIOD_S,
            interval_basis="3 s per tilt (PACEtomo-style)",
            frame_shape=(1023, 1440),
            bench={"min_deg": -30.0, "max_deg": 30.0},
            bench_fraction="21 of 41 tilts (+-30 deg)",
            simulated={
                "tem_shape": [256, 75, 360],  # the lamella at 4 pixels per voxel (2.72 nm)
                "tem_voxel_nm": 4 * K3_BIN4_PIXEL_NM,
                "k3_pixel_nm": K3_BIN4_PIXEL_NM,
                "k3_frame": [1023, 1440],
                "k3_render_binning": 1,
                "k3_dtype": "uint16",
            },
        ),
        ScanPreset(
            name="k3-full",
            description="cryo-ET tilt series of full counted K3 frames (5760 x 4092, uint16 counts) "
            "stored in full, processed and previewed binned; +-60 deg / 3 deg",
            plan="tilt_series",
            parameters=K3_SERIES,
            md={"volume_thickness_nm": 300 * K3_BIN4_PIXEL_NM},
            frame_interval_s=K3_TILT_PERIOD_S,
            interval_basis="3 s per tilt (PACEtomo-style)",
            frame_shape=(4092, 5760),
            bench={"min_deg": -3.0, "max_deg": 3.0},
            bench_fraction="3 of 41 tilts (-3, 0, 3 deg)",
            simulated={
                "tem_shape": [256, 75, 360],
                "tem_voxel_nm": 4 * K3_BIN4_PIXEL_NM,
                "k3_pixel_nm": K3_BIN4_PIXEL_NM / 4,
                "k3_frame": [4092, 5760],
                "k3_render_binning": 4,  # optics at the bin-4 pixel, counting at full resolution
                "k3_dtype": "uint16",
            },
        ),
        ScanPreset(
            name="sxt-1024",
            description="full-field rotation tomography: 1024 x 1024 projections, 181 angles over "
            "0-180 deg, 1 s per projection",
            plan="tomo_scan",
            parameters={"start": 0.0, "stop": 180.0, "num": 181},
            frame_interval_s=1.0,
            interval_basis="1 s per projection",
            frame_shape=(1024, 1024),
            bench={"num": 30, "stop": 174.0},
            bench_fraction="30 of 181 angles (0-174 deg in 6 deg steps)",
            simulated={
                # a 30.7 µm cell at 240 nm voxels seen at 30 nm pixels
                "microprobe_shape": [128, 128, 128],
                "microprobe_voxel_nm": 240.0,
                "microprobe_pixel_nm": 30.0,
                "camera_frame": [1024, 1024],
                "runout_scale": 0.25,  # a full-field rotation stage's runout, not a microprobe's
            },
        ),
    )
}


class PresetError(ValueError):
    """An unknown preset; the message lists the known ones."""


def get_preset(name: str) -> ScanPreset:
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
