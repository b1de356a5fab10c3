"""What the pipeline does with each method's frames (the daemon's use of ``processing``).

A processor gets a run's frames (``frame``) and events (``event``) and returns results to
publish as ``(topic, payload)`` pairs (docs/results-stream.md); ``finish`` writes the
processed data beside the raw frames and the pictures. Each stage runs inside the
pipeline's ``stage(name, latency)`` context, which times it and records a failure without
stopping the run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..processing.dpc import dpc_from_segments
from ..processing.recon import IncrementalReconstructor, phase_from_dpc
from ..processing.register import shift_image
from ..processing.streaming_align import StreamingProjectionAligner, StreamingTiltAligner
from .config import Processing
from .pictures import RunArrays, write_run_pictures
from .results import encode_image
from .storage import export_pyxrf_maps, export_tilt_series

log = logging.getLogger("livetomo.processors")
REFINE_EVERY = 20  # frames between global alignment refinements (moment consistency; ~10 ms at 48 px)


class Processor:
    """Stores only: the base of every method's processor."""

    channels: tuple[str, ...] = ()

    def __init__(self, start: dict, processing: Processing):
        self.start = start
        self.processing = processing
        self.records: dict[int, dict] = {}  # seq -> angle, shift, quality
        self.aligned_seqs: list[int] = []  # the frames the aligner holds, in its order
        self.n_columns: int | None = None
        self.messages: list[tuple[str, dict]] = []  # published after finish()

    def descriptor(self, run, doc: dict) -> None:
        pass

    def event(self, run, doc: dict) -> list:
        return []

    def frame(self, run, frame, stage, latency: dict) -> list:
        return []

    def finish(self, run, directory: Path) -> list[Path]:
        """Write processed data into the run file (still open); return the pictures written."""
        return []

    def export(self, run, directory: Path) -> list[Path]:
        """Exports made from the closed run file (PyXRF, MRC); return their paths."""
        return []

    # shared helpers
    def _frame_message(self, run, frame, record: dict, latency: dict) -> tuple[str, dict]:
        quality = record.get("quality")
        return (
            "frame",
            {
                "run_uid": run.uid,
                "stream": frame.stream,
                "seq": frame.seq,
                "angle": frame.angle_deg,
                "time": frame.timestamp,
                "frames_done": run.frames_done + 1,
                "frames_planned": run.frames_planned,
                "dose_so_far": run.dose_per_frame * (run.frames_done + 1) if run.dose_per_frame else None,
                "shift": list(record["shift"]) if record.get("shift") is not None else None,
                "quality": _quality_payload(quality),
                "latency_ms": dict(latency),
            },
        )

    def _slices(self, run, channel: str, recon: IncrementalReconstructor, index: int | None = None) -> tuple:
        previews = recon.previews()
        pick = (lambda a: a[index]) if index is not None else (lambda a: a)
        return (
            "slices",
            {
                "run_uid": run.uid,
                "channel": channel,
                "n_projections": previews.n_projections,
                "point": list(previews.point),
                "xy": encode_image(np.asarray(pick(previews.xy))),
                "xz": encode_image(np.asarray(pick(previews.xz))),
                "yz": encode_image(np.asarray(pick(previews.yz))),
            },
        )

    def _run_arrays(self, aligner=None, slices: dict | None = None) -> RunArrays:
        seqs = sorted(self.records)
        recs = [self.records[s] for s in seqs]
        quality = [r.get("quality") for r in recs]
        data = {
            "seq": np.asarray(seqs, float),
            "angle": np.asarray([r["angle"] for r in recs], float),
            "shift": np.asarray([r["shift"] for r in recs], float).reshape(-1, 2),
            "fwhm": np.asarray([q.fwhm_px if q is not None else (np.nan, np.nan) for q in quality], float),
            "psr": np.asarray([q.psr if q is not None else np.nan for q in quality], float),
            "ok": np.asarray([q.ok if q is not None else True for q in quality], bool),
            "slices": slices or {},
        }
        runout = getattr(aligner, "runout", None)
        if runout is not None and len(data["angle"]):
            fit_angles = np.linspace(np.min(data["angle"]), np.max(data["angle"]), 181)
            data["fit_angles"], data["fit"] = (
                fit_angles,
                np.asarray(runout.evaluate(fit_angles)).reshape(-1, 2),
            )
        if aligner is not None and getattr(aligner, "centre_px", None) is not None:
            columns = self.n_columns or 1
            data["centre_px"] = aligner.centre_px - (columns - 1) / 2.0  # offset from the centre column
        return RunArrays.from_mapping(data)

    def _refined(self, recon: IncrementalReconstructor, *, nonnegative: bool) -> np.ndarray | None:
        """The configured iterative refinement of ``recon`` (warm-started), bounded in time.

        ``nonnegative`` only for quantities that cannot be negative (element concentrations);
        phase and K3 contrast are signed.
        """
        if self.processing.refine is None or recon.n_projections < 3:
            return None
        refiner = recon.refiner(self.processing.refine, nonnegative=nonnegative)
        return np.asarray(
            refiner.run(self.processing.refine_iterations, max_seconds=self.processing.refine_seconds)
        )

    def _write_volume(
        self, run, name: str, volume: np.ndarray, refined: np.ndarray | None, slices: dict
    ) -> None:
        run.writer.write_processed(
            f"reconstruction/{name}", volume, attrs={"method": "filtered back-projection"}
        )
        slices[name] = _central(volume)
        if refined is not None:
            method = self.processing.refine
            run.writer.write_processed(
                f"reconstruction/{name}_{method}",
                refined,
                attrs={"method": method, "iterations": self.processing.refine_iterations},
            )
            if name in ("phase", "Zn", "k3"):  # the pictures show the refined volume of the main channels
                slices[f"{name} ({method})"] = _central(refined)

    def _take_shifts(self, shifts, reconstructions) -> None:
        """Refined shifts (one per frame the aligner holds) into the records and the volumes."""
        for seq, shift in zip(self.aligned_seqs, shifts, strict=True):
            self.records[seq]["shift"] = (float(shift[0]), float(shift[1]))
        for recon in reconstructions:
            if recon is not None:
                keys = set(recon.keys)
                recon.update_shifts({s: self.records[s]["shift"] for s in self.aligned_seqs if s in keys})

    def _write_alignment(self, run) -> None:
        if not self.records:
            return
        arrays = self._run_arrays()
        writer = run.writer
        writer.write_processed("alignment/seq", arrays.seq.astype(np.int64))
        writer.write_processed("alignment/rotation_angle", arrays.angle, attrs={"units": "degree"})
        writer.write_processed("alignment/shift", arrays.shift, attrs={"units": "pixel", "columns": "dy, dx"})
        writer.write_processed("alignment/fwhm", arrays.fwhm, attrs={"units": "pixel"})
        writer.write_processed("alignment/psr", arrays.psr)
        writer.write_processed("alignment/ok", arrays.ok.astype(np.uint8))


def _quality_payload(quality) -> dict | None:
    if quality is None:
        return None
    return {
        "fwhm_px": [float(quality.fwhm_px[0]), float(quality.fwhm_px[1])],
        "psr": float(quality.psr),
        "uncertainty_px": float(np.max(quality.uncertainty_px)),
        "ok": bool(quality.ok),
    }


class XRFDPCProcessor(Processor):
    """XRF nanotomography with DPC: align on DPC, apply the shifts to every element, reconstruct.

    ``dpc_segments`` frames give DPC (difference over sum) and the Fourier-integrated phase;
    the DPC is aligned as it arrives; ``xrf_roi`` frames (elements, rows, cols) take the
    shift of the DPC frame of the same event. Phase and every element are reconstructed
    incrementally; every ``REFINE_EVERY`` frames and at the end the alignment is refined
    and the reconstructions follow the new shifts.
    """

    def __init__(self, start: dict, processing: Processing):
        super().__init__(start, processing)
        self.elements = list(start.get("xrf_elements", []))
        self.channels = ("dpc", "phase", *self.elements)
        self.angles_planned = start.get("rotation_angles")
        self.aligner = StreamingProjectionAligner(kind="dpc") if processing.align else None
        self.phase: IncrementalReconstructor | None = None
        self.maps: IncrementalReconstructor | None = None
        self.pending_roi: dict[int, object] = {}

    def _recon(self, shape) -> IncrementalReconstructor:
        return IncrementalReconstructor(shape, angles_deg=self.angles_planned, filter_name="hann")

    def frame(self, run, frame, stage, latency):
        if frame.stream.endswith("_segments"):
            return self._dpc(run, frame, stage, latency)
        if frame.stream.endswith("_roi"):
            self.pending_roi[frame.seq] = frame
            return self._maps_ready(run, stage, latency)
        return []

    def _dpc(self, run, frame, stage, latency):
        out = []
        record = {"angle": frame.angle_deg, "shift": (0.0, 0.0), "quality": None}
        self.records[frame.seq] = record
        self.n_columns = frame.data.shape[-1]
        h = v = phase = None
        with stage("preprocess", latency):
            h, v, _ = dpc_from_segments(frame.data)
            # phase in units of the DPC sensitivity κ (unknown to the daemon: it only scales the
            # volume); the field edges set one baseline for every angle so iterative methods see
            # consistent projections
            phase = phase_from_dpc(h, v, sensitivity=1.0, background="edge")
        if h is None:
            return out
        with stage("align", latency):
            if self.aligner is not None:
                result = self.aligner.add({"dpc_h": h, "dpc_v": v}, frame.angle_deg)
                self.aligned_seqs.append(frame.seq)
                record["shift"], record["quality"] = result.shift_px, result.quality
                if self.aligner.n_frames % REFINE_EVERY == 0:
                    self._apply_refinement()
                if self.aligner.runout is not None or self.aligner.centre_px is not None:
                    out.append(self._runout_message(run))
        with stage("reconstruct", latency):
            if self.processing.reconstruct:
                self.phase = self.phase or self._recon(phase.shape)
                self.phase.add(phase, frame.angle_deg, shift=record["shift"], key=frame.seq)
        out.append(self._frame_message(run, frame, record, latency))
        if frame.seq % max(self.processing.preview_every, 1) == 0:
            shift = record["shift"]
            out.append(_projection(run, "dpc", frame, h, shift))
            out.append(_projection(run, "phase", frame, phase, shift))
            if self.phase is not None:
                out.append(self._slices(run, "phase", self.phase))
        return out + self._maps_ready(run, stage, latency)

    def _maps_ready(self, run, stage, latency):
        out = []
        for seq in sorted(s for s in self.pending_roi if s in self.records):
            frame = self.pending_roi.pop(seq)
            shift = self.records[seq]["shift"]
            with stage("reconstruct", latency):
                if self.processing.reconstruct:
                    self.maps = self.maps or self._recon(frame.data.shape)
                    self.maps.add(frame.data, frame.angle_deg, shift=shift, key=seq)
            if seq % max(self.processing.preview_every, 1) == 0 and self.elements:
                element = "Zn" if "Zn" in self.elements else self.elements[-1]
                index = self.elements.index(element)
                out.append(_projection(run, element, frame, frame.data[index], shift))
                if self.maps is not None:
                    out.append(self._slices(run, element, self.maps, index))
        return out

    def _apply_refinement(self) -> None:
        self._take_shifts(self.aligner.refine(), (self.phase, self.maps))

    def _runout_message(self, run) -> tuple[str, dict]:
        arrays = self._run_arrays(self.aligner)
        return (
            "runout",
            {
                "run_uid": run.uid,
                "angles": arrays.angle.tolist(),
                "shifts": arrays.shift.tolist(),
                "fit_angles": arrays.fit_angles.tolist(),
                "fit": arrays.fit.tolist(),
                "centre_px": arrays.centre_px,
            },
        )

    def finish(self, run, directory: Path) -> list[Path]:
        if self.aligner is not None and self.aligner.n_frames >= 3:
            self._apply_refinement()
        self._write_alignment(run)
        slices = {}
        if self.phase is not None:
            # phase stays FBP: from DPC its projections are not consistent enough for least squares
            # (demo scan, correlation with the true δ: FBP 0.82, SIRT 0.77, TV 0.65, even at μ = 0)
            self._write_volume(run, "phase", np.asarray(self.phase.volume()), None, slices)
        if self.maps is not None:
            volumes, refined = np.asarray(self.maps.volume()), self._refined(self.maps, nonnegative=True)
            for i, element in enumerate(self.elements):
                self._write_volume(run, element, volumes[i], None if refined is None else refined[i], slices)
        run.writer.flush()
        return write_run_pictures(self._run_arrays(self.aligner, slices), directory, run.uid)

    def export(self, run, directory: Path) -> list[Path]:
        return export_pyxrf_maps(run.writer.path, directory / f"pyxrf-{run.uid}")


class TiltSeriesProcessor(Processor):
    """Cryo-ET: align K3 tilts as they arrive (any order), reconstruct with tilt weights."""

    channels = ("k3",)

    def __init__(self, start: dict, processing: Processing):
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

    def frame(self, run, frame, stage, latency):
        if not frame.stream.endswith("_image"):
            return []
        out = []
        record = {"angle": frame.angle_deg, "shift": (0.0, 0.0), "quality": None}
        self.records[frame.seq] = record
        contrast = None
        with stage("preprocess", latency):
            contrast = frame.data / max(float(np.mean(frame.data)), 1e-12) - 1.0  # removes 1/cos transmission
        with stage("align", latency):
            if self.aligner is not None:
                result = self.aligner.add(frame.data, frame.angle_deg)
                self.aligned_seqs.append(frame.seq)
                record["shift"], record["quality"] = result.shift_px, result.quality
        with stage("reconstruct", latency):
            if self.processing.reconstruct and contrast is not None:
                self.recon = self.recon or IncrementalReconstructor(
                    contrast.shape, angles_deg=self.angles_planned, filter_name="hann"
                )
                self.recon.add(contrast, frame.angle_deg, shift=record["shift"], key=frame.seq)
        out.append(self._frame_message(run, frame, record, latency))
        if contrast is not None and frame.seq % max(self.processing.preview_every, 1) == 0:
            out.append(_projection(run, "k3", frame, contrast, record["shift"]))
            if self.recon is not None:
                out.append(self._slices(run, "k3", self.recon))
        return out

    def finish(self, run, directory: Path) -> list[Path]:
        if self.aligner is not None and self.aligner.n_frames >= 3 and self.aligner.thickness_px:
            self._take_shifts(self.aligner.refine(), (self.recon,))
        self._write_alignment(run)
        slices = {}
        if self.recon is not None:
            self._write_volume(
                run,
                "k3",
                np.asarray(self.recon.volume()),
                self._refined(self.recon, nonnegative=False),
                slices,
            )
        run.writer.flush()
        return write_run_pictures(self._run_arrays(self.aligner, slices), directory, run.uid)

    def export(self, run, directory: Path) -> list[Path]:
        pixel_size_A = None if self.pixel_size_nm is None else self.pixel_size_nm * 10.0
        return list(
            export_tilt_series(run.writer.path, directory / f"tilt-{run.uid}.mrc", pixel_size_A=pixel_size_A)
        )


class CorrelativeProcessor(Processor):
    """Correlative SXT + FM: register the FM image onto the SXT image by its FluoSpheres at run end.

    Writes the fused HSI picture, an overview (beads, residuals, TRE map) and an HDF5 file of
    the registration beside the run file, and publishes σ_T with its parts and the overlay.
    """

    def __init__(self, start: dict, processing: Processing):
        super().__init__(start, processing)
        self.images: dict[str, np.ndarray] = {}
        self.pixel_nm: dict[str, float] = {}

    def descriptor(self, run, doc):
        for device, config in doc.get("configuration", {}).items():
            size = config.get("data", {}).get(f"{device}_pixel_size")
            if size is not None:
                self.pixel_nm[device] = float(size)

    def frame(self, run, frame, stage, latency):
        if frame.stream in ("sxt_image", "fm_image") and frame.stream not in self.images:
            self.images[frame.stream] = np.array(frame.data, dtype=np.float32)
        return []

    def finish(self, run, directory: Path) -> list[Path]:
        from ..processing.correlate import fuse_hsi, register_fiducial, warp_image
        from .correlate_step import write_fiducial_result

        if set(self.images) != {"sxt_image", "fm_image"}:
            raise ValueError(
                f"a correlative run needs sxt_image and fm_image frames; got {sorted(self.images)}"
            )
        sxt, fm = self.images["sxt_image"], self.images["fm_image"]
        reg = register_fiducial(
            sxt, fm, fixed_pixel_nm=self.pixel_nm["sxt"], moving_pixel_nm=self.pixel_nm["fm"]
        )
        fused_png, overview_png, h5 = write_fiducial_result(
            directory, reg, sxt, fm, hue_deg=0.0, stem=f"correlation-{run.uid}", attrs={"run_uid": run.uid}
        )
        fused = fuse_hsi(sxt, np.asarray(warp_image(fm, reg.matrix_px, sxt.shape)), hue_deg=0.0)
        summary = reg.summary()
        self.messages.append(
            (
                "correlative",
                {
                    "run_uid": run.uid,
                    **{k: summary[k] for k in ("sigma_t_nm", "sigma_x_nm", "sigma_f_nm", "sigma_a_nm")},
                    "n_pairs": summary["n_pairs"],
                    "fused": encode_image((np.clip(np.asarray(fused), 0.0, 1.0) * 255).astype(np.uint8)),
                    "hdf5": str(h5),
                },
            )
        )
        return [fused_png, overview_png]


class MillingProcessor(Processor):
    """Cryo-FIB: publish every EELS thickness reading against its stage's target."""

    def __init__(self, start: dict, processing: Processing):
        super().__init__(start, processing)
        self.streams: dict[str, str] = {}  # descriptor uid -> stage name
        self.targets = dict(zip(start.get("stages", []), start.get("targets_nm", []), strict=False))

    def descriptor(self, run, doc):
        self.streams[doc["uid"]] = doc["name"]

    def event(self, run, doc):
        stage = self.streams.get(doc["descriptor"])
        data = doc["data"]
        if stage is None or "fib_eels_thickness" not in data:
            return []
        return [
            (
                "milling",
                {
                    "run_uid": run.uid,
                    "stage": stage,
                    "target_nm": self.targets.get(stage),
                    "thickness_nm": data["fib_eels_thickness"],
                    "current_A": data.get("fib_current"),
                    "elapsed_s": data.get("fib_pattern_time"),
                },
            )
        ]


def _projection(run, channel: str, frame, image, shift) -> tuple[str, dict]:
    image = np.asarray(image, dtype=np.float32)
    return (
        "projection",
        {
            "run_uid": run.uid,
            "channel": channel,
            "seq": frame.seq,
            "angle": frame.angle_deg,
            "raw": encode_image(image),
            "aligned": encode_image(shift_image(image, tuple(shift))),
        },
    )


def _central(volume: np.ndarray) -> dict[str, np.ndarray]:
    z, y, x = (n // 2 for n in volume.shape[-3:])
    return {"xy": volume[z], "xz": volume[:, y], "yz": volume[:, :, x]}


PROCESSORS = {
    "xrf-dpc": XRFDPCProcessor,
    "cryo-et": TiltSeriesProcessor,
    "cryo-fib": MillingProcessor,
    "correlative-sxt-fm": CorrelativeProcessor,
}


def make_processor(start: dict, processing: Processing) -> Processor:
    """The processor of the run's method (``livetomo_method`` in its start document)."""
    return PROCESSORS.get(start.get("livetomo_method"), Processor)(start, processing)
