"""Rigid, similarity and affine point-set transforms in any dimension, by least squares.

Points are rows ``(x, y)`` or ``(x, y, z)``; a transform is a homogeneous
``(ndim + 1, ndim + 1)`` matrix acting on column vectors ``(x, y[, z], 1)``.
"""

from __future__ import annotations

import math

import numpy as np

from ..arrays import get_array_module
from .errors import CorrelationError, TooFewBeadsError

MODELS = ("rigid", "similarity", "affine")


def check_model(model: str) -> str:
    """Return ``model`` or raise naming the allowed ones."""
    if model not in MODELS:
        raise CorrelationError(f"unknown transform model {model!r}; allowed: {', '.join(MODELS)}")
    return model


def n_params(model: str, ndim: int) -> int:
    """Degrees of freedom of ``model`` in ``ndim`` dimensions (affine in 2D: 6)."""
    rotations = ndim * (ndim - 1) // 2
    return {"rigid": rotations + ndim, "similarity": rotations + 1 + ndim, "affine": ndim * (ndim + 1)}[
        check_model(model)
    ]


def min_points(model: str, ndim: int) -> int:
    """Fewest point pairs that determine ``model`` (affine in 2D: 3; rigid in 3D: 3)."""
    return max(math.ceil(n_params(model, ndim) / ndim), ndim if model != "affine" else ndim + 1)


def apply_transform(matrix, points):
    """Map (n, ndim) ``points`` through the homogeneous ``matrix``; returns (n, ndim) float64."""
    xp = get_array_module(points)
    points = xp.asarray(points, dtype=xp.float64)
    matrix = xp.asarray(matrix, dtype=xp.float64)
    return points @ matrix[:-1, :-1].T + matrix[:-1, -1]


def _check_pairs(src, dst, model: str):
    xp = get_array_module(src)
    src = xp.asarray(src, dtype=xp.float64)
    dst = xp.asarray(dst, dtype=xp.float64)
    if src.ndim != 2 or src.shape != dst.shape or src.shape[1] not in (2, 3):
        raise CorrelationError(
            "src and dst must both be (n, 2) or (n, 3) point arrays of equal shape, "
            f"got {src.shape}, {dst.shape}"
        )
    need = min_points(check_model(model), src.shape[1])
    if src.shape[0] < need:
        raise TooFewBeadsError(
            f"{src.shape[0]} point pairs cannot determine a {src.shape[1]}D {model} transform; "
            f"at least {need} are needed"
        )
    return xp, src, dst


def _check_spread(xp, centred, name: str, rank: int) -> None:
    """Points spanning fewer than ``rank`` dimensions leave the transform undetermined."""
    sv = xp.linalg.svd(centred, compute_uv=False)
    tiny = 1e-6 * max(float(sv[0]), 1e-300)
    if int((sv > tiny).sum()) < rank:
        shape = {0: "coincident", 1: "collinear", 2: "coplanar"}[int((sv > tiny).sum())]
        raise CorrelationError(
            f"the {name} points are {shape}: they do not determine the transform; "
            "use beads spread over the field"
        )


def estimate_transform(src, dst, *, model: str = "affine", weights=None, allow_reflection: bool = False):
    """Least-squares transform mapping ``src`` points onto ``dst`` points.

    Parameters
    ----------
    src, dst : (n, ndim) arrays, ndim 2 or 3, paired row by row; any common unit.
    model : "rigid" (rotation + translation), "similarity" (+ isotropic scale) or "affine".
    weights : (n,) non-negative weights, optional (e.g. inverse localisation variances).
    allow_reflection : let rigid/similarity fits mirror (a flipped camera); affine always may.

    Returns
    -------
    matrix : (ndim + 1, ndim + 1) float64 homogeneous transform, ``dst ≈ apply_transform(matrix, src)``.
        Rigid and similarity use Umeyama's closed form (IEEE PAMI 13, 1991); affine is linear
        least squares. Raises TooFewBeadsError below :func:`min_points` pairs and
        CorrelationError for collinear points.
    """
    xp, src, dst = _check_pairs(src, dst, model)
    n, d = src.shape
    w = xp.ones(n) if weights is None else xp.asarray(weights, dtype=xp.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s_c, d_c = src - mu_s, dst - mu_d
    matrix = xp.eye(d + 1)
    if model == "affine":
        _check_spread(xp, s_c * xp.sqrt(w)[:, None], "source", rank=d)
        sw = xp.sqrt(w)[:, None]
        linear = xp.linalg.lstsq(s_c * sw, d_c * sw, rcond=None)[0].T
    else:
        _check_spread(xp, s_c * xp.sqrt(w)[:, None], "source", rank=d - 1)
        cov = (d_c * w[:, None]).T @ s_c
        u, sig, vt = xp.linalg.svd(cov)
        e = xp.ones(d)
        if not allow_reflection and float(xp.linalg.det(u) * xp.linalg.det(vt)) < 0:
            e[-1] = -1.0
        rot = (u * e) @ vt
        var_s = float(w @ (s_c**2).sum(axis=1))
        if var_s <= 0:
            raise CorrelationError("all source points coincide: they do not determine the transform")
        scale = float((sig * e).sum()) / var_s if model == "similarity" else 1.0
        linear = scale * rot
    matrix[:d, :d] = linear
    matrix[:d, d] = mu_d - linear @ mu_s
    return matrix


def _rotation_generators(d: int) -> list[np.ndarray]:
    gens = []
    for i in range(d):
        for j in range(i + 1, d):
            g = np.zeros((d, d))
            g[j, i], g[i, j] = 1.0, -1.0
            gens.append(g)
    return gens


def transform_jacobian(matrix, points, *, model: str = "affine") -> np.ndarray:
    """Derivative of the mapped points with respect to the model's parameters, at ``matrix``.

    Parameters
    ----------
    matrix : (ndim + 1, ndim + 1) estimated transform.
    points : (n, ndim) source points.
    model : the model ``matrix`` was fitted with.

    Returns
    -------
    jac : (n, ndim, n_params) float64. With the residual variance ``s2`` of the fit and the
        stacked fiducial Jacobian ``J``, the covariance of a mapped point ``p`` is
        ``s2 * jac_p @ inv(J.T @ J) @ jac_p.T`` (the linearised least-squares prediction
        variance; exact for affine, which is linear in its parameters).
    """
    m = np.asarray(matrix, dtype=np.float64)
    x = np.asarray(points, dtype=np.float64)
    n, d = x.shape
    check_model(model)
    if model == "affine":
        jac = np.zeros((n, d, d * (d + 1)))
        for k in range(d):
            jac[:, k, k * d : (k + 1) * d] = x
            jac[:, k, d * d + k] = 1.0
        return jac
    linear = m[:d, :d]
    scale = float(abs(np.linalg.det(linear)) ** (1.0 / d))
    y = x @ (linear / scale).T  # rotated, unscaled
    cols = [scale * (y @ g.T) for g in _rotation_generators(d)]
    if model == "similarity":
        cols.append(y)
    cols.extend(np.broadcast_to(np.eye(d)[k], (n, d)) for k in range(d))
    return np.stack(cols, axis=-1)
