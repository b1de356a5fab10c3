"""Daemon configuration: a YAML file over defaults, typed and checked when it is loaded.

Every section is a dataclass whose annotations are the schema: a value of the wrong type,
outside its range or not among the allowed ones, and a key that no section knows, each
fail at start-up with a message naming the key (``processing.refine = 'tvv' is not allowed;
allowed: 'tv', 'sirt', null``). ``beamline.kind`` picks a beamline module
(``livetomo.devices.beamlines``); the module's own settings dataclass checks the other
``beamline`` keys. The effective configuration (``DaemonConfig.as_dict``) is written into
every run file.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ..devices.beamlines import BEAMLINES, beamline_module
from .transport import is_loopback


class ConfigError(ValueError):
    """The configuration names something impossible; the message says what and where."""


def _range(low=None, high=None) -> dict:
    return {"range": (low, high)}


@dataclass
class Endpoints:
    """ZeroMQ addresses. ``frames`` (PULL) and ``documents_in`` (SUB) receive; ``documents`` and
    ``results`` (PUB) publish; ``control`` (REP) answers JSON requests."""

    frames: str = "tcp://127.0.0.1:5577"
    documents: str = "tcp://127.0.0.1:5578"
    results: str = "tcp://127.0.0.1:5579"
    control: str = "tcp://127.0.0.1:5580"
    documents_in: str | None = None


@dataclass
class Curve:
    """CURVE keys (files made by ``livetomo keys DIR``); required for any non-loopback bind."""

    server_secret_key: str | None = None
    authorized_clients: str | None = None  # directory of the public keys of the clients let in (required)


@dataclass
class Limits:
    """Bounds of the data path, in messages and in bytes.

    ``max_message_bytes``: the largest frame; the socket cuts off anything larger unread.
    ``ingest_queue``/``ingest_bytes``: frames waiting between the socket and the writer
    (beyond, the sender is blocked). ``process_queue``/``process_bytes``: frames waiting with
    their pixels between the writer and processing (beyond, processing re-reads them from the
    run file, so the writer never waits). ``sequence_window``: how far ahead of the next
    expected frame a frame may arrive (it waits; further ahead is refused).
    ``max_streams_per_run``: frame streams a run may open. ``frame_piece_bytes``: the daemon's
    own detectors send a frame larger than this in pieces of whole rows (a raster's lines:
    docs/frame-protocol.md, "Frames in pieces"), which the writer assembles in the run file.
    """

    max_message_bytes: int = field(default=512 * 1024**2, metadata=_range(1))
    ingest_queue: int = field(default=64, metadata=_range(1))
    ingest_bytes: int = field(default=1024**3, metadata=_range(1))
    process_queue: int = field(default=64, metadata=_range(1))
    process_bytes: int = field(default=1024**3, metadata=_range(1))
    sequence_window: int = field(default=16, metadata=_range(1, 4096))
    max_streams_per_run: int = field(default=32, metadata=_range(1, 1024))
    hold_unknown_run_s: float = field(default=5.0, metadata=_range(0.0, 600.0))
    frame_piece_bytes: int = field(default=16 * 1024**2, metadata=_range(1024))


@dataclass
class Dask:
    """Run-end refinement split into slabs along the rotation axis, run on ``dask.distributed``
    (docs/reconstruction.md, "Scale-out"). ``scheduler`` null: an embedded ``LocalCluster`` of
    ``workers`` processes (``threads_per_worker`` threads each), started at the first
    refinement and kept; else a facility scheduler's address, e.g. ``tcp://host:8786`` (its
    workers need livetomo installed). ``slab_slices``: slices per slab; ``halo_slices``: extra
    slices each TV slab is solved with on either side (SIRT needs none)."""

    scheduler: str | None = None
    workers: int = field(default=2, metadata=_range(1, 4096))
    threads_per_worker: int = field(default=1, metadata=_range(1, 256))
    slab_slices: int = field(default=16, metadata=_range(1))
    halo_slices: int = field(default=4, metadata=_range(0, 1024))

    def __post_init__(self):
        if self.scheduler is not None and not self.scheduler.startswith(("tcp://", "tls://", "inproc://")):
            raise ValueError(
                f"processing.dask.scheduler = {self.scheduler!r} must be a scheduler address "
                "(tcp://host:8786, tls://...) or null for an embedded LocalCluster"
            )


@dataclass
class Processing:
    """What the pipeline does with frames besides storing them."""

    align: bool = True
    reconstruct: bool = True
    preview_every: int = field(default=1, metadata=_range(1))  # publish previews every N frames
    lamella_thickness_px: int | None = field(default=None, metadata=_range(1))  # tilt-series slab refinement
    # tilt series: the camera's tilt-axis angle (deg from x towards the rows; null: estimated live),
    # the source's weights w = cos α / (1 + λ sin² α) (null: none), ice's inelastic mean free path
    tilt_axis_deg: float | None = field(default=None, metadata=_range(0.0, 180.0))
    tilt_lambda: float | None = field(default=None, metadata=_range(0.0))
    inelastic_mfp_nm: float = field(default=350.0, metadata=_range(1.0))
    refine: Literal["tv", "sirt"] | None = "tv"  # run-end refinement, warm-started from the FBP
    refine_iterations: int = field(default=30, metadata=_range(1, 10_000))
    refine_seconds: float = field(default=10.0, metadata=_range(0.0))  # per volume (all elements together)
    # Keeping pace with large frames (docs/architecture.md, "Large frames"): a tilt-series frame
    # of more pixels than live_max_frame_pixels is aligned and reconstructed binned (the smallest
    # integer factor that fits; the run file keeps it whole); a live volume of more voxels per
    # channel than live_max_voxels is binned further. Shifts are still published in camera pixels.
    live_max_frame_pixels: int = field(default=2**20, metadata=_range(256))
    live_max_voxels: int = field(default=2**25, metadata=_range(256))
    dask: Dask | None = None  # null: refinement in the finisher thread, whole volume; see Dask


@dataclass
class Storage:
    """How run files are written (docs/storage.md).

    ``compression`` is the HDF5 filter of every frame dataset, one chunk per frame:
    ``bitshuffle-lz4`` (default; as Dectris/Eiger files) and ``blosc-lz4``/``blosc-zstd`` need
    ``hdf5plugin`` in the reader's Python (``import hdf5plugin`` before ``h5py``), ``gzip`` is read
    by every HDF5 library, ``none`` stores raw chunks (fastest, largest). ``xrf_spectra: false``
    stores only the XRF element maps, not the per-pixel spectra (which PyXRF needs to fit).
    ``flush_interval_s``: how often the file is flushed while frames arrive (and at every stream
    end): SWMR readers see frames, and a ``kill -9`` keeps them, from their flush on; each run's
    ``frames_on_disk`` in ``livetomo status`` says how many that is."""

    compression: Literal["bitshuffle-lz4", "blosc-lz4", "blosc-zstd", "gzip", "none"] = "bitshuffle-lz4"
    xrf_spectra: bool = True
    flush_interval_s: float = field(default=1.0, metadata=_range(0.0, 60.0))


@dataclass
class Web:
    """The live monitoring page (read-only). ``port: 0`` picks a free port; the URL is logged.

    A host other than loopback needs ``allow_remote: true`` (the page is read-only but
    unauthenticated); it answers only requests naming ``host`` or one of ``allowed_hosts``
    (default: the loopback names) in their Host header.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=_range(0, 65535))
    allow_remote: bool = False
    allowed_hosts: tuple[str, ...] = ()


@dataclass
class Tiled:
    """The run catalogue: every run's documents, and its frames by reference (stream_resource into
    the run file), written to Tiled with bluesky-tiled-plugins' TiledWriter.

    ``enabled``: "auto" catalogues when the ``tiled`` extra is installed (and says at start-up
    that it is off when not), true requires it, false turns it off. ``uri`` null: the embedded
    catalog in ``<storage_directory>/catalog`` (SQLite, the frames read from the run files);
    else a Tiled server, which must be able to read the storage directory. ``api_key`` for that
    server (null: the ``TILED_API_KEY`` environment variable); never written into run files.
    """

    enabled: bool | Literal["auto"] = "auto"
    uri: str | None = None
    api_key: str | None = None


@dataclass
class Beamline:
    """Which devices the daemon's RunEngine drives: ``kind`` names a beamline module, ``settings``
    are that module's own (in YAML they sit beside ``kind``)."""

    kind: str = "simulated"
    settings: Any = None

    def as_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self.settings)}


@dataclass
class DaemonConfig:
    endpoints: Endpoints = field(default_factory=Endpoints)
    storage_directory: str = "livetomo_data"
    limits: Limits = field(default_factory=Limits)
    processing: Processing = field(default_factory=Processing)
    storage: Storage = field(default_factory=Storage)
    beamline: Beamline = field(default_factory=Beamline)
    curve: Curve = field(default_factory=Curve)
    web: Web = field(default_factory=Web)
    tiled: Tiled = field(default_factory=Tiled)

    def __post_init__(self):
        if self.beamline.settings is None:
            self.beamline.settings = beamline_module(self.beamline.kind).Settings()

    def as_dict(self) -> dict:
        out = asdict(self)
        out["beamline"] = self.beamline.as_dict()
        if out["tiled"]["api_key"]:
            out["tiled"]["api_key"] = "(set)"  # a secret: not into run files or the control API
        return out


# ----------------------------------------------------------------------------------- checking


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join("null" if a is None else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is tuple and args[-1] is Ellipsis:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is dict:
        return f"a mapping of {_plural(args[0])} to {_plural(args[1])}"
    if is_dataclass(tp):
        return "a mapping of keys"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _plural(tp) -> str:
    words = _describe(tp)
    return {"a number": "numbers", "true or false": "booleans"}.get(
        words, words.removeprefix("an ").removeprefix("a ") + "s"
    )


def _section_type(tp):
    """The dataclass of a section annotated ``Section`` or ``Section | None``, else None."""
    if is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1 and is_dataclass(options[0]):
            return options[0]
    return None


def _check_value(value, tp, where: str):
    """``value`` converted to ``tp`` (int, float, bool, str, Literal, Optional, tuples, dict[str, X])."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args and not isinstance(value, bool) or (value is None and None in args):
            return value
        allowed = ", ".join("null" if a is None else repr(a) for a in args)
        raise ConfigError(f"{where} = {value!r} is not allowed; allowed: {allowed}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and typing.get_origin(options[0]) is Literal and type(None) in args:
            if value in typing.get_args(options[0]) and not isinstance(value, bool):
                return value
            allowed = ", ".join([*map(repr, typing.get_args(options[0])), "null"])
            raise ConfigError(f"{where} = {value!r} is not allowed; allowed: {allowed}")
        if len(options) == 1:
            return _check_value(value, options[0], where)
        for option in options:
            try:
                return _check_value(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} = {value!r} must be {_describe(tp)}")
    if origin is tuple and args[-1] is Ellipsis:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} = {value!r} must be {_describe(tp)}")
        return tuple(_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{where} = {value!r} must be {_describe(tp)}")
            return tuple(_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where} = {value!r} must be {_describe(tp)}")
        return tuple(
            _check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} = {value!r} must be {_describe(tp)}")
        return {
            _check_value(k, args[0], f"{where} key {k!r}"): _check_value(v, args[1], f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{where} = {value!r} must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r} must be a string")
        return value
    raise ConfigError(f"{where}: cannot check values of type {tp}")  # a schema bug, not the user's


def _check_range(value, spec, where: str) -> None:
    low, high = spec
    if value is None or isinstance(value, tuple):
        values = [] if value is None else list(value)
    else:
        values = [value]
    for v in values:
        if (low is not None and v < low) or (high is not None and v > high):
            bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            raise ConfigError(f"{where} = {value!r} is outside the allowed range {bounds}")


def _unknown(keys, known, where: str) -> ConfigError:
    parts = []
    for key in sorted(map(str, keys)):
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(f"{where}.{key}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    noun = "key" if len(parts) == 1 else "keys"
    return ConfigError(f"unknown {noun} {', '.join(parts)}; allowed in {where}: {', '.join(sorted(known))}")


def build_section(cls, data, where: str):
    """An instance of dataclass ``cls`` from a mapping, every value checked against its annotation."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = set(data) - set(known)
    if unknown:
        raise _unknown(unknown, known, where)
    values = {}
    for name, value in data.items():
        f, key = known[name], f"{where}.{name}"
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            values[name] = build_section(type(default), value, key)
            continue
        section = _section_type(hints[name])
        if section is not None:  # a nested section, required or optional (null: absent)
            if value is None and section is not hints[name]:
                values[name] = None
            else:
                values[name] = build_section(section, {} if value is None else value, key)
            continue
        values[name] = _check_value(value, hints[name], key)
        if "range" in f.metadata:
            _check_range(values[name], f.metadata["range"], key)
    missing = [
        name
        for name, f in known.items()
        if name not in values and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        keys = ", ".join(f"{where}.{name}" for name in missing)
        raise ConfigError(f"{keys} {'is' if len(missing) == 1 else 'are'} required but missing")
    try:
        return cls(**values)
    except ValueError as exc:  # the section's own cross-checks (__post_init__)
        raise ConfigError(str(exc)) from None


def _beamline(data, where: str) -> Beamline:
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    kind = data.pop("kind", "simulated")
    if kind not in BEAMLINES:
        raise ConfigError(
            f"{where}.kind = {kind!r} is not a known beamline; known: {', '.join(sorted(BEAMLINES))}"
        )
    return Beamline(kind=kind, settings=build_section(beamline_module(kind).Settings, data, where))


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> DaemonConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; every value checked."""
    data: dict = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the configuration {path}: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: the configuration must be a mapping of sections, got {type(data).__name__}"
            )
    for key, value in (overrides or {}).items():
        data[key] = {**(data.get(key) or {}), **value} if isinstance(value, dict) else value
    beamline = data.pop("beamline", None)
    try:
        config = build_section(DaemonConfig, data, "config")
        config.beamline = _beamline(beamline, "beamline")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}" if path is not None else str(exc)) from None
    check_bind_policy(config)
    return config


def check_bind_policy(config: DaemonConfig) -> None:
    """Refuse a non-loopback bind unless CURVE keys are configured."""
    exposed = [
        f"endpoints.{name} = {value}"
        for name, value in asdict(config.endpoints).items()
        if value is not None and not is_loopback(value)
    ]
    web = config.web
    if web.enabled and not is_loopback(f"tcp://{web.host}:{web.port}") and not web.allow_remote:
        raise ConfigError(
            f"web.host = {web.host} is not loopback; the page is read-only but anyone who reaches it "
            "can watch the scan: set web.allow_remote: true (and web.allowed_hosts to the names it is "
            "reached by), or tunnel it over SSH"
        )
    if exposed and not config.curve.server_secret_key:
        raise ConfigError(
            f"{', '.join(exposed)} bind beyond loopback; configure curve.server_secret_key "
            "(make keys with 'livetomo keys DIR') or bind to 127.0.0.1"
        )
    if config.curve.server_secret_key and not config.curve.authorized_clients:
        raise ConfigError(
            "curve.authorized_clients must name a directory of client public keys: with CURVE on, only "
            "listed clients get in (livetomo keys DIR writes one client pair; copy its .key there)"
        )
    if config.curve.server_secret_key and not Path(config.curve.server_secret_key).is_file():
        raise ConfigError(f"curve.server_secret_key: file {config.curve.server_secret_key} does not exist")
    if config.curve.authorized_clients and not Path(config.curve.authorized_clients).is_dir():
        raise ConfigError(
            f"curve.authorized_clients: directory {config.curve.authorized_clients} does not exist"
        )
