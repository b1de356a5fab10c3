"""Streaming alignment of rotation-scan projections that is right while the scan runs.

``StreamingProjectionAligner`` (re-exported by :mod:`livetomo.processing.streaming_align`)
estimates every projection's shift from two kinds of measurement, solved together by
weighted least squares after every frame:

- **absolute**, per frame, no reference to any other frame: the projection's centre of mass
  along u (horizontal) and its row-mass profile (vertical). For a linear projection of a
  specimen inside the field, the centre of mass is ``x_c cos θ + y_c sin θ`` plus the
  frame's displacement, so ``−centre`` is the shift that puts the specimen's centre of mass
  on the rotation axis at the centre column, whatever the angle: a gauge fixed from the
  first frame on, which never drifts. (``a cos θ + b sin θ`` of the shifts is the
  specimen's own position, which no alignment can observe; this choice sets it to zero.)
  These are noisy (DPC must be integrated to give the phase) but unbiased.
- **relative**: registrations of the new frame on the aligned frames nearest in angle.
  Precise, but not absolute: between two angles the specimen turns, and features off the
  axis move by their depth times the angle step (parallax), so a chain of registrations
  drifts (about 1 px over a half turn of the daemon's default scan, even without noise).
  Each link's weight carries that parallax (``link_drift_px_per_deg`` times the angle
  step) besides the registration's own uncertainty.

The least-squares solution follows the registrations locally and the moments globally; it
is recomputed for all frames whenever a frame arrives, so earlier frames are re-estimated as
the scan grows. Each frame's posterior standard deviation is its stated uncertainty, and
``ok`` says whether its published shift can be trusted (uncertainty within
``ok_uncertainty_px`` and its own measurements consistent with the solution).

When no moment is usable (a specimen wider than the field on every row), the first frame
pins the gauge, the rotation centre comes from the 0°/180° mirror pairs (and optionally the
reconstruction), as before.

Shift convention: ``shift_px = (dy, dx)`` registers the raw frame onto the aligned frame,
``scipy.ndimage.shift(raw, shift_px)`` (scikit-image's convention).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .arrays import get_array_module
from .dpc_align import DPC_KEYS, dpc_channels, dpc_from_channels, dpc_moments, map_moments
from .quality import RegistrationQuality
from .register import prepare_reference, register, shift_image
from .reproject_align import reprojection_refine
from .runout import RunoutError, RunoutModel, fit_runout, mirror_centre, refine_centre

_HUBER = 2.5  # residuals beyond this many standard deviations are down-weighted
_PRIOR_PX = 30.0  # continuity prior of every shift (pixels): keeps the system regular, nothing else
_MOMENT_SIGMA_START = 0.5  # px, until enough moments give their own scatter
_MOMENT_SIGMA_FLOOR = 0.01  # px
_MIN_MOMENTS_FOR_SCATTER = 8
# Second differences cancel the chain's parallax only on closely spaced angles: with gaps of
# g radians a feature d px off the mass centre leaves about d·g² in them (7 px at 24°: 1.2 px).
# Early in an interlaced scan the gaps are tens of degrees, and comparing the two DPC
# background modes by that scatter picked the wrong one (frames 1.5 px off, 4.6 σ).
_DENSE_GAP_DEG = 6.0
_MIN_LINKS_FOR_SCALE = 12
_DENSE_UNKNOWNS = 800  # up to this many unknowns the joint solution is dense
_FULL_SD_FRAMES = 300  # beyond this many frames, per-frame solves compute the newest frame's sd only
RATE_STEP_PER_48PX = 0.01  # px/deg per sqrt(deg): how fast the parallax rate may change (48 px field)


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
    quality : quality of the registration on the nearest aligned frame (None for the first
        frame); its fwhm and psr describe the correlation peak.
    reference_index : the frame it was registered on.
    outlier : the registration failed or disagreed with the other measurements.
    predicted : the shift is a prediction (no measurement of this frame could be used).
    centre_px : mean rotation-axis column of the raw frames (None while unknown; rotation
        scans only; see StreamingProjectionAligner.centre_px).
    runout : RunoutModel.as_dict() of the current fit, or None.
    uncertainty_px : (dy, dx) 1-sigma uncertainty of ``shift_px``, pixels (None: unknown).
    ok : whether ``shift_px`` can be trusted (see the aligner's ``ok_uncertainty_px``).
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
    uncertainty_px: tuple[float, float] | None = None
    ok: bool = True

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
            "uncertainty_px": None
            if self.uncertainty_px is None
            else [float(u) for u in self.uncertainty_px],
            "ok": bool(self.ok),
        }


def _angle_distance(a: float, b: float) -> float:
    """|a - b| on the circle, degrees (0 and 360 are the same view)."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


@dataclass
class _Link:
    i: int
    j: int
    value: np.ndarray  # (2,) s_i - s_j
    sigma: np.ndarray  # (2,)


def solve_shifts(
    n: int,
    links,
    absolute,
    prior,
    *,
    robust: bool = True,
    iterations: int = 3,
    angles_deg=None,
    rate_step: float | None = None,
    pairs=(),
    with_sd: bool | str = True,
):
    """Weighted least squares for one axis of the shifts of ``n`` frames.

    Measurements: links ``s_i − s_j = d`` (registrations), absolute ``s_k = a`` (moments),
    pairs ``s_i + s_j = m`` (0°/180° mirror registrations), each with its standard deviation.
    With ``rate_step`` a link also carries the parallax of the features between its two
    angles, ``(θ_i − θ_j) · (g_i + g_j) / 2``: a rate ``g`` (px per degree) per frame, unknown,
    that changes slowly with angle (a random walk of ``rate_step`` px/deg per √degree between
    neighbouring angles), so that links can be precise without drifting.

    Parameters
    ----------
    n : number of frames.
    links : list of (i, j, d, sigma). absolute : list of (k, a, sigma). pairs : (i, j, m, sigma).
    prior : (n,) values every shift is pulled to with standard deviation ``_PRIOR_PX``
        (continuity of the gauge; negligible against any measurement).
    robust : Huber reweighting of measurements beyond ``_HUBER`` standard deviations.
    angles_deg : (n,) angles, needed with ``rate_step``.

    Returns
    -------
    SolveResult: x (n,) shifts, sd (n,) posterior standard deviations, robust weights of
    the links and of the absolute measurements (1 = fully used, lower = down-weighted as an
    outlier), the links' normalised residuals.
    """
    import scipy.linalg
    import scipy.sparse
    import scipy.sparse.linalg

    use_rate = rate_step is not None and rate_step > 0 and angles_deg is not None and n > 1
    m = 2 * n if use_rate else n
    li = np.array([link[0] for link in links], dtype=int)
    lj = np.array([link[1] for link in links], dtype=int)
    ld = np.array([link[2] for link in links], dtype=float)
    ls = np.array([link[3] for link in links], dtype=float)
    ak = np.array([a[0] for a in absolute], dtype=int)
    av = np.array([a[1] for a in absolute], dtype=float)
    asg = np.array([a[2] for a in absolute], dtype=float)
    pi_ = np.array([p[0] for p in pairs], dtype=int)
    pj = np.array([p[1] for p in pairs], dtype=int)
    pm = np.array([p[2] for p in pairs], dtype=float)
    ps = np.array([p[3] for p in pairs], dtype=float)
    prior = np.asarray(prior, dtype=float)
    # Design rows: links, absolute, pairs, priors (and the rate's smoothness): one sparse matrix.
    r_parts, c_parts, v_parts, rhs, sig, kinds = [], [], [], [], [], []
    row = 0

    def block(cols, vals, values, sigmas, kind):
        nonlocal row
        k = len(values)
        if not k:
            return
        width = cols.shape[1]
        r_parts.append(np.repeat(np.arange(row, row + k), width))
        c_parts.append(cols.ravel())
        v_parts.append(vals.ravel())
        rhs.append(np.asarray(values, dtype=float))
        sig.append(np.broadcast_to(np.asarray(sigmas, dtype=float), (k,)))
        kinds.append(np.full(k, kind))
        row += k

    if use_rate:
        half = 0.5 * (np.asarray(angles_deg, dtype=float)[li] - np.asarray(angles_deg, dtype=float)[lj])
        block(
            np.stack([li, lj, n + li, n + lj], 1),
            np.stack([np.ones_like(half), -np.ones_like(half), half, half], 1),
            ld,
            ls,
            0,
        )
    else:
        block(np.stack([li, lj], 1), np.tile([1.0, -1.0], (len(li), 1)), ld, ls, 0)
    block(ak[:, None], np.ones((len(ak), 1)), av, asg, 1)
    block(np.stack([pi_, pj], 1), np.ones((len(pi_), 2)), pm, ps, 2)
    block(np.arange(n)[:, None], np.ones((n, 1)), prior, _PRIOR_PX, 3)
    if use_rate:
        order = np.argsort(np.asarray(angles_deg, dtype=float))
        a, b = order[:-1], order[1:]
        steps = np.maximum(np.abs(np.asarray(angles_deg, dtype=float)[b] - np.asarray(angles_deg)[a]), 1e-3)
        block(
            np.stack([n + a, n + b], 1),
            np.tile([1.0, -1.0], (len(a), 1)),
            np.zeros(len(a)),
            rate_step * np.sqrt(steps),
            3,
        )
        block((n + np.arange(n))[:, None], np.ones((n, 1)), np.zeros(n), 1.0, 3)  # a weak prior on the rate
    n_rows = row
    r_idx = np.concatenate(r_parts)
    c_idx = np.concatenate(c_parts)
    v_all = np.concatenate(v_parts)
    design = scipy.sparse.csr_matrix((v_all, (r_idx, c_idx)), shape=(n_rows, m))
    rhs = np.concatenate(rhs)
    sig = np.concatenate(sig)
    kinds = np.concatenate(kinds)
    weights = np.ones(n_rows)
    dense = m <= _DENSE_UNKNOWNS  # small systems: dense Cholesky beats a sparse LU's overheads
    for _ in range(max(1, iterations if robust else 1)):
        w = weights / sig**2
        normal = design.T @ scipy.sparse.diags(w) @ design
        if dense:
            factor = scipy.linalg.cho_factor(normal.toarray())
            x = scipy.linalg.cho_solve(factor, design.T @ (w * rhs))
        else:
            lu = scipy.sparse.linalg.splu(normal.tocsc())
            x = lu.solve(design.T @ (w * rhs))
        if not robust:
            break
        z = (design @ x - rhs) / sig
        new = np.where(kinds == 3, 1.0, _huber(z))
        if np.allclose(new, weights, atol=1e-3):
            break
        weights = new
    sd = np.full(n, np.nan)
    solve = (lambda b: scipy.linalg.cho_solve(factor, b)) if dense else lu.solve
    if with_sd == "last":  # only the newest frame's (one solve instead of m)
        unit = np.zeros(m)
        unit[n - 1] = 1.0
        sd[n - 1] = np.sqrt(max(float(solve(unit)[n - 1]), 0.0))
    elif with_sd and m <= 4000:
        sd = np.sqrt(np.maximum(np.diag(solve(np.eye(m)))[:n], 0.0))
    residuals = ((design @ x - rhs) / sig)[kinds == 0]
    return SolveResult(x[:n], sd, weights[kinds == 0], weights[kinds == 1], residuals)


@dataclass
class SolveResult:
    """Outcome of :func:`solve_shifts` for one axis."""

    x: np.ndarray  # (n,) shifts
    sd: np.ndarray  # (n,) posterior standard deviations
    link_weights: np.ndarray  # robust weights of the links (1 = fully used)
    absolute_weights: np.ndarray  # robust weights of the absolute measurements
    link_residuals: np.ndarray  # links' residuals over their standard deviations

    def __iter__(self):  # x, sd, link weights, absolute weights
        return iter((self.x, self.sd, self.link_weights, self.absolute_weights))


def _huber(z) -> np.ndarray:
    a = np.abs(np.asarray(z, dtype=float))
    return np.where(a <= _HUBER, 1.0, _HUBER / np.maximum(a, 1e-12))


def second_difference_scatter(values, angles_deg) -> float:
    """Robust 1-sigma scatter of a series from its second differences in angle order.

    A smooth trend (the parallax a registration chain accumulates) cancels in second
    differences; independent noise of standard deviation σ gives differences of σ·√6.
    """
    v = np.asarray(values, dtype=float)
    order = np.argsort(np.asarray(angles_deg, dtype=float))
    d2 = np.diff(v[order], 2)
    if d2.size < 4:
        return float("nan")
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6.0))


class StreamingProjectionAligner:
    """Aligns rotation-scan projections as they arrive (any angular order); see the module docstring.

    Parameters
    ----------
    kind : 'dpc' (register horizontal and vertical DPC, channels ``dpc_h``/``dpc_v``) or
        'map' (a linear projection map, channel ``key``, e.g. 'Zn').
    key : channel of kind 'map'.
    roi : registration region (see :func:`~livetomo.processing.register.register`).
    band : registration band-pass (low_sigma, high_sigma) pixels; default (None, 2) for
        DPC (removes the ice/capillary phase ramp) and (2, None) for maps.
    upsample_factor : sub-pixel grid of the registrations.
    harmonics : harmonics of the runout model fitted for display and prediction.
    outlier_sigma, min_outlier_px, search_px : a failed registration of the nearest frame is
        searched again within ``search_px`` of the predicted shift.
    moments : use the absolute moment measurements.
    link_drift_px_per_deg : parallax a registration between frames one degree apart may carry,
        pixels ('auto': 0.1 px per degree for a 48-pixel-wide field, scaled with the width:
        features off the axis move by their depth times the angle step).
    ok_uncertainty_px : a published shift is trusted (``ok``) when its stated 1-sigma
        uncertainty is within this (3 sigma then stays within a pixel).
    centre_search_px : half-width of the reconstruction-based centre search in
        :meth:`refine` when no moment is usable (0 disables it).
    reproject_iterations, reproject_band : re-projection passes in :meth:`refine` (0: off).
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
        link_drift_px_per_deg: float = 0.01,
        parallax_rate_step="auto",
        ok_uncertainty_px: float = 0.3,
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
        self.link_drift = float(link_drift_px_per_deg)
        self.rate_step = parallax_rate_step
        self.ok_uncertainty_px = float(ok_uncertainty_px)
        self.centre_search_px = float(centre_search_px)
        self.reproject_iterations = int(reproject_iterations)
        self.reproject_band = reproject_band
        self.n_references = max(1, int(n_references))
        self._angles: list[float] = []
        self._excluded: set[int] = set()  # frames replaced (re-acquired): out of the solution
        self._images: list = []
        self._moments: list = []
        self._quality: list[RegistrationQuality | None] = []
        self._links: list[_Link] = []
        self._vertical_abs: dict[int, tuple[float, float]] = {}  # k -> (shift, sigma) from the row profile
        self._pairs: list[
            tuple[int, int, float, float]
        ] = []  # 0°/180° mirror pairs: s_i + s_j = m (horizontal)
        self._shifts = np.zeros((0, 2))
        self._sd = np.zeros((0, 2))
        self._consistent = np.zeros(0, dtype=bool)
        self._predicted = np.zeros(0, dtype=bool)
        self._centre_offset = 0.0  # shift moving the gauge-free solution onto the centred axis
        self._centre_known = False
        self._runout: RunoutModel | None = None
        self._moment_sigma = _MOMENT_SIGMA_START
        self._moment_scale = 1.0
        self._link_scale = [1.0, 1.0]  # (y, x) factors on the links' stated uncertainties
        self._mode_cache: tuple[int, str] | None = None
        self._prepared: dict = {}  # frame -> PreparedReference
        self._chain_cache = None
        self._n_cols = 0

    # ------------------------------------------------------------------ state

    @property
    def n_frames(self) -> int:
        return len(self._angles)

    def exclude(self, index: int) -> None:
        """Frame ``index`` (arrival order) leaves the joint solution (e.g. replaced by a
        re-acquisition): its links, moment, vertical profile and mirror pairs are dropped, it is
        no reference for later frames, and its own shift becomes a prediction (not ok)."""
        if not 0 <= index < self.n_frames:
            raise StreamingAlignmentError(f"no frame {index} to exclude ({self.n_frames} frames)")
        self._excluded.add(int(index))
        self._links = [lk for lk in self._links if index not in (lk.i, lk.j)]
        self._moments[index] = None
        self._vertical_abs.pop(index, None)
        self._pairs = [p for p in self._pairs if index not in p[:2]]
        self._predicted[index] = True
        self._chain_cache = self._mode_cache = None
        self._solve(self._shifts, iterations=2)
        self._refit_runout()

    @property
    def angles_deg(self) -> np.ndarray:
        return np.asarray(self._angles, dtype=float)

    @property
    def shifts(self) -> np.ndarray:
        """(n, 2) current shifts of all frames, pixels (a copy)."""
        return np.array(self._shifts, dtype=float).reshape(-1, 2)

    @property
    def uncertainties(self) -> np.ndarray:
        """(n, 2) current 1-sigma uncertainties of the shifts, pixels (a copy)."""
        return np.array(self._sd, dtype=float).reshape(-1, 2)

    @property
    def ok(self) -> np.ndarray:
        """(n,) whether each frame's current shift can be trusted."""
        return self._ok_flags()

    @property
    def qualities(self) -> list:
        return list(self._quality)

    @property
    def centre_known(self) -> bool:
        """True once shifts are in the frame whose rotation axis is the centre column."""
        return self._centre_known

    @property
    def moment_sigma_px(self) -> float:
        """Scatter of the moment measurements (1 sigma, pixels), as estimated from the data."""
        return float(self._moment_sigma)

    @property
    def centre_px(self) -> float | None:
        """Rotation-axis column of the raw frames, pixels (None while unknown).

        The raw frames' axis wanders with the runout; this is its mean position:
        ``(cols - 1) / 2 + c`` with ``c`` the constant of the least-squares fit
        ``c + a cos θ + b sin θ`` to the horizontal displacements (``-shift``).
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
            if not self.use_moments:
                return dpc_channels(h, v), None
            # Both background modes are computed for every frame; the one that more frames allow
            # is used for the whole scan (two modes give two different centres of mass).
            moments = {mode: dpc_moments(h, v, background=mode) for mode in ("none", "z-invariant")}
            return dpc_channels(h, v), moments
        if self.key not in channels:
            raise StreamingAlignmentError(f"channel {self.key!r} missing; got {sorted(channels)}")
        xp = get_array_module(channels[self.key])
        img = xp.array(channels[self.key], dtype=xp.float32)  # a copy: the caller may reuse buffers
        if img.ndim != 2:
            raise StreamingAlignmentError(f"channel {self.key!r} must be a 2-D map, got {img.shape}")
        return img[None], (map_moments(img) if self.use_moments else None)

    def _drift_per_deg(self) -> float:
        return self.link_drift

    def _rate_step(self) -> float | None:
        if self.rate_step == "auto":
            return RATE_STEP_PER_48PX * max(self._n_cols, 1) / 48.0
        return None if self.rate_step is None else float(self.rate_step)

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
        index = self.n_frames
        self._n_cols = int(image.shape[-1])
        quality, ref, outlier, linked = None, None, False, index == 0
        if index > 0:
            usable = [j for j in range(index) if j not in self._excluded]
            near = sorted(usable, key=lambda j: (_angle_distance(self._angles[j], angle), j))
            ref = near[0]
            quality, outlier, linked = self._register_links(index, image, angle, near[: self.n_references])
        self._angles.append(angle)
        self._images.append(image)
        self._moments.append(moments)
        self._quality.append(quality)
        has_moment = self._moment(index) is not None and self._moment(index).valid
        predicted = not linked and not has_moment
        self._add_vertical_profile(index)
        self._add_mirror_pairs(index)
        self._predicted = np.append(self._predicted, predicted)
        prior = np.vstack([self._shifts, self._prediction(angle)])
        self._solve(prior, iterations=2)
        self._mirror(index)
        self._refit_runout()
        outlier = outlier or not bool(self._consistent[index])
        return self._result(index, quality, ref, outlier, predicted)

    def _register_links(self, index, image, angle, references):
        """Registrations of the new frame on ``references`` (raw on raw) become links.

        Returns the nearest registration's quality, whether it failed or disagreed (outlier)
        and whether no link could be made (predicted).
        """
        drift = self._drift_per_deg()
        nearest_quality, outlier, linked = None, False, False
        for n, j in enumerate(references):
            reg = register(self._reference(j), image, upsample_factor=self.options["upsample_factor"])
            quality, shift = reg.quality, np.asarray(reg.shift, dtype=float)
            if n == 0:
                nearest_quality = quality
                if not quality.ok:
                    outlier = True
                    again = self._search(j, image, angle)
                    if again is not None:
                        quality, shift = again
                        nearest_quality = quality
            if not quality.ok:
                continue
            step = _angle_distance(self._angles[j], angle)
            unc = np.nan_to_num(np.asarray(quality.uncertainty_px, dtype=float), nan=1.0, posinf=1.0)
            sigma = np.array([math.hypot(unc[0], 0.01), math.hypot(unc[1], 0.01, drift * step)])
            self._links.append(_Link(index, j, shift, sigma))
            linked = True
        return nearest_quality, outlier, linked

    def _reference(self, j: int):
        """Frame j prepared as a registration reference (its spectrum computed once, kept)."""
        prepared = self._prepared.get(j)
        if prepared is None:
            prepared = prepare_reference(self._images[j], roi=self.options["roi"], band=self.options["band"])
            self._prepared[j] = prepared
        return prepared

    def _search(self, j, image, angle):
        """Registration on frame j near the predicted relative shift (a failed first try)."""
        if self._runout is None or not len(self._shifts):
            return None
        guess = self._runout.evaluate([angle])[0] - self._shifts[j]
        moved = shift_image(image, guess)
        again = register(self._images[j], moved, max_shift=self.search_px, **self.options)
        if not again.quality.ok:
            return None
        return again.quality, guess + np.asarray(again.shift, dtype=float)

    def _prediction(self, angle: float) -> np.ndarray:
        if self._runout is not None:
            return self._runout.evaluate([angle])[0]
        if len(self._shifts):
            j = min(range(len(self._shifts)), key=lambda k: _angle_distance(self._angles[k], angle))
            return self._shifts[j].copy()
        return np.zeros(2)

    def _moment(self, k: int):
        """Frame k's moments in the background mode of the scan (DPC), or its map moments."""
        m = self._moments[k]
        if isinstance(m, dict):
            return m[self._moment_mode()]
        return m

    def _moment_mode(self) -> str:
        """DPC: the background mode ('none' or 'z-invariant') used for the whole scan so far.

        Decided again after every frame (the solution is recomputed anyway): once both modes
        have enough valid frames at closely spaced angles, the one whose moments scatter less
        about the registrations (second differences, which cancel the parallax there); before,
        the one whose moments' own noise estimate is lower (unless it is valid on less than half
        as many frames).
        """
        if self._mode_cache is not None and self._mode_cache[0] == self.n_frames:
            return self._mode_cache[1]
        sigmas: dict[str, list[float]] = {"none": [], "z-invariant": []}
        for m in self._moments:
            if isinstance(m, dict):
                for key, values in sigmas.items():
                    if m[key].valid and np.isfinite(m[key].sigma_u):
                        values.append(m[key].sigma_u)
        counts = {key: len(values) for key, values in sigmas.items()}
        typical = {key: float(np.median(v)) if v else np.inf for key, v in sigmas.items()}
        mode = min(typical, key=typical.get)
        other = "none" if mode == "z-invariant" else "z-invariant"
        if counts[mode] < 0.5 * counts[other]:  # valid on far fewer frames: not enough to rely on
            mode = other
        if min(counts.values()) >= _MIN_MOMENTS_FOR_SCATTER and self._links and self._dense():
            scatter = {m: self._mode_scatter(m) for m in counts}
            if all(np.isfinite(v) for v in scatter.values()):
                mode = min(scatter, key=scatter.get)
        self._mode_cache = (self.n_frames, mode)
        return mode

    def _dense(self) -> bool:
        """Whether the angles so far are close enough for second differences (median gap)."""
        folded = np.sort(np.mod(self.angles_deg, 180.0))
        return folded.size > 2 and float(np.median(np.diff(folded))) <= _DENSE_GAP_DEG

    def _mode_scatter(self, mode: str) -> float:
        ks = [k for k, m in enumerate(self._moments) if isinstance(m, dict) and m[mode].valid]
        chain = self._chain()
        values = np.array([-self._moments[k][mode].centre_u for k in ks]) - chain[ks]
        return second_difference_scatter(values, self.angles_deg[ks])

    def _chain(self) -> np.ndarray:
        """Horizontal shifts from the registrations alone (first frame pinned), cached per frame count."""
        if self._chain_cache is None or self._chain_cache[0] != (self.n_frames, len(self._links)):
            n = self.n_frames
            links = [(lk.i, lk.j, lk.value[1], lk.sigma[1]) for lk in self._links]
            result = solve_shifts(n, links, [(0, 0.0, 1e-3)], np.zeros(n), robust=False, with_sd=False)
            self._chain_cache = ((self.n_frames, len(self._links)), result.x)
        return self._chain_cache[1]

    def _profile(self, k: int):
        m = self._moments[k]
        if isinstance(m, dict):
            m = m["none"]
        return None if m is None else m.profile

    def _add_vertical_profile(self, index: int) -> None:
        """Vertical position of this frame's row-mass profile against the first frame's.

        The row sums (of the vertical DPC, or of the map) do not depend on the angle for a
        specimen inside the field vertically: registering them is an absolute measurement.
        """
        profile = self._profile(index)
        if profile is None or not np.any(np.asarray(profile)):
            return
        if index == 0 or self._profile(0) is None:
            self._vertical_abs[index] = (0.0, 0.05)
            return
        ref = np.repeat(np.asarray(self._profile(0), np.float32)[:, None], 8, axis=1)
        mov = np.repeat(np.asarray(profile, np.float32)[:, None], 8, axis=1)
        reg = register(ref, mov, window=None, upsample_factor=self.options["upsample_factor"])
        # A profile is one row replicated: the 2-D peak score means little, its correlation does.
        if np.isfinite(reg.quality.correlation) and reg.quality.correlation > 0.3:
            unc = float(reg.quality.uncertainty_px[0])
            unc = unc if np.isfinite(unc) else 0.05
            self._vertical_abs[index] = (float(reg.shift[0]), max(unc, 0.02))

    def _add_mirror_pairs(self, index: int) -> None:
        """A frame 180° from an earlier one: its mirror image, no parallax, gives ``s_i + s_j``.

        The flipped frame j (DPC: horizontal sign flipped too) registered on frame i gives r;
        with both aligned and the axis at the centre column, ``s_i + s_j = −r`` horizontally.
        """
        angle = self._angles[index]
        signs = (-1.0, 1.0) if self.kind == "dpc" else None
        options = {k: v for k, v in self.options.items() if k != "roi"}
        roi = _symmetric_roi(self.options["roi"], self._n_cols)
        for j in range(index):
            if j in self._excluded or _angle_distance(self._angles[j], angle + 180.0) >= 0.5:
                continue
            _, reg = mirror_centre(
                self._images[j], self._images[index], channel_signs=signs, roi=roi, **options
            )
            if reg.quality.ok:
                unc = float(np.nan_to_num(reg.quality.uncertainty_px[1], nan=0.2, posinf=0.2))
                self._pairs.append((j, index, -float(reg.shift[1]), math.hypot(unc, 0.02)))

    # ------------------------------------------------------------------ the joint solution

    def _absolute_horizontal(self) -> list:
        """(k, −centre, sigma) of every usable moment: ``sigma`` is the moment's own noise
        estimate times the factor that makes it match the observed scatter."""
        if not self.use_moments:
            return []
        out = []
        for k in range(self.n_frames):
            m = self._moment(k)
            if m is not None and m.valid and np.isfinite(m.centre_u):
                own = m.sigma_u if np.isfinite(m.sigma_u) and m.sigma_u > 0 else self._moment_sigma
                sigma = max(own * self._moment_scale, _MOMENT_SIGMA_FLOOR)
                out.append((k, -float(m.centre_u), sigma))
        return out

    def _estimate_moment_sigma(self) -> None:
        """Scatter of the moments against the registrations (second differences cancel parallax)."""
        absolute = [a for a in self._absolute_horizontal()]
        if len(absolute) < _MIN_MOMENTS_FOR_SCATTER or not self._links:
            return
        chain = self._chain()
        ks = np.array([a[0] for a in absolute])
        values = np.array([a[1] for a in absolute]) - chain[ks]
        scatter = second_difference_scatter(values, self.angles_deg[ks])
        if not np.isfinite(scatter):
            return
        self._moment_sigma = max(scatter, _MOMENT_SIGMA_FLOOR)
        own = np.array([self._moment(k).sigma_u for k in ks], dtype=float)
        own = own[np.isfinite(own) & (own > 0)]
        self._moment_scale = float(np.clip(scatter / np.median(own), 0.5, 5.0)) if own.size else 1.0

    def _solve(self, prior, iterations: int = 3) -> None:
        n = self.n_frames
        prior = np.asarray(prior, dtype=float).reshape(n, 2)
        absolute_h = self._absolute_horizontal()
        have_h = bool(absolute_h)
        if n >= _MIN_MOMENTS_FOR_SCATTER and have_h and (n % 4 == 0 or iterations > 2):
            self._estimate_moment_sigma()
            absolute_h = self._absolute_horizontal()
        absolute_v = [(k, s, sd) for k, (s, sd) in self._vertical_abs.items()]
        out = np.zeros((n, 2))
        sd = np.zeros((n, 2))
        consistent = np.ones(n, dtype=bool)
        for axis, absolute in ((0, absolute_v), (1, absolute_h)):
            scale = self._link_scale[axis]
            links = [(lk.i, lk.j, lk.value[axis], lk.sigma[axis] * scale) for lk in self._links]
            if not absolute:  # nothing absolute on this axis: the first frame (and the prior) pin it
                absolute = [(0, float(prior[0, axis]), 1e-3)]
            result = solve_shifts(
                n,
                links,
                absolute,
                prior[:, axis],
                iterations=iterations,
                angles_deg=self.angles_deg,
                rate_step=self._rate_step() if axis == 1 and have_h else None,
                pairs=self._pairs if axis == 1 and have_h else (),
                # every frame's posterior on small problems; on long scans the newest frame's
                # only (the others' keep their last value: more data only lowers it)
                with_sd=True if n <= _FULL_SD_FRAMES or iterations > 2 else "last",
            )
            x, s, w_links, w_abs = result
            if n > _FULL_SD_FRAMES and iterations <= 2 and len(self._sd) == n - 1:
                s = np.r_[self._sd[:, axis], s[-1]]
            if len(links) >= _MIN_LINKS_FOR_SCALE:
                # The registrations' stated uncertainties are conservative for some content:
                # the links' own scatter about the solution calibrates them (chi-square median).
                z2 = float(np.median(result.link_residuals**2))
                self._link_scale[axis] = float(np.clip(scale * np.sqrt(z2 / 0.455), 0.5, 3.0))
            out[:, axis], sd[:, axis] = x, s
            for lk, w in zip(self._links, w_links, strict=True):
                if w < 0.5:  # a link that disagrees with the rest marks its newer frame
                    consistent[max(lk.i, lk.j)] = False
            for a, w in zip(absolute, w_abs, strict=True):
                if w < 0.3:
                    consistent[a[0]] = False
        self._shifts, self._sd, self._consistent = out, sd, consistent
        if have_h:
            self._centre_known = True

    def _ok_flags(self) -> np.ndarray:
        n = self.n_frames
        if not n:
            return np.zeros(0, dtype=bool)
        sd = np.nan_to_num(self._sd, nan=np.inf).max(axis=1)
        return (sd <= self.ok_uncertainty_px) & self._consistent[:n] & ~self._predicted[:n]

    # ------------------------------------------------------------------ centre without moments

    def _mirror(self, index: int) -> None:
        """Without moments: the first 0°/180° pair puts every shift in the axis-centred frame."""
        if self._centre_known:
            return
        angle = self._angles[index]
        partners = [
            j
            for j in range(index)
            if j not in self._excluded and _angle_distance(self._angles[j], angle + 180.0) < 0.5
        ]
        if partners:
            centre, reg = self._mirror_centre(partners[0], index)
            if reg.quality.ok:
                self._set_centre(centre)

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
        centres = []
        for i, j in self._mirror_pairs():
            centre, reg = self._mirror_centre(i, j)
            if reg.quality.ok:
                centres.append(centre)
        if centres:
            self._set_centre(float(np.median(centres)))

    def _set_centre(self, centre_aligned: float) -> None:
        """Move all shifts so that the axis, at ``centre_aligned`` now, goes to the centre."""
        correction = (self._n_cols - 1) / 2.0 - centre_aligned
        self._shifts[:, 1] += correction
        self._centre_known = True

    def _refine_centre(self) -> None:
        from .align_tomo import make_projector

        stack = self._stack()[:, 0]
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

    def _refit_runout(self) -> None:
        """Robust runout fit over the frames (display and prediction; None if too few)."""
        if self.n_frames < 3 * (2 * self.harmonics + 1):
            self._runout = None
            return
        unc = np.where(self._ok_flags(), 1.0, np.inf)
        if np.isfinite(unc).sum() < 3 * (2 * self.harmonics + 1):
            unc = np.ones(self.n_frames)
        try:
            self._runout = fit_runout(self._angles, self.shifts, harmonics=self.harmonics, uncertainties=unc)
        except RunoutError:
            self._runout = None

    def _result(self, index, quality, ref, outlier, predicted) -> FrameAlignment:
        ok = bool(self._ok_flags()[index])
        return FrameAlignment(
            index=index,
            angle_deg=self._angles[index],
            shift_px=(float(self._shifts[index][0]), float(self._shifts[index][1])),
            quality=quality,
            reference_index=ref,
            outlier=bool(outlier),
            predicted=bool(predicted),
            centre_px=self.centre_px,
            runout=None if self._runout is None else self._runout.as_dict(),
            uncertainty_px=(float(self._sd[index][0]), float(self._sd[index][1])),
            ok=ok,
        )

    # ------------------------------------------------------------------ refinement

    def refine(self) -> np.ndarray:
        """Re-solve all shifts (more robust iterations; centre and re-projection when asked)."""
        if self.n_frames < 2:
            return self.shifts
        self._estimate_moment_sigma()
        self._solve(self._shifts, iterations=6)
        if not self._absolute_horizontal():
            self._refine_mirror()
            if self.centre_search_px > 0 and self.n_frames >= 4:
                self._refine_centre()
        if self.reproject_iterations > 0 and self.n_frames >= 4:
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
            self._shifts = np.asarray(result.shifts, dtype=float)
        self._refit_runout()
        return self.shifts

    def _stack(self):
        xp = get_array_module(self._images[0])
        return xp.stack(self._images)


def _symmetric_roi(roi, n_cols: int):
    """A ROI made symmetric about the centre column (for mirrored images)."""
    if roi is None:
        return None
    rows, cols = roi
    c0, c1 = (cols.start, cols.stop) if isinstance(cols, slice) else cols
    half = min((n_cols - 1) / 2.0 - c0, c1 - 1 - (n_cols - 1) / 2.0)
    lo = int(np.ceil((n_cols - 1) / 2.0 - half))
    return rows, (lo, n_cols - lo)
