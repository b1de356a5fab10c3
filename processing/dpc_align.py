"""DPC-driven alignment of X-ray fluorescence projections.

In dose-fractionated XRF tomography each element map is too faint to align on its own; the
segmented transmission detector records differential phase contrast (DPC) at the same
time, whose fine structure gives a sharp correlation peak. The projections are aligned on
DPC and the same shifts are applied to every element map (XRF/DPC source text).

What is used from the DPC detector (``dpc_from_segments`` of
:mod:`livetomo.processing.dpc`):

- registration images: horizontal and vertical DPC as two channels whose correlations are
  summed (:func:`dpc_channels`), usually with a difference-of-Gaussians high-pass that
  removes the slowly varying phase ramp of the ice or capillary (``band=(None, 2)``);
- consistency moments (:func:`dpc_moments`): the row-integrated horizontal DPC is κ times
  the phase, a linear projection whose centre of mass gives the horizontal displacement;
  the row sums of the vertical DPC give the vertical one
  (:mod:`livetomo.processing.moment_align`);
- re-projection: horizontal DPC is the u-derivative of the phase, so the phase volume is
  reconstructed with a Hilbert filter (no integration) and re-projected
  (:mod:`livetomo.processing.reproject_align`).

Element maps are moved with :func:`shift_maps` (Fourier shift, edge-padded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .arrays import get_array_module, to_numpy
from .moment_align import centre_of_mass_u, flat_border, phase_from_dpc_rows
from .register import shift_image

DPC_KEYS = ("dpc_h", "dpc_v")


class DPCAlignmentError(ValueError):
    """Bad input to DPC alignment (missing channel, shape mismatch)."""


def dpc_channels(horizontal, vertical):
    """(2, rows, cols) float32 registration image from horizontal and vertical DPC."""
    xp = get_array_module(horizontal)
    h = xp.asarray(horizontal, dtype=xp.float32)
    v = xp.asarray(vertical, dtype=xp.float32)
    if h.shape != v.shape or h.ndim != 2:
        raise DPCAlignmentError(f"horizontal {h.shape} and vertical {v.shape} DPC must be equal 2-D maps")
    return xp.stack([h, v])


@dataclass(frozen=True)
class ProjectionMoments:
    """Consistency moments of one projection.

    Attributes
    ----------
    mass : total of the (integrated) projection; sign and unit of the signal.
    centre_u : centre of mass along columns, pixels from the centre column (NaN when
        invalid).
    profile : (rows,) float32 row profile (row sums) for the vertical alignment.
    valid : False when the projection does not satisfy the assumptions (no flat border for
        DPC integration, zero mass).
    sigma_u : 1-sigma noise of ``centre_u`` propagated from the pixel noise, pixels (NaN when
        unknown).
    closure : DPC only: how far the row-integrated phase stays from its baseline at the far
        border, in units of its noise (a few when the specimen is inside the field).
    """

    mass: float
    centre_u: float
    profile: np.ndarray
    valid: bool
    sigma_u: float = float("nan")
    closure: float = float("nan")


def dpc_moments(
    horizontal, vertical, *, background: str = "auto", tolerance: float = 5.0
) -> ProjectionMoments:
    """Moments of a DPC projection: phase centre of mass (row-integrated h), v row sums.

    Row integration needs a border where the phase is flat, and the integrated phase must
    come back to its baseline at the other border (the specimen, container included, inside
    the field); a projection that does not close is not valid.

    ``background``:

    - ``'none'``: integrate ``horizontal`` as it is (vacuum beside the container);
    - ``'z-invariant'``: first remove the part that is the same in every row, the mean of
      the top and bottom rows (they must agree within their noise: the specimen reaches
      neither, so both see only the z-invariant container: an ice cylinder or a capillary
      that is wider than the raster, as in the daemon's default XRF-DPC scan); what is left
      is the specimen inside the container;
    - ``'auto'``: ``'none'`` when that gives a valid projection, else ``'z-invariant'``.
      An aligner should decide once per scan (mixing the two mixes two different centres
      of mass) and pass the mode explicitly: see :func:`dpc_moment_mode`.
    """
    h = np.asarray(to_numpy(horizontal), dtype=np.float64)
    v = np.asarray(to_numpy(vertical), dtype=np.float32)
    profile = v.sum(axis=1)
    if background not in ("auto", "none", "z-invariant"):
        raise DPCAlignmentError(f"background must be 'auto', 'none' or 'z-invariant', got {background!r}")
    modes = ("none", "z-invariant") if background == "auto" else (background,)
    out = ProjectionMoments(float("nan"), float("nan"), profile, False)
    for mode in modes:
        out = _dpc_moments(h, profile, mode, tolerance)
        if out.valid:
            return out
    return out


def dpc_moment_mode(horizontal, vertical=None, *, tolerance: float = 5.0) -> str | None:
    """The background mode (``'none'``, ``'z-invariant'``) that makes this projection valid, or None."""
    h = np.asarray(to_numpy(horizontal), dtype=np.float64)
    profile = np.zeros(h.shape[0], dtype=np.float32)
    for mode in ("none", "z-invariant"):
        if _dpc_moments(h, profile, mode, tolerance).valid:
            return mode
    return None


def _dpc_moments(h, profile, mode: str, tolerance: float) -> ProjectionMoments:
    invalid = ProjectionMoments(float("nan"), float("nan"), profile, False)
    background = np.zeros(h.shape[1])
    if mode == "z-invariant":
        background = z_invariant_background(h)
        if background is None:
            return invalid
        h = h - background
    side = flat_border(h, tolerance=tolerance)
    if side is None:
        return invalid
    phase = phase_from_dpc_rows(h, start=side)
    mass, centre = centre_of_mass_u(phase)
    valid = bool(np.isfinite(centre) and mass != 0.0)
    rows = max(2, h.shape[0] // 8) if mode == "z-invariant" else 0
    sigma = _integrated_centre_noise(h, mass, centre, side, background_rows=rows)
    # A projection that does not close (the field cuts the specimen on the far side) is kept
    # (a long run of angles without any absolute measurement lets the registrations drift far
    # more than the little mass lost biases the centre), with its uncertainty raised.
    closure = _closure(h, phase, side)
    sigma *= float(np.sqrt(1.0 + (closure / 10.0) ** 2))
    return ProjectionMoments(mass, centre, profile, valid, sigma, closure)


def _closure(h, phase, side: str) -> float:
    """How far the row-integrated phase stays from its baseline at the far border.

    The far column sum of the integral over its random-walk noise ``σ_h √(rows · cols)``
    (σ_h from neighbouring rows in the outer columns): a few for a specimen inside the field.
    """
    n_rows, n_cols = h.shape
    noise = _edge_noise(h)
    far = phase[:, -2:] if side == "left" else phase[:, :2]
    return abs(float(far.mean(axis=1).sum())) / (noise * np.sqrt(n_rows * n_cols))


def _edge_noise(h) -> float:
    """Pixel noise of a map from differences between neighbouring rows in its outer columns."""
    edges = np.concatenate([h[:, :4], h[:, -4:]], axis=1)
    return float(1.4826 * np.median(np.abs(np.diff(edges, axis=0))) / np.sqrt(2.0) + 1e-12)


def z_invariant_background(horizontal, *, rows: int | None = None) -> np.ndarray | None:
    """The part of a horizontal-DPC map that is the same in every row, or None.

    The mean of the ``rows`` top and bottom rows (default an eighth of the map each, at
    least 2) when each block is the same from row to row and the two agree, within their
    noise; None when not (the specimen reaches them) or the map is too short.

    Returns
    -------
    (cols,) float64 profile to subtract from every row, or None.
    """
    h = np.asarray(to_numpy(horizontal), dtype=np.float64)
    n_rows, _ = h.shape
    b = rows or max(2, n_rows // 8)
    if 2 * b + 4 > n_rows:
        return None
    noise = _edge_noise(h)
    for block in (h[:b], h[-b:]):  # each block must itself be the same from row to row
        step = float(np.sqrt(np.mean(np.diff(block, axis=0) ** 2)))
        if step > 1.5 * np.sqrt(2.0) * noise:
            return None
    top, bottom = h[:b].mean(axis=0), h[-b:].mean(axis=0)
    disagreement = float(np.sqrt(np.mean((top - bottom) ** 2))) / (noise * np.sqrt(2.0 / b))
    return 0.5 * (top + bottom) if disagreement <= 3.0 else None


def _integrated_centre_noise(h, mass, centre, side, *, background_rows: int = 0) -> float:
    """1-sigma noise of the centre of mass of the row-integrated DPC, from the pixel noise.

    The integral along a row is a random walk of the pixel noise σ_h (estimated from
    differences between neighbouring rows in the outer columns), so the column sums P of R
    rows, counted from the integration border, have ``Cov(P(u), P(u')) = R σ_h² min(u, u')``;
    a z-invariant background averaged over ``2 b`` rows and subtracted from every row adds
    ``R² σ_h² / (2b) min(u, u')``.
    The centre ``Σ (u − c) P(u) / M`` then has variance ``wᵀ C w / M²``.
    """
    if not np.isfinite(centre) or mass == 0.0:
        return float("nan")
    n_rows, n_cols = h.shape
    edges = np.concatenate([h[:, :4], h[:, -4:]], axis=1)  # flat or smooth: the row differences are noise
    noise = 1.4826 * np.median(np.abs(np.diff(edges, axis=0))) / np.sqrt(2.0)
    u = np.arange(n_cols) - (n_cols - 1) / 2.0
    steps = np.arange(1, n_cols + 1, dtype=float)  # pixels integrated so far, from the border
    if side == "right":
        steps = steps[::-1]
    walk = np.minimum.outer(steps, steps)
    factor = n_rows + (n_rows**2 / (2.0 * background_rows) if background_rows else 0.0)
    w = u - centre
    variance = factor * noise**2 * float(w @ walk @ w)
    return float(np.sqrt(max(variance, 0.0)) / abs(mass))


def map_moments(projection, *, border: int = 4) -> ProjectionMoments:
    """Moments of a linear projection map (element counts, absorption).

    A uniform background (scatter) is estimated as the median of the ``border`` outer
    columns on both sides and removed before the centre of mass.
    """
    p = np.asarray(to_numpy(projection), dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 4 * border:
        raise DPCAlignmentError(f"projection must be (rows, cols) with >= {4 * border} columns")
    edges = np.concatenate([p[:, :border], p[:, -border:]], axis=1)
    background = float(np.median(edges))
    mass, centre = centre_of_mass_u(p, background=background)
    profile = (p - background).sum(axis=1).astype(np.float32)
    valid = bool(np.isfinite(centre) and mass > 0.0)
    sigma = float("nan")
    if valid:  # independent pixel noise (from row differences at the edges): Σ (u − c)² R σ² / M²
        noise = 1.4826 * np.median(np.abs(np.diff(edges, axis=0))) / np.sqrt(2.0)
        u = np.arange(p.shape[1]) - (p.shape[1] - 1) / 2.0
        sigma = float(noise * np.sqrt(p.shape[0] * np.sum((u - centre) ** 2)) / mass)
    return ProjectionMoments(mass, centre, profile, valid, sigma)


def shift_maps(maps: Mapping[str, object], shift, *, mode: str = "edge") -> dict:
    """Apply one shift to every map of a projection (element maps, DPC, total).

    Parameters
    ----------
    maps : name -> (rows, cols) array (numpy or cupy); not modified.
    shift : (dy, dx) pixels that register the projection (``ndimage.shift`` sense), e.g.
        from :class:`~livetomo.processing.streaming_align.StreamingProjectionAligner`.
    mode : see :func:`~livetomo.processing.register.shift_image`.

    Returns
    -------
    dict name -> shifted float32 map.
    """
    return {name: shift_image(m, shift, mode=mode) for name, m in maps.items()}


def dpc_from_channels(channels: Mapping[str, object], keys=DPC_KEYS):
    """(horizontal, vertical) DPC from a channel dict, with a clear error when missing."""
    missing = [k for k in keys if k not in channels]
    if missing:
        raise DPCAlignmentError(f"channels {missing} missing; got {sorted(channels)} (need {list(keys)})")
    return channels[keys[0]], channels[keys[1]]
