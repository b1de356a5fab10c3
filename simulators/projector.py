"""Parallel-beam forward projector for (z, y, x) volumes rotating about z.

Geometry (shared with the rest of livetomo): the rotation axis is z, the
volume's rows.  At angle ``theta`` (degrees) the beam integrates along the
direction (y, x) = (cos theta, -sin theta), so at 0 degrees it runs along y,
and the detector column is ``u = x cos(theta) + y sin(theta)`` measured from
the centre of the (y, x) plane.  Centres are ``(n - 1) / 2`` in index
coordinates for the volume and for the detector, as in tomopy and astra.

The projector samples the rotated plane with bilinear interpolation at unit
steps along the beam and sums, so a line integral is ``sum * voxel_size``.
Because the sampling pattern is identical for every z slice, it is built once
per angle as a sparse matrix and applied to all slices (and to several
volumes) with one product.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp


def projection_matrix(
    shape_yx: tuple[int, int], angle_deg: float, *, shape_u: int | None = None
) -> sp.csr_matrix:
    """Sparse matrix that projects one (ny, nx) slice onto nu detector columns.

    Parameters
    ----------
    shape_yx : (ny, nx) of the slice.
    angle_deg : rotation angle in degrees.
    shape_u : number of detector columns nu; defaults to nx.

    Returns
    -------
    A : scipy.sparse.csr_matrix, shape (nu, ny * nx)
        ``A @ slice.ravel()`` is the sum along the beam of bilinear samples
        taken one voxel apart (multiply by the voxel size for a line integral).
    """
    ny, nx = (int(n) for n in shape_yx)
    nu = nx if shape_u is None else int(shape_u)
    theta = np.deg2rad(float(angle_deg))
    c, s = np.cos(theta), np.sin(theta)
    # Enough samples along the beam to cross the whole slice at any angle.
    nt = int(np.ceil(np.hypot(ny, nx))) + 2
    u = np.arange(nu) - (nu - 1) / 2.0
    t = np.arange(nt) - (nt - 1) / 2.0
    uu, tt = np.meshgrid(u, t, indexing="ij")  # (nu, nt)
    x = (nx - 1) / 2.0 + uu * c - tt * s
    y = (ny - 1) / 2.0 + uu * s + tt * c
    rows = np.broadcast_to(np.arange(nu)[:, None], uu.shape)
    return _bilinear_matrix(rows.ravel(), y.ravel(), x.ravel(), (ny, nx), nu)


def _bilinear_matrix(
    rows: np.ndarray, y: np.ndarray, x: np.ndarray, shape_yx: tuple[int, int], n_rows: int
) -> sp.csr_matrix:
    """Accumulate bilinear weights of sample points (y, x) into matrix rows."""
    ny, nx = shape_yx
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    r_all, c_all, w_all = [], [], []
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yi, xi = y0 + dy, x0 + dx
        # Corners outside the slice contribute zero (empty space around it).
        ok = (yi >= 0) & (yi < ny) & (xi >= 0) & (xi < nx) & (w > 0)
        r_all.append(rows[ok])
        c_all.append(yi[ok] * nx + xi[ok])
        w_all.append(w[ok])
    coo = sp.coo_matrix(
        (np.concatenate(w_all), (np.concatenate(r_all), np.concatenate(c_all))),
        shape=(n_rows, ny * nx),
    )
    return coo.tocsr()  # duplicates are summed


def project(
    volume: np.ndarray,
    angle_deg: float,
    *,
    voxel_size: float = 1.0,
    shape_u: int | None = None,
) -> np.ndarray:
    """Line integrals of a volume at one rotation angle.

    Parameters
    ----------
    volume : ndarray, shape (nz, ny, nx)
        Quantity per unit length (e.g. attenuation in 1/µm).
    angle_deg : rotation angle about z in degrees.
    voxel_size : voxel edge length in the length unit that makes the
        integral meaningful (e.g. µm for 1/µm).
    shape_u : number of detector columns nu; defaults to nx.

    Returns
    -------
    proj : ndarray, shape (nz, nu), float64
        ``sum along the beam * voxel_size``; column u = x cos + y sin.
    """
    vol = np.asarray(volume, dtype=float)
    if vol.ndim != 3:
        raise ValueError(f"volume must be (nz, ny, nx), got shape {vol.shape}")
    nz, ny, nx = vol.shape
    a = projection_matrix((ny, nx), angle_deg, shape_u=shape_u)
    # (nu, ny*nx) @ (ny*nx, nz) -> (nu, nz)
    return (a @ vol.reshape(nz, ny * nx).T).T * voxel_size


def project_many(
    volume: np.ndarray,
    angles_deg: Iterable[float],
    *,
    voxel_size: float = 1.0,
    shape_u: int | None = None,
) -> np.ndarray:
    """Projections at several angles.

    Parameters
    ----------
    volume : ndarray, shape (nz, ny, nx)
    angles_deg : sequence of n_angles angles in degrees.
    voxel_size, shape_u : as in :func:`project`.

    Returns
    -------
    sino : ndarray, shape (n_angles, nz, nu), float64
    """
    vol = np.asarray(volume, dtype=float)
    angles = np.atleast_1d(np.asarray(angles_deg, dtype=float)).ravel()
    nu = vol.shape[2] if shape_u is None else int(shape_u)
    out = np.empty((angles.size, vol.shape[0], nu))
    for i, ang in enumerate(angles):
        out[i] = project(vol, ang, voxel_size=voxel_size, shape_u=shape_u)
    return out
