"""Rotation-invariant histogram descriptors of LoG images, and histogram similarities.

Two per-pixel codes are histogrammed over a patch (the source method):

* LoG value: ``|L| / scale`` in ``n_bins`` bins (the magnitude: EM often shows dark what LM
  shows bright, which flips the sign of the LoG but not its magnitude);
* local directional pattern (LDP, Jabid et al. 2010): the 3 strongest of the 8 Kirsch compass
  responses set 3 of 8 bits; rotating the image by 45° rotates the bits, so each code is
  replaced by its smallest circular rotation (7 rotation-invariant classes; 56 raw codes).

Histograms of whole patches are invariant to rotating the patch content; they are computed for
every patch position at once from integral images (one per bin).
"""

from __future__ import annotations

import itertools

import numpy as np

from ..arrays import fft_module, get_array_module, ndimage_for
from .errors import CorrelationError

_KIRSCH_RING = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]  # clockwise 3x3 border


def _kirsch_kernels() -> list[np.ndarray]:
    """The 8 Kirsch compass masks: 5 on three consecutive border cells, -3 on the other five."""
    kernels = []
    for k in range(8):
        m = np.full((3, 3), -3.0)
        m[1, 1] = 0.0
        for j in range(3):
            m[_KIRSCH_RING[(k + j) % 8]] = 5.0
        kernels.append(m)
    return kernels


def _ldp_class_table() -> np.ndarray:
    """Map each 8-bit code with 3 bits set to a rotation-invariant class 0..6 (others: -1)."""
    table = -np.ones(256, dtype=np.int64)
    reps: dict[int, int] = {}
    for bits in itertools.combinations(range(8), 3):
        code = sum(1 << b for b in bits)
        rot = min(((code << r) | (code >> (8 - r))) & 0xFF for r in range(8))
        table[code] = reps.setdefault(rot, len(reps))
    return table


LDP_CLASSES = 7
_LDP_TABLE = _ldp_class_table()


def ldp_classes(image):
    """Rotation-invariant LDP class (0..6) of every pixel of a 2D image; int array, same shape."""
    xp = get_array_module(image)
    ndi = ndimage_for(xp)
    img = xp.asarray(image, dtype=xp.float32)
    if img.ndim != 2:
        raise CorrelationError(f"LDP needs a 2D image, got {img.ndim} dimensions")
    resp = xp.stack(
        [
            xp.abs(ndi.correlate(img, xp.asarray(k, dtype=xp.float32), mode="nearest"))
            for k in _kirsch_kernels()
        ]
    )
    # The 3 strongest directions set bits.
    third = xp.sort(resp, axis=0)[-3]
    bits = (resp >= third[None]).astype(xp.int64)
    code = (bits * xp.asarray((1 << np.arange(8))[:, None, None])).sum(axis=0)
    code = xp.where(bits.sum(axis=0) == 3, code, 7)  # ties: fall back to a fixed class code
    return xp.asarray(_LDP_TABLE)[code]


def log_bins(log_image, *, scale: float, n_bins: int = 16, max_value: float = 8.0):
    """Bin index (0..n_bins-1) of ``|log_image| / scale`` over [0, max_value), last bin open."""
    xp = get_array_module(log_image)
    v = xp.abs(xp.asarray(log_image, dtype=xp.float32)) / max(float(scale), 1e-30)
    return xp.clip((v * (n_bins / max_value)).astype(xp.int64), 0, n_bins - 1)


def robust_scale(image) -> float:
    """1.4826 * median absolute deviation from the median (a noise-robust spread)."""
    xp = get_array_module(image)
    med = xp.median(image)
    return float(1.4826 * xp.median(xp.abs(image - med))) or float(xp.std(image)) or 1.0


def ring_radii(radius: float, rings: int) -> np.ndarray:
    """Outer radii of ``rings`` equal-area rings filling a disk of ``radius``."""
    return radius * np.sqrt(np.arange(1, rings + 1) / rings)


def _disk(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx**2 + yy**2 <= radius**2).astype(np.float32)


def ring_histogram_field(labels, n_classes: int, *, radius: float, rings: int = 3, block: int = 4):
    """Ring histograms of ``labels`` around every position of a grid, by FFT convolution.

    A disk is invariant to rotation about its centre and its concentric rings keep where, from
    the centre out, each kind of structure lies, which whole-patch histograms lose.

    Parameters
    ----------
    labels : (ny, nx) int class of every pixel (0..n_classes-1).
    n_classes : number of classes.
    radius : disk radius in pixels.
    rings : number of equal-area rings (1: the whole disk).
    block : the field is sampled every ``block`` pixels (counts are block sums first).

    Returns
    -------
    field : (n_rows, n_cols, rings, n_classes) float32 normalised ring histograms, for the
        block centres whose disk lies inside the image.
    centres : (n_rows,), (n_cols,) pixel coordinates (row, column) of those block centres.
    """
    xp = get_array_module(labels)
    ny, nx = labels.shape
    if 2 * radius + 1 > min(ny, nx):
        raise CorrelationError(
            f"a disk of radius {radius:.0f} px does not fit in the searched image {labels.shape}"
        )
    by, bx = ny // block, nx // block
    lab = labels[: by * block, : bx * block]
    cell = (xp.arange(by)[:, None, None, None] * bx + xp.arange(bx)[None, None, :, None]) + xp.zeros(
        (1, block, 1, block), dtype=xp.int64
    )
    flat = xp.ravel(lab.reshape(by, block, bx, block) * (by * bx) + cell)
    counts = xp.bincount(flat, minlength=n_classes * by * bx)[: n_classes * by * bx]
    counts = counts.reshape(n_classes, by, bx).astype(xp.float32)
    outer = ring_radii(radius / block, rings)
    pad = int(np.ceil(outer[-1]))
    shape = (by + 2 * pad, bx + 2 * pad)
    f_counts = xp.fft.rfft2(counts, s=shape)
    disks = []
    for r in outer:
        k = np.zeros(shape, np.float32)
        d = _disk(r)
        h = d.shape[0] // 2
        k[: h + 1, : h + 1], k[-h:, : h + 1] = d[h:, h:], d[:h, h:]
        k[: h + 1, -h:], k[-h:, -h:] = d[h:, :h], d[:h, :h]
        disks.append(xp.fft.irfft2(f_counts * xp.fft.rfft2(xp.asarray(k))[None], s=shape)[:, :by, :bx])
    sums = xp.stack(disks)  # (rings, classes, by, bx) cumulative disks
    ring = xp.concatenate([sums[:1], sums[1:] - sums[:-1]], axis=0)
    ring = xp.clip(ring, 0, None)
    ring /= xp.maximum(ring.sum(axis=1, keepdims=True), 1e-6)
    inner = int(np.ceil(outer[-1]))
    valid = ring[:, :, inner : by - inner, inner : bx - inner]
    rows = (np.arange(inner, by - inner) + 0.5) * block - 0.5
    cols = (np.arange(inner, bx - inner) + 0.5) * block - 0.5
    return xp.moveaxis(valid, (0, 1), (2, 3)), (rows, cols)


def ring_histograms(labels, n_classes: int, *, centre, radius: float, rings: int = 3):
    """(rings, n_classes) normalised ring histograms of ``labels`` about ``centre`` (row, col)."""
    xp = get_array_module(labels)
    ny, nx = labels.shape
    yy, xx = xp.mgrid[0:ny, 0:nx]
    r = xp.sqrt((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2)
    idx = xp.searchsorted(xp.asarray(ring_radii(radius, rings)), r.ravel())
    inside = idx < rings
    flat = idx[inside] * n_classes + xp.ravel(labels)[inside]
    h = xp.bincount(flat, minlength=rings * n_classes)[: rings * n_classes].reshape(rings, n_classes)
    h = h.astype(xp.float32)
    return h / xp.maximum(h.sum(axis=1, keepdims=True), 1.0)


def histogram(labels, n_classes: int):
    """Normalised histogram (n_classes,) of integer ``labels``."""
    xp = get_array_module(labels)
    h = xp.bincount(xp.ravel(labels), minlength=n_classes)[:n_classes].astype(xp.float32)
    return h / max(float(h.sum()), 1.0)


def cosine_similarity(h, hists):
    """Cosine of the angle between ``h`` (k,) and each histogram in ``hists`` (..., k), per histogram."""
    xp = get_array_module(hists)
    num = (hists * h).sum(axis=-1)
    return num / (xp.linalg.norm(hists, axis=-1) * float(xp.linalg.norm(h)) + 1e-12)


def intersection_similarity(h, hists):
    """Histogram intersection ``sum(min(h, g))`` of normalised histograms, 0..1."""
    xp = get_array_module(hists)
    return xp.minimum(hists, h).sum(axis=-1)


class MaskedNCC:
    """Normalised cross-correlation of masked templates against one image (Padfield 2012).

    The image's Fourier transforms are computed once, so trying many rotated templates costs
    two forward and three inverse FFTs each.

    Parameters
    ----------
    image : (ny, nx) searched image.
    max_template_shape : (th, tw) largest template that will be matched.
    """

    def __init__(self, image, max_template_shape: tuple[int, int]):
        xp = self.xp = get_array_module(image)
        self.fft = fft_module(xp)
        img = xp.asarray(image, dtype=xp.float64)
        img = (img - img.mean()).astype(xp.float32)  # NCC ignores offsets; float32 FFTs are 2x faster
        self.image_shape = img.shape
        self.shape = (img.shape[0] + max_template_shape[0] - 1, img.shape[1] + max_template_shape[1] - 1)
        self.f1 = self.fft.rfft2(img, s=self.shape)
        self.f2 = self.fft.rfft2(img**2, s=self.shape)

    def __call__(self, template, mask):
        """NCC in [-1, 1] with the template's top-left pixel at each valid position.

        Returns
        -------
        ncc : (ny - th + 1, nx - tw + 1).
        """
        xp, fft = self.xp, self.fft
        m = xp.asarray(mask, dtype=xp.float32)
        n = float(m.sum())
        if n < 2:
            raise CorrelationError("the template mask holds fewer than 2 pixels")
        t = xp.asarray(template, dtype=xp.float32)
        th, tw = t.shape
        ny, nx = self.image_shape
        if th + ny - 1 > self.shape[0] or tw + nx - 1 > self.shape[1]:
            raise CorrelationError(f"template {t.shape} is larger than the searcher was prepared for")
        t = xp.where(m > 0, t - float((t * m).sum()) / n, 0.0).astype(xp.float32)
        t_norm = float(xp.sqrt((t**2).sum())) or 1.0
        # Correlation = convolution with the flipped kernel.
        f_t = fft.rfft2(t[::-1, ::-1], s=self.shape)
        f_m = fft.rfft2(m[::-1, ::-1], s=self.shape)
        num = fft.irfft2(self.f1 * f_t, s=self.shape)
        s1 = fft.irfft2(self.f1 * f_m, s=self.shape)
        s2 = fft.irfft2(self.f2 * f_m, s=self.shape)
        var = xp.maximum(s2 - s1**2 / n, 1e-6 * max(float(xp.abs(s2).max()), 1e-30))
        ncc = num / (xp.sqrt(var) * t_norm)
        return ncc[th - 1 : ny, tw - 1 : nx]


def masked_ncc(image, template, mask):
    """Normalised cross-correlation of one masked template at every valid offset.

    Parameters
    ----------
    image : (ny, nx) searched image.
    template : (th, tw) template, th <= ny and tw <= nx.
    mask : (th, tw) bool, the template pixels that count (a rotated ROI's corners do not).

    Returns
    -------
    ncc : (ny - th + 1, nx - tw + 1) correlation in [-1, 1] of the template placed with its
        top-left pixel at each position (see :class:`MaskedNCC` for many templates).
    """
    return MaskedNCC(image, np.shape(template))(template, mask)
