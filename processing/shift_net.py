"""Learned sub-pixel shift estimator (the cryo-ET source's CNN Φθ), run with numpy alone.

A small Siamese convolutional network maps a reference patch and a moving patch to the
shift (dy, dx) between them and its uncertainty:

1. each 64 × 64 patch is standardised (zero mean, unit variance) and passed through the
   same three 3 × 3 convolutions (1 → 8 → 8 → 4 channels, ReLU between, 'valid' borders):
   a learned, non-linear pre-filter that replaces cross-correlation's fixed weighting of
   frequencies (at low dose most of the high frequencies are noise);
2. the two feature maps are Hann-windowed and correlated (FFT), normalised to a
   correlation coefficient;
3. a small head (two hidden layers of 32) reads the 7 × 7 correlation values around the
   integer peak (scaled to the peak), the peak's coefficient and its peak-to-sidelobe
   ratio, and returns the sub-pixel offset of the peak and the log-variance of that
   offset per axis.

Training (``livetomo.daemon.training``, the ``train`` extra, JAX) follows the
source's recipe: synthetic pairs from the K3 simulator's clean images shifted by known
sub-pixel offsets, Poisson noise at 1-15 e/Å², mean-squared error of the shift. The weights
ship with the package (``shift_net.npz``, a few kB, and ``shift_net.json``, how they were
made); inference here is plain numpy (no JAX, no PyTorch).

Frames of any size (:func:`learned_register`):

- large frames whose signal does not reach the upper half (or quarter) of the band are
  binned 2 × 2 (4 × 4) first (:func:`choose_bin`): summing counts keeps Poisson
  statistics and the band that carries the signal, and puts the texture at the scale the
  network was trained on;
- the binned frames are cross-correlated once
  (:func:`~livetomo.processing.register.register` at integer resolution): its peak gives
  the coarse, integer shift and its quality the significance of the match (featureless or
  pure-noise input has no significant peak and is flagged ``ok=False``, as for
  ``register``);
- the reference is cut into non-overlapping 64 × 64 patches, the moving patches are taken
  at the coarse shift, and the network gives each pair's residual shift and uncertainty;
  the patches are combined by inverse-variance weighting after rejecting those far from
  the median, and the combined uncertainty is inflated when they disagree more than their
  uncertainties say (Birge ratio).

Sign convention as :func:`~livetomo.processing.register.register`: the returned shift
registers ``moving`` onto ``reference`` (``ndimage.shift(moving, shift) ≈ reference``).

Pure computation: arrays in, a :class:`~livetomo.processing.register.Registration` out;
cupy input is copied to the host (the network is small; its cost is in the feature maps).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .arrays import bin_image, to_numpy
from .quality import MIN_SCORE, RegistrationQuality, failed_quality
from .register import Registration, RegistrationError, register

PATCH = 64  # px, the patch size the network was trained on
HALF_WINDOW = 3  # the head reads (2 h + 1)^2 correlation values around the peak
PATCH_SEARCH = 2  # px: per-patch peak search around the coarse shift
LOGVAR_RANGE = (-12.0, 6.0)
WEIGHTS_FILE = "shift_net.npz"
RECORD_FILE = "shift_net.json"
LAYERS = ("conv1", "conv2", "conv3", "head1", "head2", "head3")


class ShiftNetError(ValueError):
    """Bad weights or input for the learned shift estimator."""


# --------------------------------------------------------------------------- the network


def _conv_valid(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """'valid' 2-D cross-correlation (as ``lax.conv_general_dilated``/``torch.conv2d``).

    x (n, c, h, w), w (o, c, k, k), b (o,) -> (n, o, h - k + 1, w - k + 1), float32.
    """
    n, c, h, wd = x.shape
    o, c2, k, _ = w.shape
    if c != c2:
        raise ShiftNetError(f"convolution expects {c2} channels, got {c}")
    cols = sliding_window_view(x, (k, k), axis=(2, 3))  # (n, c, h', w', k, k), a view
    out = np.tensordot(cols, w, axes=((1, 4, 5), (1, 2, 3)))  # (n, h', w', o)
    out += b
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)


def _hann(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)


def standardise(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero mean, unit variance over the last two axes; returns (images, std)."""
    a = np.asarray(images, dtype=np.float32)
    a = a - a.mean(axis=(-2, -1), keepdims=True)
    std = a.std(axis=(-2, -1), keepdims=True)
    return a / np.maximum(std, 1e-12), std[..., 0, 0]


@dataclass(frozen=True)
class ShiftNet:
    """Weights of the shift network (numpy) and their calibration.

    Attributes
    ----------
    params : layer name -> (weight, bias) arrays.
    beta : scale of the correlation logits used in training (kept for the record).
    calibration : (y, x) factors applied to the predicted standard deviations so that
        they match the errors measured on held-out validation pairs after training.
    record : how the weights were made (seed, data, steps, time, loss), from the JSON.
    """

    params: dict
    beta: float = 1.0
    calibration: tuple[float, float] = (1.0, 1.0)
    record: dict | None = None

    @classmethod
    def from_arrays(cls, arrays, record: dict | None = None) -> ShiftNet:
        try:
            params = {
                name: (
                    np.asarray(arrays[f"{name}_w"], dtype=np.float32),
                    np.asarray(arrays[f"{name}_b"], dtype=np.float32),
                )
                for name in LAYERS
            }
        except KeyError as err:
            raise ShiftNetError(f"shift-net weights lack {err}") from None
        beta = float(np.asarray(arrays["beta"])) if "beta" in arrays else 1.0
        cal = tuple(float(v) for v in np.asarray(arrays.get("calibration", (1.0, 1.0))).ravel()[:2])
        return cls(params, beta, cal, record)

    def save(self, path) -> None:
        """Write the weights as .npz (the calibration included)."""
        arrays = {f"{n}_{k}": v for n, (w, b) in self.params.items() for k, v in (("w", w), ("b", b))}
        np.savez(
            path, beta=np.float32(self.beta), calibration=np.asarray(self.calibration, np.float32), **arrays
        )

    def features(self, images: np.ndarray) -> np.ndarray:
        """(n, rows, cols) standardised images -> (n, 4, rows - 6, cols - 6) feature maps."""
        x = np.asarray(images, dtype=np.float32)[:, None]
        w, b = self.params["conv1"]
        x = np.maximum(_conv_valid(x, w, b), 0.0)
        w, b = self.params["conv2"]
        x = np.maximum(_conv_valid(x, w, b), 0.0)
        w, b = self.params["conv3"]
        return _conv_valid(x, w, b)

    def head(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 51) head inputs -> offsets (n, 2) and log-variances (n, 2)."""
        h = inputs.astype(np.float32)
        for name in ("head1", "head2"):
            w, b = self.params[name]
            h = np.maximum(h @ w + b, 0.0)
        w, b = self.params["head3"]
        out = h @ w + b
        return out[:, :2], np.clip(out[:, 2:4], *LOGVAR_RANGE)


@lru_cache(maxsize=1)
def load_shift_net() -> ShiftNet:
    """The weights shipped with livetomo (``processing/shift_net.npz`` + its record)."""
    base = resources.files("livetomo.processing")
    try:
        with resources.as_file(base / WEIGHTS_FILE) as path, np.load(path) as arrays:
            data = {k: arrays[k] for k in arrays.files}
    except FileNotFoundError:
        raise ShiftNetError(
            f"no shipped weights {WEIGHTS_FILE}; train them: livetomo train shift-net"
        ) from None
    record = None
    try:
        record = json.loads((base / RECORD_FILE).read_text())
    except FileNotFoundError:
        pass
    return ShiftNet.from_arrays(data, record)


# --------------------------------------------------------------------------- correlation


def correlate_features(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Windowed, normalised correlation of feature maps (n, c, h, w) -> (n, h, w).

    ``out[τ] = Σ_x a(x) b(x + τ) / sqrt(Σ a² Σ b²)`` (circular, both Hann-windowed): its
    peak sits at the displacement d of ``b`` relative to ``a`` (``b(x) = a(x - d)``).
    """
    h, w = fa.shape[-2:]
    win = _hann(h)[:, None] * _hann(w)[None, :]
    a = fa * win
    b = fb * win
    spec = np.conj(np.fft.rfft2(a)) * np.fft.rfft2(b)
    corr = np.fft.irfft2(spec.sum(axis=1), s=(h, w))
    norm = np.sqrt((a * a).sum(axis=(1, 2, 3)) * (b * b).sum(axis=(1, 2, 3)))
    return (corr / np.maximum(norm, 1e-30)[:, None, None]).astype(np.float32)


def surface_stats(corr: np.ndarray, iy: np.ndarray, ix: np.ndarray, box: int = 3):
    """Mean and standard deviation of each surface outside a ±``box`` lag box around its peak."""
    n, h, w = corr.shape
    ly = (np.arange(h)[None, :] - iy[:, None] + h // 2) % h - h // 2
    lx = (np.arange(w)[None, :] - ix[:, None] + w // 2) % w - w // 2
    outside = ~((np.abs(ly)[:, :, None] <= box) & (np.abs(lx)[:, None, :] <= box))
    cnt = np.maximum(outside.sum(axis=(1, 2)), 1)
    mean = np.where(outside, corr, 0.0).sum(axis=(1, 2)) / cnt
    var = np.where(outside, (corr - mean[:, None, None]) ** 2, 0.0).sum(axis=(1, 2)) / cnt
    return mean, np.sqrt(np.maximum(var, 1e-20))


def head_inputs(corr: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """What the head reads: the (2h+1)² values around lag (iy, ix) of each surface scaled
    to 1 at the peak and 0 at the sidelobe mean, the peak's coefficient and log PSR."""
    n, h, w = corr.shape
    r = np.arange(-HALF_WINDOW, HALF_WINDOW + 1)
    yy = (iy[:, None] + r[None, :]) % h
    xx = (ix[:, None] + r[None, :]) % w
    win = corr[np.arange(n)[:, None, None], yy[:, :, None], xx[:, None, :]]
    mean, std = surface_stats(corr, iy, ix)
    peak = corr[np.arange(n), iy % h, ix % w]
    scaled = (win - mean[:, None, None]) / np.maximum(peak - mean, 1e-6)[:, None, None]
    psr = (peak - mean) / std
    extra = np.stack([peak, np.log(np.maximum(psr, 1.0))], axis=1)
    return np.concatenate([scaled.reshape(n, -1), extra], axis=1).astype(np.float32)


def _signed_lag(i, n):
    return (np.asarray(i) + n // 2) % n - n // 2


def _restricted_argmax(corr: np.ndarray, cy, cx, reach) -> tuple[np.ndarray, np.ndarray]:
    """Integer peak of each surface within ±reach lags of (cy, cx) (circular)."""
    n, h, w = corr.shape
    r = np.arange(-reach, reach + 1)
    yy = (np.asarray(cy)[:, None] + r[None, :]) % h
    xx = (np.asarray(cx)[:, None] + r[None, :]) % w
    win = corr[np.arange(n)[:, None, None], yy[:, :, None], xx[:, None, :]].reshape(n, -1)
    k = win.argmax(axis=1)
    return np.asarray(cy) + r[k // r.size], np.asarray(cx) + r[k % r.size]


def predict_patches(net: ShiftNet, reference: np.ndarray, moving: np.ndarray):
    """The network on patch pairs (n, p, p) each: displacement of ``moving`` relative to
    ``reference`` (n, 2) (``moving(x) ≈ reference(x - d)``), its standard deviation
    (n, 2) (calibrated), and the per-pair head inputs' PSR (n,)."""
    ref, _ = standardise(reference)
    mov, _ = standardise(moving)
    feats = net.features(np.concatenate([ref, mov]))
    n = ref.shape[0]
    corr = correlate_features(feats[:n], feats[n:])
    zero = np.zeros(n, dtype=np.int64)
    iy, ix = _restricted_argmax(corr, zero, zero, PATCH_SEARCH)
    inputs = head_inputs(corr, iy, ix)
    offset, logvar = net.head(inputs)
    h, w = corr.shape[-2:]
    lag = np.stack([_signed_lag(iy, h), _signed_lag(ix, w)], axis=1) + offset
    sigma = np.exp(0.5 * logvar) * np.asarray(net.calibration, dtype=np.float32)
    return lag.astype(float), sigma.astype(float), np.exp(inputs[:, -1])


# --------------------------------------------------------------------------- frames


def choose_bin(image, *, min_size: int = 2 * PATCH, max_snr: float = 0.2) -> int:
    """Largest of 4, 2 (else 1) whose binned band still holds the signal.

    The white-noise floor is the mean power at the highest frequencies (|k| > 0.42 cycles
    per pixel); a binning factor b is chosen when the ring just above its Nyquist
    frequency (0.5/b to 0.5/b + 0.1 cycles per pixel) carries less than ``max_snr`` of
    signal power per unit noise power (the frequencies binning drops hold noise only), and
    the binned frame keeps at least ``min_size`` pixels per axis.
    """
    a = np.asarray(to_numpy(image), dtype=np.float32)
    h, w = a.shape
    a = (a - a.mean()) * (_hann(h)[:, None] * _hann(w)[None, :])
    power = np.abs(np.fft.rfft2(a)) ** 2
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    k = np.sqrt(ky**2 + kx**2)
    floor = float(power[k > 0.42].mean())
    if not floor > 0.0:
        return 1
    for b in (4, 2):
        ring = (k > 0.5 / b) & (k <= 0.5 / b + 0.1)
        if min(h, w) // b >= min_size and float(power[ring].mean()) < (1.0 + max_snr) * floor:
            return b
    return 1


def learned_register(
    reference,
    moving,
    *,
    max_shift: float | tuple[float, float] | None = None,
    roi=None,
    bin_factor: int | None = None,
    net: ShiftNet | None = None,
    min_score: float = MIN_SCORE,
    consensus_px: float = 0.35,
    patch: int = PATCH,
) -> Registration:
    """Shift that registers ``moving`` onto ``reference`` by the learned estimator.

    Parameters
    ----------
    reference, moving : (rows, cols) real arrays of one shape (counts, contrast, any
        scale; numpy, or cupy copied to the host). Frames of any size from 64 px per axis.
    max_shift : largest |shift| searched, pixels (scalar or (y, x)); default anywhere.
    roi : ((row0, row1), (col0, col1)) region of both images to use.
    bin_factor : 1, 2, 4, ...; default :func:`choose_bin` of the reference.
    net : weights; default the shipped ones (:func:`load_shift_net`).
    min_score : significance needed for ``ok`` (as :func:`register`).
    consensus_px : or, when the coarse peak is not significant, the largest robust spread
        of the patch estimates and combined uncertainty (binned pixels) that still make
        the result ``ok`` (at least 4 patches).

    Returns
    -------
    Registration
        ``shift`` (dy, dx) pixels (``ndimage.shift(moving, shift) ≈ reference``) and a
        :class:`~livetomo.processing.quality.RegistrationQuality`: ``fwhm_px``, ``psr``,
        ``score`` and ``correlation`` of the coarse (integer) cross-correlation of the
        binned frames, ``uncertainty_px`` the combined, calibrated standard deviation of
        the network's patch estimates; ``ok`` when the coarse match is significant (as
        :func:`register`) or at least 4 patches agree within ``consensus_px``.
    """
    net = load_shift_net() if net is None else net
    ref = np.asarray(to_numpy(reference), dtype=np.float32)
    mov = np.asarray(to_numpy(moving), dtype=np.float32)
    if ref.ndim != 2 or ref.shape != mov.shape:
        raise RegistrationError(f"reference {ref.shape} and moving {mov.shape} must be 2-D and alike")
    if roi is not None:
        (r0, r1), (c0, c1) = roi
        ref, mov = ref[r0:r1, c0:c1], mov[r0:r1, c0:c1]
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(mov))):
        raise RegistrationError("learned_register needs finite images")
    if min(ref.shape) < 32:
        raise RegistrationError(f"images must be at least 32 px per axis, got {ref.shape}")
    for a in (ref, mov):
        if float(a.std()) <= 1e-6 * max(float(np.abs(a).mean()), 1e-30):
            return Registration((0.0, 0.0), failed_quality())
    b = choose_bin(ref) if bin_factor is None else int(bin_factor)
    # block sums, float32
    ref_b, mov_b = (bin_image(np.asarray(a, np.float32), b, reduce="sum") for a in (ref, mov))
    limit = None
    if max_shift is not None:
        limit = np.broadcast_to(np.asarray(max_shift, dtype=float), (2,)) / b
    # Coarse stage: cross-correlation of the (binned) frames gives the integer shift and the
    # significance of the match (register's quality: PSR, score, FWHM; featureless or
    # pure-noise input is not ok); the network measures the shift itself, per patch.
    coarse = register(ref_b, mov_b, upsample_factor=1, max_shift=None if limit is None else tuple(limit))
    cq = coarse.quality
    if not np.all(np.isfinite(coarse.shift)):
        return Registration((0.0, 0.0), failed_quality())
    g = -np.rint(np.asarray(coarse.shift)).astype(int)  # displacement of moving, integer
    # Fine stage: patches of the reference, moving patches taken at the coarse shift.
    lag, sigma = _patch_residuals(net, ref_b, mov_b, g, patch)
    if lag is None:
        return Registration((0.0, 0.0), failed_quality())
    d, unc, spread, n_kept = _combine(lag, sigma)
    disp = (g + d) * b
    shift = (float(-disp[0]), float(-disp[1]))
    # A broad coarse peak (long membranes or filaments seen edge-on) fails register's
    # significance test even when the shift is right; the patches' agreement is a second,
    # independent witness: at least 4 patches within consensus_px of each other (robust
    # spread) and a combined uncertainty below it. Noise scatters the patches by pixels.
    consensus = bool(n_kept >= 4 and max(spread) <= consensus_px and max(unc) <= consensus_px)
    ok = bool(((cq.score >= min_score and cq.ok) or consensus) and np.all(np.isfinite(unc)))
    uncertainty = tuple(float(u * b) for u in unc) if ok else (math.inf, math.inf)
    fwhm = tuple(float(f * b) for f in cq.fwhm_px)
    return Registration(shift, RegistrationQuality(fwhm, cq.psr, cq.score, uncertainty, ok, cq.correlation))


def _patch_grid(n: int, lag: int, p: int) -> list[int]:
    """Starts of non-overlapping patches of the reference whose moving partner (``lag``
    further on) stays inside ``n`` pixels, centred in the usable span."""
    lo, hi = max(0, -lag), min(n, n - lag)
    count = (hi - lo) // p
    if count < 1:
        return []
    start = lo + ((hi - lo) - count * p) // 2
    return [start + i * p for i in range(count)]


def _patch_residuals(net: ShiftNet, ref: np.ndarray, mov: np.ndarray, g: np.ndarray, patch: int = PATCH):
    """Per-patch displacement residuals beyond the coarse lag ``g`` and their sigmas."""
    p = int(patch)
    ys, xs = _patch_grid(ref.shape[0], int(g[0]), p), _patch_grid(ref.shape[1], int(g[1]), p)
    if not ys or not xs:
        # A frame smaller than a patch (plus the shift): one patch of what overlaps.
        h = ref.shape[0] - abs(int(g[0]))
        w = ref.shape[1] - abs(int(g[1]))
        p = min(h, w)
        if p < 32:
            return None, None
        ys, xs = [max(0, -int(g[0]))], [max(0, -int(g[1]))]
    refs = np.stack([ref[y : y + p, x : x + p] for y in ys for x in xs])
    movs = np.stack([mov[y + g[0] : y + g[0] + p, x + g[1] : x + g[1] + p] for y in ys for x in xs])
    keep = (refs.std(axis=(1, 2)) > 0) & (movs.std(axis=(1, 2)) > 0)
    if not keep.any():
        return None, None
    lag, sigma, _ = predict_patches(net, refs[keep], movs[keep])
    return lag, sigma


def _combine(lag: np.ndarray, sigma: np.ndarray):
    """Inverse-variance mean of patch estimates after rejecting far ones, per axis.

    Returns (mean (2,), standard deviation (2,), robust spread of the patches (2,),
    number of patches kept on both axes).
    """
    mean, unc, spread = np.zeros(2), np.zeros(2), np.zeros(2)
    kept = np.ones(lag.shape[0], dtype=bool)
    for a in range(2):
        x, s = lag[:, a], np.maximum(sigma[:, a], 1e-3)
        med = np.median(x)
        mad = 1.4826 * np.median(np.abs(x - med))
        keep = np.abs(x - med) <= np.maximum(4.0 * s, max(3.0 * mad, 0.25))
        w = 1.0 / s[keep] ** 2
        m = float((w * x[keep]).sum() / w.sum())
        u = 1.0 / math.sqrt(float(w.sum()))
        if keep.sum() > 1:
            birge = math.sqrt(float((w * (x[keep] - m) ** 2).sum()) / (keep.sum() - 1))
            u *= max(1.0, birge)
        mean[a], unc[a], spread[a] = m, u, mad
        kept &= keep
    return mean, unc, spread, int(kept.sum())
