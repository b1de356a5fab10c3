"""Generic array (numpy or cupy) versions of the kernels: the GPU path, and the CPU fallback.

They compute what ``_kernels.py`` computes, in blocks of rows so the temporaries stay
bounded (about ``_BLOCK`` elements each).
"""

from __future__ import annotations

import numpy as np

_BLOCK = 1 << 22  # elements per temporary


def backproject_rows(q, qrow, b0, rowstep, step, rowcoord, out, *, nearest: bool, xp=np):
    """out[r, t] += Σ_k q[k, qrow[r], at b0[k] + rowcoord[r]·rowstep[k] + t·step[k]] (see _kernels)."""
    nk, _, length = q.shape
    nrows, nin = out.shape
    last = length - 1
    t = xp.arange(nin, dtype=xp.float64)[None, :]
    b0, rowstep, step = (np.asarray(a, dtype=np.float64) for a in (b0, rowstep, step))
    qrow = xp.asarray(qrow)
    rowcoord = xp.asarray(rowcoord, dtype=xp.float64)
    block = max(_BLOCK // max(nin, 1), 1)
    for r0 in range(0, nrows, block):
        rs = slice(r0, min(r0 + block, nrows))
        rows = qrow[rs][:, None]
        rc = rowcoord[rs][:, None]
        acc = xp.zeros((rows.shape[0], nin), dtype=xp.float32)
        for k in range(nk):
            u = (b0[k] + rc * rowstep[k]) + t * step[k]
            if nearest:
                j = xp.clip(u.astype(xp.int64), 0, last)
                acc += q[k][rows, j]
            else:
                u = xp.clip(u, 0.0, float(last))
                i = xp.minimum(u.astype(xp.int64), last - 1)
                f = (u - i).astype(xp.float32)
                a = q[k][rows, i]
                acc += a + f * (q[k][rows, i + 1] - a)
        out[rs] += acc


def ray_matrix(shape_yx, cos_k: float, sin_k: float, cu_k: float, n_u: int, n_t: int):
    """scipy.sparse CSR matrix (n_u, ny*nx) of one angle of the ray-driven projector.

    Row j sums bilinear samples of the slice taken one voxel apart along the ray through
    detector position ``j - cu_k`` (the geometry of ``_kernels.ray_forward``).
    """
    import scipy.sparse as sp

    ny, nx = shape_yx
    cy, cx, ct = (ny - 1) / 2.0, (nx - 1) / 2.0, (n_t - 1) / 2.0
    uu = (np.arange(n_u) - cu_k)[:, None]
    tt = (np.arange(n_t) - ct)[None, :]
    x = cx + uu * cos_k - tt * sin_k
    y = cy + uu * sin_k + tt * cos_k
    rows = np.broadcast_to(np.arange(n_u)[:, None], x.shape).ravel()
    x, y = x.ravel(), y.ravel()
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    r_all, c_all, w_all = [], [], []
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yi, xi = y0 + dy, x0 + dx
        ok = (yi >= 0) & (yi < ny) & (xi >= 0) & (xi < nx) & (w > 0)
        r_all.append(rows[ok])
        c_all.append(yi[ok] * nx + xi[ok])
        w_all.append(w[ok])
    coo = sp.coo_matrix(
        (np.concatenate(w_all).astype(np.float32), (np.concatenate(r_all), np.concatenate(c_all))),
        shape=(n_u, ny * nx),
    )
    return coo.tocsr()
