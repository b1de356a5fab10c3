"""XY pre-alignment of an EM stack on an LM stack (the source's four steps).

1. maximum-intensity projection (MIP) of the LM stack along z;
2. LoG representation of the LM MIP and of a few EM slices, each at its own selected scale;
3. exhaustive search for the EM region of interest (ROI) of every slice in the LM MIP;
4. a robust centre of the candidates (outliers beyond 3 MADs of the median dropped, the
   rest averaged with weights 1 / distance to the median) gives the XY shift.

Step 3 has two descriptors:

* ``"histogram"`` (the source): rotation-invariant histograms of LoG magnitude and of local
  directional patterns over a disk-shaped patch (``rings`` equal-area rings), compared by
  cosine and by histogram-intersection similarity at every position;
* ``"ncc"`` (default): normalised cross-correlation of the LoG magnitude maps, with the ROI
  rotated over ``rotations_deg``. Histograms keep what kinds of structure a patch holds but
  not where; in a field of similar cells that is ambiguous (on the simulated source-shaped
  stacks every histogram candidate landed on a wrong cell, tens of um away), whereas the
  spatial layout pins the ROI down and also measures the in-plane rotation.

The search runs on a grid of ``block`` LM pixels (the source's 90 % patch overlap of a
~250-pixel patch is a 25-pixel step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arrays import bin_image, get_array_module, ndimage_for, to_numpy
from .descriptors import (
    LDP_CLASSES,
    MaskedNCC,
    cosine_similarity,
    intersection_similarity,
    ldp_classes,
    log_bins,
    ring_histogram_field,
    ring_histograms,
    robust_scale,
)
from .detect import per_axis
from .errors import RegistrationError
from .laplacian import log_filter, select_log_scale

DESCRIPTORS = ("ncc", "histogram")


@dataclass(frozen=True)
class Prealignment:
    """Where the EM ROI lies in the LM stack, in XY.

    Attributes
    ----------
    shift_um : (2,) x, y: LM physical = EM physical + shift_um, for the ROI centre, um.
    rotation_deg : in-plane rotation EM -> LM about the ROI centre, counter-clockwise in
        (x, y) ("ncc" only; 0 with "histogram", which is blind to rotation by design).
    roi_em : (6,) ROI box (x0, y0, z0, x1, y1, z1) in EM voxels.
    centre_lm_um : (2,) robust ROI centre found in the LM MIP, um.
    candidates_lm_um : (k, 2) candidate centres (one per EM slice, and per similarity measure
        for "histogram"), um.
    scores : (k,) similarity of each candidate.
    inliers : (k,) bool, candidates kept by the median/MAD test.
    sigma_lm_um, sigma_em_um : LoG scales used.
    slices : EM slice indices used.
    descriptor : "ncc" or "histogram".
    """

    shift_um: np.ndarray
    rotation_deg: float
    roi_em: np.ndarray
    centre_lm_um: np.ndarray
    candidates_lm_um: np.ndarray
    scores: np.ndarray
    inliers: np.ndarray
    sigma_lm_um: float
    sigma_em_um: float
    slices: np.ndarray
    descriptor: str


def check_roi(roi, em_shape) -> np.ndarray:
    """ROI box (x0, y0, z0, x1, y1, z1) in EM voxels, clipped; default: the central 60 % in x and y."""
    nz, ny, nx = em_shape
    if roi is None:
        return np.array([round(0.2 * nx), round(0.2 * ny), 0, round(0.8 * nx), round(0.8 * ny), nz])
    b = np.asarray(roi, dtype=np.int64)
    if b.shape != (6,):
        raise RegistrationError(f"roi must be (x0, y0, z0, x1, y1, z1) in EM voxels, got {roi!r}")
    b[:3] = np.maximum(b[:3], 0)
    b[3:] = np.minimum(b[3:], [nx, ny, nz])
    if np.any(b[3:] - b[:3] < [16, 16, 1]):
        raise RegistrationError(f"roi {tuple(roi)} leaves less than 16 x 16 x 1 EM voxels inside the stack")
    return b


def robust_centre(points: np.ndarray, *, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Median/MAD outlier rejection, then the 1/distance-weighted mean of the inliers.

    Parameters
    ----------
    points : (k, 2) candidate positions.
    floor : distances below this count as agreeing (the search's own step).

    Returns
    -------
    centre : (2,), inliers : (k,) bool.
    """
    med = np.median(points, axis=0)
    dist = np.linalg.norm(points - med, axis=1)
    mad = 1.4826 * np.median(dist)
    inliers = dist <= max(3.0 * mad, floor)
    w = 1.0 / np.maximum(dist[inliers], 0.25 * floor)
    return (w @ points[inliers]) / w.sum(), inliers


def roi_slices(box, n_slices: int) -> np.ndarray:
    """``n_slices`` EM slice indices evenly spread over the middle half of the ROI's depth."""
    z0, z1 = int(box[2]), int(box[5])
    lo, hi = z0 + (z1 - z0) // 4, z0 + (3 * (z1 - z0)) // 4
    return np.unique(np.linspace(lo, max(hi - 1, lo), n_slices).round().astype(int))


def log_scales(lm_mip, em_stack, *, lm_spacing_um, em_spacing_um, roi, slices) -> tuple[float, float]:
    """Automatic LoG scales (um) of LM (on its MIP) and EM (blob counts summed over slices).

    Scales from 2 to 12 LM pixels are tried: finer structure cannot be compared across
    modalities. A single EM slice holds few blobs (tens), so the counts of every other slice
    in ``slices`` are summed before taking the scale with the most.
    """
    xp = get_array_module(lm_mip)
    lm_sp, em_sp = np.asarray(lm_spacing_um, float), np.asarray(em_spacing_um, float)
    x0, y0, _, x1, y1, _ = (int(v) for v in roi)
    sigmas = float(lm_sp[:2].max()) * np.geomspace(2.0, 12.0, 10)
    sigma_lm = select_log_scale(lm_mip, spacing=lm_sp[:2], sigmas_um=sigmas).sigma_um
    counts = sum(
        select_log_scale(
            xp.asarray(em_stack[int(z), y0:y1, x0:x1], dtype=xp.float32), spacing=em_sp[:2], sigmas_um=sigmas
        ).counts
        for z in slices[::2]
    )
    return float(sigma_lm), float(sigmas[int(np.argmax(counts))])


def _rotated(ndi, xp, template, angle_deg: float):
    """``template`` rotated by ``angle_deg`` (counter-clockwise in (x, y)) about its centre, and its mask."""
    t = np.deg2rad(angle_deg)
    h, w = template.shape
    out_h = int(np.ceil(abs(h * np.cos(t)) + abs(w * np.sin(t))))
    out_w = int(np.ceil(abs(w * np.cos(t)) + abs(h * np.sin(t))))
    # output (row, col) -> input (row, col): inverse rotation in (x, y) = (col, row).
    c, s = np.cos(t), np.sin(t)
    inv = np.array([[c, -s], [s, c]])  # acts on (row, col) as R(-t) on (x, y)
    centre_in = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    centre_out = np.array([(out_h - 1) / 2.0, (out_w - 1) / 2.0])
    offset = centre_in - inv @ centre_out
    rot = ndi.affine_transform(
        template, xp.asarray(inv), offset=xp.asarray(offset), output_shape=(out_h, out_w), order=1, cval=0.0
    )
    mask = (
        ndi.affine_transform(
            xp.ones_like(template),
            xp.asarray(inv),
            offset=xp.asarray(offset),
            output_shape=(out_h, out_w),
            order=0,
            cval=0.0,
        )
        > 0.5
    )
    return rot, mask


def _try_angle(ndi, xp, searcher, roi_map, angle: float, best):
    """``best`` or, if better, (score, angle, (x, y) centre in map pixels) of ``roi_map`` at ``angle``."""
    tmpl, mask = _rotated(ndi, xp, roi_map, angle)
    if tmpl.shape[0] > searcher.image_shape[0] or tmpl.shape[1] > searcher.image_shape[1]:
        raise RegistrationError("the EM ROI is larger than the LM field; give a smaller roi")
    ncc = searcher(tmpl, mask)
    i, j = np.unravel_index(int(xp.argmax(ncc)), ncc.shape)
    score = float(to_numpy(ncc[i, j]))
    if score > best[0]:
        return score, angle, np.array([j + (tmpl.shape[1] - 1) / 2.0, i + (tmpl.shape[0] - 1) / 2.0])
    return best


def _ncc_candidate(ndi, xp, searcher, roi_map, rotations_deg):
    """(score, angle, (x, y) centre in map pixels) of the best rotated match.

    Every other angle first, then the two neighbours of the best one: 11 instead of 17 tries
    for the default angles, with the same answer wherever the NCC peak is smooth in angle.
    """
    angles = np.sort(np.asarray(rotations_deg, dtype=float))
    best = (-np.inf, 0.0, None)
    coarse = angles[::2] if len(angles) > 4 else angles
    for angle in coarse:
        best = _try_angle(ndi, xp, searcher, roi_map, float(angle), best)
    k = int(np.searchsorted(angles, best[1]))
    for j in (k - 1, k + 1):
        if 0 <= j < len(angles) and angles[j] not in coarse:
            best = _try_angle(ndi, xp, searcher, roi_map, float(angles[j]), best)
    return best


def prealign_xy(
    lm_stack,
    em_stack,
    *,
    lm_spacing_um,
    em_spacing_um,
    roi=None,
    descriptor: str = "ncc",
    n_slices: int = 8,
    rotations_deg=None,
    rings: int = 3,
    block: int = 4,
    n_bins: int = 16,
    sigma_lm_um: float | None = None,
    sigma_em_um: float | None = None,
) -> Prealignment:
    """Find the EM ROI in the LM stack's MIP by exhaustive search.

    Parameters
    ----------
    lm_stack : (nz, ny, nx) fluorescence stack.
    em_stack : (nz, ny, nx) EM stack.
    lm_spacing_um, em_spacing_um : voxel sizes (x, y, z) in um.
    roi : EM region of interest (x0, y0, z0, x1, y1, z1) in EM voxels (default: central 60 %).
    descriptor : "ncc" (default) or "histogram" (the source), see the module docstring.
    n_slices : EM slices used, evenly spread over the middle half of the ROI's z range.
    rotations_deg : in-plane rotations tried by "ncc" (default -20..20 in 2.5 degree steps).
    rings : equal-area rings of the disk-shaped "histogram" patch (1: one histogram per patch).
    block : candidate centres are ``block`` LM pixels apart.
    n_bins : LoG-magnitude histogram bins.
    sigma_lm_um, sigma_em_um : LoG scales (default: automatic, :func:`log_scales`).

    Returns
    -------
    prealignment : :class:`Prealignment`.
    """
    xp = get_array_module(lm_stack)
    ndi = ndimage_for(xp)
    lm = xp.asarray(lm_stack, dtype=xp.float32)
    em = xp.asarray(em_stack)
    if lm.ndim != 3 or em.ndim != 3:
        raise RegistrationError(f"LM and EM must be 3D stacks, got {lm.ndim}D and {em.ndim}D")
    if descriptor not in DESCRIPTORS:
        raise RegistrationError(f"unknown descriptor {descriptor!r}; allowed: {', '.join(DESCRIPTORS)}")
    if rings < 1 or block < 1:
        raise RegistrationError(f"rings and block must be >= 1, got {rings}, {block}")
    lm_sp = per_axis(lm_spacing_um, 3, "lm_spacing_um")
    em_sp = per_axis(em_spacing_um, 3, "em_spacing_um")
    rotations_deg = np.arange(-20.0, 20.1, 2.5) if rotations_deg is None else np.atleast_1d(rotations_deg)
    box = check_roi(roi, em.shape)
    x0, y0, z0, x1, y1, z1 = (int(v) for v in box)
    slices = roi_slices(box, n_slices)
    mip = lm.max(axis=0)
    if sigma_lm_um is None or sigma_em_um is None:
        auto_lm, auto_em = log_scales(
            mip, em, lm_spacing_um=lm_sp, em_spacing_um=em_sp, roi=box, slices=slices
        )
        sigma_lm_um = auto_lm if sigma_lm_um is None else sigma_lm_um
        sigma_em_um = auto_em if sigma_em_um is None else sigma_em_um
    log_lm = log_filter(mip, sigma_lm_um, spacing=lm_sp[:2])
    zoom = em_sp[:2][::-1] / lm_sp[:2][::-1]  # EM -> LM pixel size, array order (y, x)

    if descriptor == "ncc":
        lm_map = bin_image(xp.abs(log_lm), block)
        side = int(np.ceil(np.hypot((y1 - y0) * zoom[0], (x1 - x0) * zoom[1]) / block)) + 2
        searcher = MaskedNCC(lm_map, (side, side))
    else:
        radius = 0.5 * min((y1 - y0) * zoom[0], (x1 - x0) * zoom[1])
        n_classes = (n_bins, LDP_CLASSES)
        lm_labels = (log_bins(log_lm, scale=robust_scale(log_lm), n_bins=n_bins), ldp_classes(log_lm))
        fields = [
            ring_histogram_field(lab, k, radius=radius, rings=rings, block=block)
            for lab, k in zip(lm_labels, n_classes, strict=True)
        ]
        rows, cols = fields[0][1]

    candidates, scores, angles = [], [], []
    for z in slices:
        sl = xp.asarray(em[int(z), y0:y1, x0:x1], dtype=xp.float32)
        log_em = log_filter(sl, sigma_em_um, spacing=em_sp[:2])
        if descriptor == "ncc":
            roi_map = ndi.zoom(xp.abs(log_em), tuple(zoom / block), order=1)
            score, angle, centre = _ncc_candidate(ndi, xp, searcher, roi_map, rotations_deg)
            candidates.append(((centre + 0.5) * block - 0.5) * lm_sp[:2])
            scores.append(score)
            angles.append(angle)
            continue
        roi_log = ndi.zoom(log_em, tuple(zoom), order=1)
        centre = ((roi_log.shape[0] - 1) / 2.0, (roi_log.shape[1] - 1) / 2.0)
        labels = (log_bins(roi_log, scale=robust_scale(roi_log), n_bins=n_bins), ldp_classes(roi_log))
        em_h = [
            ring_histograms(lab, k, centre=centre, radius=radius, rings=rings)
            for lab, k in zip(labels, n_classes, strict=True)
        ]
        for measure in (cosine_similarity, intersection_similarity):
            s = (
                sum(
                    measure(h[:, None, None, :], f[0].transpose(2, 0, 1, 3)).mean(axis=0)
                    for h, f in zip(em_h, fields, strict=True)
                )
                / 2.0
            )
            i, j = np.unravel_index(int(xp.argmax(s)), s.shape)
            candidates.append(np.array([cols[j], rows[i]]) * lm_sp[:2])
            scores.append(float(to_numpy(s[i, j])))
            angles.append(0.0)
    candidates = np.asarray(candidates)
    centre, inliers = robust_centre(candidates, floor=2 * block * float(lm_sp[:2].max()))
    roi_centre_em = np.array([(x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0]) * em_sp[:2]
    return Prealignment(
        shift_um=centre - roi_centre_em,
        rotation_deg=float(np.median(np.asarray(angles)[inliers])),
        roi_em=box,
        centre_lm_um=centre,
        candidates_lm_um=candidates,
        scores=np.asarray(scores),
        inliers=inliers,
        sigma_lm_um=float(sigma_lm_um),
        sigma_em_um=float(sigma_em_um),
        slices=slices,
        descriptor=descriptor,
    )
