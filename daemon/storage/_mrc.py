"""Tilt series as MRC + SerialEM ``.mdoc`` (what IMOD and SerialEM users open)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np

from ._nxtomo import stream_group

_MRC_DTYPES = {np.dtype(np.float32): 2, np.dtype(np.int16): 1, np.dtype(np.uint16): 6, np.dtype(np.int8): 0}


def write_mrc_tilt_series(
    path: str | Path,
    stack,
    tilt_angles_deg,
    *,
    pixel_size_A: float,
    dose_e_per_A2=None,
    timestamps=None,
    sort_by_angle: bool = True,
    title: str = "livetomo tilt series",
) -> tuple[Path, Path]:
    """Write a tilt series as an MRC image stack plus a SerialEM-style ``.mdoc`` beside it.

    Parameters
    ----------
    path : the .mrc file; the metadata goes to ``<path>.mdoc`` (SerialEM's naming).
    stack : (n_tilts, rows, cols) images in acquisition order; float32, int16, uint16 and
        int8 are stored as they are, anything else as float32.
    tilt_angles_deg : (n_tilts,) tilt of each image, degrees.
    pixel_size_A : pixel spacing in Å (MRC voxel size and mdoc PixelSpacing).
    dose_e_per_A2 : dose of each image (scalar or (n_tilts,)), e/Å²; gives ExposureDose and
        PriorRecordDose (dose received before the image, in acquisition order).
    timestamps : (n_tilts,) UNIX times for DateTime, optional.
    sort_by_angle : store sections in ascending tilt (what IMOD expects); the mdoc's
        sections follow the stored order and keep the acquisition index in ``AcquisitionIndex``.

    Returns (mrc_path, mdoc_path).
    """
    import mrcfile

    stack = np.asarray(stack)
    angles = np.asarray(tilt_angles_deg, dtype=np.float64)
    if stack.ndim != 3 or len(angles) != len(stack):
        raise ValueError(
            f"stack of shape {stack.shape} and {len(angles)} angles; "
            "expected (n_tilts, rows, cols) and n_tilts angles"
        )
    if not (np.isfinite(angles).all() and np.isfinite(pixel_size_A) and pixel_size_A > 0):
        raise ValueError("tilt angles must be finite and pixel_size_A a positive number of Å")
    dose = None
    if dose_e_per_A2 is not None:
        dose = np.broadcast_to(np.asarray(dose_e_per_A2, dtype=np.float64), angles.shape)
    order = np.argsort(angles, kind="stable") if sort_by_angle else np.arange(len(angles))
    data = stack[order]
    if data.dtype not in _MRC_DTYPES:
        data = data.astype(np.float32)
    path = Path(path)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(data))
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size_A
        mrc.add_label(title[:80])
    prior = None if dose is None else np.concatenate([[0.0], np.cumsum(dose)[:-1]])
    lines = [
        f"PixelSpacing = {pixel_size_A:g}",
        f"ImageFile = {path.name}",
        f"ImageSize = {data.shape[2]} {data.shape[1]}",
        f"DataMode = {_MRC_DTYPES[data.dtype]}",
        "",
        f"[T = {title}]",
        "",
    ]
    for z, i in enumerate(order):
        lines += [f"[ZValue = {z}]", f"TiltAngle = {angles[i]:.4f}", f"PixelSpacing = {pixel_size_A:g}"]
        if dose is not None:
            lines += [f"ExposureDose = {dose[i]:g}", f"PriorRecordDose = {prior[i]:g}"]
        if timestamps is not None and np.isfinite(timestamps[i]):
            when = datetime.fromtimestamp(float(timestamps[i]), UTC).strftime("%d-%b-%y  %H:%M:%S")
            lines.append(f"DateTime = {when}")
        lines += [f"AcquisitionIndex = {int(i)}", ""]
    mdoc = path.with_name(path.name + ".mdoc")
    mdoc.write_text("\n".join(lines))
    return path, mdoc


_LENGTH_TO_A = {"A": 1.0, "angstrom": 1.0, "nm": 10.0, "um": 1e4, "m": 1e10}


def export_tilt_series(
    h5_path: str | Path, mrc_path: str | Path, *, stream: str | None = None, pixel_size_A: float | None = None
) -> tuple[Path, Path]:
    """Export a stream of a run file (default: the NXtomo detector) as MRC + .mdoc.

    Only projections (image_key 0) are exported. Dose per image comes from the stream's
    ``exposure`` when its units are e/Å²; the pixel size from ``x_pixel_size`` unless given.
    """
    with h5py.File(h5_path, "r", swmr=True) as f:
        group = f[stream_group(stream) if stream else "/entry/instrument/detector"]
        keep = group["image_key"][()] == 0
        stack = group["data"][()][keep]
        angles = group["rotation_angle"][()][keep]
        exposure = group["exposure"]
        dose = exposure[()][keep] if exposure.attrs.get("units") in ("e/A^2", "e/Å²", "e/A2") else None
        times = group["timestamp"][()][keep]
        if pixel_size_A is None:
            if "x_pixel_size" not in group:
                raise ValueError(f"{h5_path} has no x_pixel_size for this stream; pass pixel_size_A")
            size = group["x_pixel_size"]
            pixel_size_A = float(size[()]) * _LENGTH_TO_A[size.attrs.get("units", "nm")]
    if not np.isfinite(angles).all():
        raise ValueError(f"{h5_path}: {int((~np.isfinite(angles)).sum())} projections have no tilt angle")
    return write_mrc_tilt_series(
        mrc_path, stack, angles, pixel_size_A=pixel_size_A, dose_e_per_A2=dose, timestamps=times
    )
