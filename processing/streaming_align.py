"""Streaming alignment for the daemon: one call per frame, a refinement now and then.

Both classes are pure and stateful: arrays in, small dataclasses out; no threads, no I/O,
no clocks. The daemon owns one instance per run and calls it from its pipeline thread.

Projections of a rotation scan (XRF microprobe with DPC, or any linear projection map)::

    aligner = StreamingProjectionAligner(kind="dpc", roi=((8, 56), (16, 112)))
    for frame in run:                                  # any angular order
        channels = {"dpc_h": h, "dpc_v": v, "Zn": zn, ...}   # after preprocessing
        result = aligner.add(channels, frame.angle_deg)
        publish(result.as_dict()); store(result)       # shift, quality, runout, centre
        aligned = shift_maps(element_maps, result.shift_px)  # same shift for every element
        if aligner.n_frames % 20 == 0:                 # e.g. every 20 frames, and at the end
            shifts = aligner.refine()                  # (n, 2): all frames, improved
            publish/store the whole table (earlier frames' shifts change)

Tilt series (K3 frames)::

    aligner = StreamingTiltAligner(thickness_px=24)    # lamella thickness in pixels
    for frame in run:                                  # dose-symmetric or any order
        result = aligner.add(frame.counts, frame.tilt_deg)
        publish(result.as_dict())
    shifts = aligner.refine()                          # at the end (or periodically)

Shift convention everywhere: ``shift_px = (dy, dx)`` registers the raw frame onto the
aligned frame, ``scipy.ndimage.shift(raw, shift_px)`` (scikit-image's convention); the
specimen's displacement is ``-shift_px``. The aligned frame is the first frame's until the
rotation centre is known (a 180° partner has arrived, or :meth:`refine` has run), after
which it is the frame whose rotation axis is the centre column ``(cols - 1) / 2`` (all
stored shifts are moved to it at once; ``centre_known`` tells which).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .arrays import get_array_module
from .dpc_align import DPC_KEYS, dpc_channels, dpc_from_channels, dpc_moments, map_moments
from .moment_align import MomentAlignmentError, fit_horizontal_moments, vertical_profile_shifts
from .quality import RegistrationQuality
from .register import register, shift_image
from .reproject_align import reprojection_refine
from .runout import RunoutError, RunoutModel, fit_runout, mirror_centre, refine_centre
from .shift_net import learned_register
from .tilt_align import check_tilt, predict_drift, stretch_columns, stretch_factor


class StreamingAlignmentError(ValueError):
    """Bad frame for a streaming aligner (missing channel, shape change, bad angle)."""


@dataclass(frozen=True)
class FrameAlignment:
    """Alignment of one frame, as published by the daemon.

    Attributes
    ----------
    index : frame number in arrival order (0-based).
    angle_deg : rotation or tilt angle, degrees.
    shift_px : (dy, dx) registering this frame onto the aligned frame, pixels.
    quality : quality of the registration that produced the shift (None for the first
        frame, which defines the aligned frame).
    reference_index : the frame it was registered on.
    outlier : the first registration failed or disagreed with the drift/runout model.
    predicted : the shift is the model's prediction (the registration could not be saved).
    centre_px : mean rotation-axis column of the raw frames (None while unknown; rotation
        scans only; see StreamingProjectionAligner.centre_px).
    runout : RunoutModel.as_dict() of the current fit, or None.
    """

    index: int
    angle_deg: float
    shift_px: tuple[float, float]
    quality: RegistrationQuality | None
    reference_index: int | None
    outlier: bool
    predicted: bool
    centre_px: float | None
    runout: dict | None

    def as_dict(self) -> dict:
        """Plain numbers, lists and dicts (JSON/msgpack)."""
        return {
            "index": self.index,
            "angle_deg": self.angle_deg,
            "shift_px": [float(self.shift_px[0]), float(self.shift_px[1])],
            "quality": None if self.quality is None else self.quality.as_dict(),
            "reference_index": self.reference_index,
            "outlier": self.outlier,
            "predicted": self.predicted,
            "centre_px": self.centre_px,
            "runout": self.runout,
        }


def _angle_distance(a: float, b: float) -> float:
    """|a - b| on the circle, degrees (0 and 360 are the same view)."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


class _LinkGraph:
    """Relative shift measurements between frames, solved jointly by least squares.

    Every registration of frame i on frame j is a link ``x_i - x_j = d`` (per axis, in the
    aligner's variables). Registering each new frame on several aligned neighbours and
    solving all links together averages the registration errors instead of accumulating
    them along a chain. Frame 0 is pinned to ``pin`` and frames in ``fixed`` (refined or
    predicted ones) keep their values.
    """

    def __init__(self):
        self.links: list[tuple[int, int, np.ndarray]] = []
        self.fixed: dict[int, np.ndarray] = {}
        self.pin = np.zeros(2)

    def add(self, i: int, j: int, d) -> None:
        """Link ``x_i - x_j = d``; a NaN component leaves that axis unlinked."""
        self.links.append((int(i), int(j), np.asarray(d, dtype=float)))

    def solve(self, n: int, current: np.ndarray) -> np.ndarray:
        """Values (n, 2); frames reached by no link keep ``current``."""
        import scipy.sparse
        import scipy.sparse.linalg

        known = {0: self.pin, **self.fixed}
        free = [k for k in range(n) if k not in known]
        out = np.array(current, dtype=float).reshape(n, 2)
        for k, v in known.items():
            out[k] = v
        if not free or not self.links:
            return out
        col = {k: c for c, k in enumerate(free)}
        for axis in range(2):
            links = [(i, j, d[axis]) for i, j, d in self.links if np.isfinite(d[axis])]
            if not links:
                continue
            rows, cols, vals, rhs = [], [], [], []
            for r, (i, j, d) in enumerate(links):
                b = float(d)
                for k, sign in ((i, 1.0), (j, -1.0)):
                    if k in col:
                        rows.append(r)
                        cols.append(col[k])
                        vals.append(sign)
                    else:
                        b -= sign * out[k, axis]
                rhs.append(b)
            a = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(len(links), len(free)))
            normal = (a.T @ a).tocsc()
            reached = np.asarray(normal.diagonal()) > 0
            # Frames without links keep their value (a unit ridge keeps the system regular).
            normal = normal + scipy.sparse.diags(np.where(reached, 0.0, 1.0))
            x = np.atleast_1d(scipy.sparse.linalg.spsolve(normal.tocsc(), a.T @ np.asarray(rhs)))
            for c, k in enumerate(free):
                if reached[c]:
                    out[k, axis] = x[c]
        return out


class StreamingProjectionAligner:
    """Aligns rotation-scan projections as they arrive (any angular order).

    Per frame (:meth:`add`): the frame is registered on the already-aligned frame nearest
    in angle (sub-pixel cross-correlation with quality) and on the next nearest ones, and
    all such relative measurements are solved together by least squares; a robust runout
    model over angle predicts the shift and catches registrations that fail (they are
    searched again near the prediction, or replaced by it) or disagree (flagged); when the
    frame 180° away has arrived, the rotation centre follows from their mirror
    correlation. Periodically (:meth:`refine`): the consistency of the projection moments
    gives every frame's shift without accumulated error and the rotation centre (when the
    specimen stays in the field; otherwise the mirror pairs of the improved stack give the
    centre); optionally a reconstruction-based centre search and a re-projection
    refinement.

    Parameters
    ----------
    kind : 'dpc' (register horizontal and vertical DPC, channels ``dpc_h``/``dpc_v``) or
        'map' (a linear projection map, channel ``key``, e.g. 'Zn').
    key : channel of kind 'map'.
    roi : registration region (see :func:`~livetomo.processing.register.register`), e.g.
        a region inside the specimen; default the whole map.
    band : registration band-pass (low_sigma, high_sigma) pixels; default (None, 2) for
        DPC (removes the ice/capillary phase ramp) and (2, None) for maps (smooths counting
        noise).
    upsample_factor : sub-pixel grid of the registrations.
    harmonics : runout model harmonics.
    outlier_sigma, min_outlier_px : a registration is an outlier when it is not ok or
        differs from the runout prediction by more than ``max(outlier_sigma · residual
        std, min_outlier_px)``.
    search_px : half-width of the search around the prediction for outliers, pixels.
    moments : use moment consistency in :meth:`refine`.
    centre_search_px : half-width of the reconstruction-based centre search in
        :meth:`refine` (0 disables it).
    reproject_iterations, reproject_band : re-projection passes in :meth:`refine` and their
        registration band (0: off; after the moments they did not help in the benchmark).
    n_references : aligned frames each new frame is registered on.
    """

    def __init__(
        self,
        *,
        kind: str = "dpc",
        key: str | None = None,
        roi=None,
        band="auto",
        upsample_factor: int = 100,
        harmonics: int = 2,
        outlier_sigma: float = 4.0,
        min_outlier_px: float = 1.0,
        search_px: float = 3.0,
        moments: bool = True,
        centre_search_px: float = 0.0,
        reproject_iterations: int = 0,
        reproject_band=(0.7, 3.0),
        n_references: int = 3,
    ):
        if kind not in ("dpc", "map"):
            raise StreamingAlignmentError(f"kind must be 'dpc' or 'map', got {kind!r}")
        if kind == "map" and not key:
            raise StreamingAlignmentError("kind='map' needs the channel key to align on (e.g. key='Zn')")
        self.kind = kind
        self.key = key
        if band == "auto":
            band = (None, 2.0) if kind == "dpc" else (2.0, None)
        self.options = {"roi": roi, "band": band, "upsample_factor": upsample_factor}
        self.harmonics = int(harmonics)
        self.outlier_sigma = float(outlier_sigma)
        self.min_outlier_px = float(min_outlier_px)
        self.search_px = float(search_px)
        self.use_moments = bool(moments)
        self.centre_search_px = float(centre_search_px)
        self.reproject_iterations = int(reproject_iterations)
        self.reproject_band = reproject_band
        self._angles: list[float] = []
        self._images: list = []
        self._moments: list = []
        self._shifts: list[np.ndarray] = []
        self._quality: list[RegistrationQuality | None] = []
        self._centre_known = False
        self._runout: RunoutModel | None = None
        self.n_references = max(1, int(n_references))
        self._graph = _LinkGraph()

    # ------------------------------------------------------------------ state

    @property
    def n_frames(self) -> int:
        return len(self._angles)

    @property
    def angles_deg(self) -> np.ndarray:
        return np.asarray(self._angles, dtype=float)

    @property
    def shifts(self) -> np.ndarray:
        """(n, 2) current shifts of all frames, pixels (a copy)."""
        return np.array(self._shifts, dtype=float).reshape(-1, 2)

    @property
    def qualities(self) -> list:
        return list(self._quality)

    @property
    def centre_known(self) -> bool:
        """True once shifts are in the frame whose rotation axis is the centre column."""
        return self._centre_known

    @property
    def centre_px(self) -> float | None:
        """Rotation-axis column of the raw frames, pixels (None while unknown).

        The raw frames' axis wanders with the runout; this is its mean position:
        ``(cols - 1) / 2 + c`` with ``c`` the constant of the least-squares fit
        ``c + a cos θ + b sin θ`` to the horizontal displacements (``-shift``). (``a`` and
        ``b`` are the specimen's own position, which no alignment can separate from runout
        of that form; the constant can be.)
        """
        if not self._centre_known or self.n_frames < 3:
            return None
        t = np.deg2rad(self.angles_deg)
        basis = np.stack([np.ones_like(t), np.cos(t), np.sin(t)], axis=1)
        coef, *_ = np.linalg.lstsq(basis, -self.shifts[:, 1], rcond=None)
        return float((self._n_cols - 1) / 2.0 + coef[0])

    @property
    def runout(self) -> RunoutModel | None:
        return self._runout

    # ------------------------------------------------------------------ per frame

    def _image(self, channels: Mapping[str, object]):
        if self.kind == "dpc":
            h, v = dpc_from_channels(channels, DPC_KEYS)
            return dpc_channels(h, v), dpc_moments(h, v)
        if self.key not in channels:
            raise StreamingAlignmentError(f"channel {self.key!r} missing; got {sorted(channels)}")
        xp = get_array_module(channels[self.key])
        img = xp.array(channels[self.key], dtype=xp.float32)  # a copy: the caller may reuse buffers
        if img.ndim != 2:
            raise StreamingAlignmentError(f"channel {self.key!r} must be a 2-D map, got {img.shape}")
        return img[None], map_moments(img)

    def add(self, channels: Mapping[str, object], angle_deg: float) -> FrameAlignment:
        """Align one frame (a dict of channel maps) at ``angle_deg`` degrees."""
        angle = float(angle_deg)
        if not np.isfinite(angle):
            raise StreamingAlignmentError(f"angle must be finite degrees, got {angle_deg}")
        image, moments = self._image(channels)
        if self._images and image.shape != self._images[0].shape:
            raise StreamingAlignmentError(
                f"frame shape {image.shape} differs from the first {self._images[0].shape}"
            )
        index = len(self._angles)
        quality, ref, outlier, predicted = None, None, False, False
        shift = np.zeros(2) if index == 0 else None
        if index > 0:
            near = sorted(range(index), key=lambda j: (_angle_distance(self._angles[j], angle), j))
            ref = near[0]
            shift, quality, outlier, predicted, relative = self._register(ref, image, angle)
        self._angles.append(angle)
        self._images.append(image)
        self._moments.append(moments)
        self._shifts.append(np.asarray(shift, dtype=float))
        self._quality.append(quality)
        self._n_cols = int(image.shape[-1])
        if index > 0:
            self._link(index, ref, near[1 : self.n_references], relative, predicted, image)
        self._mirror(index)
        self._refit_runout()
        return self._result(index, quality, ref, outlier, predicted)

    def _register(self, ref: int, image, angle: float):
        """Registration on ``ref`` (raw on raw), checked against the runout model.

        Returns the absolute shift, its quality, outlier and predicted flags, and the
        relative shift to link (None when the shift is the model's prediction).
        """
        s_ref = self._shifts[ref]
        reg = register(self._images[ref], image, **self.options)
        shift = s_ref + np.asarray(reg.shift)
        prediction, limit = None, self.min_outlier_px
        if self._runout is not None:
            prediction = self._runout.evaluate([angle])[0]
            limit = max(limit, self.outlier_sigma * float(self._runout.residual_std.max()))

        def search(guess):
            moved = shift_image(image, guess - s_ref)
            again = register(self._images[ref], moved, max_shift=self.search_px, **self.options)
            return guess + np.asarray(again.shift), again.quality

        shift, quality, outlier, predicted = _arbitrate(shift, reg.quality, prediction, limit, search)
        relative = None if predicted else shift - s_ref
        return shift, quality, outlier, predicted, relative

    def _link(self, index, ref, others, relative, predicted, image) -> None:
        """Record the links of a new frame and solve all shifts together."""
        if predicted:
            self._graph.fixed[index] = self._shifts[index].copy()
            return
        self._graph.add(index, ref, relative)
        for j in others:
            reg = register(self._images[j], image, **self.options)
            guess = self._shifts[index] - self._shifts[j]
            if reg.quality.ok and np.abs(np.asarray(reg.shift) - guess).max() <= max(
                1.0, self.min_outlier_px
            ):
                self._graph.add(index, j, reg.shift)
        solved = self._graph.solve(len(self._shifts), self.shifts)
        self._shifts = [row.copy() for row in solved]

    def _mirror(self, index: int) -> None:
        """First 0°/180° pair: put every shift in the frame centred on the rotation axis."""
        if self._centre_known:
            return
        angle = self._angles[index]
        partners = [j for j in range(index) if _angle_distance(self._angles[j], angle + 180.0) < 0.5]
        if partners:
            centre, reg = self._mirror_centre(partners[0], index)
            if reg.quality.ok:
                self._set_centre(centre)

    def _set_centre(self, centre_aligned: float) -> None:
        """Move all shifts so that the axis, at ``centre_aligned`` now, goes to the centre."""
        correction = (self._n_cols - 1) / 2.0 - centre_aligned
        for s in self._shifts:
            s[1] += correction
        self._graph.pin[1] += correction
        for v in self._graph.fixed.values():
            v[1] += correction
        self._centre_known = True

    def _refit_runout(self) -> None:
        """Robust runout fit over the frames whose registration was good (None if too few)."""
        unc = np.array([np.inf if q is not None and not q.ok else 1.0 for q in self._quality])
        if np.isfinite(unc).sum() < 3 * (2 * self.harmonics + 1):
            self._runout = None
            return
        try:
            self._runout = fit_runout(self._angles, self.shifts, harmonics=self.harmonics, uncertainties=unc)
        except RunoutError:
            self._runout = None

    def _result(self, index, quality, ref, outlier, predicted) -> FrameAlignment:
        return FrameAlignment(
            index=index,
            angle_deg=self._angles[index],
            shift_px=(float(self._shifts[index][0]), float(self._shifts[index][1])),
            quality=quality,
            reference_index=ref,
            outlier=outlier,
            predicted=predicted,
            centre_px=self.centre_px,
            runout=None if self._runout is None else self._runout.as_dict(),
        )

    # ------------------------------------------------------------------ refinement

    def refine(self) -> np.ndarray:
        """Improve all shifts (moments, centre, re-projection); returns the (n, 2) shifts."""
        if self.n_frames < 4:
            return self.shifts
        used_moments = self.use_moments and self._refine_moments()
        if not used_moments:
            self._refine_mirror()
        if self.centre_search_px > 0:
            self._refine_centre()
        if self.reproject_iterations > 0:
            result = reprojection_refine(
                self._stack(),
                self._angles,
                self.shifts,
                derivative=self.kind == "dpc",
                iterations=self.reproject_iterations,
                roi=self.options["roi"],
                band=self.reproject_band,
                upsample_factor=self.options["upsample_factor"],
            )
            self._shifts = [np.asarray(s, dtype=float) for s in result.shifts]
        # Refined frames keep their shifts; frames added later are linked to them.
        self._graph.fixed = {k: s.copy() for k, s in enumerate(self._shifts)}
        self._refit_runout()
        return self.shifts

    def _stack(self):
        xp = get_array_module(self._images[0])
        return xp.stack(self._images)

    def _refine_moments(self) -> bool:
        """Shifts from moment consistency; False when the moments cannot be used."""
        valid = np.array([m.valid for m in self._moments])
        if valid.sum() < 4:
            return False
        angles = self.angles_deg
        centres = np.array([m.centre_u for m in self._moments])
        try:
            fit = fit_horizontal_moments(angles[valid], centres[valid], self._n_cols)
        except MomentAlignmentError:
            return False
        old = self.shifts
        new = old.copy()
        new[valid, 1] = fit.shifts_h
        new[:, 0] = vertical_profile_shifts(np.stack([m.profile for m in self._moments]))
        # Frames without valid moments keep their registration to the nearest valid frame.
        valid_idx = np.flatnonzero(valid)
        for k in np.flatnonzero(~valid):
            j = min(valid_idx, key=lambda i: _angle_distance(angles[i], angles[k]))
            new[k, 1] = new[j, 1] + (old[k, 1] - old[j, 1])
        self._shifts = [row for row in new]
        self._centre_known = True
        return True

    def _mirror_pairs(self) -> list[tuple[int, int]]:
        pairs = []
        for i, a in enumerate(self._angles):
            for j in range(i + 1, self.n_frames):
                if _angle_distance(self._angles[j], a + 180.0) < 0.5:
                    pairs.append((i, j))
        return pairs

    def _mirror_centre(self, i: int, j: int):
        a = shift_image(self._images[i], self._shifts[i])
        b = shift_image(self._images[j], self._shifts[j])
        signs = (-1.0, 1.0) if self.kind == "dpc" else None
        options = {k: v for k, v in self.options.items() if k != "roi"}
        roi = _symmetric_roi(self.options["roi"], self._n_cols)
        return mirror_centre(a, b, channel_signs=signs, roi=roi, **options)

    def _refine_mirror(self) -> None:
        """Centre from the median of all 180° pairs of the current (improved) shifts."""
        centres = []
        for i, j in self._mirror_pairs():
            centre, reg = self._mirror_centre(i, j)
            if reg.quality.ok:
                centres.append(centre)
        if centres:
            self._set_centre(float(np.median(centres)))

    def _refine_centre(self) -> None:
        from .align_tomo import make_projector

        stack = self._stack()[:, 0]  # horizontal DPC, or the map
        aligned = get_array_module(stack).stack(
            [shift_image(stack[k], self._shifts[k]) for k in range(self.n_frames)]
        )
        projector = make_projector(self._angles, (self._n_cols, self._n_cols))
        mid = (self._n_cols - 1) / 2.0
        centre, _ = refine_centre(
            projector,
            aligned,
            start=mid,
            search=self.centre_search_px,
            kind="hilbert" if self.kind == "dpc" else "ramp",
        )
        self._set_centre(centre)


ESTIMATORS = ("xcorr", "learned", "auto")


def _better(a, b):
    """Of two registrations, the ok one with the smaller largest uncertainty (``a`` on ties)."""

    def key(r):
        return (not r.quality.ok, max(r.quality.uncertainty_px))

    return b if key(b) < key(a) else a


def _arbitrate(shift, quality, prediction, limit, search):
    """Decide between a registration and the model's prediction.

    A good registration (quality ok) is kept; it is flagged as an outlier when it lies
    farther than ``limit`` from the prediction (for the operator: the model and the
    data disagree). A failed registration is searched again near the prediction and,
    failing that, replaced by the prediction. Without a prediction the registration is
    kept (and flagged when it failed).

    Returns
    -------
    shift, quality, outlier, predicted
    """
    if quality.ok:
        off_model = prediction is not None and np.abs(shift - prediction).max() > limit
        return shift, quality, bool(off_model), False
    if prediction is None:
        return shift, quality, True, False
    again, q2 = search(prediction)
    if q2.ok:
        return again, q2, True, False
    return np.asarray(prediction, dtype=float), quality, True, True


def _symmetric_roi(roi, n_cols: int):
    """A ROI made symmetric about the centre column (for mirrored images)."""
    if roi is None:
        return None
    rows, cols = roi
    c0, c1 = (cols.start, cols.stop) if isinstance(cols, slice) else cols
    half = min((n_cols - 1) / 2.0 - c0, c1 - 1 - (n_cols - 1) / 2.0)
    lo = int(np.ceil((n_cols - 1) / 2.0 - half))
    return rows, (lo, n_cols - lo)


# ---------------------------------------------------------------------------- tilt series


class StreamingTiltAligner:
    """Aligns a tilt series frame by frame, in any tilt order (dose-symmetric included).

    Per frame (:meth:`add`): the frame is normalised to contrast (``I / mean − 1``, which
    removes the tilt-dependent zero-loss transmission), registered on the already-aligned
    tilt nearest in angle after a cosine stretch of the higher-tilt image of the pair
    perpendicular to the tilt axis (the image's vertical), and checked against a robust
    drift model (eucentric error + steady drift); an outlier is searched again near the
    model's prediction or replaced by it. :meth:`refine` re-registers every tilt on a
    leave-one-out re-projection of the series reconstructed in a slab of the lamella's
    thickness.

    Parameters
    ----------
    roi, band, window, upsample_factor : registration options.
    stretch : cosine stretch (False: plain cross-correlation, the baseline).
    outlier_sigma, min_outlier_px, search_px : as in :class:`StreamingProjectionAligner`.
    thickness_px : lamella thickness in pixels, for :meth:`refine`.
    reproject_iterations, reproject_tolerance_px, reproject_band : re-projection
        refinement passes (at most), the update RMS that ends it early, and its band.
    n_references : aligned tilts each new tilt is registered on (the nearest for both
        axes, the others for the vertical only).
    estimator : how each pair (a new tilt on an aligned reference) is measured:
        ``'xcorr'`` (:func:`~livetomo.processing.register.register`), ``'learned'``
        (:func:`~livetomo.processing.shift_net.learned_register`, the shipped network) or
        ``'auto'`` (both; the one whose quality is ok with the smaller uncertainty is
        kept; ``estimator_counts`` tells how often each won).
    refine_bin : :meth:`refine` works on frames binned by this factor (sums of
        ``refine_bin``² pixels; ``thickness_px`` stays in unbinned pixels): the slab
        re-projection grows with rows × thickness × columns, so 1024² frames are refined
        at 2 or 4.
    """

    def __init__(
        self,
        *,
        roi=None,
        band=None,
        window="hann",
        upsample_factor: int = 100,
        stretch: bool = True,
        outlier_sigma: float = 4.0,
        min_outlier_px: float = 2.0,
        search_px: float = 3.0,
        thickness_px: int | None = None,
        reproject_iterations: int = 6,
        reproject_tolerance_px: float = 0.002,
        reproject_band=(1.0, None),
        n_references: int = 3,
        estimator: str = "xcorr",
        refine_bin: int = 1,
    ):
        if estimator not in ESTIMATORS:
            raise StreamingAlignmentError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if int(refine_bin) != refine_bin or refine_bin < 1:
            raise StreamingAlignmentError(f"refine_bin must be an integer >= 1, got {refine_bin}")
        self.estimator = estimator
        self.estimator_counts = {"xcorr": 0, "learned": 0}
        self.refine_bin = int(refine_bin)
        self.options = {"roi": roi, "band": band, "window": window, "upsample_factor": upsample_factor}
        self.n_references = max(1, int(n_references))
        self._graph = _LinkGraph()
        self.stretch = bool(stretch)
        self.outlier_sigma = float(outlier_sigma)
        self.min_outlier_px = float(min_outlier_px)
        self.search_px = float(search_px)
        self.thickness_px = thickness_px
        self.reproject_iterations = int(reproject_iterations)
        self.reproject_tolerance_px = float(reproject_tolerance_px)
        self.reproject_band = reproject_band
        self._tilts: list[float] = []
        self._images: list = []
        self._aligned: dict[int, object] = {}
        self._shifts: list[np.ndarray] = []
        self._quality: list = []

    @property
    def n_frames(self) -> int:
        return len(self._tilts)

    @property
    def tilts_deg(self) -> np.ndarray:
        return np.asarray(self._tilts, dtype=float)

    @property
    def shifts(self) -> np.ndarray:
        """(n, 2) current shifts (dy, dx) of all tilts in arrival order, pixels."""
        return np.array(self._shifts, dtype=float).reshape(-1, 2)

    @property
    def qualities(self) -> list:
        return list(self._quality)

    def _contrast(self, image):
        xp = get_array_module(image)
        a = xp.asarray(image, dtype=xp.float32)
        if a.ndim != 2:
            raise StreamingAlignmentError(f"tilt image must be 2-D, got shape {a.shape}")
        mean = float(a.mean())
        if not np.isfinite(mean) or mean <= 0:
            raise StreamingAlignmentError(f"tilt image mean must be a positive count, got {mean}")
        return a / mean - 1.0

    def _aligned_image(self, j: int):
        if j not in self._aligned:
            self._aligned[j] = shift_image(self._images[j], self._shifts[j])
        return self._aligned[j]

    def add(self, image, tilt_deg: float) -> FrameAlignment:
        """Align one frame (counts, (rows, cols)) taken at ``tilt_deg`` degrees."""
        tilt = check_tilt(tilt_deg)
        img = self._contrast(image)
        if self._images and img.shape != self._images[0].shape:
            raise StreamingAlignmentError(
                f"frame shape {img.shape} differs from the first {self._images[0].shape}"
            )
        index = len(self._tilts)
        quality, ref, outlier, predicted = None, None, False, False
        shift = np.zeros(2)
        if index > 0:
            near = sorted(range(index), key=lambda j: (abs(self._tilts[j] - tilt), abs(self._tilts[j]), j))
            ref = near[0]
            shift, quality = self._register(ref, img, tilt, np.zeros(2), None)
            prediction, limit = None, self.min_outlier_px
            if index >= 15:  # the 5-term drift model needs 3 tilts per term to predict
                prediction, scale = predict_drift(self._tilts, self.shifts, np.arange(index), tilt, index)
                limit = max(limit, self.outlier_sigma * float(scale.max()))

            def search(guess):
                return self._register(ref, img, tilt, guess, self.search_px)

            shift, quality, outlier, predicted = _arbitrate(shift, quality, prediction, limit, search)
        self._tilts.append(tilt)
        self._images.append(img)
        self._shifts.append(np.asarray(shift, dtype=float))
        self._quality.append(quality)
        if index > 0:
            self._link(index, ref, near[1 : self.n_references], predicted)
        shift = self._shifts[index]
        return FrameAlignment(
            index=index,
            angle_deg=tilt,
            shift_px=(float(shift[0]), float(shift[1])),
            quality=quality,
            reference_index=ref,
            outlier=outlier,
            predicted=predicted,
            centre_px=None,
            runout=None,
        )

    def _scale(self, k: int) -> float:
        """Horizontal link variable w = x / cos(tilt) with stretching (see _link)."""
        return math.cos(math.radians(self._tilts[k])) if self.stretch else 1.0

    def _link(self, index: int, ref: int, others, predicted: bool) -> None:
        """Links of a new tilt to its references, then a joint solve of all shifts.

        With the cosine stretch a registration on aligned tilt j gives
        ``s_i = (cos α_i / cos α_j) (σ + s_j − s_j,used)``: linear in ``w = s_x / cos α``,
        ``w_i − w_j = s_i,x / cos α_i − s_j,used,x / cos α_j`` (vertical: plain differences).
        """
        if predicted:
            self._graph.fixed[index] = self._shifts[index].copy()
            return
        img = self._images[index]
        candidates = [(ref, self._shifts[index])]
        for j in others:
            est, q = self._register(j, img, self._tilts[index], np.zeros(2), None)
            if q.ok and np.abs(est - self._shifts[index]).max() <= self.min_outlier_px:
                candidates.append((j, est))
        for n, (j, est) in enumerate(candidates):
            used = self._shifts[j]
            dx = est[1] / self._scale(index) - used[1] / self._scale(j)
            # Horizontally only the nearest tilt: across wider gaps the parallax of
            # features off the mean depth no longer cancels (measured: the horizontal
            # error grew from 0.20 to 0.34 px with 3 references, the vertical fell 0.05 -> 0.02).
            self._graph.add(index, j, (est[0] - used[0], dx if n == 0 else np.nan))
        scale = np.array([self._scale(k) for k in range(len(self._shifts))])
        w = self.shifts
        w[:, 1] /= scale
        solved = self._graph_solve(w)
        solved[:, 1] *= scale
        for k, row in enumerate(solved):
            if np.abs(row - self._shifts[k]).max() > 1e-9:
                self._shifts[k] = row.copy()
                self._aligned.pop(k, None)

    def _graph_solve(self, w):
        fixed = {k: v.copy() for k, v in self._graph.fixed.items()}
        for k, v in fixed.items():
            self._graph.fixed[k] = np.array([v[0], v[1] / self._scale(k)])
        try:
            return self._graph.solve(len(w), w)
        finally:
            self._graph.fixed = fixed

    def _register(self, ref: int, img, tilt: float, guess, max_shift):
        """Shift of ``img`` (raw contrast) from its registration on the aligned ``ref``.

        The higher tilt of the pair is stretched onto the lower one (``cos`` ratio, about
        the centre column); a stretched moving image's horizontal shift is scaled back.
        ``guess`` pre-shifts the moving image (a search near a prediction).
        """
        reference = self._aligned_image(ref)
        t_ref = self._tilts[ref]
        moving = img if not np.any(guess) else shift_image(img, guess)
        if not self.stretch:
            reg = self._estimate(reference, moving, max_shift)
            return guess + np.asarray(reg.shift), reg.quality
        if abs(tilt) >= abs(t_ref):
            factor = stretch_factor(tilt, t_ref)  # expand the higher tilt onto the lower
            reg = self._estimate(reference, stretch_columns(moving, factor), max_shift)
            return guess + np.array([reg.shift[0], factor * reg.shift[1]]), reg.quality
        factor = stretch_factor(t_ref, tilt)
        reg = self._estimate(stretch_columns(reference, factor), moving, max_shift)
        return guess + np.asarray(reg.shift), reg.quality

    def _estimate(self, reference, moving, max_shift):
        """One pair measured by the chosen estimator (see the class parameters)."""
        if self.estimator == "xcorr":
            self.estimator_counts["xcorr"] += 1
            return register(reference, moving, max_shift=max_shift, **self.options)
        learned = learned_register(reference, moving, max_shift=max_shift, roi=self.options["roi"])
        if self.estimator == "learned":
            self.estimator_counts["learned"] += 1
            return learned
        xc = register(reference, moving, max_shift=max_shift, **self.options)
        pick = _better(xc, learned)
        self.estimator_counts["learned" if pick is learned else "xcorr"] += 1
        return pick

    def refine(self, iterations: int | None = None) -> np.ndarray:
        """Leave-one-out re-projection refinement in a slab of ``thickness_px``; (n, 2) shifts."""
        if self.thickness_px is None:
            raise StreamingAlignmentError("refine() needs thickness_px (the lamella thickness in pixels)")
        if self.n_frames < 3:
            return self.shifts
        xp = get_array_module(self._images[0])
        b = self.refine_bin
        images = xp.stack(self._images)
        roi = self.options["roi"]
        if b > 1:
            n, h, w = images.shape
            images = images[:, : h // b * b, : w // b * b].reshape(n, h // b, b, w // b, b).mean(axis=(2, 4))
            if roi is not None:
                roi = tuple((lo // b, hi // b) for lo, hi in roi)
        result = reprojection_refine(
            images,
            self._tilts,
            self.shifts / b,
            region="slab",
            thickness_px=max(2, int(round(self.thickness_px / b))),
            iterations=self.reproject_iterations if iterations is None else iterations,
            tolerance_px=self.reproject_tolerance_px / b,
            roi=roi,
            band=self.reproject_band,
            upsample_factor=self.options["upsample_factor"],
        )
        self._shifts = [np.asarray(s, dtype=float) * b for s in result.shifts]
        self._graph.fixed = {k: s.copy() for k, s in enumerate(self._shifts)}
        self._aligned.clear()
        return self.shifts
