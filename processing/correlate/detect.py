"""Fiducial-bead detection in 2D images and 3D stacks (bright FM spots, dark SXT disks).

Coordinates are ``(x, y[, z])`` = (column, row[, slice]) in pixels, pixel centres at integers;
images are indexed ``[y, x]`` or ``[z, y, x]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arrays import get_array_module, ndimage_for, to_numpy
from .errors import CorrelationError

POLARITIES = ("bright", "dark", "absorbing")
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class BeadDetections:
    """Candidate bead centres at pixel precision.

    Attributes
    ----------
    positions : (n, ndim) float64 pixel coordinates (x, y[, z]) of the response maxima, strongest first.
    strength : (n,) scale-normalised LoG response at each maximum (signal units).
    sigma_px : (ndim,) blob scale used, per axis (x, y[, z]), in pixels.
    noise : robust (MAD) standard deviation of the LoG response over the image.
    """

    positions: np.ndarray
    strength: np.ndarray
    sigma_px: np.ndarray
    noise: float


def per_axis(value, ndim: int, name: str) -> np.ndarray:
    """A scalar or an ``ndim`` sequence (x, y[, z]) as a positive float array of length ``ndim``."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(ndim, float(arr))
    elif arr.shape != (ndim,):
        raise CorrelationError(f"{name} must be a number or {ndim} numbers (x, y[, z]), got {value!r}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise CorrelationError(f"{name} must be positive and finite, got {value!r}")
    return arr


def check_image(image, name: str = "image"):
    """``image`` as a float array of 2 or 3 dimensions with finite values, else a clear error."""
    xp = get_array_module(image)
    arr = xp.asarray(image)
    if arr.ndim not in (2, 3):
        raise CorrelationError(f"{name} must be a 2D image or a 3D stack, got {arr.ndim} dimensions")
    if min(arr.shape) < 3:
        raise CorrelationError(f"{name} of shape {arr.shape} is too small (each axis needs >= 3 pixels)")
    arr = arr.astype(xp.float64 if arr.dtype == xp.float64 else xp.float32)
    if not bool(xp.isfinite(arr).all()):
        raise CorrelationError(f"{name} contains NaN or infinite values")
    return arr


def bead_signal(image, polarity: str = "bright"):
    """An image in which beads are bright, same shape, float.

    ``"bright"`` keeps the image (fluorescence); ``"dark"`` negates it; ``"absorbing"`` is for
    transmission images (SXT, 0 < I <= ~1): the optical depth ``-ln I`` makes a bead's
    contrast the same on thin ice and under a thick cell (Beer-Lambert adds depths).
    The input is not modified.
    """
    xp = get_array_module(image)
    arr = check_image(image)
    if polarity == "bright":
        return arr
    if polarity == "dark":
        return -arr
    if polarity == "absorbing":
        if float(arr.min()) <= 0:
            raise CorrelationError(
                "polarity 'absorbing' needs a transmission image with values > 0 "
                f"(minimum is {float(arr.min()):g}); use 'dark' for other images"
            )
        return -xp.log(arr)
    raise CorrelationError(f"unknown polarity {polarity!r}; allowed: {', '.join(POLARITIES)}")


def blob_sigma_px(
    pixel_size_nm, *, ndim: int, bead_diameter_nm: float = 200.0, psf_fwhm_nm=0.0
) -> np.ndarray:
    """Per-axis Gaussian scale (pixels) that a bead seen through a PSF presents.

    A solid disk of radius r matches a LoG of scale ``r / sqrt(2)``; the PSF adds in
    quadrature. ``psf_fwhm_nm`` may be a number or per axis (x, y[, z]) (axial FM PSFs are wider).
    """
    px = per_axis(pixel_size_nm, ndim, "pixel_size_nm")
    psf = np.broadcast_to(np.asarray(psf_fwhm_nm, dtype=np.float64), (ndim,))
    bead = bead_diameter_nm / 2.0 / np.sqrt(2.0)
    return np.hypot(bead, psf * FWHM_TO_SIGMA) / px


def normalised_log(signal, sigma_px):
    """Scale-normalised negative Laplacian of Gaussian, ``-sum_i s_i^2 d2/dx_i^2 (G_s * f)``.

    Parameters
    ----------
    signal : (ny, nx) or (nz, ny, nx) array, beads bright.
    sigma_px : (ndim,) scale per axis in (x, y[, z]) order, pixels.

    Returns
    -------
    response : array of ``signal``'s shape, positive at bright blobs of about that scale.
    """
    xp = get_array_module(signal)
    ndi = ndimage_for(xp)
    sig = np.asarray(sigma_px, dtype=np.float64)[::-1]  # array axis order
    out = xp.zeros(signal.shape, dtype=xp.float32)
    for axis in range(signal.ndim):
        order = [0] * signal.ndim
        order[axis] = 2
        out -= float(sig[axis] ** 2) * ndi.gaussian_filter(signal, tuple(sig), order=order, mode="nearest")
    return out


def region_mask(regions, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask (array order) from a mask of ``shape`` or a sequence of boxes.

    A box is ``(x0, y0, x1, y1)`` in 2D or ``(x0, y0, z0, x1, y1, z1)`` in 3D, pixels, half-open.
    """
    ndim = len(shape)
    if isinstance(regions, np.ndarray) and regions.dtype == bool:
        if regions.shape != tuple(shape):
            raise CorrelationError(f"region mask has shape {regions.shape}, the image {tuple(shape)}")
        return regions
    mask = np.zeros(shape, dtype=bool)
    boxes = list(regions)
    if not boxes:
        raise CorrelationError("regions is empty: give at least one box or leave regions out")
    for box in boxes:
        b = np.asarray(box, dtype=np.float64)
        if b.shape != (2 * ndim,) or np.any(b[ndim:] <= b[:ndim]):
            raise CorrelationError(
                f"region {tuple(box)} is not a box (x0, y0{', z0' if ndim == 3 else ''}, x1, y1"
                f"{', z1' if ndim == 3 else ''}) with x0 < x1 ..."
            )
        lo = np.clip(np.floor(b[:ndim]).astype(int), 0, None)[::-1]
        hi = np.ceil(b[ndim:]).astype(int)[::-1]
        mask[tuple(slice(a, z) for a, z in zip(lo, hi, strict=True))] = True
    if not mask.any():
        raise CorrelationError(f"no region overlaps the image of shape {tuple(shape)}")
    return mask


def detect_beads(
    image,
    *,
    pixel_size_nm,
    polarity: str = "bright",
    bead_diameter_nm: float = 200.0,
    psf_fwhm_nm=0.0,
    regions=None,
    threshold: float = 8.0,
    min_relative: float = 0.25,
    max_beads: int = 100,
) -> BeadDetections:
    """Find fiducial beads as maxima of the scale-normalised LoG at the bead's scale.

    Parameters
    ----------
    image : (ny, nx) image or (nz, ny, nx) stack.
    pixel_size_nm : pixel size, a number or per axis (x, y[, z]), nm.
    polarity : "bright" (fluorescent beads), "dark" or "absorbing" (transmission image, SXT).
    bead_diameter_nm : bead diameter (FluoSpheres: 200 nm).
    psf_fwhm_nm : resolution of the modality (FWHM), a number or per axis, nm.
    regions : restrict the search to a boolean mask of the image's shape or to boxes
        ``(x0, y0, x1, y1)`` / ``(x0, y0, z0, x1, y1, z1)`` in pixels (the regions users mark).
    threshold : keep maxima above ``threshold`` robust standard deviations of the response.
    min_relative : and above this fraction of the median of the five strongest maxima; cell
        structure at the bead's scale is much weaker than beads (on 6 simulated scenes: cell
        features <= 0.3 of that median, beads >= 0.49); what still gets through is left
        unpaired by the consensus matching.
    max_beads : keep at most this many, strongest first.

    Returns
    -------
    detections : :class:`BeadDetections`, positions at pixel precision (refine them with
        :func:`livetomo.processing.correlate.localize.localize_beads`).
    """
    xp = get_array_module(image)
    ndi = ndimage_for(xp)
    signal = bead_signal(image, polarity)
    sigma = blob_sigma_px(
        pixel_size_nm, ndim=signal.ndim, bead_diameter_nm=bead_diameter_nm, psf_fwhm_nm=psf_fwhm_nm
    )
    response = normalised_log(signal, sigma)
    med = xp.median(response)
    noise = float(1.4826 * xp.median(xp.abs(response - med)))
    size = tuple(int(2 * np.ceil(s) + 1) for s in sigma[::-1])
    peaks = (response == ndi.maximum_filter(response, size=size, mode="nearest")) & (
        response > threshold * noise
    )
    if regions is not None:
        peaks &= xp.asarray(region_mask(regions, signal.shape))
    idx = to_numpy(xp.argwhere(peaks))
    values = to_numpy(response[tuple(xp.asarray(idx).T)]) if len(idx) else np.zeros(0)
    order = np.argsort(-values, kind="stable")
    idx, values = idx[order], values[order]
    if len(values):
        keep = values >= min_relative * float(np.median(values[:5]))
        idx, values = idx[keep][:max_beads], values[keep][:max_beads]
    return BeadDetections(
        positions=idx[:, ::-1].astype(np.float64).reshape(-1, signal.ndim),
        strength=values.astype(np.float64),
        sigma_px=sigma,
        noise=noise,
    )
