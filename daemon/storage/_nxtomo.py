"""The daemon's live NXtomo run file: one HDF5 file per run, appended frame by frame, readable
while it is written (SWMR), processed results beside the raw data. docs/storage.md describes
the layout.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..transport import End, Frame, Message, Start
from ._filters import DEFAULT_COMPRESSION, compression_options, frame_chunks
from ._metadata import livetomo_version, plain_metadata, proposal_of, sample_name_of
from ._names import check_name, now_iso

logger = logging.getLogger(__name__)

PER_FRAME = {
    "image_key": (np.int32, 3, None),
    "rotation_angle": (np.float64, np.nan, "degree"),
    "exposure": (np.float64, np.nan, None),
    "timestamp": (np.float64, np.nan, "s"),
}


class _PerFrame:
    """One stream's per-frame metadata, kept in memory and written in slices at each flush.

    Writing four tiny values per frame into four SWMR datasets costs more than the 8 MiB
    frame itself (measured here, 8 MiB float32 frames: 970 MiB/s with them, 1874 without);
    readers only see new metadata at a flush anyway, so the values wait here until then.
    """

    def __init__(self):
        self.values = {k: np.full(64, fill, dt) for k, (dt, fill, _) in PER_FRAME.items()}
        self.n = 0  # frames in the file's data dataset (max index + 1)
        self.dirty_from = 0

    def set(self, index: int, **values) -> None:
        size = len(self.values["image_key"])
        if index >= size:
            grow = max(2 * size, index + 1)
            for k, (dt, fill, _) in PER_FRAME.items():
                self.values[k] = np.concatenate([self.values[k], np.full(grow - size, fill, dt)])
        for k, v in values.items():
            if v is not None:
                self.values[k][index] = v
        self.dirty_from = min(self.dirty_from, index)

    def write(self, group: h5py.Group) -> None:
        if self.dirty_from >= self.n:
            return
        for k in PER_FRAME:
            ds = group[k]
            if ds.shape[0] != self.n:
                ds.resize(self.n, axis=0)
            ds[self.dirty_from : self.n] = self.values[k][self.dirty_from : self.n]
        self.dirty_from = self.n


def _locked(method):
    """Run ``method`` under the writer's lock: the writer thread appends while another thread
    may read a frame back or, at run end, write processed results."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


def run_file(directory: str | Path, uid: str) -> Path:
    """The daemon's HDF5 file for run ``uid`` under ``directory`` (what ZMQFrameSink points at)."""
    return Path(directory) / f"run-{uid}.h5"


def stream_location(directory: str | Path):
    """``locate(run_uid, data_key) -> (file, dataset)`` for the daemon's run files under ``directory``.

    What a detector's ``ZMQFrameSink`` puts into its stream_resource documents.
    """
    return lambda uid, data_key: (run_file(directory, uid), stream_dataset(data_key))


def stream_group(stream: str) -> str:
    """HDF5 group of a frame stream in the run file: an NXdetector named after the stream."""
    return f"/entry/instrument/{stream}"


def stream_dataset(stream: str) -> str:
    """HDF5 dataset holding a stream's frames, (n_frames, *frame_shape); index = sequence number."""
    return f"{stream_group(stream)}/data"


def _fill(dtype: np.dtype):
    return np.nan if dtype.kind == "f" else 0


@dataclass(frozen=True)
class DerivedStream:
    """A stream the writer computes from another as each of its frames is stored.

    ``function(frame) -> frame`` maps a ``source`` frame to the derived one (same index, angle,
    image key, exposure and timestamp); the derived stream is created with the source.
    """

    source: str
    function: Callable[[np.ndarray], np.ndarray]
    description: str = ""


def segment_sum(frame: np.ndarray) -> np.ndarray:
    """The transmitted intensity of a segmented detector's frame (segments, rows, cols): their sum."""
    return np.sum(frame, axis=0, dtype=np.float32)


# the fields of an NXtomo entry; no stream may take their names
_RESERVED = {"detector", "source", "beam", "configuration"}
_ANGSTROM = {"A", "angstrom", "Å"}


class NXtomoWriter:
    """One HDF5 file per run in NeXus NXtomo layout, appended frame by frame, readable live (SWMR).

    Layout (docs/storage.md): each frame stream ``s`` is an NXdetector ``/entry/instrument/s``
    with ``data`` (n_frames, *frame_shape), one frame per chunk, compressed with the filter
    ``compression`` names (``bitshuffle-lz4`` by default; see ``_filters``), and per-frame
    ``image_key``, ``rotation_angle`` (degree), ``exposure`` and ``timestamp``. The primary
    stream (``primary_stream``, else the first stream with 2-D frames, else the first stream)
    is what NXtomo readers see: ``/entry/instrument/detector`` and ``/entry/sample/rotation_angle``
    are soft links to it and ``/entry/data`` (NXdata) links its data, angles and keys; every
    other stream has an NXdata ``/entry/data_<stream>``. ``derived`` streams are computed by the
    writer from another stream's frames (e.g. a segmented detector's transmitted intensity, the
    sum of its segments, as the rank-3 NXtomo data). Processed results live under
    ``/entry/processing`` (NXprocess): per-frame results (``declare_processed``), whole arrays
    (``write_processed``), groups (``write_group``) and volumes as NXdata (``write_volume``).

    A frame's index is its sequence number; slots of frames that never came keep the fill
    value (NaN for floats, 0 for integers) and image_key 3 ("invalid").

    ``start`` (the run's start document) gives the sample name, the proposal
    (``/entry/experiment_identifier``), the incident energy (``energy_kev``), the raster pixel
    size (``pixel_size_um``) and ``/entry/run_metadata``; ``add_descriptor`` stores each device's
    configuration (and its ``<device>_pixel_size`` as ``x_pixel_size``/``y_pixel_size``).

    SWMR: ``swmr="auto"`` (default) switches the file to SWMR mode at the first frame with
    index >= 1, by when every stream a detector opens at its first trigger exists;
    ``swmr=True`` switches at once, ``False`` never. HDF5 cannot create objects in SWMR mode,
    so a stream or processed dataset that appears later makes the writer close the file
    and reopen it to add it (a few ms, logged); live readers keep reading existing datasets
    (call ``dataset.refresh()``) and must reopen the file to see the new ones. The file is
    opened without HDF5 file locks so this works while readers are attached; there must be
    only one writer per file. Readers open it with ``h5py.File(path, "r", swmr=True)``.

    Metadata is flushed every ``flush_interval_s`` seconds (and at every stream end,
    ``flush`` and ``close``), which is when SWMR readers see new frames. Its methods take
    the writer's lock, so one thread may append while another reads a frame back
    (``read_frame``) or writes processed results.

    ``skip_streams(name) -> bool`` names streams whose frames are not stored (e.g. XRF spectra
    when only the element maps are wanted). ``config`` (a JSON-able mapping, e.g. the daemon's
    effective configuration) is stored as the NXnote ``/entry/processing/configuration``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        run_uid: str | None = None,
        primary_stream: str | None = None,
        sample_name: str | None = None,
        title: str | None = None,
        probe: str | None = None,
        attrs: dict | None = None,
        swmr: bool | str = "auto",
        flush_interval_s: float = 1.0,
        compression: str | None = DEFAULT_COMPRESSION,
        config: dict | None = None,
        start: dict | None = None,
        derived: dict[str, DerivedStream] | None = None,
        skip_streams: Callable[[str], bool] | None = None,
    ):
        if swmr not in (True, False, "auto"):
            raise ValueError(f"swmr = {swmr!r}; allowed: True, False, 'auto'")
        if probe not in (None, "x-ray", "electron", "neutron"):
            raise ValueError(f"probe = {probe!r}; allowed: 'x-ray', 'electron', 'neutron' or None")
        self.path = Path(path)
        self.run_uid = run_uid
        self.swmr = swmr
        self.flush_interval_s = flush_interval_s
        self.compression = None if compression in (None, "none") else compression
        self._filter = compression_options(self.compression)
        self.primary = check_name(primary_stream, "stream name") if primary_stream else None
        self.derived = dict(derived or {})
        for name, rule in self.derived.items():
            check_name(name, "stream name")
            check_name(rule.source, "stream name")
        self.skip_streams = skip_streams
        self.skipped: set[str] = set()
        self.streams: dict[str, dict] = {}
        self.superseded: dict[str, set[int]] = {}
        self.frames_written: dict[str, int] = {}
        # frames (rows, placeholders included) per stream at the last flush: what a crash keeps
        self.frames_on_disk: dict[str, int] = {}
        self.reopens = 0
        self._meta: dict[str, _PerFrame] = {}
        self._early_angles: dict[str, dict[int, float]] = {}  # angles of streams not started yet
        self._cache: dict[str, h5py.Dataset] = {}
        self._pixel_by_device: dict[str, tuple[float, str]] = {}
        self._pixel_default: tuple[float, str] | None = None
        self._swmr_on = False
        self._last_flush = time.monotonic()
        self._lock = threading.RLock()
        start = dict(start or {})
        if start.get("pixel_size_um") is not None:  # a raster's pixel: every stream of the run
            self._pixel_default = (float(start["pixel_size_um"]), "um")
        self._file = h5py.File(self.path, "w", libver="latest", locking=False)
        self._skeleton(sample_name or sample_name_of(start), title, probe, attrs or {}, start)
        if config is not None:
            note = self._file["/entry/processing"].create_group("configuration")
            note.attrs["NX_class"] = "NXnote"
            note["type"] = "application/json"
            note["description"] = "the effective configuration of the daemon that wrote this file"
            note["data"] = json.dumps(config, default=str)
        if self.primary:
            self._link_primary(self.primary)
        if swmr is True:
            self.start_swmr()

    # -- structure
    def _skeleton(self, sample_name, title, probe, attrs, start) -> None:
        f = self._file
        f.attrs.update({"default": "entry", "creator": "livetomo", "HDF5_Version": h5py.version.hdf5_version})
        entry = f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "data"})
        entry["definition"] = "NXtomo"
        entry["title"] = title or (f"livetomo run {self.run_uid}" if self.run_uid else "livetomo run")
        entry["start_time"] = now_iso()
        proposal = proposal_of(start)
        if proposal is not None:
            entry["experiment_identifier"] = proposal
        if self.run_uid:
            entry.attrs["run_uid"] = self.run_uid
        for key, value in attrs.items():
            entry.attrs[key] = value
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        if probe:
            source = instrument.create_group("source")
            source.attrs["NX_class"] = "NXsource"
            source["probe"] = probe
        if start.get("energy_kev") is not None:
            beam = instrument.create_group("beam")
            beam.attrs["NX_class"] = "NXbeam"
            beam["incident_energy"] = float(start["energy_kev"])
            beam["incident_energy"].attrs["units"] = "keV"
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample["name"] = sample_name
        entry.create_group("data").attrs["NX_class"] = "NXdata"
        processing = entry.create_group("processing")
        processing.attrs["NX_class"] = "NXprocess"
        processing["program"] = "livetomo"
        processing["version"] = livetomo_version()
        processing["date"] = now_iso()
        processing["sequence_index"] = np.int64(1)
        if start:
            md = entry.create_group("run_metadata")
            md.attrs["NX_class"] = "NXcollection"
            for key, value in plain_metadata(start).items():
                if check_name_ok(key):
                    md[key] = value

    @contextmanager
    def _structure(self) -> Iterator[h5py.File]:
        """Allow creating objects: outside SWMR at once, in SWMR by closing and reopening the file."""
        if not self._swmr_on:
            yield self._file
            return
        t0 = time.perf_counter()
        self._file.close()
        self._cache.clear()
        self._file = h5py.File(self.path, "r+", libver="latest", locking=False)
        self.reopens += 1
        try:
            yield self._file
        finally:
            self._file.swmr_mode = True
            logger.info(
                "%s: reopened to add objects in SWMR mode (%.1f ms); live readers must reopen to see them",
                self.path.name,
                (time.perf_counter() - t0) * 1e3,
            )

    def _link_primary(self, stream: str) -> None:
        group = stream_group(stream)
        with self._structure() as f:
            if stream != "detector":
                f["/entry/instrument/detector"] = h5py.SoftLink(group)
            f["/entry/sample/rotation_angle"] = h5py.SoftLink(f"{group}/rotation_angle")
            if "x_pixel_size" in f.get(group, {}):
                self._link_sample_pixel(f, group)
            nxdata = f["/entry/data"]
            nxdata["data"] = h5py.SoftLink(f"{group}/data")
            nxdata["rotation_angle"] = h5py.SoftLink(f"{group}/rotation_angle")
            nxdata["image_key"] = h5py.SoftLink(f"{group}/image_key")
            nxdata.attrs["signal"] = "data"

    def _pixel_of(self, stream: str, device: str | None) -> tuple[float, str] | None:
        if device is not None and device in self._pixel_by_device:
            return self._pixel_by_device[device]
        return self._pixel_default

    @_locked
    def add_stream(
        self,
        stream: str,
        dtype,
        shape,
        *,
        device: str | None = None,
        channels=None,
        exposure_units: str | None = None,
        pixel_size: float | None = None,
        pixel_units: str = "nm",
        pieces_per_frame: int = 1,
    ) -> str | None:
        """Create the datasets of stream ``stream`` (frames of ``shape``, ``dtype``); return the data path.

        ``channels`` name the entries of the first frame axis (e.g. XRF elements, DPC segments).
        ``pieces_per_frame`` > 1: frames arrive as that many blocks of rows (``append_piece``);
        the dataset holds whole frames, chunked one block per chunk so that each block is
        written once, as it arrives.
        Streams derived from this one (``derived``) are created with it. A stream that
        ``skip_streams`` names is not stored (None is returned).
        """
        check_name(stream, "stream name")
        if "/" in stream:
            raise ValueError(f"stream name {stream!r} must not contain '/'")
        if self.skip_streams is not None and self.skip_streams(stream):
            self.skipped.add(stream)
            return None
        if stream in self.streams:
            raise ValueError(f"stream {stream!r} already exists in {self.path.name}")
        if stream in _RESERVED or self._file.get(stream_group(stream), getlink=True) is not None:
            raise ValueError(f"stream name {stream!r} is taken by the NXtomo layout; rename the stream")
        dtype, shape = np.dtype(dtype).newbyteorder("<"), tuple(int(n) for n in shape)
        pixel = (float(pixel_size), pixel_units) if pixel_size is not None else self._pixel_of(stream, device)
        pieces = int(pieces_per_frame)
        if pieces < 1 or shape[0] % pieces:
            raise ValueError(f"stream {stream!r}: {pieces} pieces do not divide a frame of {shape[0]} rows")
        chunks = frame_chunks(shape, dtype) if pieces == 1 else (1, shape[0] // pieces, *shape[1:])
        with self._structure() as f:
            g = f.create_group(stream_group(stream))
            g.attrs["NX_class"] = "NXdetector"
            if device:
                g.attrs["device"] = device
            data = g.create_dataset(
                "data",
                shape=(0, *shape),
                maxshape=(None, *shape),
                chunks=chunks,
                dtype=dtype,
                fillvalue=_fill(dtype),
                **self._filter,
            )
            if len(shape) == 2:
                data.attrs["interpretation"] = "image"
            for name, (dt, fill, units) in PER_FRAME.items():
                d = g.create_dataset(
                    name, shape=(0,), maxshape=(None,), chunks=(4096,), dtype=dt, fillvalue=fill
                )
                units = exposure_units if name == "exposure" else units
                if units:
                    d.attrs["units"] = units
            if exposure_units == "s":  # NXtomo's count_time is the exposure in seconds
                g["count_time"] = h5py.SoftLink(f"{stream_group(stream)}/exposure")
            if channels is not None:
                g["channel_names"] = np.array([str(c).encode() for c in channels])
            if self.primary is None and len(shape) == 2:
                self.primary = stream
            if pixel is not None:
                self._write_pixel(g, *pixel)
            if stream == self.primary:
                f["/entry/data"].attrs["axes"] = ["rotation_angle"] + ["."] * len(shape)
            else:
                self._stream_nxdata(f, stream, shape, channels is not None)
        self.streams[stream] = {
            "dtype": dtype,
            "shape": shape,
            "device": device,
            "exposure_units": exposure_units,
            "chunked_as_frame": chunks == (1, *shape),
            "derived": [],
            "pieces": pieces,
        }
        self.frames_written[stream] = 0
        meta = self._meta[stream] = _PerFrame()
        for index, angle in self._early_angles.pop(stream, {}).items():
            meta.set(index, rotation_angle=angle)
        for name, rule in self.derived.items():
            if rule.source == stream and name not in self.streams:
                probe = np.asarray(rule.function(np.zeros(shape, dtype)))
                self.add_stream(name, probe.dtype, probe.shape, device=device, exposure_units=exposure_units)
                self.streams[stream]["derived"].append(name)
                if pixel is not None and pixel_size is not None:
                    self.set_pixel_size(name, *pixel)
        if self.primary is None:
            self.primary = stream
            with self._structure() as f:
                f["/entry/data"].attrs["axes"] = ["rotation_angle"] + ["."] * len(shape)
        if stream == self.primary and self._file["/entry/data"].get("data", getlink=True) is None:
            self._link_primary(stream)
        return stream_dataset(stream)

    def _write_pixel(self, group: h5py.Group, size: float, units: str) -> None:
        for axis in ("x_pixel_size", "y_pixel_size"):
            if axis in group:
                del group[axis]
            group[axis] = float(size)
            group[axis].attrs["units"] = "angstrom" if units in _ANGSTROM else units
        if self.primary and group.name == stream_group(self.primary):
            self._link_sample_pixel(group.file, group.name)

    @staticmethod
    def _link_sample_pixel(f: h5py.File, group: str) -> None:
        """NXtomo 1.5+ readers (tomoscan) take the sample's pixel size from /entry/sample."""
        for axis in ("x_pixel_size", "y_pixel_size"):
            if f.get(f"/entry/sample/{axis}", getlink=True) is None:
                f[f"/entry/sample/{axis}"] = h5py.SoftLink(f"{group}/{axis}")

    def _stream_nxdata(self, f: h5py.File, stream: str, shape, has_channels: bool) -> None:
        """An NXdata ``/entry/data_<stream>`` over a non-primary stream, so viewers plot it."""
        path = f"/entry/data_{stream}"
        if path in f:
            return
        group = stream_group(stream)
        nxdata = f.create_group(path)
        nxdata.attrs["NX_class"] = "NXdata"
        nxdata.attrs["signal"] = "data"
        nxdata.attrs["axes"] = ["rotation_angle"] + ["."] * len(shape)
        nxdata["data"] = h5py.SoftLink(f"{group}/data")
        nxdata["rotation_angle"] = h5py.SoftLink(f"{group}/rotation_angle")
        if has_channels:
            nxdata["channel_names"] = h5py.SoftLink(f"{group}/channel_names")

    @_locked
    def set_pixel_size(self, stream: str, size: float, units: str = "nm") -> None:
        """``x_pixel_size`` and ``y_pixel_size`` of a stream (square pixels), e.g. from a descriptor."""
        group = self._file.get(stream_group(stream))
        if group is None:
            raise KeyError(f"stream {stream!r} was not added")
        units = "angstrom" if units in _ANGSTROM else units
        existing = group.get("x_pixel_size")
        if existing is not None and existing.attrs.get("units") == units:
            if float(existing[()]) != float(size):  # values may change in SWMR mode, attributes not
                existing[()] = float(size)
                group["y_pixel_size"][()] = float(size)
            return
        with self._structure() as f:
            self._write_pixel(f[stream_group(stream)], float(size), units)

    @_locked
    def add_descriptor(self, doc: dict) -> None:
        """Store a descriptor's device configuration (``/entry/instrument/configuration``, with
        units) and take ``<device>_pixel_size`` as the pixel size of that device's streams."""
        new = {}
        for device, conf in (doc.get("configuration") or {}).items():
            keys = conf.get("data_keys") or {}
            for key, value in (conf.get("data") or {}).items():
                if key == f"{device}_pixel_size" and isinstance(value, int | float):
                    units = keys.get(key, {}).get("units") or "nm"
                    self._pixel_by_device[device] = (float(value), units)
                if check_name_ok(key) and f"/entry/instrument/configuration/{key}" not in self._file:
                    new[key] = (value, keys.get(key, {}).get("units"))
        if new:
            with self._structure() as f:
                group = f.require_group("/entry/instrument/configuration")
                group.attrs["NX_class"] = "NXcollection"
                for key, (value, units) in new.items():
                    stored = plain_metadata({key: value}).get(key)
                    if stored is None:
                        continue
                    group[key] = stored
                    if units:
                        group[key].attrs["units"] = units
        for stream, layout in self.streams.items():
            device = layout["device"]
            if device in self._pixel_by_device:
                self.set_pixel_size(stream, *self._pixel_by_device[device])

    def configuration(self, key: str, default=None):
        """A device configuration value stored by ``add_descriptor`` (e.g. ``k3_voltage``)."""
        ds = self._file.get(f"/entry/instrument/configuration/{key}")
        return default if ds is None else ds[()]

    def _ds(self, path: str) -> h5py.Dataset:
        ds = self._cache.get(path)
        if ds is None:
            ds = self._cache[path] = self._file[path]
        return ds

    # -- frames
    @_locked
    def append(
        self,
        stream: str,
        frame: np.ndarray,
        *,
        index: int | None = None,
        angle_deg: float | None = None,
        image_key: int = 0,
        exposure: float | None = None,
        exposure_units: str | None = None,
        timestamp: float | None = None,
    ) -> int | None:
        """Store one frame of ``stream`` at ``index`` (default: after the last); return the index.

        ``angle_deg`` None keeps an angle given by ``set_angle`` (or NaN). ``exposure_units``
        fills in the stream's units if ``add_stream`` did not give them (written at close:
        HDF5 cannot add attributes in SWMR mode). Streams derived from this one get their
        frame at the same index. A skipped stream's frame is not stored (None is returned).
        """
        layout = self.streams.get(stream)
        if layout is None:
            if stream in self.skipped:
                return None
            raise KeyError(f"stream {stream!r} was not added; streams: {', '.join(self.streams) or 'none'}")
        if np.shape(frame) != layout["shape"]:
            raise ValueError(
                f"frame of shape {np.shape(frame)} for stream {stream!r} of shape {layout['shape']}"
            )
        data = self._ds(stream_dataset(stream))
        meta = self._meta[stream]
        index = meta.n if index is None else int(index)
        if index >= data.shape[0]:
            data.resize(index + 1, axis=0)
        if self.compression is None and layout["chunked_as_frame"]:
            # One chunk is exactly one frame and the array's bytes are the file's bytes, so
            # the chunk goes to the file as it is, skipping HDF5's selection and conversion:
            # 3329 against 1964 MiB/s for data[index] = frame (8 MiB float32 frames, measured
            # here on a quiet moment; `livetomo bench streaming` compares both).
            chunk = np.ascontiguousarray(frame, dtype=layout["dtype"])
            data.id.write_direct_chunk((index,) + (0,) * chunk.ndim, chunk)
        else:
            data[index] = frame
        timestamp = time.time() if timestamp is None else timestamp
        meta.set(index, image_key=image_key, rotation_angle=angle_deg, exposure=exposure, timestamp=timestamp)
        meta.n = max(meta.n, index + 1)
        if exposure_units and not layout.get("exposure_units"):
            layout["exposure_units"] = exposure_units
            layout["units_pending"] = True
        self.frames_written[stream] += 1
        for name in layout["derived"]:
            self.append(
                name,
                self.derived[name].function(np.asarray(frame)),
                index=index,
                angle_deg=angle_deg,
                image_key=image_key,
                exposure=exposure,
                exposure_units=exposure_units,
                timestamp=timestamp,
            )
        if self.swmr == "auto" and not self._swmr_on and index >= 1:
            self.start_swmr()
        self._maybe_flush()
        return index

    @_locked
    def append_piece(self, stream: str, seq: int, block: np.ndarray, **frame_fields) -> int | None:
        """Store block ``seq`` of a stream sent in pieces: rows ``(seq mod n)·r`` on of frame
        ``seq // n`` (``n`` pieces of ``r`` rows); the frame's per-frame fields (``append``'s
        keywords) come with its first piece. Returns the frame's index."""
        layout = self.streams.get(stream)
        if layout is None:
            if stream in self.skipped:
                return None
            raise KeyError(f"stream {stream!r} was not added; streams: {', '.join(self.streams) or 'none'}")
        n = layout["pieces"]
        rows = layout["shape"][0] // n
        if np.shape(block) != (rows, *layout["shape"][1:]):
            raise ValueError(f"piece of shape {np.shape(block)} for {stream!r}: pieces are {rows} rows")
        index, k = divmod(int(seq), n)
        data = self._ds(stream_dataset(stream))
        meta = self._meta[stream]
        if index >= data.shape[0]:
            data.resize(index + 1, axis=0)
        data[index, k * rows : (k + 1) * rows] = block
        if k == 0:
            timestamp = frame_fields.get("timestamp") or time.time()
            meta.set(
                index,
                image_key=frame_fields.get("image_key", 0),
                rotation_angle=frame_fields.get("angle_deg"),
                exposure=frame_fields.get("exposure"),
                timestamp=timestamp,
            )
        meta.n = max(meta.n, index + 1)
        if k == n - 1:
            self.frames_written[stream] += 1
        if self.swmr == "auto" and not self._swmr_on and index >= 1:
            self.start_swmr()
        self._maybe_flush()
        return index

    def pieces_per_frame(self, stream: str) -> int:
        layout = self.streams.get(stream)
        return 1 if layout is None else layout["pieces"]

    @_locked
    def read_frame(self, stream: str, index: int) -> np.ndarray:
        """Frame ``index`` of ``stream`` as stored (for a reader in another thread of this process)."""
        return self._ds(stream_dataset(stream))[int(index)]

    @_locked
    def set_angle(self, stream: str, index: int, angle_deg: float) -> None:
        """The rotation angle of frame ``index`` (e.g. from the event documents), before or after it."""
        meta = self._meta.get(stream)
        if meta is None:
            self._early_angles.setdefault(stream, {})[int(index)] = float(angle_deg)
        else:
            meta.set(int(index), rotation_angle=float(angle_deg))
            for name in self.streams[stream]["derived"]:
                self.set_angle(name, index, angle_deg)

    @_locked
    def write_message(self, msg: Message) -> int | None:
        """Store one accepted protocol message: start adds the stream, frame appends at its seq."""
        if isinstance(msg, Start):
            md = msg.md or {}
            pieces = md.get("pieces_per_frame", 1)
            pieces = pieces if isinstance(pieces, int) and not isinstance(pieces, bool) and pieces >= 1 else 1
            names = md.get("frame_channels")
            if not (isinstance(names, list) and len(names) == msg.shape[0] * pieces
                    and all(isinstance(c, str) and len(c) <= 128 for c in names)):  # fmt: skip
                names = None
            self.add_stream(
                msg.stream,
                msg.dtype,
                (msg.shape[0] * pieces, *msg.shape[1:]),
                device=msg.device,
                channels=msg.channels if pieces == 1 else names,
                exposure_units=msg.exposure_units,
                pixel_size=md.get("pixel_size_nm"),
                pieces_per_frame=pieces,
            )
            return None
        if isinstance(msg, Frame) and self.pieces_per_frame(msg.stream) > 1:
            return self.append_piece(
                msg.stream,
                msg.seq,
                msg.data,
                angle_deg=msg.angle_deg,
                image_key=msg.image_key,
                exposure=msg.exposure,
                timestamp=msg.timestamp or None,
            )
        if isinstance(msg, Frame):
            return self.append(
                msg.stream,
                msg.data,
                index=msg.seq,
                angle_deg=msg.angle_deg,
                image_key=msg.image_key,
                exposure=msg.exposure,
                exposure_units=msg.exposure_units,
                timestamp=msg.timestamp or None,
            )
        if isinstance(msg, End):
            n = self.pieces_per_frame(msg.stream)
            self.end_stream(msg.stream, -(-msg.count // n))  # a frame whose pieces were cut short counts
            return None
        raise TypeError(f"not a protocol message: {type(msg).__name__}")

    @_locked
    def mark_superseded(self, stream: str, seqs) -> None:
        """Frames whose step was repeated (a pause cut the step after the frame was sent): kept,
        but marked invalid (image_key 3) and listed in the stream's ``superseded_frames``."""
        meta = self._meta.get(stream)
        if meta is None:
            return
        for seq in seqs:
            meta.set(int(seq), image_key=3)
        self.superseded.setdefault(stream, set()).update(int(s) for s in seqs)
        self.flush()

    @_locked
    def end_stream(self, stream: str, count: int) -> None:
        """The stream's sender sent ``count`` frames: slots of those that never arrived become
        placeholders (image_key 3, fill value), so the file shows every frame that was sent."""
        meta = self._meta.get(stream)
        if meta is not None and count > meta.n:
            data = self._ds(stream_dataset(stream))
            data.resize(count, axis=0)
            meta.set(count - 1)  # grows the per-frame arrays; the slot keeps image_key 3
            meta.n = count
        self.flush()

    # -- processed results
    def _processed_path(self, name: str) -> str:
        return f"/entry/processing/{check_name(name, 'processed dataset name')}"

    @staticmethod
    def _parents(f: h5py.File, path: str) -> None:
        """Create the groups above ``path`` that do not exist yet, as NXcollection."""
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            group = "/" + "/".join(parts[:i])
            if group not in f:
                f.create_group(group).attrs["NX_class"] = "NXcollection"

    @_locked
    def declare_processed(
        self, name: str, dtype=np.float64, item_shape=(), *, units: str | None = None
    ) -> str:
        """Create a per-frame result ``name`` ((n, *item_shape), resizable), e.g. shifts (n, 2).

        Declare before frames flow so SWMR readers see it without reopening.
        """
        path = self._processed_path(name)
        dtype, item_shape = np.dtype(dtype), tuple(int(n) for n in item_shape)
        rows = max(1, (64 << 10) // max(1, dtype.itemsize * int(np.prod(item_shape, dtype=np.int64))))
        with self._structure() as f:
            self._parents(f, path)
            d = f.create_dataset(
                path,
                shape=(0, *item_shape),
                maxshape=(None, *item_shape),
                chunks=(rows, *item_shape),
                dtype=dtype,
                fillvalue=_fill(dtype),
            )
            if units:
                d.attrs["units"] = units
        return path

    @_locked
    def append_processed(self, name: str, value, *, index: int | None = None) -> int:
        """Store a per-frame result (e.g. the shift of frame ``index``); declares ``name`` if needed."""
        value = np.asarray(value)
        path = self._processed_path(name)
        if path not in self._file:
            self.declare_processed(
                name, value.dtype if value.dtype.kind in "fiu" else np.float64, value.shape
            )
        ds = self._ds(path)
        n = ds.shape[0]
        index = n if index is None else int(index)
        if index >= n:
            ds.resize(index + 1, axis=0)
        ds[index] = value
        self._maybe_flush()
        return index

    @_locked
    def write_processed(self, name: str, array, *, attrs: dict | None = None) -> str:
        """Store a whole array (e.g. a result map) at ``/entry/processing/name``, replacing it.

        The dataset is resizable along every axis, so later versions of any size fit.
        """
        array = np.asarray(array)
        path = self._processed_path(name)
        existing = self._file.get(path)
        if existing is None or existing.ndim != array.ndim or existing.dtype != array.dtype:
            with self._structure() as f:
                if path in f:
                    del f[path]
                self._parents(f, path)
                d = f.create_dataset(
                    path, shape=array.shape, maxshape=(None,) * array.ndim, chunks=True, dtype=array.dtype
                )
                for key, value in (attrs or {}).items():
                    d.attrs[key] = value
            self._cache.pop(path, None)
        ds = self._ds(path)
        if ds.shape != array.shape:
            ds.resize(array.shape)
        ds[...] = array
        self._maybe_flush()
        return path

    @_locked
    def write_group(
        self,
        name: str,
        fields: dict,
        *,
        nx_class: str = "NXcollection",
        attrs: dict | None = None,
        parent_class: str | None = None,
    ) -> str:
        """Write the group ``/entry/processing/name`` with ``fields`` in one go, replacing it.

        ``fields`` maps names to arrays, or to ``(array, {attribute: value})``; ``parent_class``
        classes the group above it if it is created now (e.g. an NXprocess of several NXdata).
        Volumes and maps are compressed with the file's filter.
        """
        path = self._processed_path(name)
        with self._structure() as f:
            if path in f:
                del f[path]
            parent = path.rsplit("/", 1)[0]
            if parent_class and parent not in f:
                self._parents(f, path)
                f[parent].attrs["NX_class"] = parent_class
            self._parents(f, path)
            group = f.create_group(path)
            group.attrs["NX_class"] = nx_class
            for key, value in (attrs or {}).items():
                group.attrs[key] = value
            for key, value in fields.items():
                value, field_attrs = value if isinstance(value, tuple) else (value, {})
                value = np.asarray(value)
                options = {}
                if value.ndim >= 2 and value.size >= 4096:
                    options = {"chunks": True, **self._filter}
                ds = group.create_dataset(key, data=value, **options)
                for k, v in field_attrs.items():
                    ds.attrs[k] = v
        self._cache.clear()
        self._maybe_flush()
        return path

    def pixel_size(self, stream: str | None = None) -> tuple[float, str] | None:
        """(size, units) of a stream's pixels (default: the primary stream), or None if unknown."""
        group = self._file.get(stream_group(stream or self.primary or ""))
        if group is None or "x_pixel_size" not in group:
            return None
        size = group["x_pixel_size"]
        units = size.attrs.get("units", "nm")
        return float(size[()]), units.decode() if isinstance(units, bytes) else str(units)

    @_locked
    def write_volume(
        self,
        name: str,
        volume,
        *,
        voxel_size: tuple[float, str] | None = None,
        long_name: str | None = None,
        attrs: dict | None = None,
    ) -> str:
        """A reconstructed (z, y, x) volume as NXdata ``/entry/processing/reconstruction/<name>``.

        ``data`` with axes ``z``, ``y``, ``x`` (voxel centres from 0, in the voxel size's units;
        default: the primary stream's pixel size, else pixels) so h5web and silx show it as an
        image stack; ``voxel_size`` is also stored as a field.
        """
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise ValueError(f"volume {name!r} of shape {volume.shape}; expected (z, y, x)")
        voxel_size = voxel_size or self.pixel_size()
        size, units = voxel_size if voxel_size is not None else (1.0, "pixel")
        attrs = dict(attrs or {})
        data_attrs = {"long_name": long_name or name}
        if attrs.get("units"):  # NeXus puts a field's units on the field
            data_attrs["units"] = attrs.pop("units")
        fields: dict = {"data": (volume, data_attrs)}
        for axis, n in zip("zyx", volume.shape, strict=True):
            fields[axis] = (np.arange(n) * size, {"units": units})
        fields["voxel_size"] = (np.float64(size), {"units": units})
        return self.write_group(
            f"reconstruction/{name}",
            fields,
            nx_class="NXdata",
            attrs={"signal": "data", "axes": ["z", "y", "x"], **attrs},
            parent_class="NXprocess",
        )

    # -- SWMR, flushing, closing
    @_locked
    def start_swmr(self) -> None:
        """Switch to SWMR mode: from now on readers can follow the file."""
        if not self._swmr_on:
            self._file.swmr_mode = True
            self._swmr_on = True
            self.flush()

    @property
    def swmr_mode(self) -> bool:
        return self._swmr_on

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    @_locked
    def flush(self) -> None:
        """Make everything written so far visible to readers and durable in the OS."""
        for stream, meta in self._meta.items():
            meta.write(self._file[stream_group(stream)])
        self._file.flush()
        self.frames_on_disk = dict(self.frames_written)  # replaced whole: readers on other threads see either
        self._last_flush = time.monotonic()

    @_locked
    def close(self) -> None:
        """Flush, record end_time and the frame counts, and close the file."""
        if not self._file:
            return
        self.flush()
        if self._swmr_on:  # closing SWMR and reopening plainly lets us add the closing metadata
            self._file.close()
            self._file = h5py.File(self.path, "r+", libver="latest", locking=False)
            self._swmr_on = False
        entry = self._file["entry"]
        entry["end_time"] = now_iso()
        for stream, n in self.frames_written.items():
            group = self._file[stream_group(stream)]
            group.attrs["frames_written"] = n
            if self.superseded.get(stream):
                group.attrs["superseded_frames"] = np.asarray(sorted(self.superseded[stream]), np.int64)
            if self.streams[stream].get("units_pending"):
                group["exposure"].attrs["units"] = self.streams[stream]["exposure_units"]
        self._file.close()
        self._cache.clear()

    def __enter__(self) -> NXtomoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_name_ok(name: str) -> bool:
    try:
        check_name(name, "name")
    except ValueError:
        return False
    return "/" not in name
