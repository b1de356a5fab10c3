"""Daemon configuration: a YAML file over sane defaults (every endpoint on loopback)."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml


class ConfigError(ValueError):
    """The configuration names something impossible; the message says what and where."""


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
    authorized_clients: str | None = None  # directory of client public keys; None allows any CURVE client


@dataclass
class Limits:
    max_message_bytes: int = 512 * 1024**2
    ingest_queue: int = 64
    process_queue: int = 64


@dataclass
class Processing:
    align: bool = True
    reconstruct: bool = True
    align_channel: str = "dpc"  # what XRF-DPC scans align on: "dpc" or an element name
    preview_every: int = 1  # publish orthogonal slices every N frames
    lamella_thickness_px: int | None = None  # enables the tilt series' re-projection refinement at run end
    refine: str | None = (
        "tv"  # iterative refinement at run end, warm-started from the FBP: "tv", "sirt" or None
    )
    refine_iterations: int = 30
    refine_seconds: float = 10.0  # per channel; the pipeline takes the next run's frames after it


@dataclass
class Beamline:
    """Which devices the daemon's RunEngine drives. ``simulated`` builds every simulated instrument."""

    kind: str = "simulated"
    seed: int = 0
    microprobe_shape: tuple[int, int, int] = (32, 64, 64)
    tem_shape: tuple[int, int, int] = (48, 16, 48)


@dataclass
class Web:
    """The live monitoring page (read-only). ``port: 0`` picks a free port; the URL is logged."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass
class DaemonConfig:
    endpoints: Endpoints = field(default_factory=Endpoints)
    storage_directory: str = "livetomo_data"
    limits: Limits = field(default_factory=Limits)
    processing: Processing = field(default_factory=Processing)
    beamline: Beamline = field(default_factory=Beamline)
    curve: Curve = field(default_factory=Curve)
    web: Web = field(default_factory=Web)

    def as_dict(self) -> dict:
        return asdict(self)


def _build(cls, data, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
    values = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if is_dataclass(default):
            values[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            values[name] = tuple(value)
        else:
            values[name] = value
    return cls(**values)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> DaemonConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; checked."""
    data: dict = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    for key, value in (overrides or {}).items():
        data[key] = {**(data.get(key) or {}), **value} if isinstance(value, dict) else value
    config = _build(DaemonConfig, data, str(path or "config"))
    check_bind_policy(config)
    return config


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or localhost."""
    url = urlparse(endpoint)
    if url.scheme in ("ipc", "inproc"):
        return True
    host = url.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', interface names and DNS names are all non-loopback


def check_bind_policy(config: DaemonConfig) -> None:
    """Refuse a non-loopback bind unless CURVE keys are configured."""
    exposed = [
        f"{name}={value}"
        for name, value in asdict(config.endpoints).items()
        if value is not None and not is_loopback(value)
    ]
    if config.web.enabled and not is_loopback(f"tcp://{config.web.host}:{config.web.port}"):
        # the page is read-only and carries no control: exposing it is the operator's call, logged
        logging.getLogger("livetomo.config").warning(
            "monitoring page bound to %s (not loopback)", config.web.host
        )
    if exposed and not config.curve.server_secret_key:
        raise ConfigError(
            f"endpoint(s) {', '.join(exposed)} bind beyond loopback; configure curve.server_secret_key "
            "(make keys with 'livetomo keys DIR') or bind to 127.0.0.1"
        )
    if config.curve.server_secret_key and not Path(config.curve.server_secret_key).is_file():
        raise ConfigError(f"curve.server_secret_key: file {config.curve.server_secret_key} does not exist")
