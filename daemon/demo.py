"""``livetomo demo``: a short XRF-DPC nanotomography scan on simulated hardware, end to end.

The RunEngine drives the simulated microprobe (rotation stage with runout, raster stage,
segmented DPC detector, Vortex XRF); detectors write their frames to HDF5 files and the
documents reference them. After the run the frames are read back through the documents,
DPC and phase are computed, and an NXtomo file and pictures are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bluesky import RunEngine

from ..devices.sim import make_microprobe
from ..plans import xrf_dpc_tomo
from ..processing.dpc import dpc_from_segments, integrate_gradients
from .runs import ProgressPrinter, RunCollector
from .storage import HDF5FrameSink, read_stream, write_nxtomo


@dataclass
class DemoResult:
    nxtomo: Path
    pictures: list[Path]
    frame_files: list[Path]
    n_angles: int
    uid: str


def make_run_engine() -> RunEngine:
    """A RunEngine that runs in any thread and leaves signal handling to the caller."""
    return RunEngine({}, call_returns_result=True, context_managers=[])


def run_demo(
    out_dir: str | Path = "livetomo_demo",
    *,
    n_angles: int = 61,
    size: int = 48,
    dwell_ms: float = 3.0,
    seed: int = 0,
    quiet: bool = False,
) -> DemoResult:
    """Scan ``n_angles`` angles over 0–180° of a ``size``-pixel-wide cell at ``dwell_ms`` per pixel."""
    out = Path(out_dir)
    sink = HDF5FrameSink(out / "frames")
    beamline = make_microprobe(shape=(size // 2, size, size), seed=seed, sink=sink)
    collector = RunCollector()
    RE = make_run_engine()
    RE.subscribe(collector)
    if not quiet:
        RE.subscribe(ProgressPrinter(fields=("rotation", "xrf_Zn", "dpc_mean_sum")))
    angles = np.linspace(0.0, 180.0, n_angles)
    pixel_um = beamline.world.probe.pixel_size_nm / 1000.0
    RE(
        xrf_dpc_tomo(
            beamline.dpc,
            beamline.xrf,
            beamline.rotation,
            beamline.scan,
            angles,
            raster_shape=(size // 2, size),
            pixel_size_um=pixel_um,
            total_dwell_s=dwell_ms * 1e-3 * n_angles,
        )
    )
    sink.close()
    return _write_results(out, collector, beamline, pixel_um, quiet)


def _frames(collector: RunCollector, data_key: str) -> np.ndarray:
    resource = collector.resource_for(data_key)
    return read_stream(resource, collector.stream_datums[resource["uid"]])


def _write_results(out: Path, collector: RunCollector, beamline, pixel_um: float, quiet: bool) -> DemoResult:
    segments = _frames(collector, "dpc_segments")
    roi = _frames(collector, "xrf_roi")
    horizontal, vertical, total = dpc_from_segments(segments)
    phase = np.stack([integrate_gradients(v, h) for h, v in zip(horizontal, vertical, strict=True)])
    angles = np.asarray(collector.column("rotation"))
    true_shift_px = (
        np.stack(
            [collector.column("rotation_true_offset_v"), collector.column("rotation_true_offset_h")], axis=1
        )
        / pixel_um
    )
    processed = {
        "dpc_horizontal": horizontal,
        "dpc_vertical": vertical,
        "phase": phase,
        "simulation/true_shift_px": true_shift_px,
    }
    for i, element in enumerate(beamline.xrf.elements):
        processed[f"xrf/{element}"] = roi[:, i]
    path = write_nxtomo(
        out / "xrf_dpc_tomo.h5",
        data=total,
        rotation_angle=angles,
        processed=processed,
        attrs={"run_uid": collector.start["uid"], "plan_name": collector.start["plan_name"]},
    )
    pictures = [
        _picture(
            out / "xrf_dpc_tomo.png", angles, horizontal, phase, roi, beamline.xrf.elements, true_shift_px
        )
    ]
    frame_files = sorted((out / "frames").glob("*.h5"))
    if not quiet:
        print(f"wrote {path}")
        for p in [*pictures, *frame_files]:
            print(f"wrote {p}")
    return DemoResult(path, pictures, frame_files, len(angles), collector.start["uid"])


def _picture(path: Path, angles, horizontal, phase, roi, elements, true_shift_px) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zn = roi[:, list(elements).index("Zn")]
    row = phase.shape[1] // 2
    fig, axes = plt.subplots(2, 3, figsize=(12, 7), constrained_layout=True)
    panels = [
        (horizontal[0], "DPC horizontal, first angle"),
        (phase[0], "phase (Fourier-integrated DPC)"),
        (zn[0], "Zn Kα counts, first angle"),
        (phase[:, row], f"phase sinogram, row {row}"),
        (zn[:, row], f"Zn sinogram, row {row}"),
    ]
    for ax, (image, title) in zip(axes.flat, panels, strict=False):
        ax.imshow(image, cmap="gray", aspect="auto")
        ax.set_title(title)
    ax = axes.flat[5]
    ax.plot(angles, true_shift_px[:, 1], label="horizontal")
    ax.plot(angles, true_shift_px[:, 0], label="vertical")
    ax.set(xlabel="angle (deg)", ylabel="true runout (px)", title="stage runout (simulator truth)")
    ax.legend()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
