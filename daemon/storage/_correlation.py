"""Result files of a correlative registration: the fused picture, an overview and an HDF5 file.

* ``<stem>_fused.png``: HSI fusion, SXT as intensity, fluorescence as hue/saturation;
* ``<stem>_overview.png``: beads found, pairs, residuals (magnified) and the TRE map;
* ``<stem>.h5``: the registered data and every figure (layout in :func:`write_fiducial_result`).

They serve both the daemon (after ``correlative_acquire``) and ``livetomo correlate``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ...processing.correlate import FiducialRegistration, IntensityRegistration, fuse_hsi, warp_image
from ...processing.correlate.transforms import apply_transform


def _save_rgb(path: Path, rgb: np.ndarray) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, np.clip(rgb, 0.0, 1.0))
    return path


def _projection(image: np.ndarray, how: str) -> np.ndarray:
    """2D view of a 2D image or a 3D stack (``how``: "mean" or "max" along z)."""
    if image.ndim == 2:
        return image
    return image.mean(axis=0) if how == "mean" else image.max(axis=0)


def fiducial_overview_png(
    path: Path, reg: FiducialRegistration, fixed: np.ndarray, fused: np.ndarray
) -> Path:
    """Beads and residuals on the fixed image, the TRE map, and the fusion, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed2 = _projection(np.asarray(fixed, np.float32), "mean")
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6), constrained_layout=True)
    ax = axes[0]
    ax.imshow(fixed2, cmap="gray")
    f_xy = reg.fixed.localisation.positions[:, :2]
    m_xy = apply_transform(reg.matrix_px, reg.moving.localisation.positions)[:, :2]
    ax.plot(*f_xy.T, "o", mfc="none", mec="cyan", ms=9, label="fixed beads")
    ax.plot(*m_xy.T, "+", color="orange", ms=9, label="moving beads, mapped")
    i, j = reg.pairs.T
    gain = 20.0
    for a, b in zip(f_xy[i], m_xy[j], strict=True):
        ax.plot([a[0], a[0] + gain * (b[0] - a[0])], [a[1], a[1] + gain * (b[1] - a[1])], "-", color="yellow")
    ax.set_title(f"{len(reg.pairs)} pairs; residuals x{gain:g} (yellow)")
    ax.legend(loc="lower right", fontsize=8)
    ax = axes[1]
    tre = reg.tre_map_nm if reg.tre_map_nm.ndim == 2 else reg.tre_map_nm.mean(axis=0)
    ny, nx = fixed2.shape
    im = ax.imshow(tre, extent=(-0.5, nx - 0.5, ny - 0.5, -0.5), cmap="viridis")
    ax.plot(*f_xy[i].T, "w.", ms=6)
    fig.colorbar(im, ax=ax, label="predicted TRE (nm)")
    ax.set_title(
        f"σX {reg.sigma_x_nm:.0f}  σF {reg.sigma_f_nm:.0f}  σA {reg.sigma_a_nm:.0f}  "
        f"σT {reg.sigma_t_nm:.0f} nm"
        f"\nleave-one-out TRE {reg.tre_loo_rms_nm:.0f} nm"
    )
    axes[2].imshow(np.clip(fused, 0, 1))
    axes[2].set_title("HSI fusion")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_fiducial_result(
    out_dir,
    reg: FiducialRegistration,
    fixed,
    moving,
    *,
    hue_deg: float = 0.0,
    stem: str = "correlation",
    attrs: dict | None = None,
) -> tuple[Path, Path, Path]:
    """Write the fused PNG, the overview PNG and the HDF5 file of a fiducial registration.

    HDF5 layout: ``/entry/data`` (NXdata) holds ``fixed``, ``moving_registered`` (on the fixed
    grid) and ``fused`` (RGB uint8, 2D view for stacks); ``/entry/correlation`` (NXprocess)
    holds ``matrix_px``, ``matrix_nm``, bead positions and precisions (pixels, (x, y[, z])),
    ``pairs``, ``residuals_nm``, ``tre_loo_nm``, ``tre_map_nm`` and, as attributes, every
    figure of :meth:`FiducialRegistration.summary` plus ``attrs``.

    Returns
    -------
    fused_png, overview_png, hdf5 : paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fixed = np.asarray(fixed, np.float32)
    registered = np.asarray(warp_image(moving, reg.matrix_px, fixed.shape))
    fused = np.asarray(fuse_hsi(_projection(fixed, "mean"), _projection(registered, "max"), hue_deg=hue_deg))
    fused_png = _save_rgb(out / f"{stem}_fused.png", fused)
    overview_png = fiducial_overview_png(out / f"{stem}_overview.png", reg, fixed, fused)
    h5 = out / f"{stem}.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "data"})
        data = entry.create_group("data")
        data.attrs.update({"NX_class": "NXdata", "signal": "fused"})
        data["fixed"] = fixed
        data["moving_registered"] = registered
        data["fused"] = np.round(fused * 255).astype(np.uint8)
        proc = entry.create_group("correlation")
        proc.attrs.update({"NX_class": "NXprocess", "program": "livetomo", "method": "fiducial"})
        proc.attrs.update(reg.summary())
        proc.attrs.update(attrs or {})
        proc["matrix_px"] = reg.matrix_px
        proc["matrix_nm"] = reg.matrix_nm
        proc["fixed_beads_px"] = reg.fixed.localisation.positions
        proc["fixed_sigma_px"] = reg.fixed.localisation.sigma_px
        proc["moving_beads_px"] = reg.moving.localisation.positions
        proc["moving_sigma_px"] = reg.moving.localisation.sigma_px
        proc["pairs"] = reg.pairs
        proc["residuals_nm"] = reg.match.residuals
        proc["tre_loo_nm"] = reg.tre_loo_nm
        proc["tre_map_nm"] = reg.tre_map_nm
        proc["tre_map_nm"].attrs["step_px"] = reg.tre_step_px
    return fused_png, overview_png, h5


def write_intensity_result(
    out_dir, reg: IntensityRegistration, lm, em, *, hue_deg: float = 120.0, stem: str = "correlation"
) -> tuple[Path, Path, Path]:
    """Write the fusion (ROI slice with most fluorescence), overview and HDF5 file of a 3D registration.

    The registered data are the EM ROI binned to the common grid (``/entry/data/em``) and the LM
    stack resampled onto that grid (``/entry/data/lm_registered``, NaN where LM has no data);
    ``/entry/correlation`` holds ``matrix_um`` (EM -> LM physical), ``matrix_index``, the
    pre-alignment, and the LoG scales and timings as attributes.
    """
    from ...processing.correlate.intensity import bin_stack

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x0, y0, z0, x1, y1, z1 = (int(v) for v in reg.roi_em)
    factors = np.maximum(np.round(reg.common_spacing_um / reg.em_spacing_um), 1).astype(int)
    em_roi = bin_stack(np.asarray(em)[z0:z1, y0:y1, x0:x1], factors)
    # Common grid voxel (x, y, z) -> EM voxel -> LM voxel.
    grid_to_em = np.eye(4)
    grid_to_em[:3, :3] = np.diag(factors)
    grid_to_em[:3, 3] = np.array([x0, y0, z0]) + (factors - 1) / 2.0
    grid_to_lm = reg.matrix_index @ grid_to_em
    lm = np.asarray(lm, np.float32)
    # NaN where the LM stack has no data (outside its field or depth), shown as background.
    lm_reg = np.asarray(warp_image(lm, np.linalg.inv(grid_to_lm), em_roi.shape, cval=np.nan))
    lm_shown = np.where(np.isfinite(lm_reg), lm_reg, np.float32(np.median(lm)))
    mid = _busiest_slice(lm_shown)
    fused = np.asarray(fuse_hsi(em_roi[mid], lm_shown[mid], hue_deg=hue_deg))
    fused_png = _save_rgb(out / f"{stem}_fused.png", fused)
    overview_png = _intensity_overview(out / f"{stem}_overview.png", reg, lm, em_roi, lm_shown)
    h5 = out / f"{stem}.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "data"})
        data = entry.create_group("data")
        data.attrs.update({"NX_class": "NXdata", "signal": "lm_registered"})
        data["em"] = em_roi
        data["lm_registered"] = lm_reg
        data["em"].attrs["spacing_um_xyz"] = reg.common_spacing_um
        data["fused_slice"] = np.round(fused * 255).astype(np.uint8)
        data["fused_slice"].attrs["z_index"] = mid
        proc = entry.create_group("correlation")
        proc.attrs.update({"NX_class": "NXprocess", "program": "livetomo", "method": "intensity"})
        proc.attrs.update({f"time_{k}_s": v for k, v in reg.timings_s.items()})
        proc.attrs.update({"sigma_lm_um": reg.sigma_lm_um, "sigma_em_um": reg.sigma_em_um})
        proc["matrix_um"] = reg.matrix_um
        proc["matrix_index"] = reg.matrix_index
        proc["initial_um"] = reg.initial_um
        proc["roi_em"] = reg.roi_em
        if reg.prealignment is not None:
            proc["prealign_candidates_lm_um"] = reg.prealignment.candidates_lm_um
            proc["prealign_shift_um"] = reg.prealignment.shift_um
    return fused_png, overview_png, h5


def _busiest_slice(stack: np.ndarray) -> int:
    """The z index where the (registered) fluorescence varies most: the slice worth showing."""
    return int(np.argmax(stack.reshape(stack.shape[0], -1).std(axis=1)))


def _intensity_overview(path: Path, reg: IntensityRegistration, lm, em_roi, lm_reg) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6), constrained_layout=True)
    mip = np.asarray(lm).max(axis=0)
    axes[0].imshow(mip, cmap="gray", vmax=np.percentile(mip, 99.8))
    if reg.prealignment is not None:
        pre = reg.prealignment
        px = reg.lm_spacing_um[:2]
        cand = pre.candidates_lm_um / px
        axes[0].plot(*cand[pre.inliers].T, "g+", ms=10, label="candidates kept")
        axes[0].plot(*cand[~pre.inliers].T, "rx", ms=8, label="outliers")
        axes[0].plot(*(pre.centre_lm_um / px), "o", mfc="none", mec="yellow", ms=14, label="ROI centre")
        axes[0].legend(loc="lower right", fontsize=8)
    axes[0].set_title("LM MIP and pre-alignment")
    mid = _busiest_slice(lm_reg)
    axes[1].imshow(em_roi[mid], cmap="gray")
    axes[1].set_title(f"EM ROI, common grid slice {mid}")
    axes[2].imshow(lm_reg[mid], cmap="gray")
    axes[2].set_title("LM registered onto it")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
