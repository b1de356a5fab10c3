"""Registration accuracy from the beads alone: σ_A, leave-one-out TRE, TRE over the field.

The transform is fitted by least squares to k bead pairs, so its uncertainty follows from the
residual variance ``s2 = SSR / (k * ndim - p)`` and the fit's normal matrix: a point ``q``
mapped by the transform has covariance ``s2 * J_q (J^T J)^-1 J_q^T`` (the linear-regression
prediction variance; for rigid transforms this reproduces Fitzpatrick's TRE formula, which
eC-CLEM maps over the field). Leave-one-out refits without each bead and measures how far
that bead lands from its partner: an estimate of the total error that needs no model.
"""

from __future__ import annotations

import numpy as np

from .errors import TooFewBeadsError
from .transforms import apply_transform, estimate_transform, min_points, n_params, transform_jacobian


def residual_variance(matrix, src, dst, *, model: str) -> float:
    """Per-axis residual variance ``SSR / (k * ndim - p)`` of a fit of ``model`` (units²)."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    k, d = src.shape
    dof = k * d - n_params(model, d)
    if dof <= 0:
        raise TooFewBeadsError(
            f"{k} bead pairs leave no redundancy for a {d}D {model} transform, so its error cannot be "
            f"estimated; at least {min_points(model, d) + 1} are needed"
        )
    r = apply_transform(matrix, src) - dst
    return float((r**2).sum() / dof)


def mapping_std(matrix, src, dst, points, *, model: str) -> np.ndarray:
    """Radial standard deviation of mapped ``points`` due to the transform's uncertainty.

    Parameters
    ----------
    matrix : (ndim + 1, ndim + 1) transform fitted to ``src`` -> ``dst``.
    src, dst : (k, ndim) the bead pairs it was fitted to (moving, fixed), same units.
    points : (n, ndim) points in the source (moving) frame.
    model : the model of the fit.

    Returns
    -------
    std : (n,) in the destination units: ``sqrt(trace(cov))`` of each mapped point.
    """
    s2 = residual_variance(matrix, src, dst, model=model)
    j = transform_jacobian(matrix, src, model=model).reshape(-1, n_params(model, np.shape(src)[1]))
    normal_inv = np.linalg.pinv(j.T @ j)
    jq = transform_jacobian(matrix, np.asarray(points, float), model=model)  # (n, d, p)
    var = np.einsum("ndp,pq,ndq->n", jq, normal_inv, jq)
    return np.sqrt(np.clip(s2 * var, 0.0, None))


def leave_one_out(src, dst, *, model: str, allow_reflection: bool = True) -> np.ndarray:
    """Distance of each bead from its partner under the transform fitted to all other beads.

    Returns
    -------
    errors : (k,) in ``dst`` units. Needs ``min_points(model) + 1`` pairs.
    """
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    k, d = src.shape
    if k < min_points(model, d) + 1:
        raise TooFewBeadsError(
            f"leave-one-out needs at least {min_points(model, d) + 1} bead pairs for a {d}D {model} "
            f"transform, got {k}"
        )
    errors = np.empty(k)
    for i in range(k):
        rest = np.arange(k) != i
        m = estimate_transform(src[rest], dst[rest], model=model, allow_reflection=allow_reflection)
        errors[i] = np.linalg.norm(apply_transform(m, src[i : i + 1])[0] - dst[i])
    return errors


def tre_map(matrix, src, dst, *, model: str, shape, spacing, step: float, sigma_loc: float) -> np.ndarray:
    """Predicted target registration error over the fixed field, in the style of eC-CLEM.

    Parameters
    ----------
    matrix, src, dst, model : the fit (moving -> fixed), in physical units (nm).
    shape : fixed image shape, array order ((ny, nx) or (nz, ny, nx)).
    spacing : (ndim,) fixed pixel size per axis (x, y[, z]), nm.
    step : sampling step of the map in fixed pixels.
    sigma_loc : combined localisation error ``sqrt(σ_X² + σ_F²)`` of a target, nm.

    Returns
    -------
    tre : array of shape ``ceil(shape / step)`` in nm: ``sqrt(σ_map(p)² + sigma_loc²)``, whose
        RMS over the field is σ_T.
    """
    spacing = np.asarray(spacing, float)
    axes = [np.arange(0, n, step, dtype=float) for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))[:, ::-1]
    fixed_nm = grid * spacing
    moving_nm = apply_transform(np.linalg.inv(matrix), fixed_nm)
    std = mapping_std(matrix, src, dst, moving_nm, model=model)
    return np.sqrt(std**2 + sigma_loc**2).reshape([len(a) for a in axes])
