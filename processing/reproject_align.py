"""Re-projection refinement of projection shifts (the tomopy ``align_joint`` idea).

Each projection is registered against a re-projection of the current reconstruction at its
own angle, the shifts are updated, and the loop repeats, warm-started from the shifts the
streaming alignment already has (and from the previous call's shifts as the scan goes on).

Two details make it work on few, noisy projections:

- leave-one-out: the re-projection for projection k is computed from the filtered
  back-projection of all projections but k (:func:`~livetomo.processing.align_tomo.
  leave_one_out_reprojection`), so a projection is never compared with its own, equally
  misaligned, back-projection;
- differential phase contrast is used as measured: the phase is reconstructed from the
  horizontal DPC with a Hilbert filter (no integration of noisy gradients) and the
  re-projected phase is differentiated the way the detector does (central differences),
  giving model DPC channels to register against.

What it can and cannot fix: the re-projection at angle θ is dominated by the projections
at nearby angles, so errors that vary quickly with angle (jitter, a bad frame) are
corrected, while slow drifts that look locally like a translation are not (use the moment
consistency of :mod:`livetomo.processing.moment_align` for those when the specimen stays in
the field). For a thin specimen (a lamella) the reconstruction is confined to a slab of the
specimen's thickness, which makes the re-projections stiffer and the refinement stronger.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .align_tomo import leave_one_out_reprojection, make_projector
from .arrays import get_array_module, to_numpy
from .register import register, shift_image


class ReprojectionError(ValueError):
    """Bad input to the re-projection refinement."""


@dataclass
class ReprojectionResult:
    """Outcome of :func:`reprojection_refine`.

    Attributes
    ----------
    shifts : (n, 2) refined shifts (dy, dx), pixels (registering each projection).
    updates_rms : RMS of the shift update of each iteration, pixels (convergence).
    volume : the last FBP volume (nz, ny, nx), numpy or cupy.
    ok : (n,) bool, registration quality of the last iteration.
    """

    shifts: np.ndarray
    updates_rms: list = field(default_factory=list)
    volume: object = None
    ok: np.ndarray | None = None


def model_images(reprojections, *, derivative: bool, n_channels: int):
    """Images to register against: the re-projections, or their (u, z) derivatives."""
    xp = get_array_module(reprojections)
    if not derivative:
        return reprojections[:, None] if n_channels == 1 else xp.repeat(reprojections[:, None], n_channels, 1)
    d_z, d_u = xp.gradient(reprojections, axis=(1, 2))
    return xp.stack([d_u, d_z][:n_channels], axis=1)


def reprojection_refine(
    images,
    angles_deg,
    shifts,
    *,
    derivative: bool = False,
    region: str = "circle",
    thickness_px: int | None = None,
    iterations: int = 1,
    tolerance_px: float = 0.0,
    roi=None,
    band=(0.7, 3.0),
    upsample_factor: int = 100,
    max_update: float | None = 2.0,
    projector=None,
) -> ReprojectionResult:
    """Refine shifts by registering every projection on its leave-one-out re-projection.

    Parameters
    ----------
    images : (n, rows, cols) linear projections (phase, element counts, TEM contrast), or
        (n, channels, rows, cols); with ``derivative=True`` channel 0 is the u-derivative
        (horizontal DPC) and channel 1, if present, the row derivative (vertical DPC).
        Rows are the rotation axis z. numpy or cupy; not modified.
    angles_deg : (n,) angles, degrees.
    shifts : (n, 2) starting shifts (dy, dx), pixels (warm start).
    derivative : the images are derivatives (DPC); see the module docstring.
    region : 'circle' (full rotation, slices cols × cols) or 'slab' (tilt series; slices
        ``thickness_px`` × cols).
    thickness_px : slab thickness, pixels (the specimen's thickness; required for 'slab').
    iterations : largest number of refinement passes.
    tolerance_px : stop when the RMS update of a pass falls below this, pixels.
    roi, band, upsample_factor : registration options (see
        :func:`~livetomo.processing.register.register`).
    max_update : updates larger than this (pixels) in one pass are ignored for that
        projection (a failed registration must not throw a projection away).
    projector : a ready :class:`~livetomo.processing.align_tomo.Projector` for these angles
        and slices (reused across calls), or None to build one.

    Returns
    -------
    ReprojectionResult
    """
    xp = get_array_module(images)
    imgs = xp.asarray(images, dtype=xp.float32)
    if imgs.ndim == 3:
        imgs = imgs[:, None]
    if imgs.ndim != 4:
        raise ReprojectionError(
            f"images must be (n, rows, cols) or (n, channels, rows, cols), got {imgs.shape}"
        )
    n, n_ch, _, n_cols = imgs.shape
    angles = np.asarray(angles_deg, dtype=float).ravel()
    s = np.array(shifts, dtype=float).reshape(-1, 2)
    if angles.size != n or s.shape[0] != n:
        raise ReprojectionError(f"{n} images, {angles.size} angles and {s.shape[0]} shifts must agree")
    if projector is None:
        if region == "slab":
            if not thickness_px or thickness_px < 2:
                raise ReprojectionError("region='slab' needs thickness_px >= 2 (the specimen thickness)")
            shape = (int(thickness_px), n_cols)
        else:
            shape = (n_cols, n_cols)
        projector = make_projector(angles, shape, n_u=n_cols, region=region, xp=xp)
    result = ReprojectionResult(s)
    ok = np.ones(n, dtype=bool)
    for _ in range(max(0, int(iterations))):
        aligned = xp.stack([shift_image(imgs[k], s[k]) for k in range(n)])
        reproj, volume = leave_one_out_reprojection(
            projector, aligned[:, 0], kind="hilbert" if derivative else "ramp"
        )
        model = model_images(reproj, derivative=derivative, n_channels=n_ch)
        update = np.zeros_like(s)
        for k in range(n):
            reg = register(model[k], aligned[k], roi=roi, band=band, upsample_factor=upsample_factor)
            step = np.asarray(reg.shift)
            # The re-projection is a model of this very projection: a clear correlation
            # (coefficient above 0.5) is accepted even when a smooth specimen gives a broad,
            # low-contrast peak that the generic quality flag would reject.
            matched = reg.quality.ok or reg.quality.correlation > 0.5
            ok[k] = matched and (max_update is None or np.abs(step).max() <= max_update)
            if ok[k]:
                update[k] = step
        s = s + update
        result.updates_rms.append(float(np.sqrt((update[ok] ** 2).sum(axis=1).mean())) if ok.any() else 0.0)
        result.volume = volume
        if result.updates_rms[-1] < tolerance_px:
            break
    result.shifts = s
    result.ok = ok
    return result


def as_numpy(x):
    """Host copy of an array (numpy or cupy)."""
    return to_numpy(x)
