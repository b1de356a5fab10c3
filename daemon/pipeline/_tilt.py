"""Cryo-ET tilt series: K3 tilts aligned as they arrive (any order), reconstructed incrementally."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...processing.recon import IncrementalReconstructor
from ...processing.streaming_align import StreamingTiltAligner
from ..storage import export_tilt_series
from . import _messages as messages
from ._processor import BaseProcessor, FrameContext, Report, RunEnd


class TiltSeriesProcessor(BaseProcessor):
    """Align every K3 tilt on the nearest aligned one (cosine stretch), reconstruct by FBP;
    at run end refine the alignment on a lamella slab (when its thickness is configured),
    write the volume and its iterative refinement, and export MRC + .mdoc."""

    channels = ("k3",)
    primary_stream = "k3_image"

    def __init__(self, start: dict, processing):
        super().__init__(start, processing)
        self.angles_planned = start.get("tilt_angles")
        self.aligner = (
            StreamingTiltAligner(thickness_px=processing.lamella_thickness_px) if processing.align else None
        )
        self.recon: IncrementalReconstructor | None = None
        self.pixel_size_nm: float | None = None

    def descriptor(self, run, doc):
        for device in doc.get("configuration", {}).values():
            for key, value in device.get("data", {}).items():
                if key.endswith("_pixel_size"):
                    self.pixel_size_nm = float(value)

    def frame(self, run, frame, ctx: FrameContext) -> list:
        if not self.count(frame):
            return []
        out = []
        record = {"angle": frame.angle_deg, "shift": (0.0, 0.0), "quality": None}
        self.records[frame.seq] = record
        contrast = None
        with ctx.stage("preprocess"):
            contrast = frame.data / max(float(np.mean(frame.data)), 1e-12) - 1.0  # removes 1/cos transmission
        with ctx.stage("align"):
            if self.aligner is not None:
                result = self.aligner.add(frame.data, frame.angle_deg)
                self.aligned_seqs.append(frame.seq)
                record["shift"], record["quality"] = result.shift_px, result.quality
        with ctx.stage("reconstruct"):
            if self.processing.reconstruct and contrast is not None:
                self.recon = self.recon or IncrementalReconstructor(
                    contrast.shape, angles_deg=self.angles_planned, filter_name="hann"
                )
                self.recon.add(contrast, frame.angle_deg, shift=record["shift"], key=frame.seq)
        out.append(self.frame_message(run, frame, record, ctx))
        if contrast is not None and ctx.previews and frame.seq % self.processing.preview_every == 0:
            out.append(messages.aligned_projection(run.uid, "k3", frame, contrast, record["shift"]))
            if self.recon is not None:
                out.append(messages.reconstruction_slices(run.uid, "k3", self.recon))
        return out

    def view_sources(self) -> dict:
        return {} if self.recon is None else {"k3": (self.recon, None)}

    def units_of(self, channel: str) -> str:
        return "contrast/voxel"

    def finish(self, run, directory: Path, report: Report) -> RunEnd:
        if self.aligner is not None and self.aligner.n_frames >= 3 and self.aligner.thickness_px:
            report("refining the alignment (lamella slab)", 1, 1)
            self.take_shifts(self.aligner.refine(), (self.recon,))
        self.write_alignment(run)
        slices = {}
        if self.recon is not None:
            report("writing the volume", 1, 1)
            volume = np.asarray(self.recon.volume())
            refined = self.refined(self.recon, nonnegative=False, report=report, what="the tomogram")
            self.write_volume(run, "k3", volume, refined, slices)
        report("pictures", 1, 1)
        run.writer.flush()
        return RunEnd(pictures=self.pictures(run, directory, self.aligner, slices))

    def export(self, run, directory: Path, report: Report) -> list[Path]:
        report("MRC + .mdoc", 1, 1)
        pixel_size_A = None if self.pixel_size_nm is None else self.pixel_size_nm * 10.0
        return list(
            export_tilt_series(run.writer.path, directory / f"tilt-{run.uid}.mrc", pixel_size_A=pixel_size_A)
        )
