"""Correlative SXT + FM: at run end, register the FM image onto the SXT image by its FluoSpheres."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...processing.correlate import fuse_hsi, register_fiducial, warp_image
from ..storage import write_fiducial_result
from . import _messages as messages
from ._processor import BaseProcessor, FrameContext, Report, RunEnd

IMAGES = ("sxt_image", "fm_image")


class CorrelativeProcessor(BaseProcessor):
    """Writes the fused HSI picture, an overview (beads, residuals, TRE map) and an HDF5 file of
    the registration beside the run file, and publishes σ_T with its parts and the overlay.
    Progress counts the two images."""

    channels = ("sxt", "fm")

    def __init__(self, start: dict, processing):
        super().__init__(start, processing)
        self.images: dict[str, np.ndarray] = {}
        self.pixel_nm: dict[str, float] = {}

    def descriptor(self, run, doc):
        for device, config in doc.get("configuration", {}).items():
            size = config.get("data", {}).get(f"{device}_pixel_size")
            if size is not None:
                self.pixel_nm[device] = float(size)

    def frame(self, run, frame, ctx: FrameContext) -> list:
        if frame.stream in IMAGES and frame.stream not in self.images:
            self.images[frame.stream] = np.array(frame.data, dtype=np.float32)
            self.done = len(self.images)
        return []

    def progress(self) -> tuple[int, int | None]:
        return self.done, len(IMAGES) * int(self.start.get("num_points") or 1)

    def finish(self, run, directory: Path, report: Report) -> RunEnd:
        if set(self.images) != set(IMAGES):
            raise ValueError(
                f"a correlative run needs sxt_image and fm_image frames; got {sorted(self.images)}"
            )
        report("registering FM onto SXT (fiducials)", 1, 2)
        sxt, fm = self.images["sxt_image"], self.images["fm_image"]
        reg = register_fiducial(
            sxt, fm, fixed_pixel_nm=self.pixel_nm["sxt"], moving_pixel_nm=self.pixel_nm["fm"]
        )
        report("fused picture and registration file", 2, 2)
        fused_png, overview_png, h5 = write_fiducial_result(
            directory, reg, sxt, fm, hue_deg=0.0, stem=f"correlation-{run.uid}", attrs={"run_uid": run.uid}
        )
        fused = fuse_hsi(sxt, np.asarray(warp_image(fm, reg.matrix_px, sxt.shape)), hue_deg=0.0)
        return RunEnd(
            pictures=[fused_png, overview_png],
            messages=[messages.correlative(run.uid, summary=reg.summary(), fused_rgb=fused, hdf5=h5)],
        )
