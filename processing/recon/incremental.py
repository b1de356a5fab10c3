"""Incremental weighted back-projection: the tomogram grows with every projection.

:class:`IncrementalReconstructor` keeps a running volume V = Σ_k w_k · B(q_k): adding a
projection filters it and adds its weighted back-projection (cost: one back-projection,
i.e. one read and one write of the volume), never a re-reconstruction. Because each
contribution is a separate term of the sum, any one of them can be taken out again exactly:

- a refined alignment shift (re-projection alignment) subtracts the projection's
  contribution at its old shift and adds it at the new one;
- a removed (bad) projection is subtracted;
- angular weights follow the angle set: with the planned angles given up front (the run's
  ``angles_planned``) every weight is final when its projection arrives; an angle outside
  the plan (or no plan) changes the weights of its two neighbours, whose contributions are
  corrected by the difference (one extra back-projection each).

After the last projection the volume equals :func:`~livetomo.processing.recon.fbp` of the
same data to float32 rounding.

Previews: orthogonal XY, XZ and YZ planes through a chosen point. In ``mode="volume"`` they
are slices of the running volume (free). In ``mode="previews"`` only the three planes are
maintained, at a cost per projection of (ny·nx + nz·nx + nz·ny) voxel updates instead of
nz·ny·nx (for volumes too large to update per projection); the full volume is then computed
on request from the stored projections.

The class is pure computation: no threads, no I/O; its owner (the daemon) serialises calls.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..arrays import to_numpy
from .angles import angular_weights, directions_per_half_turn, tilt_weights
from .backprojection import (
    FilterPlan,
    angle_terms,
    backproject_columns,
    backproject_filtered,
    chunk_size,
    columns_supported,
    detector_centres,
    row_layout,
    split_stack,
)
from .errors import NonFiniteProjectionError, ReconstructionError, UnknownProjectionError
from .shifts import as_shifts, shift_rows

MODES = ("volume", "previews")
_PREVIEW_PLANES = ("xy", "xz", "yz")


@dataclass(frozen=True)
class Previews:
    """Orthogonal planes through ``point`` of the current reconstruction.

    Attributes
    ----------
    point : (z, y, x) voxel indices the planes pass through.
    xy : array (*channels, ny, nx): the slice z = point[0].
    xz : array (*channels, nz, nx): the plane y = point[1].
    yz : array (*channels, nz, ny): the plane x = point[2].
    n_projections : projections in the reconstruction.
    """

    point: tuple[int, int, int]
    xy: object
    xz: object
    yz: object
    n_projections: int


@dataclass
class _Record:
    projection: object  # (*stack, n_u) float32, as received
    angle: float
    shift: tuple[float, float]
    extra_weight: float
    applied_weight: float = 0.0  # weight its contribution currently has in the volume


class IncrementalReconstructor:
    """Running filtered back-projection that is updated projection by projection.

    Parameters
    ----------
    projection_shape : (*stack, n_u) of every projection: (nz, n_u) for a volume,
        (n_channels, nz, n_u) for several channels sharing alignment (XRF elements), (n_u,)
        for a single slice.
    shape_yx : (ny, nx) of the reconstructed slices; default (n_u, n_u).
    angles_deg : the planned angles, degrees (any order); None if unknown (weights then
        follow the angles received so far, at the cost of re-weighting neighbours).
    angle_tolerance_deg : a received angle this close to a planned one takes that planned
        angle's weight; default a quarter of the planned spacing.
    filter_name, cutoff, padding, interpolation, oversample, center_offset, tilt_lambda,
    max_gap_factor, voxel_size : as in :func:`~livetomo.processing.recon.fbp`.
    sampling_window : as in :func:`~livetomo.processing.recon.fbp`, set from the planned
        angles; without a plan there is none (the final sampling is not known, and changing
        the filter would redo every contribution), so the result then equals
        ``fbp(..., sampling_window=False)``.
    mode : "volume" (maintain the whole volume) or "previews" (maintain three planes).
    preview_point : (z, y, x) of the preview planes; default the volume centre.
    backend : "auto", "numba" or "xp".
    xp : array module for the volume (numpy, or cupy for the GPU).
    """

    def __init__(
        self,
        projection_shape,
        *,
        shape_yx: tuple[int, int] | None = None,
        angles_deg=None,
        angle_tolerance_deg: float | None = None,
        filter_name: str = "ramp",
        cutoff: float = 1.0,
        padding: str = "edge",
        interpolation: str = "fourier",
        oversample: int = 4,
        center_offset: float = 0.0,
        tilt_lambda: float | None = None,
        max_gap_factor: float = 6.0,
        voxel_size: float = 1.0,
        sampling_window: bool = True,
        mode: str = "volume",
        preview_point=None,
        backend: str = "auto",
        xp=np,
    ):
        self.projection_shape = tuple(int(n) for n in projection_shape)
        self._stack, self._n_slices, self._nz, self.n_u = split_stack(self.projection_shape)
        ny, nx = (self.n_u, self.n_u) if shape_yx is None else (int(shape_yx[0]), int(shape_yx[1]))
        if min(ny, nx, self.n_u, self._n_slices) < 1:
            raise ReconstructionError(
                f"empty geometry: projection {self.projection_shape}, slices {(ny, nx)}"
            )
        self.shape_yx = (ny, nx)
        if mode not in MODES:
            raise ReconstructionError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self._planned, self._tolerance = self._plan_angles(angles_deg, angle_tolerance_deg)
        windowed = sampling_window and self._planned is not None
        self.plan = FilterPlan.make(
            self.n_u,
            filter_name=filter_name,
            cutoff=cutoff,
            padding=padding,
            interpolation=interpolation,
            oversample=oversample,
            n_directions=directions_per_half_turn(self._planned) if windowed else None,
        )
        if tilt_lambda is not None:
            tilt_weights([0.0], tilt_lambda)  # validates lambda
        self.tilt_lambda = tilt_lambda
        self.max_gap_factor = float(max_gap_factor)
        angular_weights([0.0], max_gap_factor=self.max_gap_factor)  # validates the factor
        if not voxel_size > 0:
            raise ReconstructionError(f"voxel_size must be > 0, got {voxel_size}")
        self.voxel_size = float(voxel_size)
        self.center_offset = float(center_offset)
        self.backend = backend
        self.xp = xp
        self._records: dict[object, _Record] = {}
        self._matrices: dict = {}  # projector matrices kept between refiners
        self._keys = itertools.count()
        self._point = self._check_point(preview_point)
        self._chunk = chunk_size(self._n_slices, self.plan)
        self._reset_accumulators()

    # ------------------------------------------------------------------ public state

    @property
    def volume_shape(self) -> tuple[int, ...]:
        """(*stack, ny, nx) of the reconstruction."""
        return (*self._stack, *self.shape_yx)

    @property
    def n_projections(self) -> int:
        return len(self._records)

    @property
    def keys(self) -> list:
        """Keys of the projections in the reconstruction, in arrival order."""
        return list(self._records)

    @property
    def angles_deg(self) -> np.ndarray:
        """Angles of the received projections, arrival order."""
        return np.array([r.angle for r in self._records.values()], dtype=np.float64)

    @property
    def shifts(self) -> np.ndarray:
        """(n, 2) aligning shifts (dy, dx) of the received projections, arrival order."""
        return np.array([r.shift for r in self._records.values()], dtype=np.float64).reshape(-1, 2)

    @property
    def weights(self) -> np.ndarray:
        """Weights (Δθ × tilt × extra / voxel size) the contributions currently carry."""
        return np.array([r.applied_weight for r in self._records.values()], dtype=np.float64)

    @property
    def preview_point(self) -> tuple[int, int, int]:
        return self._point

    # ------------------------------------------------------------------ updates

    def add(self, projection, angle_deg: float, *, shift=(0.0, 0.0), weight: float = 1.0, key=None):
        """Add one projection's weighted filtered back-projection to the reconstruction.

        Parameters
        ----------
        projection : array, shape ``projection_shape``; not modified (a float32 copy is kept
            so its contribution can be redone).
        angle_deg : its rotation angle, degrees.
        shift : its aligning shift (dy, dx), pixels (``shifts.py``).
        weight : extra weight >= 0 (1 by default).
        key : any hashable identifying it for later updates; default a running integer.

        Returns
        -------
        key : the key of the projection.

        Raises
        ------
        NonFiniteProjectionError : the projection holds NaN or inf; nothing is changed.
        ReconstructionError : wrong shape, angle, shift or weight, or a key already in use.
        """
        return self.add_many([projection], [angle_deg], shifts=[shift], weights=[weight], keys=[key])[0]

    def add_many(self, projections, angles_deg, *, shifts=None, weights=None, keys=None) -> list:
        """Add several projections in one pass over the volume (for a backlog of frames).

        Four projections are back-projected per read and write of the volume, so a batch
        costs less than the same projections added one by one. All are validated before any
        is added: one bad frame rejects the batch and changes nothing.

        Parameters
        ----------
        projections : sequence (or array) of n projections of shape ``projection_shape``.
        angles_deg : n angles, degrees.
        shifts : n aligning shifts (dy, dx), pixels; default zeros.
        weights : n extra weights; default ones.
        keys : n keys (None entries get running integers); default all running integers.

        Returns
        -------
        keys : the n keys.
        """
        n = len(projections)
        angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64)).ravel()
        if angles.size != n:
            raise ReconstructionError(
                f"{angles.size} angles for {n} projections; give one angle per projection"
            )
        shifts = [(0.0, 0.0)] * n if shifts is None else list(shifts)
        weights = [1.0] * n if weights is None else [float(w) for w in weights]
        keys = [None] * n if keys is None else list(keys)
        if not len(shifts) == len(weights) == len(keys) == n:
            raise ReconstructionError(f"shifts, weights and keys must have one entry per projection ({n})")
        records = []
        for p_in, angle, shift, weight, key in zip(projections, angles, shifts, weights, keys, strict=True):
            records.append((self._validated(p_in, angle, shift, weight), key))
        taken = set(self._records)
        new_keys = []
        for _, key in records:
            if key is None:
                key = next(k for k in self._keys if k not in taken)
            elif key in taken:
                raise ReconstructionError(f"a projection with key {key!r} is already in the reconstruction")
            taken.add(key)
            new_keys.append(key)
        for (rec, _), key in zip(records, new_keys, strict=True):
            self._records[key] = rec
        self._reweight()
        return new_keys

    def _validated(self, projection, angle_deg, shift, weight) -> _Record:
        """A record of one projection after every check (nothing is stored here)."""
        xp = self.xp
        p = xp.asarray(projection, dtype=xp.float32)
        if tuple(p.shape) != self.projection_shape:
            raise ReconstructionError(
                f"projection must have shape {self.projection_shape}, got {tuple(p.shape)}"
            )
        angle = float(angle_deg)
        if not np.isfinite(angle):
            raise ReconstructionError(f"angle_deg must be finite degrees, got {angle_deg}")
        n_bad = int(p.size - int(xp.count_nonzero(xp.isfinite(p))))
        if n_bad:
            raise NonFiniteProjectionError(
                f"projection at {angle:g} deg has {n_bad} NaN or infinite pixels of {p.size}; it was "
                "rejected and the volume is unchanged (every pixel must be finite: drop or repair the frame)"
            )
        s = self._check_shift(shift)
        if not (np.isfinite(weight) and weight >= 0):
            raise ReconstructionError(f"weight must be finite and >= 0, got {weight}")
        copy = p.copy() if p is projection else p  # asarray may alias the caller's array
        return _Record(copy, angle, s, float(weight))

    def update_shift(self, key, shift) -> None:
        """Redo one projection's contribution at a new aligning shift (subtract old, add new)."""
        self.update_shifts({key: shift})

    def update_shifts(self, shifts: dict) -> None:
        """Redo the contributions of several projections at new shifts (one pass per chunk).

        Parameters
        ----------
        shifts : {key: (dy, dx)}; keys not received raise UnknownProjectionError before
            anything changes.
        """
        new = [(self._record(key), self._check_shift(s)) for key, s in shifts.items()]
        terms = []
        for rec, s in new:
            if s != rec.shift and rec.applied_weight != 0.0:
                terms.append((rec, -rec.applied_weight, rec.shift))
                terms.append((rec, rec.applied_weight, s))
        self._apply(terms)
        for rec, s in new:
            rec.shift = s

    def remove(self, key) -> None:
        """Take a projection out of the reconstruction (e.g. a frame found bad later)."""
        rec = self._record(key)
        self._apply([(rec, -rec.applied_weight, rec.shift)])
        del self._records[key]
        self._reweight()

    def set_center_offset(self, center_offset: float) -> None:
        """Change the rotation-centre offset (pixels); every contribution is redone."""
        self.center_offset = float(center_offset)
        self._rebuild()

    def set_preview_point(self, point) -> None:
        """Move the preview planes to ``point`` (z, y, x); in "previews" mode they are recomputed."""
        point = self._check_point(point)
        if point != self._point:
            self._point = point
            if self.mode == "previews":
                self._rebuild()

    # ------------------------------------------------------------------ results

    def volume(self):
        """The reconstruction, shape (*stack, ny, nx), float32.

        In "volume" mode a read-only view of the running volume (no copy; it changes with
        the next update, copy it to keep it; on the CPU it is a transposed view of the
        slice-minor accumulator, so not C-contiguous). In "previews" mode it is computed from
        the stored projections (one back-projection per projection).
        """
        if self.mode == "volume":
            v = self._running_volume()
            if self.xp is np:
                v = v.view()
                v.flags.writeable = False
            return v
        acc = self.xp.zeros((self._n_slices * self.shape_yx[0], self.shape_yx[1]), dtype=self.xp.float32)
        self._apply(self._all_terms(), targets={"volume": acc})
        return acc.reshape(self.volume_shape)

    def previews(self, point=None) -> Previews:
        """XY, XZ and YZ planes through ``point`` (default the current preview point).

        Cost: copying three planes in "volume" mode; in "previews" mode a new point means
        recomputing the planes from every stored projection.
        """
        if point is not None:
            self.set_preview_point(point)
        z, y, x = self._point
        if self.mode == "volume":
            v = self._running_volume()
            xy, xz, yz = v[..., z, :, :], v[..., :, y, :], v[..., :, :, x]
        else:
            xy, xz, yz = (self._acc[p].reshape(self._plane_shape(p)) for p in _PREVIEW_PLANES)
        return Previews(self._point, xy.copy(), xz.copy(), yz.copy(), self.n_projections)

    def aligned_projections(self):
        """(angles_deg (n,), projections (n, *stack, n_u), dx (n,)) for iterative refinement.

        Vertical shifts are applied to the data; horizontal shifts are returned (they go
        into the projector's geometry, exactly).
        """
        xp = self.xp
        if not self._records:
            raise ReconstructionError("no projections received yet")
        recs = list(self._records.values())
        data = xp.stack([shift_rows(r.projection, r.shift[0], xp) for r in recs])
        return self.angles_deg, data, np.array([r.shift[1] for r in recs])

    def refiner(self, method: str = "sirt", **kwargs):
        """An iterative refiner warm-started from the current volume (see ``iterative.py``).

        Parameters
        ----------
        method : "sirt" or "tv".
        kwargs : options of :class:`~livetomo.processing.recon.iterative.SIRT` or
            :class:`~livetomo.processing.recon.iterative.TVDescent` (e.g. ``mu``,
            ``nonnegative``).

        Returns
        -------
        refiner : object with ``run(n_iter, max_seconds=None)`` and ``volume``.
        """
        from .iterative import SIRT, TVDescent

        classes = {"sirt": SIRT, "tv": TVDescent}
        if method not in classes:
            raise ReconstructionError(f"method must be one of {tuple(classes)}, got {method!r}")
        angles, data, dx = self.aligned_projections()
        centres = detector_centres(self.n_u, self.center_offset, dx)
        keep = {(self.shape_yx, self.n_u, float(a), float(c)) for a, c in zip(angles, centres, strict=True)}
        for stale in set(self._matrices) - keep:  # matrices of old shifts or removed frames
            del self._matrices[stale]
        return classes[method](
            data,
            angles,
            x0=self.volume(),
            shape_yx=self.shape_yx,
            center_offset=self.center_offset,
            shifts=np.column_stack([np.zeros_like(dx), dx]),
            voxel_size=self.voxel_size,
            backend=self.backend,
            matrix_cache=self._matrices,
            **kwargs,
        )

    # ------------------------------------------------------------------ internals

    def _record(self, key) -> _Record:
        try:
            return self._records[key]
        except (KeyError, TypeError):
            raise UnknownProjectionError(f"no projection with key {key!r} in the reconstruction") from None

    def _check_shift(self, shift) -> tuple[float, float]:
        s = as_shifts(np.asarray(shift, dtype=np.float64).reshape(1, 2), 1)[0]
        if s[0] != 0.0 and not self._stack:
            raise ReconstructionError("a vertical shift needs projections with a z axis")
        return float(s[0]), float(s[1])

    def _check_point(self, point) -> tuple[int, int, int]:
        ny, nx = self.shape_yx
        dims = (self._nz, ny, nx)
        if point is None:
            return tuple(n // 2 for n in dims)
        p = tuple(int(round(float(v))) for v in point)
        if len(p) != 3 or any(not 0 <= v < n for v, n in zip(p, dims, strict=True)):
            raise ReconstructionError(f"preview point must be (z, y, x) inside {dims}, got {tuple(point)}")
        return p

    def _plane_shape(self, plane: str) -> tuple[int, ...]:
        ny, nx = self.shape_yx
        nc = self._stack[:-1]
        return {"xy": (*nc, ny, nx), "xz": (*nc, self._nz, nx), "yz": (*nc, self._nz, ny)}[plane]

    def _running_volume(self):
        """The running volume as (*stack, ny, nx) (a view of the accumulator)."""
        if "columns" in self._acc:
            v = self._acc["columns"].reshape(*self.shape_yx, *self._stack)
            return self.xp.moveaxis(v, (0, 1), (-2, -1))
        return self._acc["volume"].reshape(self.volume_shape)

    def _reset_accumulators(self) -> None:
        xp, (ny, nx) = self.xp, self.shape_yx
        if self.mode == "volume" and columns_supported(xp, self.backend, self._n_slices):
            # Slice-minor (ny, nx, slices): the column kernels update it twice as fast as the
            # row layout (see _kernels.py); volume() hands out a transposed view.
            self._acc = {"columns": xp.zeros((ny, nx, self._n_slices), dtype=xp.float32)}
        elif self.mode == "volume":
            self._acc = {"volume": xp.zeros((self._n_slices * ny, nx), dtype=xp.float32)}
        else:
            nc = self._n_slices // self._nz
            rows = {"xy": nc * ny, "xz": self._n_slices, "yz": self._n_slices}
            cols = {"xy": nx, "xz": nx, "yz": ny}
            self._acc = {p: xp.zeros((rows[p], cols[p]), dtype=xp.float32) for p in _PREVIEW_PLANES}

    def _rebuild(self) -> None:
        self._reset_accumulators()
        for rec in self._records.values():
            rec.applied_weight = 0.0
        self._reweight()

    def _all_terms(self):
        return [(r, r.applied_weight, r.shift) for r in self._records.values() if r.applied_weight != 0.0]

    @staticmethod
    def _plan_angles(angles_deg, tolerance):
        if angles_deg is None:
            return None, 0.0
        planned = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64)).ravel()
        angular_weights(planned)  # validates
        if tolerance is None:
            gaps = np.diff(np.unique(planned))
            tolerance = 0.25 * float(np.median(gaps)) if gaps.size else 0.5
        if not tolerance >= 0:
            raise ReconstructionError(f"angle_tolerance_deg must be >= 0, got {tolerance}")
        return planned, float(tolerance)

    def _target_weights(self) -> list[float]:
        """Weight every received projection should carry, given the current angle set."""
        recs = list(self._records.values())
        if not recs:
            return []
        received = np.array([r.angle for r in recs])
        if self._planned is None:
            dtheta = angular_weights(received, max_gap_factor=self.max_gap_factor)
        else:
            nearest = np.abs(received[:, None] - self._planned[None, :]).argmin(axis=1)
            matched = np.abs(received - self._planned[nearest]) <= self._tolerance
            extra = received[~matched]
            w_set = angular_weights(
                np.concatenate([self._planned, extra]), max_gap_factor=self.max_gap_factor
            )
            count = np.bincount(nearest[matched], minlength=self._planned.size)
            dtheta = np.empty(received.size)
            dtheta[matched] = w_set[nearest[matched]] / count[nearest[matched]]
            dtheta[~matched] = w_set[self._planned.size :]
        if self.tilt_lambda is not None:  # normalised over the planned set when there is one
            if self._planned is not None:
                planned_w = angular_weights(self._planned, max_gap_factor=self.max_gap_factor)
                gain = float(
                    np.sum(planned_w * tilt_weights(self._planned, self.tilt_lambda)) / np.sum(planned_w)
                )
            else:
                gain = float(np.sum(dtheta * tilt_weights(received, self.tilt_lambda)) / np.sum(dtheta))
            dtheta = dtheta * tilt_weights(received, self.tilt_lambda) / max(gain, 1e-12)
        extra_w = np.array([r.extra_weight for r in recs])
        return list(dtheta * extra_w / self.voxel_size)

    def _reweight(self) -> None:
        """Bring every contribution to its target weight (new ones, and changed neighbours)."""
        targets = self._target_weights()
        terms = []
        for rec, target in zip(self._records.values(), targets, strict=True):
            delta = target - rec.applied_weight
            if abs(delta) > 1e-9 * max(abs(target), abs(rec.applied_weight)):
                terms.append((rec, delta, rec.shift))
        self._apply(terms)
        for rec, target in zip(self._records.values(), targets, strict=True):
            rec.applied_weight = target

    def _apply(self, terms, targets=None) -> None:
        """Add Σ weight · B(projection at shift) for (record, weight, shift) terms, in chunks."""
        xp = self.xp
        targets = self._acc if targets is None else targets
        for k0 in range(0, len(terms), self._chunk):
            chunk = terms[k0 : k0 + self._chunk]
            rows = xp.stack([shift_rows(rec.projection, s[0], xp) for rec, _, s in chunk])
            rows = rows.reshape(len(chunk), self._n_slices, self.n_u)
            scale = xp.asarray(np.array([w for _, w, _ in chunk]))[:, None]
            angles = np.array([rec.angle for rec, _, _ in chunk])
            centres = detector_centres(self.n_u, self.center_offset, [s[1] for _, _, s in chunk])
            filtered = {}  # rows, and columns for the slice-minor accumulator, each filtered once
            for plane, out in targets.items():
                columns = plane == "columns"
                if columns not in filtered:
                    filtered[columns] = self.plan.filter(rows, scale=scale, xp=xp, transposed=columns)
                q = filtered[columns]
                if columns:
                    terms_k = angle_terms(self.plan, angles, centres, self.shape_yx)
                    backproject_columns(q, self.plan, terms_k, self.shape_yx, out)
                    continue
                terms_k = angle_terms(self.plan, angles, centres, self.shape_yx, plane, self._point[2])
                layout = row_layout(plane, self._n_slices, self._nz, self.shape_yx, self._point)
                backproject_filtered(q, self.plan, terms_k, layout, out, backend=self.backend, xp=xp)


def orthogonal_slices(volume, point=None):
    """XY, XZ and YZ planes of a volume (*channels, nz, ny, nx) through ``point`` (z, y, x).

    Returns
    -------
    (xy, xz, yz) : copies, shapes (*channels, ny, nx), (*channels, nz, nx), (*channels, nz, ny).
    """
    shape = volume.shape[-3:]
    if len(volume.shape) < 3:
        raise ReconstructionError(f"volume must be (..., nz, ny, nx), got shape {volume.shape}")
    z, y, x = (n // 2 for n in shape) if point is None else (int(v) for v in point)
    if not (0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]):
        raise ReconstructionError(f"point {(z, y, x)} lies outside the volume {shape}")
    return volume[..., z, :, :].copy(), volume[..., :, y, :].copy(), volume[..., :, :, x].copy()


def previews_to_numpy(previews: Previews) -> Previews:
    """The same previews with numpy planes (for publishing from a GPU reconstruction)."""
    return Previews(
        previews.point,
        *(to_numpy(a) for a in (previews.xy, previews.xz, previews.yz)),
        previews.n_projections,
    )
