"""Intensity route: 3D LM / EM registration without beads (pre-alignment, then mutual information).

1. XY pre-alignment of the EM region of interest in the LM MIP (:mod:`.prealign`);
2. both stacks to the LoG common representation at each modality's own scale, the EM ROI
   binned onto a common grid near the LM resolution (xy: the LM pixel; z: half the LM step);
3. Mattes mutual information (SimpleITK), rigid then affine, from the pre-alignment.

The result maps EM physical coordinates (x, y, z in um from EM voxel 0) to LM physical
coordinates; apply it with :func:`warp_image` through ``matrix_index``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..arrays import get_array_module, ndimage_for, to_numpy
from .detect import per_axis
from .errors import RegistrationError
from .laplacian import log_filter
from .mutual_info import MIStage, register_mi, to_sitk
from .prealign import Prealignment, check_roi, log_scales, prealign_xy, roi_slices
from .transforms import apply_transform

# Rigid from the pre-alignment on the structure density (a wide basin: it may have to move a
# few um), affine from there on the LoG itself (fine detail, bounded steps).
_STAGE_OPTIONS = {
    "translation": {
        "representation": "density",
        "shrink": (4, 2),
        "smoothing_um": (0.0, 0.0),
        "min_step": 1e-3,
        "gradient_images": False,
    },
    "rigid": {
        "representation": "density",
        "shrink": (4, 2),
        "smoothing_um": (0.0, 0.0),
        "min_step": 1e-3,
        "gradient_images": False,
    },
    "affine": {
        "representation": "log",
        "shrink": (2, 1),
        "smoothing_um": (0.0, 0.0),
        "min_step": 1e-3,
        "max_step_um": 0.2,
    },
}
# Both representations are smooth already, so the pyramid does not smooth again (smoothing the
# moving stack at every level cost more than the optimisation); min_step 1e-3 stops when the
# step no longer matters. Measured on the source-shaped simulated stacks (seed 1, 2 busy
# cores): rigid 4.1 -> 1.3 s and affine 8.9 -> 1.7 s, error 0.18 -> 0.19 um. The rigid stage
# takes gradients only at the samples (0.16 instead of 2.4 s on the small test stacks, same
# result); the affine stage keeps ITK's gradient images, which it needs for its accuracy
# (without: 0.26-0.30 instead of 0.18-0.23 um on seeds 1-3).


def _density(log_image, spacing, sigma_um: float):
    """Structure density: |LoG| smoothed at ``sigma_um`` (same wherever either modality has detail)."""
    xp = get_array_module(log_image)
    ndi = ndimage_for(xp)
    sig = tuple(float(sigma_um / s) for s in np.asarray(spacing, float)[::-1])
    return ndi.gaussian_filter(xp.abs(xp.asarray(log_image, dtype=xp.float32)), sig, mode="constant")


@dataclass(frozen=True)
class IntensityRegistration:
    """A bead-free 3D registration of an EM stack onto an LM stack.

    Attributes
    ----------
    matrix_um : (4, 4) EM physical (x, y, z) um -> LM physical um.
    matrix_index : (4, 4) EM voxel index (x, y, z) -> LM voxel index (x, y, z).
    initial_um : (4, 4) the starting transform (from the pre-alignment, or centred stacks).
    prealignment : :class:`Prealignment` or None when it was skipped.
    stages : the mutual-information stages run (:class:`MIStage`).
    roi_em : (6,) EM region registered (x0, y0, z0, x1, y1, z1), voxels.
    lm_spacing_um, em_spacing_um : (3,) voxel sizes (x, y, z) of the inputs.
    common_spacing_um : (3,) voxel size of the common grid (x, y, z).
    sigma_lm_um, sigma_em_um : LoG scales of the common representation.
    timings_s : seconds spent per step.
    """

    matrix_um: np.ndarray
    matrix_index: np.ndarray
    initial_um: np.ndarray
    prealignment: Prealignment | None
    stages: list[MIStage]
    roi_em: np.ndarray
    lm_spacing_um: np.ndarray
    em_spacing_um: np.ndarray
    common_spacing_um: np.ndarray
    sigma_lm_um: float
    sigma_em_um: float
    timings_s: dict = field(default_factory=dict)

    def map_em_points(self, points_um) -> np.ndarray:
        """(n, 3) EM physical points (x, y, z) um -> LM physical um."""
        return apply_transform(self.matrix_um, points_um)


def bin_stack(stack, factors):
    """Block-average a [z, y, x] stack by integer ``factors`` (x, y, z); trailing voxels dropped."""
    xp = get_array_module(stack)
    fx, fy, fz = (int(f) for f in factors)
    nz, ny, nx = (s // f for s, f in zip(stack.shape, (fz, fy, fx), strict=True))
    if min(nz, ny, nx) < 1:
        raise RegistrationError(f"binning {stack.shape} by {(fz, fy, fx)} leaves nothing")
    arr = xp.asarray(stack[: nz * fz, : ny * fy, : nx * fx], dtype=xp.float32)
    return arr.reshape(nz, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5))


def _initial_from_prealignment(
    pre: Prealignment, roi_centre_um: np.ndarray, lm_centre_z: float
) -> np.ndarray:
    """EM -> LM: rotate about the ROI centre, shift XY as found, centre the ROI in the LM z range."""
    t = np.deg2rad(pre.rotation_deg)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    target = np.array([*pre.centre_lm_um, lm_centre_z])
    m[:3, 3] = target - m[:3, :3] @ roi_centre_um
    return m


def register_stacks(
    lm_stack,
    em_stack,
    *,
    lm_spacing_um,
    em_spacing_um,
    roi=None,
    prealign: bool = True,
    descriptor: str = "ncc",
    stages=("rigid", "affine"),
    common_spacing_um=None,
    sigma_lm_um: float | None = None,
    sigma_em_um: float | None = None,
    lm_margin_um: float = 15.0,
    lm_pad_um: float = 4.0,
    density_um: float = 1.0,
    seed: int = 1,
    threads: int | None = 1,
    progress=None,
) -> IntensityRegistration:
    """Register a 3D EM stack onto a 3D LM stack of different size, resolution and look.

    Parameters
    ----------
    lm_stack : (nz, ny, nx) fluorescence stack.
    em_stack : (nz, ny, nx) EM stack (any dtype; uint8 is fine).
    lm_spacing_um, em_spacing_um : voxel sizes (x, y, z) in um.
    roi : EM region of interest (x0, y0, z0, x1, y1, z1) in EM voxels (default: central 60 % in xy).
    prealign : run the XY pre-alignment; False starts from the stacks' centres overlaid (what
        plain mutual-information registration does, the naive baseline).
    descriptor : pre-alignment descriptor, "ncc" or "histogram" (see :func:`prealign_xy`).
    stages : mutual-information stages, default rigid then affine.
    common_spacing_um : common grid (x, y, z); default: EM binned by whole factors to about the
        LM xy pixel and half the LM z step.
    sigma_lm_um, sigma_em_um : LoG scales (default: automatic, :func:`log_scales`).
    lm_margin_um : LM context kept around the pre-aligned ROI.
    lm_pad_um : empty LoG added above and below the LM stack.
    density_um : smoothing of |LoG| into the structure density the rigid stage matches.
    seed : seed of the MI sampling (>= 1; the result is then reproducible).
    threads : ITK threads (None: ITK's choice). On this shared 2-core machine one thread was
        as fast as two (affine stage 4-9 s either way).
    progress : optional callable(str) told about each step (long work shows progress).

    Returns
    -------
    registration : :class:`IntensityRegistration`.
    """
    say = progress or (lambda message: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    lm_sp = per_axis(lm_spacing_um, 3, "lm_spacing_um")
    em_sp = per_axis(em_spacing_um, 3, "em_spacing_um")
    if np.ndim(lm_stack) != 3 or np.ndim(em_stack) != 3:
        raise RegistrationError(
            f"LM and EM must be 3D stacks, got {np.ndim(lm_stack)}D and {np.ndim(em_stack)}D"
        )
    box = check_roi(roi, np.shape(em_stack))
    x0, y0, z0, x1, y1, z1 = (int(v) for v in box)
    roi_centre = np.array([(x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0, (z0 + z1 - 1) / 2.0]) * em_sp
    lm_extent = (np.array(np.shape(lm_stack)[::-1]) - 1) * lm_sp

    pre = None
    if prealign:
        say("pre-alignment: LM MIP, LoG scales, patch search over EM slices")
        pre = prealign_xy(
            lm_stack,
            em_stack,
            lm_spacing_um=lm_sp,
            em_spacing_um=em_sp,
            roi=box,
            descriptor=descriptor,
            sigma_lm_um=sigma_lm_um,
            sigma_em_um=sigma_em_um,
        )
        initial = _initial_from_prealignment(pre, roi_centre, 0.5 * lm_extent[2])
        sigma_lm_um, sigma_em_um = pre.sigma_lm_um, pre.sigma_em_um
        say(
            f"pre-alignment: shift {np.round(pre.shift_um, 2).tolist()} um, rotation {pre.rotation_deg:g} deg"
        )
    else:
        initial = np.eye(4)
        initial[:3, 3] = 0.5 * lm_extent - roi_centre
        if sigma_lm_um is None or sigma_em_um is None:
            mip = get_array_module(lm_stack).asarray(lm_stack, dtype=np.float32).max(axis=0)
            auto = log_scales(
                mip, em_stack, lm_spacing_um=lm_sp, em_spacing_um=em_sp, roi=box, slices=roi_slices(box, 8)
            )
            sigma_lm_um = auto[0] if sigma_lm_um is None else sigma_lm_um
            sigma_em_um = auto[1] if sigma_em_um is None else sigma_em_um
    timings["prealign"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    say("common representation: EM ROI binned, LoG of both stacks")
    if common_spacing_um is None:
        common_spacing_um = np.array([lm_sp[0], lm_sp[1], 0.5 * lm_sp[2]])
    factors = np.maximum(np.round(per_axis(common_spacing_um, 3, "common_spacing_um") / em_sp), 1).astype(int)
    z0, z1 = _z_overlap(initial, box, em_sp, lm_extent[2], factors[2])
    em_roi = bin_stack(get_array_module(em_stack).asarray(em_stack)[z0:z1, y0:y1, x0:x1], factors)
    common = em_sp * factors
    # A binned voxel's centre sits half a bin in from the ROI corner.
    em_origin = (np.array([x0, y0, z0]) + (factors - 1) / 2.0) * em_sp
    lm_crop, lm_origin = _lm_crop(lm_stack, lm_sp, initial, box, em_sp, lm_margin_um)
    # LoG 0 ("no structure") above and below the LM stack, so that samples pushed out of it in
    # z score badly instead of dropping out of the metric (which let the optimiser run off).
    pad = int(np.ceil(lm_pad_um / lm_sp[2]))
    lm_origin = lm_origin - [0.0, 0.0, pad * lm_sp[2]]
    log_em = log_filter(em_roi, sigma_em_um, spacing=common)
    log_lm = np.pad(to_numpy(log_filter(lm_crop, sigma_lm_um, spacing=lm_sp)), ((pad, pad), (0, 0), (0, 0)))
    images = {"log": (to_sitk(log_em, common, em_origin), to_sitk(log_lm, lm_sp, lm_origin))}
    if any(_STAGE_OPTIONS.get(s, {}).get("representation") == "density" for s in stages):
        images["density"] = (
            to_sitk(_density(log_em, common, density_um), common, em_origin),
            to_sitk(_density(log_lm, lm_sp, density_um), lm_sp, lm_origin),
        )
    timings["representation"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    stages_out: list[MIStage] = []
    matrix = initial
    for stage in stages:
        options = dict(_STAGE_OPTIONS.get(stage, _STAGE_OPTIONS["rigid"]))
        fixed, moving = images[options.pop("representation")]
        out = register_mi(
            fixed,
            moving,
            initial=matrix,
            stages=(stage,),
            seed=seed,
            threads=threads,
            progress=say,
            **options,
        )
        stages_out += out
        matrix = out[-1].matrix
    timings["mutual_information"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    say(f"registration done in {timings['total']:.1f} s")
    return IntensityRegistration(
        matrix_um=matrix,
        matrix_index=np.diag([*(1.0 / lm_sp), 1.0]) @ matrix @ np.diag([*em_sp, 1.0]),
        initial_um=initial,
        prealignment=pre,
        stages=stages_out,
        roi_em=box,
        lm_spacing_um=lm_sp,
        em_spacing_um=em_sp,
        common_spacing_um=common,
        sigma_lm_um=float(sigma_lm_um),
        sigma_em_um=float(sigma_em_um),
        timings_s=timings,
    )


def _lm_crop(lm_stack, lm_sp, initial, box, em_sp, margin_um):
    """The LM voxels that the ROI maps onto under ``initial``, with a margin; and their origin (um)."""
    x0, y0, z0, x1, y1, z1 = box
    corners = np.array(np.meshgrid([x0, x1], [y0, y1], [z0, z1], indexing="ij")).reshape(3, -1).T * em_sp
    lm_pts = apply_transform(initial, corners) / lm_sp
    pad = margin_um / lm_sp
    nz, ny, nx = np.shape(lm_stack)
    lo = np.maximum(np.floor(lm_pts.min(0) - pad).astype(int), 0)
    hi = np.minimum(np.ceil(lm_pts.max(0) + pad).astype(int) + 1, [nx, ny, nz])
    lo[2], hi[2] = 0, nz  # keep every LM slice: the z range is short and z shifts are unknown
    if np.any(hi - lo < 2):
        raise RegistrationError(
            "the EM region of interest falls outside the LM stack under the initial transform; "
            "check the voxel sizes or give a roi"
        )
    crop = get_array_module(lm_stack).asarray(lm_stack)[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
    return to_numpy(crop).astype(np.float32), lo * lm_sp


def _z_overlap(initial, box, em_sp, lm_depth_um: float, z_factor: int) -> tuple[int, int]:
    """EM slices of the ROI whose centre maps inside the LM z range under ``initial``.

    Mutual information over a partial overlap is unstable (the optimiser can gain by pushing
    samples out of the moving stack), so the fixed region is the part LM covers.
    """
    x0, y0, z0, x1, y1, z1 = (int(v) for v in box)
    zs = np.arange(z0, z1)
    centre = np.array([(x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0])
    pts = np.column_stack([np.tile(centre, (len(zs), 1)), zs]) * em_sp
    z_lm = apply_transform(initial, pts)[:, 2]
    inside = zs[(z_lm >= 0.0) & (z_lm <= lm_depth_um)]
    if len(inside) < 2 * z_factor:
        raise RegistrationError(
            "the EM region of interest and the LM stack share almost no depth under the initial "
            "transform; check the voxel sizes (x, y, z) or give a roi"
        )
    return int(inside.min()), int(inside.max()) + 1
