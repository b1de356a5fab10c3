"""Resampling onto the fixed grid and HSI fusion (structure as intensity, fluorescence as colour)."""

from __future__ import annotations

import numpy as np

from ..arrays import get_array_module, ndimage_for
from .errors import CorrelationError


def warp_image(moving, matrix_px, output_shape, *, order: int = 1, cval: float = 0.0):
    """Resample ``moving`` onto the fixed pixel grid.

    Parameters
    ----------
    moving : (ny, nx) or (nz, ny, nx) image (numpy or cupy).
    matrix_px : (ndim + 1, ndim + 1) transform moving pixel (x, y[, z]) -> fixed pixel.
    output_shape : fixed image shape, array order.
    order : spline order of the interpolation (1: linear).
    cval : value outside the moving field.

    Returns
    -------
    warped : float32 array of ``output_shape``; the input is not modified.
    """
    xp = get_array_module(moving)
    ndi = ndimage_for(xp)
    moving = xp.asarray(moving, dtype=xp.float32)
    d = moving.ndim
    m = np.asarray(matrix_px, dtype=np.float64)
    if m.shape != (d + 1, d + 1) or len(output_shape) != d:
        raise CorrelationError(f"a {d}D image needs a ({d + 1}, {d + 1}) matrix and a {d}D output shape")
    inv = np.linalg.inv(m)
    rev = np.eye(d + 1)
    rev[:d, :d] = np.eye(d)[::-1]  # (x, y[, z]) <-> array order
    arr = rev @ inv @ rev
    return ndi.affine_transform(
        moving,
        xp.asarray(arr[:d, :d]),
        offset=xp.asarray(arr[:d, d]),
        output_shape=tuple(output_shape),
        order=order,
        cval=cval,
        mode="constant",
    )


def _normalise(xp, image, lo_pct: float, hi_pct: float):
    lo, hi = (float(v) for v in xp.percentile(image, xp.asarray([lo_pct, hi_pct])))
    return xp.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def hsi_to_rgb(hue_deg, saturation, intensity):
    """HSI (Gonzalez & Woods) to RGB, elementwise; hue in degrees, S and I in [0, 1].

    Returns
    -------
    rgb : array of shape ``(*intensity.shape, 3)`` clipped to [0, 1].
    """
    xp = get_array_module(intensity)
    i = xp.asarray(intensity, dtype=xp.float32)
    s = xp.broadcast_to(xp.asarray(saturation, dtype=xp.float32), i.shape)
    h = xp.broadcast_to(xp.asarray(hue_deg, dtype=xp.float32) % 360.0, i.shape)
    sector = xp.floor(h / 120.0).astype(xp.int32)
    hr = xp.deg2rad(h - 120.0 * sector)
    low = i * (1.0 - s)
    high = i * (1.0 + s * xp.cos(hr) / xp.cos(xp.deg2rad(60.0) - hr))
    mid = 3.0 * i - low - high
    # Sector 0: (R, G, B) = (high, mid, low); 1: (low, high, mid); 2: (mid, low, high).
    r = xp.where(sector == 0, high, xp.where(sector == 1, low, mid))
    g = xp.where(sector == 0, mid, xp.where(sector == 1, high, low))
    b = xp.where(sector == 0, low, xp.where(sector == 1, mid, high))
    return xp.clip(xp.stack([r, g, b], axis=-1), 0.0, 1.0)


def fuse_hsi(
    structure,
    fluorescence,
    *,
    hue_deg: float = 120.0,
    structure_percentiles: tuple[float, float] = (0.5, 99.5),
    fluorescence_percentiles: tuple[float, float] = (50.0, 99.9),
    max_saturation: float = 1.0,
):
    """Fuse a structural image and a registered fluorescence image in HSI colour space.

    Parameters
    ----------
    structure : (ny, nx) (or any shape) structural image (SXT, EM), shown as intensity.
    fluorescence : same shape, already on the structure's grid (:func:`warp_image`); its
        level drives the saturation of ``hue_deg``, so unlabelled regions stay grey.
    hue_deg : colour of the label (0 red, 120 green, 240 blue).
    structure_percentiles : structure values mapped to intensity 0 and 1.
    fluorescence_percentiles : fluorescence values mapped to saturation 0 and ``max_saturation``
        (the median is background for sparse labels).
    max_saturation : saturation of the brightest label, 0-1.

    Returns
    -------
    rgb : float32 array ``(*structure.shape, 3)`` in [0, 1]; the inputs are not modified.
    """
    xp = get_array_module(structure)
    structure = xp.asarray(structure, dtype=xp.float32)
    fluorescence = xp.asarray(fluorescence, dtype=xp.float32)
    if structure.shape != fluorescence.shape:
        raise CorrelationError(
            f"structure {structure.shape} and fluorescence {fluorescence.shape} differ in shape; "
            "warp the fluorescence onto the structure's grid first (warp_image)"
        )
    if not 0.0 <= max_saturation <= 1.0:
        raise CorrelationError(f"max_saturation must be in [0, 1], got {max_saturation}")
    intensity = _normalise(xp, structure, *structure_percentiles)
    saturation = max_saturation * _normalise(xp, fluorescence, *fluorescence_percentiles)
    return hsi_to_rgb(hue_deg, saturation, intensity).astype(xp.float32)
