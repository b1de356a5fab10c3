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
specimen's displacement is ``-shift_px``. For rotation scans the aligned frame is the one
whose rotation axis is the centre column with the specimen's centre of mass on it (from the
first frame on, whenever the projection moments can be used; see
:mod:`livetomo.processing.rotation_align`, where ``StreamingProjectionAligner`` lives).
"""

from __future__ import annotations

import math

import numpy as np

from .arrays import bin_image, get_array_module
from .register import register, shift_image
from .reproject_align import reprojection_refine
from .rotation_align import FrameAlignment, StreamingAlignmentError, StreamingProjectionAligner
from .shift_net import learned_register
from .tilt_align import check_tilt, predict_drift, stretch_columns, stretch_factor

__all__ = ["FrameAlignment", "StreamingAlignmentError", "StreamingProjectionAligner", "StreamingTiltAligner"]


def _robust_sigma(residuals) -> float:
    """1.4826 × the median absolute deviation of at least 8 residuals (else NaN)."""
    r = np.asarray(residuals, dtype=float)
    return float(1.4826 * np.median(np.abs(r - np.median(r)))) if r.size >= 8 else float("nan")


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
        # Horizontal measurements on the farther references, kept out of the solve (their
        # parallax) but compared with it: the horizontal links form a tree, so their own
        # residuals are zero and say nothing about what a horizontal link is worth.
        self._checks: list[tuple[int, int, float]] = []
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
        self._excluded: set[int] = set()

    @property
    def n_frames(self) -> int:
        return len(self._tilts)

    def exclude(self, index: int) -> None:
        """Frame ``index`` (arrival order) is no reference for later tilts nor part of
        :meth:`refine` (e.g. replaced by a re-acquisition); it keeps its slot and its shift."""
        if not 0 <= index < self.n_frames:
            raise StreamingAlignmentError(f"no frame {index} to exclude ({self.n_frames} frames)")
        self._excluded.add(int(index))

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
        usable = [j for j in range(index) if j not in self._excluded]
        if usable:
            near = sorted(usable, key=lambda j: (abs(self._tilts[j] - tilt), abs(self._tilts[j]), j))
            ref = near[0]
            shift, quality = self._register(ref, img, tilt, np.zeros(2), None)
            prediction, limit = None, self.min_outlier_px
            if len(usable) >= 15:  # the 5-term drift model needs 3 tilts per term to predict
                tilts = [self._tilts[j] for j in usable]
                prediction, scale = predict_drift(tilts, self.shifts[usable], np.asarray(usable), tilt, index)
                limit = max(limit, self.outlier_sigma * float(scale.max()))

            def search(guess):
                return self._register(ref, img, tilt, guess, self.search_px)

            shift, quality, outlier, predicted = _arbitrate(shift, quality, prediction, limit, search)
        self._tilts.append(tilt)
        self._images.append(img)
        self._shifts.append(np.asarray(shift, dtype=float))
        self._quality.append(quality)
        if usable:
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
            if n > 0:
                self._checks.append((index, j, dx))
        scale = np.array([self._scale(k) for k in range(len(self._shifts))])
        w = self.shifts
        w[:, 1] /= scale
        solved = self._graph_solve(w)
        solved[:, 1] *= scale
        for k, row in enumerate(solved):
            if np.abs(row - self._shifts[k]).max() > 1e-9:
                self._shifts[k] = row.copy()
                self._aligned.pop(k, None)

    def link_scatter(self) -> np.ndarray:
        """Robust 1-sigma error (dy, dx) of one registration link in this series, pixels.

        What a single link is really worth (its parallax and noise, which its own
        correlation peak does not see). Vertical: the scatter of the links about the joint
        solution. Horizontal: every tilt is linked to its nearest tilt only, which leaves no
        residual, so the horizontal measurements on the farther references are compared with
        the solution instead; each such difference holds that measurement's error and those
        of two nearest-tilt links (about three link variances: the scatter over sqrt(3),
        an overestimate where the wider gap adds parallax). NaN with fewer than 8 links.
        """
        if len(self._graph.links) < 8:
            return np.full(2, np.nan)
        scale = np.array([self._scale(k) for k in range(self.n_frames)])
        w = self.shifts
        w[:, 1] /= scale
        out = []
        r = [w[i, 0] - w[j, 0] - d[0] for i, j, d in self._graph.links if np.isfinite(d[0])]
        out.append(_robust_sigma(r))
        r = [(w[i, 1] - w[j, 1] - d) * scale[i] for i, j, d in self._checks if np.isfinite(d)]
        out.append(_robust_sigma(r) / math.sqrt(3.0))
        return np.asarray(out)

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
        kept = [k for k in range(self.n_frames) if k not in self._excluded]
        if len(kept) < 3:
            return self.shifts
        xp = get_array_module(self._images[0])
        b = self.refine_bin
        images = xp.stack([self._images[k] for k in kept])
        roi = self.options["roi"]
        if b > 1:
            images = bin_image(images, b)
            if roi is not None:
                roi = tuple((lo // b, hi // b) for lo, hi in roi)
        result = reprojection_refine(
            images,
            [self._tilts[k] for k in kept],
            self.shifts[kept] / b,
            region="slab",
            thickness_px=max(2, int(round(self.thickness_px / b))),
            iterations=self.reproject_iterations if iterations is None else iterations,
            tolerance_px=self.reproject_tolerance_px / b,
            roi=roi,
            band=self.reproject_band,
            upsample_factor=self.options["upsample_factor"],
        )
        for k, shift in zip(kept, result.shifts, strict=True):
            self._shifts[k] = np.asarray(shift, dtype=float) * b
        self._graph.fixed = {k: s.copy() for k, s in enumerate(self._shifts)}
        self._aligned.clear()
        return self.shifts
