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
    """

    mass: float
    centre_u: float
    profile: np.ndarray
    valid: bool


def dpc_moments(horizontal, vertical) -> ProjectionMoments:
    """Moments of a DPC projection: phase centre of mass (row-integrated h), v row sums."""
    h = np.asarray(to_numpy(horizontal), dtype=np.float32)
    v = np.asarray(to_numpy(vertical), dtype=np.float32)
    side = flat_border(h)
    profile = v.sum(axis=1)
    if side is None:
        return ProjectionMoments(float("nan"), float("nan"), profile, False)
    mass, centre = centre_of_mass_u(phase_from_dpc_rows(h, start=side))
    return ProjectionMoments(mass, centre, profile, bool(np.isfinite(centre) and mass != 0.0))


def map_moments(projection, *, border: int = 4) -> ProjectionMoments:
    """Moments of a linear projection map (element counts, absorption).

    A uniform background (scatter) is estimated as the median of the ``border`` outer
    columns on both sides and removed before the centre of mass.
    """
    p = np.asarray(to_numpy(projection), dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 4 * border:
        raise DPCAlignmentError(f"projection must be (rows, cols) with >= {4 * border} columns")
    background = float(np.median(np.concatenate([p[:, :border], p[:, -border:]], axis=1)))
    mass, centre = centre_of_mass_u(p, background=background)
    profile = (p - background).sum(axis=1).astype(np.float32)
    return ProjectionMoments(mass, centre, profile, bool(np.isfinite(centre) and mass > 0.0))


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
