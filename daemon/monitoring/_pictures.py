"""Pictures at run end: shift traces, alignment quality and central slices as PNG (matplotlib, Agg).

``write_run_pictures`` takes what the monitor accumulated (a ``MonitorState`` or its snapshot) or
plain arrays, so the pipeline can call it with either at the end of a run and put the files
beside the run's HDF5 file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..transport import decode_image
from ._state import MonitorState

PLANES = ("xy", "xz", "yz")


@dataclass
class RunArrays:
    """What the pictures show, as arrays.

    angle : (n,) degrees; shift : (n, 2) measured (dy, dx), px; fwhm : (n, 2) correlation-peak FWHM
    (y, x), px; psr : (n,) peak-to-sidelobe ratio; ok : (n,) bool, False for low-quality frames;
    seq : (n,) frame numbers; fit_angles : (m,) degrees and fit : (m, 2) fitted runout (dy, dx), px;
    centre_px : rotation-centre offset, px, or None; slices : channel -> plane ("xy", "xz", "yz")
    -> 2-D array of the reconstruction's central slices. NaN marks a missing value.
    """

    angle: np.ndarray
    shift: np.ndarray
    fwhm: np.ndarray
    psr: np.ndarray
    ok: np.ndarray
    seq: np.ndarray
    fit_angles: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fit: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    centre_px: float | None = None
    slices: dict = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: dict) -> RunArrays:
        """From a dict with the field names above; only ``angle`` and ``shift`` are required."""
        missing = {"angle", "shift"} - data.keys()
        if missing:
            raise ValueError(f"run arrays need {sorted(missing)}; given: {sorted(data)}")
        angle = np.asarray(data["angle"], float).ravel()
        n = angle.size
        shift = np.asarray(data["shift"], float).reshape(n, 2)

        def get(name, shape, fill):
            value = data.get(name)
            return (
                np.full(shape, fill, dtype=float)
                if value is None
                else np.asarray(value, float).reshape(shape)
            )

        fit_angles = np.asarray(data.get("fit_angles", ()), float).ravel()
        return cls(
            angle=angle,
            shift=shift,
            fwhm=get("fwhm", (n, 2), np.nan),
            psr=get("psr", (n,), np.nan),
            ok=np.asarray(data["ok"], bool).ravel() if data.get("ok") is not None else np.ones(n, bool),
            seq=np.asarray(data["seq"]).ravel() if data.get("seq") is not None else np.arange(1, n + 1),
            fit_angles=fit_angles,
            fit=np.asarray(data.get("fit", ()), float).reshape(fit_angles.size, 2),
            centre_px=data.get("centre_px"),
            slices={
                c: {p: np.asarray(v) for p, v in planes.items()}
                for c, planes in (data.get("slices") or {}).items()
            },
        )

    @classmethod
    def from_snapshot(cls, snapshot: dict) -> RunArrays:
        """From ``MonitorState.snapshot()`` (images decoded from the results encoding)."""
        frames = snapshot.get("frames") or []

        def column(*keys):
            rows = [[np.nan if f.get(k) is None else f[k] for k in keys] for f in frames]
            return np.asarray(rows, float).reshape(len(frames), len(keys))

        runout = snapshot.get("runout") or {}
        slices = {
            channel: {p: decode_image(s[p]) for p in PLANES if s.get(p)}
            for channel, s in (snapshot.get("slices") or {}).items()
        }
        return cls.from_mapping(
            {
                "angle": column("angle")[:, 0],
                "shift": column("dy", "dx"),
                "fwhm": column("fwhm_y", "fwhm_x"),
                "psr": column("psr")[:, 0],
                "ok": [f.get("ok") is not False for f in frames],
                "seq": [i + 1 if f.get("seq") is None else f["seq"] for i, f in enumerate(frames)],
                "fit_angles": runout.get("fit_angles") or [],
                "fit": [[np.nan if v is None else v for v in pair] for pair in runout.get("fit") or []],
                "centre_px": runout.get("centre_px"),
                "slices": slices,
            }
        )


def _as_arrays(source) -> RunArrays:
    if isinstance(source, RunArrays):
        return source
    if isinstance(source, MonitorState):
        return RunArrays.from_snapshot(source.snapshot())
    if isinstance(source, dict) and "frames" in source:
        return RunArrays.from_snapshot(source)
    if isinstance(source, dict):
        return RunArrays.from_mapping(source)
    raise TypeError(
        "write_run_pictures needs a MonitorState, its snapshot, RunArrays or a dict of arrays; "
        f"got {type(source).__name__}"
    )


def _shift_traces(data: RunArrays, title: str) -> Figure:
    fig = Figure(figsize=(8, 6), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    low = ~data.ok
    for ax, axis, name in ((axes[0], 1, "x"), (axes[1], 0, "y")):
        ax.plot(data.angle[~low], data.shift[~low, axis], "o", ms=3, label=f"measured {name}")
        if low.any():
            ax.plot(
                data.angle[low], data.shift[low, axis], "x", color="red", ms=7, mew=2, label="low quality"
            )
        if data.fit_angles.size:
            ax.plot(data.fit_angles, data.fit[:, axis], "-", color="orange", lw=2, label="fitted runout")
        if axis == 1 and data.centre_px is not None:
            ax.axhline(
                data.centre_px, color="green", ls="--", label=f"rotation centre {data.centre_px:.2f} px"
            )
        ax.set_ylabel(f"{name} shift (px)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[1].set_xlabel("angle (deg)")
    fig.suptitle(f"shift traces, {title}")
    return fig


def _quality(data: RunArrays, title: str) -> Figure:
    fig = Figure(figsize=(8, 6), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    low = ~data.ok
    for axis, name in ((0, "y"), (1, "x")):
        axes[0].plot(data.seq, data.fwhm[:, axis], "o", ms=3, label=f"FWHM {name}")
    axes[1].plot(data.seq, data.psr, "o", ms=3, color="green", label="PSR")
    if low.any():
        axes[0].plot(
            data.seq[low],
            np.fmax(data.fwhm[low, 0], data.fwhm[low, 1]),  # NaN only where both are missing
            "x",
            color="red",
            ms=8,
            mew=2,
            label="low quality",
        )
        axes[1].plot(data.seq[low], data.psr[low], "x", color="red", ms=8, mew=2, label="low quality")
    axes[0].set_ylabel("correlation peak FWHM (px)")
    axes[1].set_ylabel("peak-to-sidelobe ratio")
    axes[1].set_xlabel("frame")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    fig.suptitle(f"alignment quality, {title}: {int(low.sum())} of {data.ok.size} frames low quality")
    return fig


def _slices(data: RunArrays, title: str) -> Figure:
    channels = list(data.slices)
    fig = Figure(figsize=(9, 3 * len(channels)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(channels), 3))
    for row, channel in zip(axes, channels, strict=True):
        for ax, plane in zip(row, PLANES, strict=True):
            image = data.slices[channel].get(plane)
            if image is not None:
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            ax.set_title(f"{channel} {plane}")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"central slices, {title}")
    return fig


def write_run_pictures(state_or_arrays, directory, run_uid: str) -> list[Path]:
    """Write the run-end pictures as PNG into ``directory``; return their paths.

    Parameters
    ----------
    state_or_arrays : a MonitorState, its snapshot, ``RunArrays``, or a dict of arrays with the
        ``RunArrays`` field names (``angle`` and ``shift`` required).
    directory : where to write (created if missing), usually beside the run's HDF5 file.
    run_uid : names the files ``<run_uid>_shift_traces.png``, ``<run_uid>_alignment_quality.png``
        and ``<run_uid>_slices.png``; a picture with nothing to show (no frames, no slices) is skipped.
    """
    data = _as_arrays(state_or_arrays)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(run_uid)) or "run"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    title = f"run {str(run_uid)[:8]}"
    figures = []
    if data.angle.size:
        figures += [
            ("shift_traces", _shift_traces(data, title)),
            ("alignment_quality", _quality(data, title)),
        ]
    if data.slices:
        figures.append(("slices", _slices(data, title)))
    paths = []
    for name, fig in figures:
        path = directory / f"{safe}_{name}.png"
        FigureCanvasAgg(fig)  # Agg canvas on the figure itself: no pyplot, no global backend switch
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths
