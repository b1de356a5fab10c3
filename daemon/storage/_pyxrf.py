"""XRF maps in PyXRF's HDF5 layout, one file per projection."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ._names import now_iso
from ._nxtomo import stream_group


def _names(values) -> np.ndarray:
    return np.array([str(v).encode() for v in values])


def write_pyxrf_map(
    path: str | Path,
    *,
    spectra=None,
    roi_maps=None,
    roi_names=None,
    fit_maps=None,
    fit_names=None,
    positions=None,
    pixel_size_um: float | None = None,
    scalers=None,
    scaler_names=None,
    incident_energy_keV: float | None = None,
    scan_uid: str | None = None,
    scan_id: int | None = None,
    channel_energies_keV=None,
    metadata: dict | None = None,
    compression: str | None = "gzip",
) -> Path:
    """Write one 2-D XRF map in PyXRF's HDF5 layout (what ``pyxrf``'s file loader reads).

    Parameters
    ----------
    spectra : (rows, cols, channels) counts -> ``xrfmap/detsum/counts`` (float32); an array, or
        anything with ``shape`` that gives rows by slicing (``FrameRows``: read from the run
        file a few lines at a time, so a 230 × 230 × 4096 map never sits in memory as float32).
    roi_maps, roi_names : (n, rows, cols) energy-window sums and their names (e.g. "Zn_K")
        -> ``xrfmap/detsum/xrf_roi`` and ``xrf_roi_name``.
    fit_maps, fit_names : (n, rows, cols) fitted element maps -> ``xrf_fit`` / ``xrf_fit_name``.
    positions : (2, rows, cols) x then y positions (µm) -> ``xrfmap/positions/pos`` with
        names ``x_pos``, ``y_pos``; or give ``pixel_size_um`` for a regular grid.
    scalers, scaler_names : (rows, cols, n) normalisation counters (e.g. i0) -> ``xrfmap/scalers``.
    incident_energy_keV, scan_uid, scan_id : ``xrfmap/scan_metadata`` attributes
        (``instrument_mono_incident_energy`` is what PyXRF reads for the beam energy).
    channel_energies_keV : (channels,) energy of every spectrum channel -> ``xrfmap/detsum/energy``
        (and ``energy_offset``/``energy_per_channel`` metadata: PyXRF's ``e_offset``/``e_linear``).
    metadata : further ``scan_metadata`` attributes in PyXRF's names (``sample_name``,
        ``proposal_num``, ``param_theta``, ``param_dwell``, ...).
    """
    path = Path(path)
    maps = [m for m in (spectra, roi_maps, fit_maps) if m is not None]
    if not maps:
        raise ValueError("nothing to write: give spectra, roi_maps or fit_maps")
    shape = tuple(spectra.shape[:2]) if spectra is not None else np.shape(maps[0])[1:]
    with h5py.File(path, "w") as f:
        detsum = f.create_group("xrfmap/detsum")
        if spectra is not None:
            counts = detsum.create_dataset(
                "counts", shape=tuple(spectra.shape), dtype=np.float32, compression=compression, chunks=True
            )
            step = max(1, (16 << 20) // max(1, 4 * int(np.prod(spectra.shape[1:]))))  # ~16 MiB of float32
            for r0 in range(0, spectra.shape[0], step):
                counts[r0 : r0 + step] = np.asarray(spectra[r0 : r0 + step], np.float32)
        for maps_, names, key in ((roi_maps, roi_names, "xrf_roi"), (fit_maps, fit_names, "xrf_fit")):
            if maps_ is None:
                continue
            maps_ = np.asarray(maps_, np.float32)
            if names is None or len(names) != len(maps_) or maps_.shape[1:] != tuple(shape):
                raise ValueError(
                    f"{key}: {maps_.shape} maps need one name each and rows, cols = {tuple(shape)}"
                )
            detsum[key] = maps_
            detsum[f"{key}_name"] = _names(names)
        if positions is None and pixel_size_um is not None:
            y, x = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
            positions = np.stack([x, y]).astype(np.float64) * pixel_size_um
        if positions is not None:
            f["xrfmap/positions/pos"] = np.asarray(positions, np.float64)
            f["xrfmap/positions/name"] = _names(["x_pos", "y_pos"])
        if scalers is not None:
            f["xrfmap/scalers/val"] = np.asarray(scalers, np.float32)
            f["xrfmap/scalers/name"] = _names(
                scaler_names or [f"scaler{i}" for i in range(np.shape(scalers)[-1])]
            )
        if channel_energies_keV is not None:
            energies = np.asarray(channel_energies_keV, np.float64)
            detsum["energy"] = energies
            detsum["energy"].attrs["units"] = "keV"
        md = f.create_group("xrfmap/scan_metadata")
        md.attrs["file_type"] = "XRF-MAP"
        md.attrs["file_format"] = "NSLS2-XRF-MAP"
        md.attrs["file_format_version"] = "1.0"
        md.attrs["file_software"] = "livetomo"
        md.attrs["file_created_time"] = now_iso()
        if channel_energies_keV is not None and len(energies) > 1:
            md.attrs["detector_energy_offset_keV"] = float(energies[0])
            md.attrs["detector_energy_per_channel_keV"] = float(energies[1] - energies[0])
        for key, value in (metadata or {}).items():
            if value is not None:
                md.attrs[key] = value
        if incident_energy_keV is not None:
            md.attrs["instrument_mono_incident_energy"] = float(incident_energy_keV)
        if scan_uid is not None:
            md.attrs["scan_uid"] = scan_uid
        if scan_id is not None:
            md.attrs["scan_id"] = int(scan_id)
    return path


def pyxrf_name(element: str, line: str = "K") -> str:
    """PyXRF's name of an element's emission line: "Zn" -> "Zn_K" (names with a line are kept)."""
    return element if "_" in element else f"{element}_{line}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _um(dataset) -> float:
    units = _text(dataset.attrs.get("units", "um"))
    return float(dataset[()]) * {"m": 1e6, "mm": 1e3, "um": 1.0, "µm": 1.0, "nm": 1e-3}.get(units, 1.0)


class FrameRows:
    """Frame ``index`` of an HDF5 dataset of frames, read by rows when sliced."""

    def __init__(self, dataset, index: int):
        self.dataset, self.index = dataset, int(index)
        self.shape = tuple(dataset.shape[1:])

    def __getitem__(self, rows) -> np.ndarray:
        return self.dataset[self.index, rows]

    def __array__(self, dtype=None, copy=None):
        out = self.dataset[self.index]
        return out if dtype is None else out.astype(dtype)


def export_pyxrf_maps(
    h5_path: str | Path,
    out_dir: str | Path,
    *,
    spectra_stream: str | None = "xrf_spectra",
    roi_stream: str | None = "xrf_roi",
    pixel_size_um: float | None = None,
    incident_energy_keV: float | None = None,
) -> list[Path]:
    """One PyXRF file per projection of a run file's XRF streams: ``<run>_proj<i>_<angle>deg.h5``.

    ``roi_stream`` frames are (elements, rows, cols) with ``channel_names`` (stored under PyXRF's
    names, ``Zn_K``); ``spectra_stream`` frames (rows, cols, channels). Either may be None or
    absent from the file. Positions come from the stream's ``x_pixel_size`` (µm grid), the
    incident energy from ``/entry/instrument/beam/incident_energy``, the channel energies from
    the XRF device's configuration, the sample and proposal from the run's metadata (each
    unless given).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with h5py.File(h5_path, "r", swmr=True) as f:
        uid = f["entry"].attrs.get("run_uid", Path(h5_path).stem)
        groups = {
            key: f[stream_group(name)]
            for key, name in (("spectra", spectra_stream), ("roi", roi_stream))
            if name and stream_group(name) in f
        }
        if not groups:
            raise ValueError(f"{h5_path} has neither stream {spectra_stream!r} nor {roi_stream!r}")
        first = next(iter(groups.values()))
        angles = first["rotation_angle"][()]
        keys = first["image_key"][()]
        if pixel_size_um is None and "x_pixel_size" in first:
            pixel_size_um = _um(first["x_pixel_size"])
        beam = f.get("entry/instrument/beam/incident_energy")
        if incident_energy_keV is None and beam is not None:
            incident_energy_keV = float(beam[()])
        energies = None
        if "spectra" in groups:
            device = _text(groups["spectra"].attrs.get("device", "xrf"))
            config = f.get("entry/instrument/configuration")
            if config is not None and f"{device}_energy_per_channel" in config:
                offset = float(config[f"{device}_energy_offset"][()])
                gain = float(config[f"{device}_energy_per_channel"][()])
                energies = offset + gain * np.arange(groups["spectra"]["data"].shape[-1])
        roi_names = None
        if "roi" in groups and "channel_names" in groups["roi"]:
            roi_names = [pyxrf_name(_text(n)) for n in groups["roi"]["channel_names"][()]]
        run_md = f.get("entry/run_metadata")
        sample = f.get("entry/sample/name")
        proposal = f.get("entry/experiment_identifier")
        common = {
            "sample_name": _text(sample[()]) if sample is not None else None,
            "proposal_num": _text(proposal[()]) if proposal is not None else None,
            "scan_instrument_name": "livetomo",
            "param_theta_units": "deg",
            "param_dwell": float(run_md["dwell_s"][()]) if "dwell_s" in (run_md or {}) else None,
            "param_type": "XRF-DPC tomography (one map per rotation angle)",
        }
        for i in np.flatnonzero(keys == 0):
            roi = groups["roi"]["data"][i] if "roi" in groups else None
            angle = f"{angles[i]:+.2f}deg" if np.isfinite(angles[i]) else "noangle"
            spectra = FrameRows(groups["spectra"]["data"], i) if "spectra" in groups else None
            shape = spectra.shape[:2] if spectra is not None else np.shape(roi)[1:]
            paths.append(
                write_pyxrf_map(
                    out_dir / f"{str(uid)[:8]}_proj{i:04d}_{angle}.h5",
                    spectra=spectra,
                    roi_maps=roi,
                    roi_names=roi_names or (None if roi is None else [f"roi{j}" for j in range(len(roi))]),
                    pixel_size_um=pixel_size_um,
                    incident_energy_keV=incident_energy_keV,
                    scan_uid=str(uid),
                    scan_id=int(i),
                    channel_energies_keV=energies,
                    metadata={
                        **common,
                        "param_theta": float(angles[i]) if np.isfinite(angles[i]) else None,
                        "param_shape": np.asarray(shape, np.int64),
                    },
                )
            )
    return paths
