"""Cryo-ET tilt series: K3 tilts aligned as they arrive (any order), reconstructed incrementally.

The camera's in-plane tilt-axis angle is estimated live (features tracked through the series,
:mod:`livetomo.processing.tilt_axis`) unless the configuration gives it; every frame is turned
so that the axis is vertical before it is aligned and back-projected, and when the estimate
moves, the alignment and the reconstruction are redone from the stored frames. Shifts are
published in camera pixels, with the axis angle, after every frame (the current values of all
frames: earlier ones are re-estimated as the series grows).

The lamella thickness for the run-end slab refinement comes from, in this order: the plan's
metadata (``lamella_thickness_nm``), ``processing.lamella_thickness_px``, the last EELS reading
of a milling run on this daemon, or the data (the zero-loss transmission falls as
``exp(-t / (λ cos α))``: the slope of ln(mean counts) against 1/cos α is -t/λ, with λ
``processing.inelastic_mfp_nm``). The source's tilt weights ``w = cos α / (1 + λ sin² α)`` are
applied when ``processing.tilt_lambda`` is set (docs/reconstruction.md: what they do here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...processing.arrays import bin_image
from ...processing.recon import IncrementalReconstructor
from ...processing.streaming_align import StreamingTiltAligner
from ...processing.tilt_axis import TiltAxisEstimator, from_axis_frame, rotate_image
from ..storage import export_imod
from . import _messages as messages
from ._processor import BaseProcessor, FrameContext, Report, RunEnd, binning_for

AXIS_MIN_CHANGE_DEG = 0.05  # a new axis estimate moving this far (and beyond 2 sigma) is applied
AXIS_MAX_SIGMA_DEG = 0.5  # estimates less certain than this are not applied
AXIS_EVERY = 4  # frames between axis estimates
# What one link is taken to be worth until the series has enough links to measure it (px):
# the horizontal link scatter measured on the simulated K3 series (livetomo bench live)
LINK_PRIOR_PX = 0.1
REFINE_MAX_PIXELS = 2**18  # frames larger than 512 x 512 are binned for the run-end alignment refinement


def _relative(turned):
    """``I / mean(I) − 1``: the relative contrast of a turned frame."""
    return turned / max(float(np.mean(turned)), 1e-12) - 1.0


def thickness_from_transmission(tilts_deg, mean_counts, mfp_nm: float) -> float | None:
    """Lamella thickness (nm) from the zero-loss transmission of a constant-dose tilt series.

    ``ln(mean counts) = const − (t / λ) / cos α``: a straight line in 1/cos α whose slope gives
    t = −slope · λ. None with fewer than 5 tilts or a range too small to see the slope.
    """
    a = np.deg2rad(np.asarray(tilts_deg, dtype=float))
    m = np.asarray(mean_counts, dtype=float)
    ok = np.isfinite(m) & (m > 0)
    if ok.sum() < 5:
        return None
    x = 1.0 / np.cos(a[ok])
    if np.ptp(x) < 0.05:
        return None
    slope, _ = np.polyfit(x, np.log(m[ok]), 1)
    return float(max(-slope * mfp_nm, 0.0))


class TiltSeriesProcessor(BaseProcessor):
    """Align every K3 tilt on the nearest aligned one (cosine stretch) with the axis vertical,
    reconstruct by weighted FBP; at run end refine the alignment on a lamella slab, write the
    volume and its iterative refinement, and export the IMOD set (docs/storage.md)."""

    channels = ("k3",)
    primary_stream = "k3_image"

    def __init__(self, start: dict, processing):
        super().__init__(start, processing)
        self.angles_planned = start.get("tilt_angles")
        self.session: dict = {}  # set by the pipeline: what earlier runs measured (EELS thickness)
        known = processing.tilt_axis_deg
        self.axis_deg = 90.0 if known is None else float(known)
        self.axis_sigma_deg: float | None = None if known is None else 0.0
        self.axis_estimator = TiltAxisEstimator(prior_deg=self.axis_deg) if known is None else None
        self.axis_updates = 0
        self.aligner = self._new_aligner() if processing.align else None
        self.recon: IncrementalReconstructor | None = None
        self.pixel_size_nm: float | None = None
        self.raw: dict[int, np.ndarray] = {}  # seq -> counts (kept to redo the work at a new axis)
        self.mean_counts: dict[int, float] = {}
        self.thickness_nm: float | None = None
        self.thickness_source: str | None = None
        # Large frames (a full K3 frame) are aligned and reconstructed binned by ``bin`` (set at
        # the first frame from processing.live_max_frame_pixels): the aligner, the axis estimator
        # and ``raw`` work in binned pixels, records and messages in camera pixels.
        self.bin = 1

    def _new_aligner(self) -> StreamingTiltAligner:
        px = self.processing.lamella_thickness_px
        return StreamingTiltAligner(thickness_px=None if px is None else max(1, round(px / self.bin)))

    def descriptor(self, run, doc):
        super().descriptor(run, doc)
        for device in doc.get("configuration", {}).values():
            for key, value in device.get("data", {}).items():
                if key.endswith("_pixel_size"):
                    self.pixel_size_nm = float(value)
                elif key.endswith("_tilt_axis_angle") and value is not None:
                    self._stated_axis(90.0 + float(value))  # IMOD's convention: from Y

    def _stated_axis(self, axis_deg: float) -> None:
        """Start from the axis the camera states (its calibration, as SerialEM's
        RotationAngle) instead of 90°, unless the configuration fixes the axis or the live
        estimate has already taken over; frames already processed are redone."""
        if self.axis_estimator is None or self.axis_sigma_deg is not None or not 0 <= axis_deg < 180:
            return
        self.axis_estimator.prior_deg = axis_deg
        if abs(axis_deg - self.axis_deg) > AXIS_MIN_CHANGE_DEG:
            self.axis_deg = axis_deg
            if self.aligned_seqs:
                self._redo_at_axis()

    # -- per frame --------------------------------------------------------------------------
    def frame(self, run, frame, ctx: FrameContext) -> list:
        if not self.count(frame):
            return []
        record = {"angle": frame.angle_deg, "shift": (0.0, 0.0), "quality": None}
        self.records[frame.seq] = record
        contrast = None
        with ctx.stage("preprocess"):
            if not self.raw:
                self.bin = binning_for(frame.data.shape, self.processing.live_max_frame_pixels)
                if self.aligner is not None and self.bin > 1:
                    self.aligner = self._new_aligner()
            counts = bin_image(np.asarray(frame.data, np.float32), self.bin)
            self.raw[frame.seq] = counts
            self.mean_counts[frame.seq] = float(np.mean(counts))
            turned_at = self.axis_deg  # one turn serves the aligner and the volume (0.23 s at 1440 x 1023)
            turned = rotate_image(counts, turned_at)
            contrast = _relative(turned)
        with ctx.stage("align"):
            if self.aligner is not None:
                result = self.aligner.add(turned, frame.angle_deg)
                self.aligned_seqs.append(frame.seq)
                record["shift"] = record["first_shift"] = self._camera(result.shift_px)
                record["quality"] = self._published_quality(result.quality)
                self._follow_axis(frame.seq, counts)
        with ctx.stage("reconstruct"):
            if self.processing.reconstruct and contrast is not None:
                self.recon = self.recon or self._new_recon(contrast.shape)
                if frame.seq not in set(self.recon.keys):  # (a new axis angle may have redone it already)
                    if self.axis_deg != turned_at:  # the axis estimate moved in between
                        contrast = self._contrast(counts)
                    self._add(contrast, frame.angle_deg, self._aligned_shift(frame.seq), frame.seq)
                self._take_current()
        out = [self.frame_message(run, frame, record, ctx)]
        if self.aligner is not None:
            out.append(self.runout_message(run, None))
        if contrast is not None and ctx.previews and frame.seq % self.processing.preview_every == 0:
            out.append(
                messages.aligned_projection(run.uid, "k3", frame, contrast, self._aligned_shift(frame.seq))
            )
            if self.recon is not None:
                out.append(messages.reconstruction_slices(run.uid, "k3", self.recon))
        return out

    def previews(self, run) -> list:
        return [] if self.recon is None else [messages.reconstruction_slices(run.uid, "k3", self.recon)]

    def _published_quality(self, reg) -> dict | None:
        """The registration's peak figures, with the uncertainty of the published shift: the
        registration's own, and what a link really scatters by in this series times the square
        root of the links between this tilt and the first (a tilt is reached through its
        neighbours), in quadrature. The first tilt is the reference, but not free of error:
        the shifts are judged modulo the terms no alignment observes, which moves the whole
        series' error onto it by about one link's worth."""
        scatter = float(np.max(np.nan_to_num(self.aligner.link_scatter(), nan=LINK_PRIOR_PX)))
        if reg is None:
            return {"fwhm_px": None, "psr": None, "uncertainty_px": scatter, "ok": True, "failed": False}
        tilts = np.sort(self.aligner.tilts_deg)
        step = float(np.median(np.diff(tilts))) if tilts.size > 2 else 3.0
        hops = (
            abs(tilts[-1] - tilts[0])
            if tilts.size < 2
            else abs(self.aligner.tilts_deg[-1] - self.aligner.tilts_deg[0])
        )
        unc = float(np.hypot(np.max(reg.uncertainty_px), scatter * np.sqrt(1.0 + hops / max(step, 1e-3))))
        return {
            "fwhm_px": reg.fwhm_px,
            "psr": reg.psr,
            "uncertainty_px": unc,
            "ok": bool(reg.ok) and unc <= 0.3,
            "failed": not bool(reg.ok),
        }

    def _contrast(self, counts):
        """Relative contrast with the axis turned vertical (removes the 1/cos transmission)."""
        return _relative(rotate_image(counts, self.axis_deg))

    def _new_recon(self, shape) -> IncrementalReconstructor:
        """The live tomogram for turned frames of ``shape`` (binned by ``bin``): as thick as the
        plan's ``volume_thickness_nm`` (else square slices), binned further by the smallest factor
        that keeps it within ``processing.live_max_voxels``."""
        self.contrast_shape = tuple(shape)
        rows, cols = shape
        thickness = self.start.get("volume_thickness_nm")
        ny = cols
        if isinstance(thickness, int | float) and thickness > 0 and self.pixel_size_nm:
            ny = max(8, int(round(thickness / (self.pixel_size_nm * self.bin))))
        r = binning_for((rows, ny, cols), self.processing.live_max_voxels)
        recon = IncrementalReconstructor(
            (rows // r, cols // r),
            shape_yx=(max(ny // r, 1), cols // r),
            angles_deg=self.angles_planned,
            filter_name="hann",
            tilt_lambda=self.processing.tilt_lambda,
        )
        self.recon_binning[id(recon)] = r
        return recon

    def _add(self, contrast, angle, shift, key) -> None:
        """A turned frame's contrast (binned by ``bin``) into the live tomogram, binned as it is."""
        r = self.recon_binning.get(id(self.recon), 1)
        self.recon.add(
            bin_image(np.asarray(contrast, np.float32), r), angle, shift=(shift[0] / r, shift[1] / r), key=key
        )

    def _camera(self, shift) -> tuple[float, float]:
        """A shift of the turned, binned frame (rows along the axis) in camera pixels."""
        dy, dx = from_axis_frame([shift], self.axis_deg)[0]
        return float(dy) * self.bin, float(dx) * self.bin

    def _aligned_shift(self, seq: int) -> tuple[float, float]:
        """The current shift of frame ``seq`` in the turned frame (what the reconstruction takes)."""
        if self.aligner is None or seq not in self.aligned_seqs:
            return (0.0, 0.0)
        s = self.aligner.shifts[self.aligned_seqs.index(seq)]
        return float(s[0]), float(s[1])

    def _take_current(self) -> None:
        """Every frame's current shift (camera pixels) into the records, the turned ones into the volume."""
        if self.aligner is None:
            return
        shifts = self.aligner.shifts
        for seq, s in zip(self.aligned_seqs, shifts, strict=True):
            self.records[seq]["shift"] = self._camera(s)
        if self.recon is not None:
            keys = set(self.recon.keys)
            applied = self.applied.setdefault(id(self.recon), {})
            moved = {}
            for seq, s in zip(self.aligned_seqs, shifts, strict=True):
                new = (float(s[0]), float(s[1]))
                old = applied.get(seq, new)
                if seq in keys and max(abs(new[0] - old[0]), abs(new[1] - old[1])) > 0.02:
                    moved[seq] = new
                applied.setdefault(seq, new)
            if moved:
                r = self.recon_binning.get(id(self.recon), 1)
                self.recon.update_shifts({s: (v[0] / r, v[1] / r) for s, v in moved.items()})
                applied.update(moved)

    # -- the tilt axis ----------------------------------------------------------------------
    def _follow_axis(self, seq: int, counts) -> None:
        estimator = self.axis_estimator
        if estimator is None:
            return
        b = self.bin  # the estimator sees the binned frames: shifts in their pixels
        first = self.records[seq]["first_shift"]
        estimator.add(counts, self.records[seq]["angle"], (first[0] / b, first[1] / b))
        if estimator.n_frames < 8 or estimator.n_frames % AXIS_EVERY:
            return
        estimator.update_shifts([(self.records[s]["shift"][0] / b, self.records[s]["shift"][1] / b)
                                 for s in self.aligned_seqs])  # fmt: skip
        estimate = estimator.estimate()
        if estimate is None or not estimate.sigma_deg <= AXIS_MAX_SIGMA_DEG:
            return
        self.axis_sigma_deg = estimate.sigma_deg
        change = abs(estimate.angle_deg - self.axis_deg)
        if change > max(AXIS_MIN_CHANGE_DEG, 2.0 * estimate.sigma_deg):
            self.axis_deg = estimate.angle_deg
            self._redo_at_axis()

    def _redo_at_axis(self) -> None:
        """Align and back-project every stored frame again with the axis at the new angle."""
        self.axis_updates += 1
        seqs = list(self.aligned_seqs)
        self.aligner = self._new_aligner()
        for k, seq in enumerate(seqs):
            result = self.aligner.add(rotate_image(self.raw[seq], self.axis_deg), self.records[seq]["angle"])
            self.records[seq]["first_shift"] = self.records[seq].get(
                "first_shift", self._camera(result.shift_px)
            )
            if self.records[seq].get("superseded"):
                self.aligner.exclude(k)
        if self.recon is not None:
            self.recon = self._new_recon(self.contrast_shape)
            self.applied.clear()
            shifts = self.aligner.shifts
            for seq, s in zip(seqs, shifts, strict=True):
                if self.records[seq].get("superseded"):
                    continue  # replaced by a re-acquisition or a repeated step
                self._add(self._contrast(self.raw[seq]), self.records[seq]["angle"], tuple(s), seq)
                self.applied.setdefault(id(self.recon), {})[seq] = (float(s[0]), float(s[1]))

    # -- messages ---------------------------------------------------------------------------
    def runout_message(self, run, aligner):
        seqs = self.published_seqs()
        ok, unc = [], []
        for s in seqs:
            q = self.records[s].get("quality") or {}
            ok.append(bool(q.get("ok", True)))
            unc.append(q.get("uncertainty_px"))
        return messages.runout(
            run.uid,
            angles=[self.records[s]["angle"] for s in seqs],
            shifts=[self.records[s]["shift"] for s in seqs],
            seqs=seqs,
            ok=ok,
            uncertainty=unc,
            tilt_axis_deg=self.axis_deg,
        )

    def live_reconstructions(self) -> dict:
        return {} if self.recon is None else {"k3": self.recon}

    def _reconstructions(self) -> tuple:
        return (self.recon,)

    def view_sources(self) -> dict:
        return {} if self.recon is None else {"k3": (self.recon, None)}

    def units_of(self, channel: str) -> str:
        return "contrast/voxel"

    # -- run end ----------------------------------------------------------------------------
    def lamella_thickness(self) -> tuple[float | None, str | None]:
        """(thickness in pixels, where it came from) for the slab refinement; see the module docstring."""
        pixel = self.pixel_size_nm
        md = self.start.get("lamella_thickness_nm")
        if md is not None and pixel:
            self.thickness_nm = float(md)
            return float(md) / pixel, "plan metadata"
        if self.processing.lamella_thickness_px:
            self.thickness_nm = float(self.processing.lamella_thickness_px) * pixel if pixel else None
            return float(self.processing.lamella_thickness_px), "configuration"
        eels = self.session.get("lamella_thickness_nm")
        if eels is not None and pixel:
            self.thickness_nm = float(eels)
            return float(eels) / pixel, "last EELS reading of a milling run"
        seqs = [s for s in sorted(self.mean_counts) if not self.records[s].get("superseded")]
        estimate = thickness_from_transmission(
            [self.records[s]["angle"] for s in seqs],
            [self.mean_counts[s] for s in seqs],
            self.processing.inelastic_mfp_nm,
        )
        if estimate is not None and pixel and estimate > 0:
            self.thickness_nm = estimate
            return estimate / pixel, "estimated from the zero-loss transmission"
        return None, None

    def finish(self, run, directory: Path, report: Report) -> RunEnd:
        thickness_px, source = self.lamella_thickness()
        self.thickness_source = source
        if self.aligner is not None and self.aligner.n_frames >= 3 and thickness_px:
            report(f"refining the alignment (lamella slab {thickness_px:.1f} px, {source})", 1, 1)
            self.aligner.thickness_px = max(2, int(round(thickness_px / self.bin)))
            # the re-projection refinement builds slab volumes from every frame: at 1440 x 1023 it
            # took over 6 GB and minutes, so it runs on frames binned to at most REFINE_MAX_PIXELS
            shape = next(iter(self.raw.values())).shape
            self.aligner.refine_bin = max(self.aligner.refine_bin, binning_for(shape, REFINE_MAX_PIXELS))
            self.aligner.refine()
            self._take_current()
        self.write_alignment(run)
        run.writer.write_processed(
            "alignment/tilt_axis",
            np.asarray([self.axis_deg]),
            attrs={
                "units": "degree",
                "convention": "from the image's x axis towards its rows; 90 = vertical",
                "estimated": self.axis_estimator is not None,
                "sigma": self.axis_sigma_deg if self.axis_sigma_deg is not None else np.nan,
            },
        )
        if self.thickness_nm is not None:
            run.writer.write_processed(
                "alignment/lamella_thickness",
                np.asarray([self.thickness_nm]),
                attrs={"units": "nm", "source": source},
            )
        slices = {}
        if self.recon is not None:
            report("writing the volume", 1, 1)
            volume = np.asarray(self.recon.volume())
            refined = self.refined(self.recon, nonnegative=False, report=report, what="the tomogram", run=run)
            binning = self.bin * self.recon_binning.get(id(self.recon), 1)
            self.write_volume(run, "k3", volume, refined, slices, binning=binning)
        report("pictures", 1, 1)
        run.writer.flush()
        final = [self.runout_message(run, None)] if self.aligner is not None else []
        if self.recon is not None:
            final.append(messages.reconstruction_slices(run.uid, "k3", self.recon))
        return RunEnd(pictures=self.pictures(run, directory, self.aligner, slices), messages=final)

    def export(self, run, directory: Path, report: Report) -> list[Path]:
        report("IMOD set (MRC + .mdoc, .tlt, .xf, aligned stack, tomogram)", 1, 1)
        pixel_size_A = None if self.pixel_size_nm is None else self.pixel_size_nm * 10.0
        return export_imod(run.writer.path, directory / f"tilt-{run.uid}", pixel_size_A=pixel_size_A)
