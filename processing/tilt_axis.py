"""The in-plane angle of the tilt axis on the camera, from features tracked through a tilt series.

On a real microscope the tilt axis lies at some angle ψ on the camera (often 80-95°), not
along an image axis. A point of the specimen at (x, y, z) (z along the tilt axis, y along the
beam at 0°) appears at tilt α at

    along the axis:   z                       (the same at every tilt)
    across the axis:  x cos α + y sin α

plus the frame's drift. So the positions of features tracked through the series, taken
along the right direction, do not change with the tilt except for a drift common to every
feature of a frame, and across it they follow a sinusoid. For a trial ψ this model is linear
in its unknowns (each track's z, x, y; each frame's drift along and across); ψ is where its
least-squares residual is smallest (IMOD's fiducial model, without fiducials chosen by hand).

Features: strong blob-like extrema of a difference-of-Gaussians (gold beads first, then
any compact feature), located to a fraction of a pixel, linked from tilt to tilt in the
drift-corrected coordinates the caller provides (the live alignment's shifts).

Angle convention: ψ in degrees from the image's x axis (columns) towards its rows; 90 puts
the axis along the image's vertical. :func:`rotate_image` turns an image by the angle that
brings an axis at ψ to the vertical (so the tilt-series aligner and the reconstruction,
which both want a vertical axis, can work on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, optimize

STRENGTH_FRACTION = 0.33


class TiltAxisError(ValueError):
    """Bad input to the tilt-axis estimation."""


def axis_vectors(axis_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (dy, dx) along the tilt axis and across it (see the module docstring)."""
    a = math.radians(axis_deg)
    return np.array([math.sin(a), math.cos(a)]), np.array([-math.cos(a), math.sin(a)])


def to_axis_frame(vectors, axis_deg: float) -> np.ndarray:
    """(dy, dx) camera vectors as (along, across) the axis at ``axis_deg``."""
    v = np.asarray(vectors, dtype=float).reshape(-1, 2)
    along, across = axis_vectors(axis_deg)
    return np.stack([v @ along, v @ across], axis=1)


def from_axis_frame(vectors, axis_deg: float) -> np.ndarray:
    """(along, across) vectors back to camera (dy, dx) (the inverse of :func:`to_axis_frame`)."""
    v = np.asarray(vectors, dtype=float).reshape(-1, 2)
    along, across = axis_vectors(axis_deg)
    return v[:, :1] * along + v[:, 1:] * across


def rotate_image(image, axis_deg: float, *, order: int = 3):
    """The image turned so that a tilt axis at ``axis_deg`` becomes vertical (rows).

    A point at camera offset p from the centre goes to ``(p·along, p·across)``: its
    coordinates along and across the axis become its row and column offsets. Edge values
    continue the image; float32 out. ``axis_deg = 90`` returns a copy.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise TiltAxisError(f"image must be 2-D, got shape {img.shape}")
    if axis_deg == 90.0:
        return img.copy()
    along, across = axis_vectors(axis_deg)
    inverse = np.stack([along, across], axis=1)  # output (row, col) offsets -> camera offsets
    centre = (np.asarray(img.shape, dtype=float) - 1.0) / 2.0
    return ndimage.affine_transform(
        img, inverse, offset=centre - inverse @ centre, order=order, mode="nearest"
    ).astype(np.float32)


def detect_features(image, *, sigma: float = 1.5, max_features: int = 24, threshold: float = 6.0):
    """Blob-like features: (n, 3) array of (row, col, strength), strongest first.

    Extrema of either sign of a difference of Gaussians (σ and 3σ) of the image's relative
    contrast, at least ``threshold`` robust standard deviations strong, separated by ``4σ``,
    located by the strength-weighted centroid of their 5 × 5 neighbourhood.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 16:
        raise TiltAxisError(f"image must be 2-D and at least 16 px per side, got {img.shape}")
    mean = img.mean()
    contrast = img / mean - 1.0 if mean > 0 else img - mean
    dog = ndimage.gaussian_filter(contrast, sigma) - ndimage.gaussian_filter(contrast, 3.0 * sigma)
    strength = np.abs(dog)
    noise = 1.4826 * np.median(np.abs(dog - np.median(dog))) + 1e-12
    size = max(3, int(round(4.0 * sigma)) | 1)
    peaks = (strength == ndimage.maximum_filter(strength, size=size)) & (strength > threshold * noise)
    margin = 3
    peaks[:margin] = peaks[-margin:] = False
    peaks[:, :margin] = peaks[:, -margin:] = False
    coords = np.argwhere(peaks)
    if coords.size == 0:
        return np.zeros((0, 3))
    values = strength[tuple(coords.T)]
    order = np.argsort(-values)[:max_features]
    out = []
    offsets = np.arange(-2, 3)
    for (r, c), v in zip(coords[order], values[order], strict=True):
        patch = strength[r - 2 : r + 3, c - 2 : c + 3]
        patch = np.clip(patch - 0.5 * v, 0.0, None)  # the peak's upper half only
        w = patch.sum()
        dr = float((patch.sum(axis=1) * offsets).sum() / w) if w > 0 else 0.0
        dc = float((patch.sum(axis=0) * offsets).sum() / w) if w > 0 else 0.0
        out.append((r + dr, c + dc, v / noise))
    return np.asarray(out)


@dataclass
class _Track:
    points: dict = field(default_factory=dict)  # frame index -> (row, col) drift-corrected
    strength: float = 0.0


@dataclass(frozen=True)
class TiltAxisEstimate:
    """Result of :meth:`TiltAxisEstimator.estimate`.

    angle_deg : ψ, degrees (see the module docstring).
    sigma_deg : its 1-sigma uncertainty from the fit's curvature, degrees.
    n_tracks, n_points : features and positions used.
    rms_px : RMS residual of the positions about the model, pixels.
    """

    angle_deg: float
    sigma_deg: float
    n_tracks: int
    n_points: int
    rms_px: float


class TiltAxisEstimator:
    """Tracks features frame by frame and fits the tilt-axis angle (pure, stateful).

    Parameters
    ----------
    prior_deg : where to look first (the instrument's nominal value, or 90).
    search_deg : half-width of the search around ``prior_deg``.
    link_px : largest distance a feature may move between linked frames (after the caller's
        drift correction), pixels.
    min_track_fraction : a track is used when seen in at least this fraction of the frames so
        far (and at least 6).
    """

    def __init__(
        self,
        *,
        prior_deg: float = 90.0,
        search_deg: float = 30.0,
        link_px: float = 5.0,
        min_track_fraction: float = 0.3,
        sigma: float = 1.5,
    ):
        self.prior_deg = float(prior_deg)
        self.search_deg = float(search_deg)
        self.link_px = float(link_px)
        self.min_track_fraction = float(min_track_fraction)
        self.sigma = float(sigma)
        self.tilts: list[float] = []
        self._features: list[np.ndarray] = []  # per frame: raw (row, col, strength)
        self._shifts: list[np.ndarray] = []  # per frame: drift correction used for linking
        self._tracks: list[_Track] = []

    @property
    def n_frames(self) -> int:
        return len(self.tilts)

    def add(self, image, tilt_deg: float, shift_px=(0.0, 0.0)) -> None:
        """Detect the features of one frame and link them (``shift_px`` registers the frame)."""
        self.tilts.append(float(tilt_deg))
        self._features.append(detect_features(image, sigma=self.sigma))
        self._shifts.append(np.asarray(shift_px, dtype=float))
        self._link(self.n_frames - 1)

    def update_shifts(self, shifts) -> None:
        """Better drift corrections for the frames so far (the alignment re-estimated them)."""
        shifts = np.asarray(shifts, dtype=float).reshape(-1, 2)
        if len(shifts) != self.n_frames:
            raise TiltAxisError(f"{len(shifts)} shifts for {self.n_frames} frames")
        self._shifts = [s.copy() for s in shifts]
        self._relink()

    def _corrected(self, k: int) -> np.ndarray:
        f = self._features[k]
        return f[:, :2] + self._shifts[k] if len(f) else np.zeros((0, 2))

    def _relink(self) -> None:
        self._tracks = []
        for k in np.argsort(self.tilts, kind="stable"):
            self._link(int(k), ordered=True)

    def _link(self, k: int, ordered: bool = False) -> None:
        """Attach frame k's features to the tracks seen at the nearest tilt (greedy, unambiguous)."""
        points = self._corrected(k)
        strengths = self._features[k][:, 2] if len(self._features[k]) else np.zeros(0)
        tilt = self.tilts[k]
        candidates = []
        for ti, track in enumerate(self._tracks):
            frames = list(track.points)
            nearest = min(frames, key=lambda j: abs(self.tilts[j] - tilt))
            if abs(self.tilts[nearest] - tilt) > 12.0 or k in track.points:
                continue
            for pi, p in enumerate(points):
                d = float(np.hypot(*(p - track.points[nearest])))
                if d <= self.link_px:
                    candidates.append((d, ti, pi))
        used_t, used_p = set(), set()
        for _, ti, pi in sorted(candidates):
            if ti in used_t or pi in used_p:
                continue
            self._tracks[ti].points[k] = points[pi]
            self._tracks[ti].strength = max(self._tracks[ti].strength, float(strengths[pi]))
            used_t.add(ti)
            used_p.add(pi)
        for pi, p in enumerate(points):
            if pi not in used_p:
                self._tracks.append(_Track({k: p}, float(strengths[pi])))

    def usable_tracks(self) -> list:
        """Tracks seen often enough, of compact strong features (at least a third as strong as
        the strongest: gold beads when there are any; weaker, extended features bend the model)."""
        need = max(6, int(math.ceil(self.min_track_fraction * self.n_frames)))
        long = [t for t in self._tracks if len(t.points) >= need]
        if not long:
            return []
        strongest = max(t.strength for t in long)
        return [t for t in long if t.strength >= STRENGTH_FRACTION * strongest]

    def residual(self, axis_deg: float, tracks=None, weights=None) -> tuple[float, int, np.ndarray]:
        """Sum of squared residuals of the tracks' positions about the model at ``axis_deg``."""
        tracks = self.usable_tracks() if tracks is None else tracks
        along, across = axis_vectors(axis_deg)
        tilts = np.deg2rad(np.asarray(self.tilts))
        rows, frames, values_a, values_b = [], [], [], []
        for i, t in enumerate(tracks):
            for k, p in t.points.items():
                rows.append(i)
                frames.append(k)
                values_a.append(p @ along)
                values_b.append(p @ across)
        rows, frames = np.asarray(rows), np.asarray(frames)
        n_t, n_f, n = len(tracks), self.n_frames, len(rows)
        w = np.ones(n) if weights is None else np.asarray(weights)
        import scipy.sparse
        import scipy.sparse.linalg

        idx = np.arange(n)
        # along: a = c_track + o_frame ; across: b = x cos α + y sin α + e_frame
        design_a = scipy.sparse.csr_matrix(
            (np.ones(2 * n), (np.r_[idx, idx], np.r_[rows, n_t + frames])), shape=(n, n_t + n_f)
        )
        design_b = scipy.sparse.csr_matrix(
            (
                np.r_[np.cos(tilts[frames]), np.sin(tilts[frames]), np.ones(n)],
                (np.r_[idx, idx, idx], np.r_[2 * rows, 2 * rows + 1, 2 * n_t + frames]),
            ),
            shape=(n, 2 * n_t + n_f),
        )
        sw = np.sqrt(w)
        res = []
        for design, values in ((design_a, np.asarray(values_a)), (design_b, np.asarray(values_b))):
            weighted = scipy.sparse.diags(sw) @ design
            x = scipy.sparse.linalg.lsqr(weighted, sw * values, atol=1e-10, btol=1e-10, iter_lim=5000)[0]
            res.append(values - design @ x)
        r = np.hypot(res[0], res[1])
        return float(np.sum(w * r**2)), n, r

    def estimate(self) -> TiltAxisEstimate | None:
        """Fit ψ to the tracks so far; None while fewer than two tracks span enough tilts."""
        tracks = self.usable_tracks()
        if len(tracks) < 2 or np.ptp(self.tilts) < 20.0:
            return None
        lo, hi = self.prior_deg - self.search_deg, self.prior_deg + self.search_deg
        grid = np.arange(lo, hi + 1e-9, 1.0)
        weights = None
        best = self.prior_deg
        for _ in range(3):  # robust: down-weight mislinked points (Huber on the residuals), drop bad tracks
            values = [self.residual(a, tracks, weights)[0] for a in grid]
            k = int(np.argmin(values))
            best = optimize.minimize_scalar(
                lambda a, w=weights, used=tracks: self.residual(a, used, w)[0],
                bounds=(grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]),
                method="bounded",
                options={"xatol": 1e-3},
            ).x
            _, _, r = self.residual(best, tracks, weights)
            scale = 1.4826 * np.median(r) + 1e-6
            # a track that does not follow the model (an extended feature) goes as a whole
            sizes = np.cumsum([0] + [len(t.points) for t in tracks])
            track_rms = np.array(
                [np.sqrt(np.mean(r[a:b] ** 2)) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
            )
            keep = track_rms <= 3.0 * np.median(track_rms) + 1e-9
            if keep.sum() >= 2 and not keep.all():
                tracks = [t for t, k in zip(tracks, keep, strict=True) if k]
                _, _, r = self.residual(best, tracks)
                scale = 1.4826 * np.median(r) + 1e-6
            weights = np.where(r <= 2.5 * scale, 1.0, 2.5 * scale / np.maximum(r, 1e-12))
            grid = np.arange(best - 2.0, best + 2.0 + 1e-9, 0.5)
        total, n, r = self.residual(best, tracks, weights)
        h = 0.05
        curvature = (
            self.residual(best + h, tracks, weights)[0]
            - 2 * total
            + self.residual(best - h, tracks, weights)[0]
        ) / h**2
        dof = max(n * 2 - (3 * len(tracks) + 2 * self.n_frames), 1)
        variance = total / dof
        sigma = math.sqrt(2.0 * variance / curvature) if curvature > 0 else float("inf")
        rms = float(np.sqrt(np.average(r**2, weights=weights)))
        return TiltAxisEstimate(float(best), float(sigma), len(tracks), int(n), rms)
