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
    voltage_kv: float | None = None,
    tilt_axis_deg: float | None = None,
    prior_dose_e_per_A2=None,
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
    voltage_kv : the microscope's voltage (global ``Voltage`` and each section's ``Voltage``).
    tilt_axis_deg : the tilt axis in the image, degrees counter-clockwise from the Y axis (SerialEM's
        and IMOD's convention): the title line ``Tilt axis angle = ...`` that etomo reads, and
        each section's ``RotationAngle``.
    prior_dose_e_per_A2 : (n_tilts,) dose received before each image, e/Å², when it is more than
        the images' own doses add up to (frames taken but not in the stack, e.g. one replaced by a
        re-acquisition); default the cumulative dose of the images before it.

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
    dtype = stack.dtype if stack.dtype in _MRC_DTYPES else np.dtype(np.float32)
    path = Path(path)
    # section by section into a memory-mapped file, not a reordered copy of the stack (41 full
    # K3 frames are 1.9 GB)
    with mrcfile.new_mmap(path, shape=stack.shape, mrc_mode=_MRC_DTYPES[dtype], overwrite=True) as mrc:
        for z, i in enumerate(order):
            mrc.data[z] = stack[i]
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size_A
        mrc.add_label(title[:80])
    prior = None if dose is None else np.concatenate([[0.0], np.cumsum(dose)[:-1]])
    if prior is not None and prior_dose_e_per_A2 is not None:
        prior = np.asarray(prior_dose_e_per_A2, dtype=np.float64).reshape(angles.shape)
    lines = [
        f"PixelSpacing = {pixel_size_A:g}",
        *([f"Voltage = {voltage_kv:g}"] if voltage_kv is not None else []),
        f"ImageFile = {path.name}",
        f"ImageSize = {stack.shape[2]} {stack.shape[1]}",
        f"DataMode = {_MRC_DTYPES[dtype]}",
        "",
        f"[T = {title}]",
    ]
    if tilt_axis_deg is not None:
        lines.append(f"[T =     Tilt axis angle = {tilt_axis_deg:.1f}, binning = 1]")
    lines.append("")
    for z, i in enumerate(order):
        lines += [f"[ZValue = {z}]", f"TiltAngle = {angles[i]:.4f}", f"PixelSpacing = {pixel_size_A:g}"]
        if voltage_kv is not None:
            lines.append(f"Voltage = {voltage_kv:g}")
        if tilt_axis_deg is not None:
            lines.append(f"RotationAngle = {tilt_axis_deg:g}")
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


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_tilt_series(h5_path, stream, pixel_size_A) -> dict:
    """Projections (image_key 0) of a run file's stream with what IMOD's files need."""
    with h5py.File(h5_path, "r", swmr=True) as f:
        group = f[stream_group(stream) if stream else "/entry/instrument/detector"]
        keys = group["image_key"][()]
        keep = np.flatnonzero(keys == 0)
        data = group["data"]
        out = {
            "index": keep,
            # every frame kept: read as it is, not read and then indexed (a second copy)
            "stack": data[()]
            if keep.size == data.shape[0]
            else data[keep.tolist()]
            if keep.size
            else data[0:0],
            "angles": group["rotation_angle"][()][keep],
            "times": group["timestamp"][()][keep],
        }
        exposure = group["exposure"]
        units = _text(exposure.attrs.get("units", ""))
        out["dose"] = out["prior_dose"] = None
        if units in ("e/A^2", "e/Å²", "e/A2"):
            every = np.nan_to_num(exposure[()].astype(np.float64), nan=0.0)
            # frames marked invalid (replaced, repeated) were exposed too: they count as prior dose
            out["dose"] = every[keep]
            out["prior_dose"] = (np.cumsum(every) - every)[keep]
        if pixel_size_A is None:
            if "x_pixel_size" not in group:
                raise ValueError(f"{h5_path} has no x_pixel_size for this stream; pass pixel_size_A")
            size = group["x_pixel_size"]
            pixel_size_A = float(size[()]) * _LENGTH_TO_A[_text(size.attrs.get("units", "nm"))]
        out["pixel_size_A"] = pixel_size_A
        device = _text(group.attrs.get("device", ""))
        config = f.get("entry/instrument/configuration")
        for key, name in (("voltage_kv", "voltage"), ("tilt_axis_deg", "tilt_axis_angle")):
            ds = None if config is None else config.get(f"{device}_{name}")
            out[key] = None if ds is None else float(ds[()])
        in_use = f.get("entry/processing/alignment/tilt_axis")
        if in_use is not None:  # the axis the daemon aligned and reconstructed with (90 = vertical)
            out["tilt_axis_deg"] = float(np.ravel(in_use[()])[0]) - 90.0
        alignment = f.get("entry/processing/alignment")
        shifts = np.zeros((len(keep), 2))
        if alignment is not None and "seq" in alignment:
            by_seq = dict(zip(alignment["seq"][()].tolist(), alignment["shift"][()], strict=True))
            shifts = np.array([by_seq.get(int(i), (0.0, 0.0)) for i in keep], dtype=np.float64)
        out["shifts"] = shifts
        out["volume"] = None
        recon = f.get("entry/processing/reconstruction")
        if isinstance(recon, h5py.Group):
            names = [n for n in recon if isinstance(recon[n], h5py.Group) and "data" in recon[n]]
            plain = [n for n in names if n == device or n == stream or "_" not in n]
            if names:
                out["volume"] = recon[(plain or names)[0]]["data"][()]
                out["volume_name"] = (plain or names)[0]
                # a live volume binned to keep pace (frame pixels per voxel)
                out["volume_binning"] = int(recon[(plain or names)[0]].attrs.get("binning", 1))
    if not np.isfinite(out["angles"]).all():
        bad = int((~np.isfinite(out["angles"])).sum())
        raise ValueError(f"{h5_path}: {bad} projections have no tilt angle")
    return out


def export_tilt_series(
    h5_path: str | Path, mrc_path: str | Path, *, stream: str | None = None, pixel_size_A: float | None = None
) -> tuple[Path, Path]:
    """Export a stream of a run file (default: the NXtomo detector) as MRC + .mdoc.

    Only projections (image_key 0) are exported. Dose per image comes from the stream's
    ``exposure`` when its units are e/Å²; the pixel size from ``x_pixel_size`` unless given;
    voltage and tilt axis from the device's configuration when the run stored them.
    """
    ts = _read_tilt_series(h5_path, stream, pixel_size_A)
    return write_mrc_tilt_series(
        mrc_path,
        ts["stack"],
        ts["angles"],
        pixel_size_A=ts["pixel_size_A"],
        dose_e_per_A2=ts["dose"],
        timestamps=ts["times"],
        voltage_kv=ts["voltage_kv"],
        tilt_axis_deg=ts["tilt_axis_deg"],
        prior_dose_e_per_A2=ts["prior_dose"],
    )


def xf_transforms(shifts, tilt_axis_deg: float) -> np.ndarray:
    """IMOD .xf lines ``(A11, A12, A21, A22, DX, DY)`` for raw sections.

    shifts : (n, 2) the shift (dy, dx) in pixels that aligns each raw section.
    tilt_axis_deg : the tilt axis on the raw sections, degrees counter-clockwise from Y (IMOD's
        and SerialEM's convention, the mdoc's ``RotationAngle``).

    IMOD maps a raw point x (from the section's centre; x along columns, y along rows) to
    ``A x + D`` in the aligned section. Here the section is moved by its shift, then turned by
    −``tilt_axis_deg`` so the axis becomes vertical: ``A = R(−φ)``, ``D = A (dx, dy)``.
    """
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    phi = np.deg2rad(-float(tilt_axis_deg))
    c, s = np.cos(phi), np.sin(phi)
    if abs(s) < 1e-12:  # no rotation: keep the identity exact
        c, s = 1.0, 0.0
    a = np.array([[c, -s], [s, c]])
    d = shifts[:, ::-1] @ a.T  # (dx, dy) turned
    n = len(shifts)
    return np.column_stack(
        [np.full(n, a[0, 0]), np.full(n, a[0, 1]), np.full(n, a[1, 0]), np.full(n, a[1, 1]), d]
    )


def apply_xf(image: np.ndarray, transform) -> np.ndarray:
    """``image`` (rows, cols) transformed by one IMOD .xf line, about its centre, bilinear with
    edge values (what ``newstack -linear`` gives)."""
    from scipy import ndimage

    a11, a12, a21, a22, dx, dy = (float(v) for v in transform)
    image = np.asarray(image, np.float32)
    if (a11, a12, a21, a22) == (1.0, 0.0, 0.0, 1.0):
        return shift_image(image, dy, dx)
    # output point p' (row, col) reads the input at A⁻¹ (p' − c − D) + c, in (row, col) order
    inverse = np.linalg.inv(np.array([[a22, a21], [a12, a11]]))
    centre = (np.asarray(image.shape, dtype=np.float64) - 1.0) / 2.0
    offset = centre - inverse @ (centre + np.array([dy, dx]))
    return ndimage.affine_transform(image, inverse, offset=offset, order=1, mode="nearest")


def shift_image(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``image`` moved by (dy, dx) pixels, bilinear (as IMOD's ``newstack -linear`` applies an .xf)."""
    from scipy import ndimage

    return ndimage.shift(np.asarray(image, np.float32), (dy, dx), order=1, mode="nearest")


def _bin(volume: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return volume
    shape = [n // factor for n in volume.shape]
    cut = volume[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    return cut.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))


def export_imod(
    h5_path: str | Path,
    stem: str | Path,
    *,
    stream: str | None = None,
    pixel_size_A: float | None = None,
    binning: int = 1,
) -> list[Path]:
    """The IMOD set of a tilt series' run file, named from ``stem`` (e.g. ``dir/tilt-<uid>``).

    - ``stem.mrc`` + ``stem.mrc.mdoc``: the raw projections sorted by tilt (``export_tilt_series``);
    - ``stem.rawtlt`` and ``stem.tlt``: the tilt of each section, one per line (livetomo does
      not refine tilt angles, so both are the plan's angles);
    - ``stem.xf``: per section ``A11 A12 A21 A22 DX DY`` (IMOD's transforms, about the
      section's centre): the raw section moved by the shift livetomo measured
      (``/entry/processing/alignment/shift``, pixels of the raw stack), then turned by minus
      the tilt-axis angle so that the axis is vertical, as IMOD's aligned stacks have it
      (A = identity when the axis already is; :func:`xf_transforms`);
    - ``stem_ali.mrc``: the aligned stack, each raw section transformed by its .xf line
      (bilinear, as ``newstack -linear -xform stem.xf``; :func:`apply_xf`);
    - ``stem_rec.mrc``: the tomogram (the run's FBP volume), oriented as IMOD's rotated
      tomograms: sections along the beam (Z), Y along the tilt axis, X across it; binned by
      ``binning`` (voxel size = pixel size × binning).
    """
    import mrcfile

    if int(binning) < 1:
        raise ValueError(f"binning = {binning} must be a positive integer")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    ts = _read_tilt_series(h5_path, stream, pixel_size_A)
    px = ts["pixel_size_A"]
    raw, mdoc = write_mrc_tilt_series(
        stem.with_name(stem.name + ".mrc"),
        ts["stack"],
        ts["angles"],
        pixel_size_A=px,
        dose_e_per_A2=ts["dose"],
        timestamps=ts["times"],
        voltage_kv=ts["voltage_kv"],
        tilt_axis_deg=ts["tilt_axis_deg"],
        prior_dose_e_per_A2=ts["prior_dose"],
    )
    order = np.argsort(ts["angles"], kind="stable")  # the sections' order in the stacks
    angles, shifts = ts["angles"][order], ts["shifts"][order]
    paths = [raw, mdoc]
    for suffix in (".rawtlt", ".tlt"):
        path = stem.with_name(stem.name + suffix)
        path.write_text("".join(f"{a:.2f}\n" for a in angles))
        paths.append(path)
    transforms = xf_transforms(shifts, ts["tilt_axis_deg"] or 0.0)
    xf = stem.with_name(stem.name + ".xf")
    xf.write_text(
        "".join("".join(f"{v:12.7f}" for v in t[:4]) + f"{t[4]:12.3f}{t[5]:12.3f}\n" for t in transforms)
    )
    paths.append(xf)
    ali = stem.with_name(stem.name + "_ali.mrc")
    n, rows, cols = ts["stack"].shape
    # section by section into a memory-mapped file: 41 full K3 frames aligned at once were
    # 15 GB of float64
    with mrcfile.new_mmap(ali, shape=(n, rows, cols), mrc_mode=2, overwrite=True) as mrc:
        for k, (i, t) in enumerate(zip(order, transforms, strict=True)):
            mrc.data[k] = apply_xf(ts["stack"][i], t).astype(np.float32)
        mrc.set_image_stack()
        mrc.voxel_size = px
        mrc.add_label("livetomo aligned tilt series (raw stack moved by the .xf shifts)")
    paths.append(ali)
    if ts["volume"] is not None:
        # (rows along the tilt axis, beam, across) -> IMOD's (Z = beam, Y = tilt axis, X)
        volume = _bin(np.transpose(np.asarray(ts["volume"], np.float32), (1, 0, 2)), int(binning))
        rec = stem.with_name(stem.name + "_rec.mrc")
        with mrcfile.new(rec, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
            mrc.set_volume()
            mrc.voxel_size = px * int(binning) * ts.get("volume_binning", 1)
            mrc.add_label(f"livetomo tomogram ({ts['volume_name']}, FBP), binned {int(binning)}")
        paths.append(rec)
    return paths
