"""Automatic bead pairing between modalities: similar-triangle invariants plus consensus.

The source method pairs beads through similar triangles: the ratios of a triangle's sides do
not change under rotation, translation, scale or mirroring. Alone, that breaks as soon as a
bead is missing in one modality or a spot is not a bead. Here every pair of similar triangles
only *proposes* a transform (RANSAC, Fischler & Bolles 1981); the proposal that maps the
most beads of one set onto beads of the other within a tolerance wins, and the pairing is
then refined by alternating least squares and mutual-nearest-neighbour re-pairing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .errors import BeadMatchingError, TooFewBeadsError
from .transforms import apply_transform, check_model, estimate_transform, min_points


@dataclass(frozen=True)
class BeadMatch:
    """Pairs of the same physical beads in two point sets.

    Attributes
    ----------
    pairs : (k, 2) int indices (i_fixed, j_moving), sorted by i_fixed.
    matrix : (ndim + 1, ndim + 1) transform moving -> fixed fitted to the pairs (the requested model).
    residuals : (k,) distance of each mapped moving bead to its fixed partner, fixed units.
    n_hypotheses : triangle-pair proposals tested.
    unmatched_fixed, unmatched_moving : indices without a partner (spurious or missing beads).
    """

    pairs: np.ndarray
    matrix: np.ndarray
    residuals: np.ndarray
    n_hypotheses: int
    unmatched_fixed: np.ndarray
    unmatched_moving: np.ndarray


def _triangles(points: np.ndarray, *, all_below: int = 24, k: int = 7) -> np.ndarray:
    """(t, 3) vertex triples: all of them for small sets, else each point with its k nearest."""
    n = len(points)
    if n <= all_below:
        return np.array(list(itertools.combinations(range(n), 3)), dtype=int).reshape(-1, 3)
    _, nn = cKDTree(points).query(points, k=min(k + 1, n))
    tri = {
        tuple(sorted((i, a, b))) for i, row in enumerate(nn) for a, b in itertools.combinations(row[1:], 2)
    }
    return np.array(sorted(tri), dtype=int).reshape(-1, 3)


def _invariants(points: np.ndarray, tri: np.ndarray, min_side: float):
    """Vertices ordered by their opposite side (shortest first), (a/c, b/c), ambiguity flags."""
    p = points[tri]  # (t, 3, d)
    opposite = np.stack([np.linalg.norm(p[:, (v + 1) % 3] - p[:, (v + 2) % 3], axis=1) for v in range(3)], 1)
    order = np.argsort(opposite, axis=1, kind="stable")
    sides = np.take_along_axis(opposite, order, 1)
    ordered = np.take_along_axis(tri, order, 1)
    c = sides[:, 2]
    keep = sides[:, 0] >= min_side
    inv = sides[keep, :2] / c[keep, None]
    return ordered[keep], inv, sides[keep] / c[keep, None]


def _orientation(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Sign of the ordered triangle's area (2D) — mirroring flips it."""
    if points.shape[1] != 2:
        return np.zeros(len(tri))
    a, b, c = points[tri[:, 0]], points[tri[:, 1]], points[tri[:, 2]]
    return np.sign((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def _vertex_orders(sides_f: np.ndarray, sides_m: np.ndarray, eps: float) -> list[tuple[int, int, int]]:
    """Vertex correspondences to try: swap vertices whose opposite sides are nearly equal."""
    swaps01 = sides_f[1] - sides_f[0] < eps or sides_m[1] - sides_m[0] < eps
    swaps12 = sides_f[2] - sides_f[1] < eps or sides_m[2] - sides_m[1] < eps
    orders = [(0, 1, 2)]
    if swaps01:
        orders.append((1, 0, 2))
    if swaps12:
        orders += [(o[0], o[2], o[1]) for o in list(orders)]
    return orders


_PARITY = {(0, 1, 2): 1, (1, 0, 2): -1, (0, 2, 1): -1, (1, 2, 0): 1}


def _proposals(src: np.ndarray, dst: np.ndarray, allow_reflection: bool) -> list[np.ndarray]:
    """Similarities mapping three moving beads onto three fixed ones (both handednesses in 3D)."""
    try:
        if src.shape[1] == 2:
            return [estimate_transform(src, dst, model="similarity", allow_reflection=allow_reflection)]
        props = [estimate_transform(src, dst, model="similarity")]
        if allow_reflection:  # three points fix a 3D rotation only up to a mirror in their plane
            flip = np.diag([1.0, 1.0, -1.0, 1.0])
            props.append(estimate_transform(src * [1, 1, -1], dst, model="similarity") @ flip)
        return props
    except ValueError:
        return []


def _consensus(tree: cKDTree, mapped: np.ndarray, tol: float) -> tuple[int, float, np.ndarray, np.ndarray]:
    """One-to-one inliers of ``mapped`` moving points against the fixed tree within ``tol``."""
    dist, idx = tree.query(mapped, distance_upper_bound=tol)
    hit = np.isfinite(dist)
    # Several moving points may land on one fixed bead: keep the closest.
    order = np.argsort(dist[hit])
    j_m = np.flatnonzero(hit)[order]
    i_f, first = np.unique(idx[j_m], return_index=True)
    j_m = j_m[first]
    return len(i_f), float(np.sum(dist[j_m] ** 2)), i_f, j_m


def _mutual_pairs(fixed: np.ndarray, mapped: np.ndarray, tol: float) -> np.ndarray:
    """(k, 2) mutual nearest neighbours closer than ``tol``."""
    d_fm, j = cKDTree(mapped).query(fixed)
    _, i = cKDTree(fixed).query(mapped)
    pairs = [(a, j[a]) for a in range(len(fixed)) if d_fm[a] <= tol and i[j[a]] == a]
    return np.array(pairs, dtype=int).reshape(-1, 2)


def match_beads(
    fixed,
    moving,
    *,
    model: str = "affine",
    tolerance: float,
    scale_range: tuple[float, float] | None = None,
    allow_reflection: bool = True,
    ratio_tolerance: float = 0.03,
    min_inliers: int = 4,
    max_hypotheses: int = 20000,
    max_false_alarms: float = 1.0,
) -> BeadMatch:
    """Pair beads of two modalities without user input.

    Parameters
    ----------
    fixed, moving : (n, ndim) and (m, ndim) bead centres (x, y[, z]), ndim 2 or 3, in units where
        the transform is close to a similarity (physical nm from the nominal pixel sizes).
    model : the final transform model, "rigid", "similarity" or "affine" (proposals are similarities).
    tolerance : largest distance, in fixed units, between a mapped moving bead and its partner
        (the final pairing; proposals, extrapolated from three beads, get twice as much).
    scale_range : (lo, hi) allowed moving -> fixed scale of a proposal (None: any); with
        nominal pixel sizes the true scale is ~1, so (0.8, 1.25) discards most false proposals.
    allow_reflection : accept mirrored proposals (a camera flipped relative to the other).
    ratio_tolerance : how far the side ratios of two triangles may differ and still be similar.
    min_inliers : fewest beads the winning proposal must pair (3 always pair by construction).
    max_hypotheses : cap on proposals tested, most similar triangles first.
    max_false_alarms : refuse a pairing that chance would produce more often than this among
        the proposals tried (:func:`false_alarms`); 1 is the usual a-contrario threshold.

    Returns
    -------
    match : :class:`BeadMatch`. Raises TooFewBeadsError when a set has fewer than 3 beads (or
        fewer pairs than ``model`` needs), BeadMatchingError when no proposal pairs
        ``min_inliers`` beads or the best pairing could be chance.
    """
    check_model(model)
    fixed = np.asarray(fixed, dtype=np.float64)
    moving = np.asarray(moving, dtype=np.float64)
    d = fixed.shape[1]
    for name, pts in (("fixed", fixed), ("moving", moving)):
        if len(pts) < 3:
            raise TooFewBeadsError(
                f"only {len(pts)} bead(s) in the {name} image; matching needs at least 3 in each "
                "modality (check the polarity, pixel size, PSF width and regions of the detection)"
            )
    min_inliers = max(min_inliers, min_points(model, d))
    min_side = 0.5 * tolerance
    tri_f, inv_f, sides_f = _invariants(fixed, _triangles(fixed), min_side)
    tri_m, inv_m, sides_m = _invariants(moving, _triangles(moving), min_side)
    if not len(tri_f) or not len(tri_m):
        raise TooFewBeadsError("the beads are too close together to form triangles larger than the tolerance")
    cand = cKDTree(inv_m).query_ball_point(inv_f, ratio_tolerance)
    proposals = [
        (float(np.linalg.norm(inv_f[a] - inv_m[b])), a, b) for a, row in enumerate(cand) for b in row
    ]
    proposals.sort()
    orient_f, orient_m = _orientation(fixed, tri_f), _orientation(moving, tri_m)
    tree = cKDTree(fixed)
    best = (-1, np.inf, None)
    n_hyp = 0
    target = min(len(fixed), len(moving))
    for _, a, b in proposals[:max_hypotheses]:
        for order in _vertex_orders(sides_f[a], sides_m[b], ratio_tolerance):
            mirrored = d == 2 and orient_f[a] * orient_m[b] * _PARITY[order] < 0
            if mirrored and not allow_reflection:
                continue
            for prop in _proposals(moving[tri_m[b][list(order)]], fixed[tri_f[a]], allow_reflection):
                n_hyp += 1
                if scale_range is not None:
                    scale = abs(np.linalg.det(prop[:d, :d])) ** (1.0 / d)
                    if not scale_range[0] <= scale <= scale_range[1]:
                        continue
                count, sse, i_f, j_m = _consensus(tree, apply_transform(prop, moving), 2.0 * tolerance)
                if count > best[0] or (count == best[0] and sse < best[1]):
                    best = (count, sse, np.column_stack([i_f, j_m]))
        if best[0] >= target:
            break
    if best[0] < min_inliers:
        raise BeadMatchingError(
            f"no consistent pairing: the best proposal pairs {max(best[0], 0)} of {len(fixed)} fixed and "
            f"{len(moving)} moving beads, {min_inliers} are needed; check the pixel sizes (scale), the "
            "tolerance, and that both images show the same beads"
        )
    match = _refine(fixed, moving, best[2], model, tolerance, allow_reflection, n_hyp)
    nfa = false_alarms(len(match.pairs), fixed, len(moving), tolerance, max(n_hyp, 1))
    if len(match.pairs) < min_inliers or nfa > max_false_alarms:
        raise BeadMatchingError(
            f"no consistent pairing: the best one pairs {len(match.pairs)} of {len(fixed)} fixed and "
            f"{len(moving)} moving beads, which chance alone would give {nfa:.2g} times in the "
            f"{n_hyp} proposals tried (at most {max_false_alarms:g} allowed); check the pixel sizes (scale), "
            "the tolerance, and that both images show the same beads"
        )
    return match


def false_alarms(k: int, fixed: np.ndarray, n_moving: int, tolerance: float, n_hypotheses: int) -> float:
    """Expected number of chance pairings as good as ``k`` pairs among ``n_hypotheses`` proposals.

    A proposal fixes 3 pairs; each of the other ``n_moving - 3`` mapped beads lands within
    ``tolerance`` of one of the fixed beads by chance with probability ``p = n_fixed * v / V``
    (``v`` the tolerance disk or ball, ``V`` the fixed beads' bounding box). The chance count is
    then about Poisson; the number of false alarms (Moisan & Stival, IJCV 57, 2004) is the
    number of proposals times the probability of ``k - 3`` or more chance pairs.
    """
    from scipy.stats import poisson

    d = fixed.shape[1]
    extent = np.maximum(np.ptp(fixed, axis=0), 4.0 * tolerance)
    ball = np.pi * tolerance**2 if d == 2 else 4.0 / 3.0 * np.pi * tolerance**3
    lam = max(n_moving - 3, 0) * min(len(fixed) * ball / float(np.prod(extent)), 1.0)
    return float(n_hypotheses * poisson.sf(k - 4, lam))


def _refine(fixed, moving, pairs, model, tolerance, allow_reflection, n_hyp) -> BeadMatch:
    """Alternate a least-squares fit of ``model`` and mutual-nearest-neighbour re-pairing."""
    need = min_points(model, fixed.shape[1])
    for _ in range(20):
        fit_model = model if len(pairs) > need else "similarity"
        matrix = estimate_transform(
            moving[pairs[:, 1]], fixed[pairs[:, 0]], model=fit_model, allow_reflection=allow_reflection
        )
        new = _mutual_pairs(fixed, apply_transform(matrix, moving), tolerance)
        if len(new) < need:
            break
        if np.array_equal(new, pairs):
            break
        pairs = new
    if len(pairs) < need:
        raise TooFewBeadsError(
            f"only {len(pairs)} bead pairs agree within {tolerance:g}; a {fixed.shape[1]}D {model} "
            f"transform needs at least {need}"
        )
    matrix = estimate_transform(
        moving[pairs[:, 1]], fixed[pairs[:, 0]], model=model, allow_reflection=allow_reflection
    )
    resid = np.linalg.norm(apply_transform(matrix, moving[pairs[:, 1]]) - fixed[pairs[:, 0]], axis=1)
    return BeadMatch(
        pairs=pairs,
        matrix=matrix,
        residuals=resid,
        n_hypotheses=n_hyp,
        unmatched_fixed=np.setdiff1d(np.arange(len(fixed)), pairs[:, 0]),
        unmatched_moving=np.setdiff1d(np.arange(len(moving)), pairs[:, 1]),
    )
