"""Filtered (weighted) back-projection for parallel-beam geometry over any angle set.

Geometry (identical to ``livetomo.simulators.projector``): volumes are (z, y, x), z is the
rotation axis; at angle θ the beam runs along (y, x) = (cos θ, -sin θ), so at 0° it runs
along y, and detector column u = x·cos θ + y·sin θ measured from the centre
(index (n - 1)/2) of the volume slice and of the detector. Optional: a rotation-centre
offset (the axis projects to detector column (n_u - 1)/2 + center_offset) and per-projection
aligning shifts (see ``shifts.py``).

Reconstruction: f(x, y) = Σ_k w_k · q_k(x cos θ_k + y sin θ_k), with q_k the ramp-filtered
projection (``filters.py``) and w_k = Δθ_k · tilt weight_k · extra weight_k / voxel size
(``angles.py``). A projection is a line integral (value × length, length in the unit of
``voxel_size``), so the volume is in value per unit length.

Sparse angles: the filter is multiplied by a low-pass that follows the angular sampling
(``filters.sampling_window``), so the frequencies N directions cannot support do not come
back as streaks at full gain.

Interpolation: ``"fourier"`` (default) looks up the filtered projection, band-limited
up-sampled ``oversample`` times, by nearest neighbour; ``"linear"`` interpolates linearly on
the original grid (as astra's and scikit-image's FBP do).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arrays import get_array_module, next_fast_len, to_numpy
from . import _kernels_xp
from ._backend import numba_available, use_numba
from .angles import angular_weights, directions_per_half_turn, normalised_tilt_weights
from .errors import NonFiniteProjectionError, ReconstructionError
from .filters import PADDINGS, check_filter, filter_rows, fourier_filter
from .shifts import as_shifts, shift_rows

INTERPOLATIONS = ("fourier", "linear")
PLANES = ("volume", "xy", "xz", "yz")


@dataclass(frozen=True)
class FilterPlan:
    """How detector rows are filtered and looked up (fixed for a reconstruction).

    Attributes
    ----------
    n_u : detector columns.
    n_padded : padded row length (even, >= 2 n_u).
    pad_left : first detector pixel in the padded row (the detector sits in the middle).
    oversample : up-sampling of the filtered rows (1 for linear interpolation).
    nearest : nearest-neighbour look-up on the up-sampled row (else linear).
    filter_name, cutoff, padding : see :func:`fbp`.
    n_directions : directions per half turn the angular-sampling window is set for, or None
        for no window (``filters.sampling_window``).
    """

    n_u: int
    n_padded: int
    pad_left: int
    oversample: int
    nearest: bool
    filter_name: str
    cutoff: float
    padding: str
    n_directions: float | None = None

    @classmethod
    def make(
        cls,
        n_u: int,
        *,
        filter_name: str = "ramp",
        cutoff: float = 1.0,
        padding: str = "edge",
        interpolation: str = "fourier",
        oversample: int = 4,
        n_padded: int | None = None,
        n_directions: float | None = None,
    ) -> FilterPlan:
        check_filter(filter_name, cutoff)
        if n_directions is not None and not (np.isfinite(n_directions) and n_directions > 0):
            raise ReconstructionError(f"n_directions must be > 0 or None, got {n_directions}")
        if padding not in PADDINGS:
            raise ReconstructionError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if interpolation not in INTERPOLATIONS:
            raise ReconstructionError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if int(oversample) != oversample or not 1 <= oversample <= 16:
            raise ReconstructionError(f"oversample must be an integer in 1..16, got {oversample}")
        if n_u < 1:
            raise ReconstructionError(f"detector needs at least one column, got n_u={n_u}")
        n_padded = next_fast_len(max(2 * n_u, 16)) if n_padded is None else int(n_padded)
        if n_padded < n_u or n_padded % 2:
            raise ReconstructionError(f"n_padded must be even and >= n_u={n_u}, got {n_padded}")
        nearest = interpolation == "fourier"
        return cls(
            n_u=int(n_u),
            n_padded=n_padded,
            pad_left=(n_padded - n_u) // 2,
            oversample=int(oversample) if nearest else 1,
            nearest=nearest,
            filter_name=filter_name,
            cutoff=float(cutoff),
            padding=padding,
            n_directions=None if n_directions is None else float(n_directions),
        )

    def filter(self, rows, scale=None, xp=np, transposed: bool = False):
        """Filtered rows, shape (..., n_padded * oversample) float32 (see ``filters.filter_rows``);
        ``transposed``: rows (nk, n_rows, n_u) give columns (nk, n_padded * oversample, n_rows),
        what :func:`backproject_columns` reads."""
        q = filter_rows(
            rows,
            n_padded=self.n_padded,
            pad_left=self.pad_left,
            response=fourier_filter(
                self.n_padded,
                self.filter_name,
                cutoff=self.cutoff,
                n_directions=self.n_directions,
                n_u=self.n_u if self.n_directions is not None else None,
            ),
            padding=self.padding,
            oversample=self.oversample,
            scale=scale,
            xp=xp,
        )
        if not transposed:
            return q
        if q.ndim != 3:
            raise ReconstructionError(f"transposed filtering needs rows (nk, n_rows, n_u), got {rows.shape}")
        if xp is np and numba_available():
            from . import _kernels

            qt = np.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=np.float32)
            _kernels.transpose_rows(q, qt)
            return qt
        return xp.ascontiguousarray(xp.swapaxes(q, -1, -2))


def projection_weights(
    angles_deg, *, tilt_lambda: float | None = None, max_gap_factor: float = 6.0, weights=None
) -> np.ndarray:
    """Total weight of each projection: Δθ_k (rad) × tilt weight × extra weight.

    The tilt weights are normalised so that Σ Δθ_k w_k = Σ Δθ_k: they reshape how the
    directions count without scaling the volume (see :func:`normalised_tilt_weights`).

    Parameters
    ----------
    angles_deg : N angles, degrees.
    tilt_lambda : λ of the tilt weight cos α / (1 + λ sin² α); None: no tilt weighting.
    max_gap_factor : see :func:`livetomo.processing.recon.angles.angular_weights`.
    weights : optional (N,) extra non-negative weights (e.g. dose or alignment quality).

    Returns
    -------
    w : ndarray, shape (N,), float64.
    """
    w = angular_weights(angles_deg, max_gap_factor=max_gap_factor)
    if tilt_lambda is not None:
        w = w * normalised_tilt_weights(angles_deg, tilt_lambda, w)
    if weights is not None:
        extra = np.asarray(weights, dtype=np.float64).ravel()
        if extra.shape != w.shape or not np.all(np.isfinite(extra)) or np.any(extra < 0):
            raise ReconstructionError(f"weights must be {w.size} finite values >= 0, got shape {extra.shape}")
        w = w * extra
    return w


def detector_centres(n_u: int, center_offset: float, dx) -> np.ndarray:
    """Detector position (column index) of the rotation axis for each projection.

    ``(n_u - 1)/2 + center_offset - dx_k``: the aligning horizontal shift dx_k moves the
    projection by +dx_k, so the axis is found dx_k further left in the raw data.
    """
    return (n_u - 1) / 2.0 + float(center_offset) - np.asarray(dx, dtype=np.float64)


def angle_terms(plan: FilterPlan, angles_deg, centres, shape_yx, plane: str = "volume", point_x=0.0):
    """Per-angle look-up terms (b0, rowstep, step) of the kernels for one kind of output row.

    Rows along x (plane "volume", "xy", "xz"): element t is voxel x = t of the row whose
    y offset from the centre is the row coordinate. Plane "yz" (rows along y at x =
    ``point_x``): element t is voxel y = t.
    """
    ny, nx = shape_yx
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    th = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    c, s = np.cos(th), np.sin(th)
    up = float(plan.oversample)
    half = 0.5 if plan.nearest else 0.0
    centre = plan.pad_left + np.asarray(centres, dtype=np.float64)
    if plane == "yz":
        return (centre + (point_x - cx) * c - cy * s) * up + half, np.zeros_like(c), s * up
    return (centre - cx * c) * up + half, s * up, c * up


def row_layout(plane: str, n_slices: int, nz: int, shape_yx, point=(0, 0, 0)):
    """(qrow, rowcoord, row length) of the output rows of a plane.

    Slices are the flattened stack of a projection, ``n_slices = n_channels * nz``.
    ``point`` is (z, y, x), voxels, for the preview planes.
    """
    ny, nx = shape_yx
    cy = (ny - 1) / 2.0
    nc = n_slices // nz
    ys = np.arange(ny) - cy
    if plane == "volume":
        return np.repeat(np.arange(n_slices), ny), np.tile(ys, n_slices), nx
    if plane == "xy":
        return np.repeat(np.arange(nc) * nz + int(point[0]), ny), np.tile(ys, nc), nx
    if plane == "xz":
        return np.arange(n_slices), np.full(n_slices, float(point[1]) - cy), nx
    if plane == "yz":
        return np.arange(n_slices), np.zeros(n_slices), ny
    raise ReconstructionError(f"plane must be one of {PLANES}, got {plane!r}")


def backproject_filtered(q, plan: FilterPlan, terms, layout, out, *, backend: str = "auto", xp=np) -> None:
    """Add the back-projection of filtered rows ``q`` (nk, n_slices, L) to ``out`` (rows, length)."""
    b0, rowstep, step = terms
    qrow, rowcoord, _ = layout
    if use_numba(xp, backend):
        from . import _kernels

        kernel = _kernels.backproject_nearest if plan.nearest else _kernels.backproject_linear
        kernel(
            np.ascontiguousarray(q, dtype=np.float32),
            np.ascontiguousarray(qrow, dtype=np.int64),
            np.ascontiguousarray(b0, dtype=np.float64),
            np.ascontiguousarray(rowstep, dtype=np.float64),
            np.ascontiguousarray(step, dtype=np.float64),
            np.ascontiguousarray(rowcoord, dtype=np.float64),
            out,
        )
        return
    _kernels_xp.backproject_rows(q, qrow, b0, rowstep, step, rowcoord, out, nearest=plan.nearest, xp=xp)


# Fewest slices for which the column kernels beat the row kernels. Measured on one core of the
# development machine, 256² slices, G voxel updates/s rows / columns: 4 slices 1.31 / 0.96 (one
# angle), 1.48 / 2.02 (four); 8 slices 1.31 / 2.19 and 1.50 / 2.83; 16 slices 1.35 / 3.10.
COLUMNS_MIN_SLICES = 8


def columns_supported(xp, backend: str, n_slices: int) -> bool:
    """Whether a volume of ``n_slices`` slices is best updated by the slice-minor column
    kernels (:func:`backproject_columns`): numba, and enough slices to fill their vectors."""
    return n_slices >= COLUMNS_MIN_SLICES and use_numba(xp, backend)


def backproject_columns(qt, plan: FilterPlan, terms, shape_yx, out) -> None:
    """Add the back-projection of filtered columns ``qt`` (nk, L, n_slices) to ``out`` (ny, nx, n_slices).

    The slice-minor layout of the whole volume (numba only): the same sums as
    :func:`backproject_filtered` with the "volume" row layout, bit for bit, about twice as
    fast (``_kernels.py``).
    """
    from . import _kernels

    b0, rowstep, step = terms
    ny = shape_yx[0]
    kernel = _kernels.backproject_columns_nearest if plan.nearest else _kernels.backproject_columns_linear
    kernel(
        np.ascontiguousarray(qt, dtype=np.float32),
        np.ascontiguousarray(b0, dtype=np.float64),
        np.ascontiguousarray(rowstep, dtype=np.float64),
        np.ascontiguousarray(step, dtype=np.float64),
        np.arange(ny) - (ny - 1) / 2.0,  # the row coordinates of row_layout("volume", ...)
        out,
    )


def chunk_size(n_slices: int, plan: FilterPlan, budget_bytes: int = 64 << 20) -> int:
    """Projections per chunk: filtered rows within ``budget_bytes``, between 4 and 64."""
    per_projection = 4 * n_slices * plan.n_padded * plan.oversample
    return int(min(max(budget_bytes // max(per_projection, 1), 4), 64))


def check_finite(projections, xp, what: str = "projection") -> None:
    """Raise NonFiniteProjectionError naming the first bad projections (NaN or inf)."""
    p = projections
    flat = p.reshape(p.shape[0], -1) if p.ndim > 1 else p[None]
    ok = xp.all(xp.isfinite(flat), axis=1)
    if not bool(xp.all(ok)):
        bad = np.flatnonzero(~to_numpy(ok))
        raise NonFiniteProjectionError(
            f"{what} {bad[:5].tolist()} hold NaN or infinite values; every pixel must be finite "
            "(drop the frame or repair it before reconstruction)"
        )


def split_stack(shape) -> tuple[tuple[int, ...], int, int, int]:
    """(stack shape, n_slices, nz, n_u) of a projection of shape (*stack, n_u)."""
    if len(shape) < 1:
        raise ReconstructionError("a projection needs at least a detector axis (n_u,)")
    stack = tuple(int(n) for n in shape[:-1])
    n_slices = int(np.prod(stack)) if stack else 1
    nz = stack[-1] if stack else 1
    return stack, n_slices, nz, int(shape[-1])


def fbp(
    projections,
    angles_deg,
    *,
    shape_yx: tuple[int, int] | None = None,
    filter_name: str = "ramp",
    cutoff: float = 1.0,
    padding: str = "edge",
    interpolation: str = "fourier",
    oversample: int = 4,
    center_offset: float = 0.0,
    shifts=None,
    weights=None,
    tilt_lambda: float | None = None,
    max_gap_factor: float = 6.0,
    voxel_size: float = 1.0,
    sampling_window: bool = True,
    n_padded: int | None = None,
    chunk: int | None = None,
    backend: str = "auto",
):
    """Filtered (weighted) back-projection of parallel-beam projections.

    Parameters
    ----------
    projections : array, shape (N, *stack, n_u): N projections; the last axis is the detector
        column u, the one before it (when present) is z (the rotation axis), any axes before
        that are channels. (N, n_u) is the sinogram of one slice. numpy or cupy; not modified.
    angles_deg : N rotation angles, degrees, any order and spacing.
    shape_yx : (ny, nx) of each reconstructed slice, voxels; default (n_u, n_u).
    filter_name : "ramp", "shepp-logan", "cosine", "hann", "hamming" or "none".
    cutoff : window cutoff as a fraction of Nyquist, (0, 1].
    padding : "edge" (default) or "zeros", padding of each detector row before filtering.
    interpolation : "fourier" (default) or "linear" (see the module docstring).
    oversample : up-sampling factor of the "fourier" interpolation (1..16).
    center_offset : rotation axis position minus the detector centre, pixels.
    shifts : optional (N, 2) aligning shifts (dy, dx), pixels (``shifts.py``).
    weights : optional (N,) extra per-projection weights.
    tilt_lambda : λ of the tilt weights cos α / (1 + λ sin² α); None (default) for none.
    max_gap_factor : missing-wedge threshold of the angular weights.
    voxel_size : voxel edge in the length unit of the line integrals.
    sampling_window : roll off the radial frequencies the angles are too few to support
        (``filters.sampling_window``, set by :func:`~.angles.directions_per_half_turn` of
        ``angles_deg`` and n_u); ≥ 0.97 up to Nyquist once N ≥ 0.75 n_u. False: the filter alone.
    n_padded : padded row length; default the next fast length >= 2 n_u.
    chunk : projections filtered and back-projected together; default: as many as fit in
        about 64 MiB of filtered rows (at most 64).
    backend : "auto" (numba on CPU when available), "numba" or "xp" (generic array code).

    Returns
    -------
    volume : array, shape (*stack, ny, nx), float32, same array module as ``projections``.

    Raises
    ------
    NonFiniteProjectionError : a projection holds NaN or inf.
    ReconstructionError : inconsistent shapes or options.
    """
    xp = get_array_module(projections)
    p = xp.asarray(projections)
    angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64)).ravel()
    if p.ndim < 2:
        raise ReconstructionError(f"projections must have shape (N, *stack, n_u), got {p.shape}")
    if angles.size != p.shape[0]:
        raise ReconstructionError(
            f"{angles.size} angles for {p.shape[0]} projections; give one angle per projection"
        )
    check_finite(p, xp)
    stack, n_slices, nz, n_u = split_stack(p.shape[1:])
    ny, nx = (n_u, n_u) if shape_yx is None else (int(shape_yx[0]), int(shape_yx[1]))
    s = as_shifts(shifts, angles.size)
    if np.any(s[:, 0] != 0) and not stack:
        raise ReconstructionError("vertical shifts need projections with a z axis, shape (N, nz, n_u)")
    if not voxel_size > 0:
        raise ReconstructionError(f"voxel_size must be > 0, got {voxel_size}")
    plan = FilterPlan.make(
        n_u,
        filter_name=filter_name,
        cutoff=cutoff,
        padding=padding,
        interpolation=interpolation,
        oversample=oversample,
        n_padded=n_padded,
        n_directions=directions_per_half_turn(angles) if sampling_window else None,
    )
    w = projection_weights(angles, tilt_lambda=tilt_lambda, max_gap_factor=max_gap_factor, weights=weights)
    w = w / float(voxel_size)
    centres = detector_centres(n_u, center_offset, s[:, 1])
    layout = row_layout("volume", n_slices, nz, (ny, nx))
    out = xp.zeros((n_slices * ny, nx), dtype=xp.float32)
    step = chunk_size(n_slices, plan) if chunk is None else max(int(chunk), 1)
    for k0 in range(0, angles.size, step):
        ks = slice(k0, min(k0 + step, angles.size))
        rows = xp.stack([shift_rows(p[k], s[k, 0], xp) for k in range(ks.start, ks.stop)])
        q = plan.filter(rows.reshape(-1, n_slices, n_u), scale=xp.asarray(w[ks])[:, None], xp=xp)
        terms = angle_terms(plan, angles[ks], centres[ks], (ny, nx))
        backproject_filtered(q, plan, terms, layout, out, backend=backend, xp=xp)
    return out.reshape(*stack, ny, nx)
