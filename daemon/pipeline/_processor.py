"""The ``Processor`` protocol (what the pipeline asks of each method) and what processors share.

The processing thread calls ``descriptor``, ``event`` and ``frame`` in document and frame
order; ``frame`` returns results messages to publish and runs its stages inside
``ctx.stage(name)``, which times them and records a failure without stopping the run.
``progress`` is read from other threads and must return plain numbers. At run end the
finishing thread calls ``finish`` (write processed data into the still-open run file, make
pictures) and, once the file is closed, ``export``; both report each step through
``report(text, step, total)`` so the page can show "finishing: refining Zn, 3/8".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ...processing.recon import IncrementalReconstructor
from ...processing.recon.slabs import RefinementCancelled, plan_slabs, refine_in_slabs
from ...processing.register import shift_image
from ..config import Processing
from ..monitoring import RunArrays, write_run_pictures
from ..transport import encode_image
from . import _messages as messages
from ._corrections import CorrectionLog

Report = Callable[[str, int, int], None]


@dataclass
class FrameContext:
    """What ``Processor.frame`` gets besides the frame.

    stage : ``with ctx.stage("align"):`` times the block into the pipeline's stage statistics
        and the frame's ``latency``; an exception inside is recorded, not raised.
    previews : whether to make preview images for this frame (False when processing is behind:
        previews are coalesced, the frame's shift and reconstruction are not).
    """

    stage: Callable[[str], AbstractContextManager]
    previews: bool = True
    latency: dict = field(default_factory=dict)


@dataclass
class RunEnd:
    """What ``finish`` produced: pictures written and messages to publish."""

    pictures: list[Path] = field(default_factory=list)
    messages: list[tuple[str, dict]] = field(default_factory=list)


def binning_for(shape, limit: int) -> int:
    """The smallest integer factor that brings ``shape`` (binned along every axis) to at most
    ``limit`` elements."""
    b = 1
    while int(np.prod([max(int(n) // b, 1) for n in shape], dtype=np.int64)) > limit:
        b += 1
    return b


@runtime_checkable
class Processor(Protocol):
    """What the pipeline needs from a method's processor (one instance per run)."""

    channels: tuple[str, ...]

    def descriptor(self, run, doc: dict) -> None: ...

    def event(self, run, doc: dict) -> list[tuple[str, dict]]: ...

    def frame(self, run, frame, ctx: FrameContext) -> list[tuple[str, dict]]: ...

    def progress(self) -> tuple[int, int | None]: ...

    def superseded(self, frames: dict[str, list[int]]) -> None: ...

    def reacquired(self, seq: int) -> None: ...

    def previews(self, run) -> list[tuple[str, dict]]: ...

    def complete(self, run) -> bool: ...

    def finish(self, run, directory: Path, report: Report) -> RunEnd: ...

    def export(self, run, directory: Path, report: Report) -> list[Path]: ...


class BaseProcessor:
    """Defaults for every method (store only) and the helpers the processing methods share.

    Progress counts the frames of the primary stream (the method's, or the first stream that
    arrives) against the start document's ``num_points``.
    """

    channels: tuple[str, ...] = ()
    primary_stream: str | None = None

    def __init__(self, start: dict, processing: Processing):
        self.start = start
        self.processing = processing
        self.records: dict[int, dict] = {}  # seq -> angle, shift (current), first_shift, quality, ok
        self.applied: dict[int, dict] = {}  # id(reconstruction) -> seq -> shift last applied there
        self.aligned_seqs: list[int] = []  # the frames the aligner holds, in its order
        self.n_columns: int | None = None
        self.done = 0
        self.replaced_exposures = 0  # frames taken but replaced (re-acquired, repeated): dose, not progress
        self._counted: set[int] = set()  # primary-stream frames counted in ``done``
        self._replaced: set[int] = set()  # frames the plan re-acquired
        self._first_stream: str | None = None
        self.corrections = CorrectionLog(start)  # what tracking moved, for the run file
        # id(reconstruction) -> frame pixels per voxel of that live volume (binned to keep pace)
        self.recon_binning: dict[int, int] = {}

    # -- the protocol's defaults (subclasses that override them call these)
    def descriptor(self, run, doc: dict) -> None:
        self.corrections.descriptor(doc)

    def event(self, run, doc: dict) -> list:
        self.corrections.event(doc)
        return []

    def frame(self, run, frame, ctx: FrameContext) -> list:
        self.count(frame)
        return []

    def progress(self) -> tuple[int, int | None]:
        return self.done, self.start.get("num_points")

    def previews(self, run) -> list:
        """The latest previews (slices of every reconstruction) once the run's last frame is in."""
        return []

    def superseded(self, frames: dict[str, list[int]]) -> None:
        """Frames of these streams were sent twice for one step (a pause cut the step after its
        frames went out; the step was repeated): they do not count as progress, leave the live
        reconstructions and the published shifts. A step's frames share their sequence number
        across streams, so the numbers apply to every reconstruction."""
        primary = self.primary_stream or self._first_stream
        self.done -= len(frames.get(primary, ()))
        self.replaced_exposures += len(frames.get(primary, ()))
        self._leave({int(s) for stream_seqs in frames.values() for s in stream_seqs})

    def reacquired(self, seq: int) -> None:
        """The plan takes frame ``seq`` again (its shift was flagged untrusted): it leaves the
        progress, the published shifts and the live reconstructions; its replacement comes as
        a new frame at the same angle."""
        if seq in self._replaced:
            return
        self._replaced.add(seq)
        if seq in self._counted:
            self.done -= 1
            self.replaced_exposures += 1
        self._leave({seq})

    def _leave(self, seqs: set[int]) -> None:
        """Frames ``seqs`` leave the published shifts, the live reconstructions and the aligner's
        joint solution (no reference for later frames)."""
        for seq in seqs & set(self.records):
            self.records[seq]["superseded"] = True
        aligner = getattr(self, "aligner", None)
        if aligner is not None:
            for seq in seqs & set(self.aligned_seqs):
                aligner.exclude(self.aligned_seqs.index(seq))
        reconstructions = getattr(self, "_reconstructions", lambda: ())()
        for recon in reconstructions:
            if recon is not None:
                for key in seqs & set(recon.keys):
                    recon.remove(key)

    def degraded(self) -> dict:
        """What this run gives up to keep pace with large frames, for ``livetomo status``
        (docs/architecture.md, "Large frames"): frames processed binned, live volumes binned."""
        out = {}
        if getattr(self, "bin", 1) > 1:
            out["frames_binned_by"] = int(self.bin)
        r = max(list(self.recon_binning.values()), default=1)
        if r > 1:
            out["live_volume_binned_by"] = int(r)
        return out

    def wants(self, stream: str) -> bool:
        """Whether frames of ``stream`` go to processing. XRF spectra do not: they are stored for
        fitting (PyXRF), and every live method works on the element windows (``*_roi``); a 230 ×
        230 × 4096 raster would otherwise cross the processing queue for nothing."""
        return not stream.endswith("_spectra")

    def complete(self, run) -> bool:
        done, planned = self.progress()
        return run.streams_complete and planned is not None and done >= planned

    def finish(self, run, directory: Path, report: Report) -> RunEnd:
        return RunEnd()

    def export(self, run, directory: Path, report: Report) -> list[Path]:
        return []

    # -- shared helpers
    def count(self, frame) -> bool:
        """Count ``frame`` if it belongs to the primary stream; True if it does."""
        primary = self.primary_stream or self._first_stream or frame.stream
        self._first_stream = primary
        if frame.stream == primary:
            self.done += 1
            self._counted.add(frame.seq)
            if frame.seq in self._replaced:  # marked before it arrived: taken, not progress
                self.done -= 1
                self.replaced_exposures += 1
            return True
        return False

    def run_arrays(self, aligner=None, slices: dict | None = None) -> RunArrays:
        """Angles, shifts and quality of every frame so far (and the runout fit), for pictures."""
        seqs = self.published_seqs()
        recs = [self.records[s] for s in seqs]
        quality = [r.get("quality") for r in recs]
        data = {
            "seq": np.asarray(seqs, float),
            "angle": np.asarray([r["angle"] for r in recs], float),
            "shift": np.asarray([r["shift"] for r in recs], float).reshape(-1, 2),
            "fwhm": np.asarray([_get(q, "fwhm_px", (np.nan, np.nan)) for q in quality], float),
            "psr": np.asarray([_get(q, "psr", np.nan) for q in quality], float),
            "ok": np.asarray(
                [r.get("ok", _get(q, "ok", True)) for r, q in zip(recs, quality, strict=True)], bool
            ),
            "slices": slices or {},
        }
        runout = getattr(aligner, "runout", None)
        if runout is not None and len(data["angle"]):
            fit_angles = np.linspace(np.min(data["angle"]), np.max(data["angle"]), 181)
            data["fit_angles"] = fit_angles
            data["fit"] = np.asarray(runout.evaluate(fit_angles)).reshape(-1, 2)
        if aligner is not None and getattr(aligner, "centre_px", None) is not None:
            columns = self.n_columns or 1
            data["centre_px"] = aligner.centre_px - (columns - 1) / 2.0  # offset from the centre column
        return RunArrays.from_mapping(data)

    def take_shifts(self, shifts, reconstructions, *, uncertainties=None, ok=None, tolerance_px=0.0) -> None:
        """Current shifts (one per frame the aligner holds) into the records and the volumes.

        ``uncertainties`` ((n, 2) px) and ``ok`` ((n,) bool) update each frame's current quality.
        A volume is redone only for frames whose shift moved by more than ``tolerance_px``
        since it was last applied there (the records always hold the exact current values).
        """
        for k, (seq, shift) in enumerate(zip(self.aligned_seqs, shifts, strict=True)):
            record = self.records[seq]
            record["shift"] = (float(shift[0]), float(shift[1]))
            if uncertainties is not None:
                record["uncertainty"] = float(np.nanmax(uncertainties[k]))
            if ok is not None:
                record["ok"] = bool(ok[k])
        for recon in reconstructions:
            if recon is None:
                continue
            keys = set(recon.keys)
            applied = self.applied.setdefault(id(recon), {})
            moved = {}
            for s in self.aligned_seqs:
                if s not in keys:
                    continue
                new = self.records[s]["shift"]
                old = applied.get(s, self.records[s].get("first_shift", new))
                if max(abs(new[0] - old[0]), abs(new[1] - old[1])) > tolerance_px:
                    moved[s] = new
            if moved:
                b = self.recon_binning.get(id(recon), 1)
                recon.update_shifts({s: (v[0] / b, v[1] / b) for s, v in moved.items()})
                applied.update(moved)

    def refined(
        self, recon: IncrementalReconstructor, *, nonnegative: bool, report: Report, what: str, run=None
    ) -> np.ndarray | None:
        """The configured iterative refinement of ``recon`` (warm-started), or None.

        Without ``processing.dask``: runs here in blocks of iterations, reporting "refining <what>
        (tv)" with the iterations done, until ``refine_iterations`` or ``refine_seconds`` (for
        the whole volume, every channel of it together) is reached; a volume above
        ``live_max_voxels`` here in slabs (``_refine_in_slabs``). With it: slabs along the
        rotation axis on Dask (``_refine.SlabRunner``), ``refine_iterations`` each at most, each
        stopping when ``refine_seconds`` have passed since the slabs were submitted, reported per
        slab. ``nonnegative`` only for quantities that cannot be negative (element
        concentrations); phase and K3 contrast are signed. ``run``'s ``cancel`` event (set by the
        control API's ``cancel_refinement``) ends it early: None, the run keeps its FBP volume.
        """
        if self.processing.refine is None or recon.n_projections < 3:
            return None
        cancel = getattr(run, "cancel", None)
        runner = getattr(run, "slab_runner", None)
        method, total = self.processing.refine, self.processing.refine_iterations
        text = f"refining {what} ({method})"
        try:
            if runner is not None:
                return runner.refine(
                    recon, method, total, nonnegative=nonnegative, report=report, text=text, cancel=cancel,
                    seconds=self.processing.refine_seconds,
                )  # fmt: skip
            return self._refine_here(recon, nonnegative, report, text, cancel)
        except RefinementCancelled as exc:
            report(f"{text}: cancelled ({exc})", 1, 1)
            return None

    def _refine_here(self, recon, nonnegative: bool, report: Report, text: str, cancel) -> np.ndarray:
        channels = (
            int(np.prod(recon.projection_shape[:-2], dtype=np.int64))
            if len(recon.projection_shape) > 2
            else 1
        )
        voxels = channels * recon.projection_shape[-2] * recon.shape_yx[0] * recon.shape_yx[1]
        if voxels > self.processing.live_max_voxels:
            return self._refine_in_slabs(recon, nonnegative, report, text, cancel, channels)
        total, budget = self.processing.refine_iterations, self.processing.refine_seconds
        refiner = recon.refiner(self.processing.refine, nonnegative=nonnegative)
        t0 = time.perf_counter()
        report(text, 0, total)
        while refiner.iterations < total:
            # One iteration at a time: an iteration of a large volume takes seconds to minutes,
            # and a cancel must not wait for a whole block (reports are throttled by the finisher).
            if cancel is not None and cancel.is_set():
                raise RefinementCancelled(f"after {refiner.iterations} of {total} iterations")
            refiner.run(1)
            report(text, refiner.iterations, total)
            if time.perf_counter() - t0 >= budget:
                break
        return np.asarray(refiner.volume)

    def _refine_in_slabs(self, recon, nonnegative, report, text, cancel, channels: int) -> np.ndarray:
        """A volume larger than ``live_max_voxels`` (all channels) refined here slab after slab
        (``processing.recon.slabs``, as on Dask): the solver's working copies then cover one
        slab, not the volume (TV of seven 230³ element volumes at once passed 7 GB). Each slab
        runs ``refine_iterations`` at most and stops at the ``refine_seconds`` deadline after at
        least one iteration, as Dask slabs do."""
        method = self.processing.refine
        nz = recon.projection_shape[-2]
        per_slice = channels * recon.shape_yx[0] * recon.shape_yx[1]
        slab = int(max(1, min(nz, (self.processing.live_max_voxels // 4) // max(per_slice, 1))))
        angles, data, dx = recon.aligned_projections()
        tasks = plan_slabs(
            np.asarray(data), angles, np.asarray(recon.volume()), method=method,
            n_iter=self.processing.refine_iterations, slab_slices=slab, halo=None if method == "tv" else 0,
            shape_yx=recon.shape_yx, center_offset=recon.center_offset, shifts_dx=dx,
            voxel_size=recon.voxel_size, nonnegative=nonnegative,
        )  # fmt: skip
        deadline = time.time() + self.processing.refine_seconds
        tasks = [dataclasses.replace(t, deadline=deadline) for t in tasks]
        report(f"{text}: {len(tasks)} slabs here", 0, len(tasks))
        stop = None if cancel is None else cancel.is_set
        return refine_in_slabs(
            tasks, stop, progress=lambda done, n: report(f"{text}: slab {done}/{n}", done, n)
        )

    def write_volume(
        self, run, name: str, volume, refined, slices: dict, units: str | None = None, binning: int = 1
    ) -> None:
        """The FBP volume (and its refinement) of ``name`` into the run file; central slices kept.
        ``binning``: frame pixels per voxel side (a live volume binned to keep pace)."""
        attrs = {"method": "filtered back-projection", "binning": int(binning)}
        if units:
            attrs["units"] = units
        pixel = run.writer.pixel_size()
        voxel = None if pixel is None else (pixel[0] * binning, pixel[1])  # a binned volume's voxels
        run.writer.write_volume(name, volume, attrs=attrs, voxel_size=voxel)
        slices[name] = central_slices(volume)
        if refined is not None:
            method = self.processing.refine
            run.writer.write_volume(
                f"{name}_{method}",
                refined,
                voxel_size=voxel,
                attrs={
                    "method": method,
                    "iterations": self.processing.refine_iterations,
                    "binning": int(binning),
                },
            )
            if name in ("phase", "Zn", "k3", "image"):  # the pictures show the main channels refined
                slices[f"{name} ({method})"] = central_slices(refined)

    # -- views on request (the page's steerable slice and sinogram) -------------------------------
    def view_sources(self) -> dict:
        """Channel -> (IncrementalReconstructor, index in its channel stack or None)."""
        return {}

    def units_of(self, channel: str) -> str:
        """Units of a channel's reconstructed values (shown with the colour bar)."""
        return ""

    def view(self, kind: str, params: dict) -> dict:
        """A slice of the current reconstruction or a sinogram of the aligned projections.

        ``kind='slice'``: params ``channel``, ``axis`` ('xy', 'xz' or 'yz': the plane, normal to
        z, y or x) and ``index`` (position along that normal, voxels; default the middle).
        ``kind='sinogram'``: params ``channel`` and ``row`` (detector row = slice z; default the
        middle): aligned projections' row against angle (sorted). Images come encoded as on the
        results stream. Raises KeyError/ValueError (the request's fault) with the reason.
        """
        sources = self.view_sources()
        channel = params.get("channel") or next(iter(sources), None)
        if channel not in sources:
            raise KeyError(f"channel {channel!r} is not reconstructed; known: {', '.join(sources) or 'none'}")
        recon, index = sources[channel]
        if recon.n_projections == 0:
            raise ValueError("no projection reconstructed yet")
        pick = (lambda a: a[index]) if index is not None else (lambda a: a)
        if kind == "slice":
            volume = np.asarray(pick(np.asarray(recon.volume())))
            axis = params.get("axis", "xy")
            normal = {"xy": 0, "xz": 1, "yz": 2}.get(axis)
            if normal is None:
                raise ValueError(f"axis = {axis!r} is not one of 'xy', 'xz', 'yz'")
            size = volume.shape[normal]
            position = size // 2 if params.get("index") is None else int(params["index"])
            if not 0 <= position < size:
                raise ValueError(f"index = {position} is outside [0, {size - 1}] for the {axis} plane")
            plane = np.take(volume, position, axis=normal)
            return {
                "kind": "slice",
                "channel": channel,
                "axis": axis,
                "index": position,
                "size": size,
                "n_projections": recon.n_projections,
                "units": self.units_of(channel),
                "image": encode_image(np.asarray(plane, np.float32)),
            }
        if kind == "sinogram":
            angles, data, dx = recon.aligned_projections()
            data = np.asarray(
                pick(np.moveaxis(np.asarray(data), 0, -3))
            )  # (..., n, nz, n_u) -> channel picked
            n_rows = data.shape[-2]
            row = n_rows // 2 if params.get("row") is None else int(params["row"])
            if not 0 <= row < n_rows:
                raise ValueError(f"row = {row} is outside [0, {n_rows - 1}]")
            order = np.argsort(np.asarray(angles, dtype=float))
            lines = [shift_image(data[k, row][None, :], (0.0, float(dx[k])))[0] for k in order]
            return {
                "kind": "sinogram",
                "channel": channel,
                "row": row,
                "rows": n_rows,
                "angles": [float(a) for a in np.asarray(angles, dtype=float)[order]],
                "image": encode_image(np.asarray(lines, np.float32)),
            }
        raise ValueError(f"view kind {kind!r} is not one of 'slice', 'sinogram'")

    def write_alignment(self, run) -> None:
        """Shifts, quality and rotation centre as the NXdata ``/entry/processing/alignment``."""
        if not self.records:
            return
        aligner = getattr(self, "aligner", None)
        arrays = self.run_arrays()
        fields = {
            "shift": (arrays.shift, {"units": "pixel", "columns": "dy, dx"}),
            "rotation_angle": (arrays.angle, {"units": "degree"}),
            "seq": arrays.seq.astype(np.int64),
            "fwhm": (arrays.fwhm, {"units": "pixel"}),
            "psr": arrays.psr,
            "ok": arrays.ok.astype(np.uint8),
        }
        centre = getattr(aligner, "centre_px", None)
        if centre is not None:
            fields["rotation_axis_position"] = (
                np.float64(centre),
                {"units": "pixel", "description": "rotation axis column (0 = first column's centre)"},
            )
        run.writer.write_group(
            "alignment", fields, nx_class="NXdata", attrs={"signal": "shift", "axes": ["rotation_angle", "."]}
        )
        self.corrections.write(run.writer)

    def pictures(self, run, directory: Path, aligner, slices: dict) -> list[Path]:
        return write_run_pictures(self.run_arrays(aligner, slices), directory, run.uid)

    def frame_message(self, run, frame, record: dict, ctx: FrameContext):
        p = run.progress()
        return messages.frame(
            run.uid,
            stream=frame.stream,
            seq=frame.seq,
            angle=frame.angle_deg,
            time=frame.timestamp,
            done=p["done"],
            planned=p["planned"],
            dose_so_far=p["dose_so_far"],
            shift=record.get("shift"),
            quality=record.get("quality"),
            latency_ms=ctx.latency,
        )

    def published_seqs(self) -> list[int]:
        """The frames whose shifts are published and stored: all but superseded ones."""
        return [s for s in sorted(self.records) if not self.records[s].get("superseded")]

    def runout_message(self, run, aligner):
        arrays = self.run_arrays(aligner)
        seqs = self.published_seqs()
        return messages.runout(
            run.uid,
            angles=arrays.angle,
            shifts=arrays.shift,
            fit_angles=arrays.fit_angles,
            fit=arrays.fit,
            centre_px=arrays.centre_px,
            seqs=seqs,
            ok=[self.records[s].get("ok") for s in seqs],
            uncertainty=[self.records[s].get("uncertainty") for s in seqs],
        )


def _get(quality, key: str, default):
    """A field of a quality record (a RegistrationQuality or a dict), ``default`` when absent."""
    if quality is None:
        return default
    value = quality.get(key) if isinstance(quality, dict) else getattr(quality, key, None)
    return default if value is None else value


class StoreOnly(BaseProcessor):
    """Runs of plans livetomo does not know: frames are stored and counted, nothing else."""


def central_slices(volume) -> dict[str, np.ndarray]:
    """The XY, XZ and YZ planes through the centre of a (z, y, x) volume (or (c, z, y, x) stack)."""
    volume = np.asarray(volume)
    z, y, x = (n // 2 for n in volume.shape[-3:])
    return {"xy": volume[..., z, :, :], "xz": volume[..., :, y, :], "yz": volume[..., :, :, x]}
