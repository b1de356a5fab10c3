"""Correlative registration as a step after ``correlative_acquire``.

``correlate_run`` takes a finished run's documents (a :class:`RunCollector`), fetches the SXT
and FM frames they reference (HDF5 frame files through ``read_stream``, or a ``MemorySink``),
runs the fiducial route and writes the result files (``storage.write_fiducial_result``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...processing.correlate import FiducialRegistration, IntensityRegistration, register_fiducial
from ..storage import read_stream, write_fiducial_result
from ._collector import RunCollector

HDF5_MIMETYPE = "application/x-hdf5"
MEMORY_MIMETYPE = "application/x-livetomo-memory"


@dataclass(frozen=True)
class CorrelationOutput:
    """What a correlation step produced."""

    registration: FiducialRegistration | IntensityRegistration
    fused_png: Path
    overview_png: Path
    hdf5: Path


# --------------------------------------------------------------------------- reading a run


def run_frames(collector: RunCollector, data_key: str, *, sink=None) -> np.ndarray:
    """All frames of ``data_key`` in a run, (n_frames, *shape), from HDF5 files or a MemorySink."""
    try:
        resource = collector.resource_for(data_key)
    except KeyError:
        keys = sorted(doc["data_key"] for doc in collector.stream_resources.values())
        raise ValueError(
            f"the run has no frames for {data_key!r}; it has: {', '.join(keys) or 'none'}"
        ) from None
    mimetype = resource["mimetype"]
    if mimetype == HDF5_MIMETYPE:
        return read_stream(resource, collector.stream_datums[resource["uid"]])
    if mimetype == MEMORY_MIMETYPE:
        if sink is None:
            raise ValueError(
                f"{data_key!r} frames are in memory ({resource['uri']}); pass the MemorySink as sink="
            )
        return sink.stack(resource["parameters"]["device"], resource["parameters"]["data_key"])
    raise ValueError(
        f"cannot read {data_key!r} frames stored as {mimetype!r}; known: {HDF5_MIMETYPE}, {MEMORY_MIMETYPE}"
    )


def pixel_size_nm(collector: RunCollector, data_key: str) -> float:
    """The pixel size (nm) the detector owning ``data_key`` recorded in its configuration."""
    for desc in collector.descriptors.values():
        for device, keys in desc.get("object_keys", {}).items():
            if data_key in keys:
                config = desc.get("configuration", {}).get(device, {}).get("data", {})
                if f"{device}_pixel_size" in config:
                    return float(config[f"{device}_pixel_size"])
    raise ValueError(f"the run does not record a pixel size for the detector of {data_key!r}")


def correlate_run(
    collector: RunCollector,
    out_dir,
    *,
    sink=None,
    fixed_key: str = "sxt_image",
    moving_key: str = "fm_image",
    fixed_polarity: str = "absorbing",
    moving_polarity: str = "bright",
    model: str = "affine",
    hue_deg: float = 0.0,
    stem: str | None = None,
    **options,
) -> CorrelationOutput:
    """Fiducial registration of the FM image onto the SXT image of a finished run.

    Parameters
    ----------
    collector : the run's documents (a RunCollector subscribed to the RunEngine).
    out_dir : directory for the PNG and HDF5 files.
    sink : the MemorySink the detectors wrote to, when frames were kept in memory.
    fixed_key, moving_key : data keys of the structural and fluorescence frames (the first frame
        of each is used).
    fixed_polarity, moving_polarity, model : as in :func:`register_fiducial`.
    hue_deg : colour of the fluorescence in the fusion (0: red, FluoSpheres F-8810).
    stem : file name stem (default ``correlation_<run uid prefix>``).
    options : passed on to :func:`register_fiducial` (regions, method, tolerance_nm, ...).

    Returns
    -------
    output : :class:`CorrelationOutput`. Raises ValueError naming what is missing (frames,
        pixel sizes) or what went wrong (too few beads, no consistent pairing).
    """
    if collector.stop is None or collector.stop.get("exit_status") != "success":
        status = None if collector.stop is None else collector.stop.get("exit_status")
        raise ValueError(
            f"the run did not finish successfully (exit status {status!r}); nothing to correlate"
        )
    fixed = run_frames(collector, fixed_key, sink=sink)[0]
    moving = run_frames(collector, moving_key, sink=sink)[0]
    reg = register_fiducial(
        fixed,
        moving,
        fixed_pixel_nm=pixel_size_nm(collector, fixed_key),
        moving_pixel_nm=pixel_size_nm(collector, moving_key),
        fixed_polarity=fixed_polarity,
        moving_polarity=moving_polarity,
        model=model,
        **options,
    )
    uid = collector.start["uid"] if collector.start else "run"
    fused_png, overview_png, h5 = write_fiducial_result(
        out_dir,
        reg,
        fixed,
        moving,
        hue_deg=hue_deg,
        stem=stem or f"correlation_{uid[:8]}",
        attrs={"run_uid": uid, "fixed_key": fixed_key, "moving_key": moving_key},
    )
    return CorrelationOutput(reg, fused_png, overview_png, h5)
