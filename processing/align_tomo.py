"""A small parallel-beam projector and reconstructions, for alignment only.

Alignment needs to reconstruct and re-project many times while a scan runs (rotation-centre
refinement, re-projection refinement); this module keeps that small and self-contained. It
is not the reconstruction package (``processing/recon``): no GPU kernels, no large volumes.

Geometry (the same as :mod:`livetomo.simulators.projector`): volumes are (nz, ny, nx), the
rotation axis is z (image rows), at angle θ the detector column is
``u = x cos θ + y sin θ`` from the centre ``(n - 1) / 2`` of the slice and of the detector.
Projections are (n_angles, nz, nu) stacks, a line integral being a sum over pixels.

The projector is pixel-driven: every pixel of the reconstruction circle is split linearly
between the two detector bins around its ``u``. One sparse matrix holds all angles, so a
projection of all slices is one sparse product, and back-projection is its transpose (the
same linear interpolation that filtered back-projection uses). The matrix is built once per
geometry; numpy uses scipy.sparse, cupy uses cupyx.scipy.sparse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import get_array_module, to_numpy


class GeometryError(ValueError):
    """Inconsistent projection geometry (angles, sizes)."""


def _sparse_module(xp):
    if xp is np:
        import scipy.sparse

        return scipy.sparse
    import cupyx.scipy.sparse

    return cupyx.scipy.sparse


def angle_weights(angles_deg) -> np.ndarray:
    """Angular width (radians) each projection stands for in a back-projection over 180°.

    Angles are folded into [0, 180) (a parallel-beam projection at θ + 180° is the mirror of
    the one at θ); each gets half the gap to its neighbours on the folded circle, so uneven
    or partial coverage (limited tilt range, angles still arriving) is weighted correctly
    and the weights of a full, even scan are all π / n. Gaps wider than twice the median
    gap (a missing wedge) count as the median gap.
    """
    a = np.mod(np.asarray(angles_deg, dtype=float), 180.0)
    n = a.size
    if n == 0:
        raise GeometryError("no angles")
    if n == 1:
        return np.array([np.pi])
    order = np.argsort(a)
    s = a[order]
    gaps = np.diff(np.concatenate([s, [s[0] + 180.0]]))
    cap = 2.0 * np.median(gaps)
    gaps = np.where(gaps > cap, np.median(gaps), gaps)
    w_sorted = 0.5 * (gaps + np.roll(gaps, 1))
    w = np.empty(n)
    w[order] = w_sorted
    return np.deg2rad(w)


@dataclass(frozen=True, eq=False)
class Projector:
    """Pixel-driven parallel-beam projector for a list of angles.

    Build with :func:`make_projector`.

    Attributes
    ----------
    angles_deg : (n_angles,) numpy float64, degrees.
    shape_yx : (ny, nx) of a slice.
    n_u : detector columns.
    matrix : sparse (n_angles * n_u, ny * nx), numpy or cupy sparse.
    self_diagonals : (n_angles, 3, n_u) the three diagonals (offsets -1, 0, +1) of each
        angle's ``A_k A_kᵀ``: re-projecting one projection's own back-projection.
    mask : (ny, nx) bool, the reconstruction circle.
    """

    angles_deg: np.ndarray
    shape_yx: tuple[int, int]
    n_u: int
    matrix: object
    self_diagonals: object
    mask: object

    @property
    def xp(self):
        return get_array_module(self.self_diagonals)

    def project(self, volume):
        """Projections (n_angles, nz, n_u) of ``volume`` (nz, ny, nx), sums over pixels."""
        xp = self.xp
        vol = xp.asarray(volume, dtype=xp.float32)
        nz = vol.shape[0]
        flat = vol.reshape(nz, -1).T  # (ny*nx, nz)
        out = self.matrix @ flat  # (n_angles*n_u, nz)
        return xp.ascontiguousarray(out.reshape(len(self.angles_deg), self.n_u, nz).transpose(0, 2, 1))

    def backproject(self, projections, weights=None):
        """Σ_k w_k A_kᵀ p_k: (nz, ny, nx) from (n_angles, nz, n_u); weights default 1."""
        xp = self.xp
        p = xp.asarray(projections, dtype=xp.float32)
        n, nz, nu = p.shape
        if n != len(self.angles_deg) or nu != self.n_u:
            raise GeometryError(f"projections {p.shape} do not match {n} angles x {self.n_u} columns")
        if weights is not None:
            p = p * xp.asarray(np.asarray(weights, dtype=np.float32))[:, None, None]
        flat = p.transpose(0, 2, 1).reshape(n * nu, nz)
        vol = self.matrix.T @ flat  # (ny*nx, nz)
        return xp.ascontiguousarray(vol.T.reshape(nz, *self.shape_yx))

    def self_term(self, projections):
        """``A_k A_kᵀ p_k`` for every k: the part of a re-projection that is p_k's own."""
        xp = self.xp
        p = xp.asarray(projections, dtype=xp.float32)
        d = self.self_diagonals[:, :, None, :]  # (n, 3, 1, nu)
        out = d[:, 1] * p
        out[..., 1:] += d[:, 0, :, 1:] * p[..., :-1]
        out[..., :-1] += d[:, 2, :, :-1] * p[..., 1:]
        return out


def make_projector(
    angles_deg, shape_yx, *, n_u: int | None = None, region: str = "circle", xp=np
) -> Projector:
    """Projector for ``angles_deg`` (degrees) and (ny, nx) slices onto ``n_u`` columns.

    Parameters
    ----------
    angles_deg : sequence of angles, degrees (any order, duplicates allowed).
    shape_yx : (ny, nx) of the reconstructed slices.
    n_u : detector columns; default nx.
    region : 'circle' (the inscribed circle: full rotations) or 'slab' (the whole
        rectangle: a flat specimen of ny pixels thickness seen over a limited tilt range;
        pixels that leave the detector at some angle simply lose those rays).
    xp : numpy or cupy: where the matrix lives.
    """
    import scipy.sparse

    angles = np.atleast_1d(np.asarray(angles_deg, dtype=float)).ravel()
    if angles.size == 0:
        raise GeometryError("make_projector needs at least one angle")
    ny, nx = (int(n) for n in shape_yx)
    nu = nx if n_u is None else int(n_u)
    if ny < 2 or nx < 2 or nu < 2:
        raise GeometryError(f"slice {shape_yx} and detector {nu} must be at least 2 pixels")
    cy, cx, cu = (ny - 1) / 2.0, (nx - 1) / 2.0, (nu - 1) / 2.0
    yy, xx = np.mgrid[:ny, :nx]
    if region == "circle":
        radius = min(ny, nx, nu) / 2.0
        mask = np.hypot(yy - cy, xx - cx) <= radius - 0.5
    elif region == "slab":
        mask = np.ones((ny, nx), dtype=bool)
    else:
        raise GeometryError(f"region must be 'circle' or 'slab', got {region!r}")
    pix = np.flatnonzero(mask)
    x, y = xx.ravel()[pix] - cx, yy.ravel()[pix] - cy
    theta = np.deg2rad(angles)[:, None]
    u = x[None, :] * np.cos(theta) + y[None, :] * np.sin(theta) + cu  # (n, n_pix)
    u0 = np.floor(u)
    frac = u - u0
    u0 = u0.astype(np.int64)
    rows, cols, vals = [], [], []
    offset = (np.arange(angles.size) * nu)[:, None]
    for du, w in ((0, 1.0 - frac), (1, frac)):
        ui = u0 + du
        ok = (ui >= 0) & (ui < nu) & (w > 0)
        rows.append((ui + offset)[ok])
        cols.append(np.broadcast_to(pix, u.shape)[ok])
        vals.append(w[ok])
    a = scipy.sparse.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(angles.size * nu, ny * nx),
    )
    diagonals = _self_diagonals(a, angles.size, nu)
    if xp is not np:
        a = _sparse_module(xp).csr_matrix(a)
    return Projector(angles, (ny, nx), nu, a, xp.asarray(diagonals), xp.asarray(mask))


def _self_diagonals(a, n_angles: int, nu: int) -> np.ndarray:
    """Diagonals -1, 0, +1 of each block A_k A_kᵀ (linear splatting touches 2 bins)."""
    out = np.zeros((n_angles, 3, nu), dtype=np.float32)
    for k in range(n_angles):
        block = a[k * nu : (k + 1) * nu]
        g = (block @ block.T).tocsr()
        for j, off in enumerate((-1, 0, 1)):
            d = g.diagonal(off)
            if off < 0:
                out[k, j, -off:] = d
            elif off > 0:
                out[k, j, :-off] = d
            else:
                out[k, j] = d
    return out


# --------------------------------------------------------------------------- filtered back-projection


def ramp_filter(projections, *, window: str | None = "hann", kind: str = "ramp", xp=None):
    """Filter projections along their last axis (detector columns) for back-projection.

    ``kind='ramp'``: the discrete Ram-Lak kernel (h(0) = 1/4, h(odd n) = -1/(π n)²)
    transformed on a zero-padded grid (no DC bias, no wrap-around). ``kind='hilbert'``: the
    projections are derivatives d p / du (differential phase contrast); since
    ``|k| = -i sgn(k) · (2πi k) / 2π``, the Hilbert filter ``-i sgn(k) / 2π`` applied to the
    derivative equals the ramp filter applied to p, without integrating the derivative.
    Both carry a factor 2 (back-projection then multiplies by 1/2, as scikit-image does).

    Parameters
    ----------
    projections : (..., n_u) float array.
    window : 'hann' (apodisation) or None.
    kind : 'ramp' or 'hilbert'.

    Returns
    -------
    filtered : (..., n_u) float32.
    """
    xp = get_array_module(projections) if xp is None else xp
    p = xp.asarray(projections, dtype=xp.float32)
    nu = p.shape[-1]
    n_pad = max(64, int(2 ** np.ceil(np.log2(2 * nu))))
    freq = np.fft.rfftfreq(n_pad)
    if kind == "ramp":
        n = np.concatenate([np.arange(1, n_pad // 2 + 1, 2), np.arange(n_pad // 2 - 1, 0, -2)])
        h = np.zeros(n_pad)
        h[0] = 0.25
        h[1::2] = -1.0 / (np.pi * n) ** 2
        response = 2.0 * np.real(np.fft.rfft(h)).astype(complex)
    elif kind == "hilbert":
        response = np.where(freq > 0, -2j / (2.0 * np.pi), 0.0)
        response[-1] = 0.0  # Nyquist: the sign is undefined there
    else:
        raise GeometryError(f"filter kind must be 'ramp' or 'hilbert', got {kind!r}")
    if window == "hann":
        response = response * (0.5 + 0.5 * np.cos(np.pi * freq / 0.5))
    elif window is not None:
        raise GeometryError(f"filter window must be 'hann' or None, got {window!r}")
    spec = xp.fft.rfft(p, n=n_pad, axis=-1) * xp.asarray(response.astype(np.complex64))
    return xp.fft.irfft(spec, n=n_pad, axis=-1)[..., :nu].astype(xp.float32)


def fbp(projector: Projector, projections, *, weights=None, window: str | None = "hann", kind="ramp"):
    """Filtered back-projection (nz, ny, nx) from (n_angles, nz, n_u) projections.

    ``weights`` (radians per projection) default to :func:`angle_weights`; values are in
    the projections' unit per pixel (sums over pixels in, values per pixel out).
    ``kind='hilbert'`` reconstructs from derivative projections d p / du (DPC).
    """
    xp = projector.xp
    w = angle_weights(projector.angles_deg) if weights is None else np.asarray(weights, dtype=float)
    q = ramp_filter(xp.asarray(projections), window=window, kind=kind, xp=xp)
    return projector.backproject(q, weights=w) * (projector.mask * 0.5)


def leave_one_out_reprojection(
    projector: Projector, projections, *, weights=None, window="hann", kind="ramp"
):
    """Re-projection of the FBP of all projections but k, at angle k, for every k.

    A projection's own back-projection re-projects onto itself and pulls every
    re-projection towards the measured (misaligned) data; subtracting that term
    (``A_k A_kᵀ q_k``, three diagonals per angle) removes the bias at the cost of nothing
    but the full FBP and one re-projection.

    With ``kind='hilbert'`` the inputs are derivative projections (DPC, d p / du) and the
    re-projections are of p itself.

    Returns
    -------
    reprojections : (n_angles, nz, n_u) float32, and the full FBP volume (nz, ny, nx).
    """
    xp = projector.xp
    w = angle_weights(projector.angles_deg) if weights is None else np.asarray(weights, dtype=float)
    q = ramp_filter(xp.asarray(projections), window=window, kind=kind, xp=xp)
    volume = projector.backproject(q, weights=w) * (projector.mask * 0.5)
    reproj = projector.project(volume)
    # The mask and the 0.5 factor are outside A, so the self term carries only the 0.5.
    reproj -= 0.5 * xp.asarray(w.astype(np.float32))[:, None, None] * projector.self_term(q)
    return reproj, volume


def sirt(projector: Projector, projections, *, iterations: int = 20, x0=None, nonnegative=False):
    """SIRT: x ← x + C Aᵀ R (b − A x), R and C the inverse row and column sums.

    Parameters
    ----------
    projections : (n_angles, nz, n_u).
    iterations : number of updates.
    x0 : (nz, ny, nx) starting volume (warm start), default zeros.
    nonnegative : clip negative voxels after each update.
    """
    xp = projector.xp
    b = xp.asarray(projections, dtype=xp.float32)
    nz = b.shape[1]
    ones_vol = xp.ones((1, *projector.shape_yx), dtype=xp.float32) * projector.mask
    row = projector.project(ones_vol)  # (n, 1, nu)
    col = projector.backproject(xp.ones((len(projector.angles_deg), 1, projector.n_u), xp.float32))
    r = xp.where(row > 0, 1.0 / xp.maximum(row, 1e-6), 0.0).astype(xp.float32)
    c = xp.where(col > 0, 1.0 / xp.maximum(col, 1e-6), 0.0).astype(xp.float32) * projector.mask
    x = xp.zeros((nz, *projector.shape_yx), xp.float32) if x0 is None else xp.array(x0, dtype=xp.float32)
    for _ in range(int(iterations)):
        x += c * projector.backproject(r * (b - projector.project(x)))
        if nonnegative:
            xp.maximum(x, 0, out=x)
    return x


def as_numpy(x):
    """Host copy (for plotting and scoring)."""
    return to_numpy(x)
