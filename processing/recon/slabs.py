"""Iterative refinement split into independent slabs along the rotation (tilt) axis z.

Why it splits: parallel-beam projection never mixes slices, so the data term ½‖AV − I‖²
is a sum over z slices, and SIRT updates every slice from its own detector row only. A slab
of slices with its rows of every projection is a complete, smaller problem; slabs can run
anywhere (a process, a Dask worker) and their volumes are stacked. For SIRT the stacked
result equals the whole-volume one to float32 rounding (tested).

TV couples neighbouring slices through its z gradient, and FISTA's restart test is a global
inner product, so a TV slab is solved with ``halo`` extra slices on each side (kept out of the
result): the slab's edge slices see neighbours as the whole-volume solver would, up to how far
the coupling spreads in the iterations run. Everything global is computed once over the whole
volume and handed to every slab: μ (from the noise of all projections, ``mu="auto"``) and the
step 1/‖A‖² (every slice sees the same operator). Slab results therefore do not depend on
where or in which order slabs run: in-process and on Dask they are identical.

Pure computation (arrays in, arrays out); the daemon decides where the slabs run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import ReconstructionError
from .iterative import MU_KAPPA, SIRT, TVDescent, estimate_noise, mu_from_noise, operator_norm_squared
from .projector import Projector

METHODS = {"sirt": SIRT, "tv": TVDescent}


class RefinementCancelled(RuntimeError):
    """``stop()`` asked a slab refinement to end before it was done."""


@dataclass(frozen=True)
class SlabTask:
    """One slab's refinement: everything it needs, picklable (numpy arrays and plain values).

    Attributes
    ----------
    index : slab number, from 0 at z = 0.
    core : (z0, z1), the slices of the volume this slab produces.
    padded : (z0, z1) with the halo, the slices it is solved on.
    method : "sirt" or "tv".
    projections : (N, *channels, padded nz, n_u) float32, aligned (vertical shifts applied).
    x0 : (*channels, padded nz, ny, nx) float32 starting volume.
    angles_deg : (N,) degrees.
    n_iter : iterations (at most).
    options : keyword arguments of the solver (geometry, ``mu`` and ``lipschitz`` for TV).
    deadline : ``time.time()`` after which the slab runs no further iteration (it always runs
        one), or None. Wall-clock time, not a duration: a slab that waited in a queue behind
        others gets what is left of the refinement's budget, as the whole-volume loop would.
    """

    index: int
    core: tuple[int, int]
    padded: tuple[int, int]
    method: str
    projections: np.ndarray = field(repr=False)
    x0: np.ndarray = field(repr=False)
    angles_deg: np.ndarray = field(repr=False)
    n_iter: int = 1
    options: dict = field(default_factory=dict, repr=False)
    deadline: float | None = None


def slab_ranges(nz: int, slab_slices: int, halo: int = 0) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(core, padded) z ranges of slabs of ``slab_slices`` slices (the last may be shorter).

    Parameters
    ----------
    nz : slices along the rotation axis.
    slab_slices : slices per slab, >= 1.
    halo : extra slices on each side of a slab (clipped at the volume's ends), >= 0.
    """
    if nz < 1 or slab_slices < 1 or halo < 0:
        raise ReconstructionError(f"need nz, slab_slices >= 1 and halo >= 0; got {nz}, {slab_slices}, {halo}")
    out = []
    for z0 in range(0, nz, slab_slices):
        z1 = min(z0 + slab_slices, nz)
        out.append(((z0, z1), (max(z0 - halo, 0), min(z1 + halo, nz))))
    return out


def plan_slabs(
    projections,
    angles_deg,
    x0,
    *,
    method: str = "tv",
    n_iter: int = 10,
    slab_slices: int = 16,
    halo: int | None = None,
    shape_yx=None,
    center_offset: float = 0.0,
    shifts_dx=None,
    voxel_size: float = 1.0,
    nonnegative: bool = False,
    mu="auto",
    kappa: float = MU_KAPPA,
    inner_iterations: int = 10,
    backend: str = "auto",
) -> list[SlabTask]:
    """Split one refinement into slab tasks (see the module docstring).

    Parameters
    ----------
    projections : (N, *channels, nz, n_u) aligned projections (line integrals), numpy; not
        modified (each task holds a copy of its rows).
    angles_deg : (N,) degrees.
    x0 : (*channels, nz, ny, nx) starting volume, e.g. the incremental FBP; not modified.
    method : "sirt" or "tv".
    n_iter : iterations every slab runs.
    slab_slices : slices per slab.
    halo : extra slices solved on each side; default 0 for SIRT (exact) and 4 for TV.
    shape_yx, center_offset, voxel_size, nonnegative, backend : as in :class:`SIRT`.
    shifts_dx : (N,) horizontal aligning shifts, pixels (vertical ones already applied).
    mu, kappa, inner_iterations : TV options; ``mu="auto"`` is estimated once from all
        projections.

    Returns
    -------
    tasks : list of :class:`SlabTask`, in z order.
    """
    if method not in METHODS:
        raise ReconstructionError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    data = np.asarray(projections, dtype=np.float32)
    start = np.asarray(x0, dtype=np.float32)
    if data.ndim < 3:
        raise ReconstructionError(f"slabs need projections (N, *channels, nz, n_u), got shape {data.shape}")
    angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64)).ravel()
    nz, n_u = data.shape[-2], data.shape[-1]
    shape_yx = (n_u, n_u) if shape_yx is None else (int(shape_yx[0]), int(shape_yx[1]))
    if start.shape != (*data.shape[1:-1], *shape_yx):
        raise ReconstructionError(f"x0 must have shape {(*data.shape[1:-1], *shape_yx)}, got {start.shape}")
    halo = (0 if method == "sirt" else 4) if halo is None else int(halo)
    dx = np.zeros(angles.size) if shifts_dx is None else np.asarray(shifts_dx, dtype=np.float64)
    options = {
        "shape_yx": shape_yx,
        "center_offset": float(center_offset),
        "shifts": np.column_stack([np.zeros_like(dx), dx]),
        "voxel_size": float(voxel_size),
        "nonnegative": bool(nonnegative),
        "backend": backend,
    }
    if method == "tv":
        if isinstance(mu, str):
            if mu != "auto":
                raise ReconstructionError(f"mu must be a number, one per channel, or 'auto', got {mu!r}")
            mu = mu_from_noise(estimate_noise(data), angles.size, voxel_size, kappa)
        projector = Projector(shape_yx, angles, n_u=n_u, center_offset=center_offset, shifts_dx=dx,
                              voxel_size=voxel_size, backend=backend)  # fmt: skip
        options.update(mu=mu, lipschitz=operator_norm_squared(projector), inner_iterations=inner_iterations)
    tasks = []
    for i, ((c0, c1), (p0, p1)) in enumerate(slab_ranges(nz, slab_slices, halo)):
        tasks.append(
            SlabTask(
                index=i,
                core=(c0, c1),
                padded=(p0, p1),
                method=method,
                projections=np.ascontiguousarray(data[..., p0:p1, :]),
                x0=np.ascontiguousarray(start[..., p0:p1, :, :]),
                angles_deg=angles,
                n_iter=int(n_iter),
                options=options,
            )
        )
    return tasks


def refine_slab(task: SlabTask, stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Run one slab's refinement; the slab's own slices, (*channels, core nz, ny, nx) float32.

    ``stop``: checked between iterations; when it returns True, :class:`RefinementCancelled`
    is raised (in-process cancellation; a Dask task is cancelled as a whole instead). Past the
    task's ``deadline`` the slab ends after the iteration in hand (at least one).
    """
    solver = METHODS[task.method](task.projections, task.angles_deg, x0=task.x0, **task.options)
    for _ in range(task.n_iter):
        if stop is not None and stop():
            raise RefinementCancelled(f"slab {task.index} cancelled after {solver.iterations} iterations")
        if solver.iterations >= 1 and task.deadline is not None and time.time() >= task.deadline:
            break
        solver.run(1)
    lo = task.core[0] - task.padded[0]
    hi = lo + task.core[1] - task.core[0]
    return np.ascontiguousarray(solver.volume[..., lo:hi, :, :])


def assemble(tasks: list[SlabTask], results: list[np.ndarray]) -> np.ndarray:
    """Stack slab results (in any order of completion, matched by task) into the volume."""
    if len(tasks) != len(results) or not tasks:
        raise ReconstructionError(f"{len(results)} results for {len(tasks)} slab tasks")
    nz = max(t.core[1] for t in tasks)
    first = results[0]
    out = np.empty((*first.shape[:-3], nz, *first.shape[-2:]), dtype=np.float32)
    for task, result in zip(tasks, results, strict=True):
        out[..., task.core[0] : task.core[1], :, :] = result
    return out


def refine_in_slabs(tasks: list[SlabTask], stop: Callable[[], bool] | None = None, progress=None):
    """All slabs one after the other in this process (the single-process path).

    ``progress(done, total)`` is called after each slab.
    """
    results = []
    for task in tasks:
        results.append(refine_slab(task, stop))
        if progress is not None:
            progress(len(results), len(tasks))
    return assemble(tasks, results)
