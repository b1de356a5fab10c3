"""Sub-pixel registration of two images by FFT cross-correlation and upsampled-DFT refinement.

Method (Guizar-Sicairos, Thurman & Fienup, Opt. Lett. 33, 156, 2008): the cross-power
spectrum of the two images is inverse transformed once to find the integer peak of the
cross-correlation; the correlation is then evaluated on a fine grid around that peak by a
small matrix-product DFT of the same spectrum, which is exact (no interpolation) and costs
far less than zero-padding.

Sign convention (the same as ``skimage.registration.phase_cross_correlation``): the
returned ``shift`` (dy, dx), pixels, is the shift that registers ``moving`` onto
``reference``: ``scipy.ndimage.shift(moving, shift)`` ≈ ``reference``. If the specimen in
``moving`` is displaced by d relative to ``reference`` (``moving = ndimage.shift(reference,
d)``, which is how the simulators' ``true_shift_px`` is defined), the result is ``-d``.

Speed: real FFTs (``scipy.fft.rfft2`` with ``workers``), the reference spectrum prepared once
and reused (:func:`prepare_reference`), mean removal done on a handful of spectral
coefficients instead of the image; from 256 px per axis the integer peak is found on the
inverse FFT of the eighth or quarter band only and then exactly by DFT (:class:`_Surface`),
and the sub-pixel refinement is two 7 x 7 DFT grids (1/20 px, then 1/upsample) instead of
scikit-image's 151 x 151. ``livetomo bench align`` (part d) measures it against
``skimage.registration.phase_cross_correlation`` and three float32 rfft2 of the same size
(figures in docs/alignment.md).

Everything works on numpy or cupy arrays; the array module is inferred from the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .arrays import get_array_module, irfft2, rfft2, single_thread_blas, to_numpy
from .quality import RegistrationQuality, assess_peak, failed_quality, half_max_width

_COARSE_STEP = 0.05  # px, grid of the first refinement stage (when 1/upsample is finer)
_STAGE_REACH = 3  # grid points each side searched per refinement stage (7 x 7 DFT samples)
_FWHM_STEP = 0.25  # px, sampling of the fine peak profiles
_FWHM_REACH = 4.0  # px each side; wider peaks are measured on the integer surface
_COARSE_MIN = 256  # px: from this size up the integer peak is found on a coarse surface
_COARSE_BANDS = (8, 4)  # coarse surfaces tried: eighth band, then quarter band
_EIGHTH_WIDTH = 8.0  # px: a peak at least this wide on the eighth band is searched there
_EXACT_BOX = 8  # px: largest exclusion-box half-width summed exactly on the coarse path
_FOLLOW_FRACTION = 0.01  # shifts beyond this share of the field get a second, window-following pass


class RegistrationError(ValueError):
    """Bad input to a registration function (shape, dtype, option)."""


# --------------------------------------------------------------------------- windows, filters


@lru_cache(maxsize=32)
def _window_1d(kind: str, n: int, alpha: float) -> np.ndarray:
    from scipy.signal import windows

    if kind == "hann":
        # Periodic Hann: its DFT has three non-zero coefficients, which makes mean removal
        # in the spectrum almost free (see _PreparedWindow).
        return windows.hann(n, sym=False)
    if kind == "tukey":
        return windows.tukey(n, alpha, sym=False)
    raise RegistrationError(f"window {kind!r} is not one of 'hann', 'tukey', None or an array")


def _parse_window(window, shape) -> np.ndarray | None:
    """The (rows, cols) float64 window named by ``window`` (numpy), or None."""
    if window is None:
        return None
    if isinstance(window, str) or (isinstance(window, tuple) and isinstance(window[0], str)):
        kind, alpha = (window, 0.25) if isinstance(window, str) else (window[0], float(window[1]))
        if not 0.0 <= alpha <= 1.0:
            raise RegistrationError(f"Tukey alpha must be in [0, 1], got {alpha}")
        return np.outer(_window_1d(kind, shape[0], alpha), _window_1d(kind, shape[1], alpha))
    w = to_numpy(window).astype(np.float64)
    if w.shape != tuple(shape):
        raise RegistrationError(f"window array has shape {w.shape}, the image (or ROI) {tuple(shape)}")
    return w


@dataclass(frozen=True, eq=False)
class WindowTerms:
    """A window and what the registration needs to know about it (arrays of one module).

    Attributes
    ----------
    window : (rows, cols) float32, or None for no window.
    support, values : flat indices and values of rfft2(window) where it is not negligible
        (mean removal in the spectrum, see :func:`_spectrum`).
    total : sum of the window; total_sq : sum of its square.
    autocorrelation : for a separable window, per axis the sparse power spectrum of its
        1-D factor (see :func:`_sparse_power`), else None.
    overlap : (rows, cols) float32 circular autocorrelation of window² over its mean, or
        None: the relative noise variance of the correlation at each lag. For white noise
        the correlation at lag s has variance ∝ Σ_y w(y)² w(y+s)², about twice the average
        near zero lag for a Hann window, so pure noise tends to peak there; the
        peak-to-sidelobe ratio is corrected by it.
    """

    window: object
    support: object
    values: object
    total: float
    overlap: object
    autocorrelation: tuple | None = None
    total_sq: float = 0.0

    def lag_gain(self, ys, xs) -> np.ndarray | None:
        """Window overlap at lags (ys, xs) over its value at zero lag, (len(ys), len(xs)).

        The correlation of two windowed images is the true correlation times the window's
        autocorrelation, which falls off with the lag and pulls the peak towards zero (by
        about 0.7 % of the shift for a Hann window over 128 px and a 7 px feature
        correlation); the refinement divides it out. None for unseparable array windows
        and no window.
        """
        if self.autocorrelation is None:
            return None
        gy, gx = (_circular_autocorrelation(p, np.asarray(lags, float))
                  for p, lags in zip(self.autocorrelation, (ys, xs), strict=True))  # fmt: skip
        return np.outer(gy, gx)


def _sparse_power(w1d: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """|FFT(w)|² of a 1-D window on the frequencies where it is not negligible.

    (signed frequencies, power / total power, length). A periodic Hann window has three,
    a Tukey window a few dozen: evaluating the autocorrelation on them instead of all n
    frequencies took the per-registration cost of the window correction from 1.5 ms to
    under 0.1 ms at 1024² (four evaluations of 2 axes x up to 33 lags).
    """
    n = w1d.size
    power = np.abs(np.fft.fft(w1d)) ** 2
    keep = np.flatnonzero(power > 1e-12 * power.max())
    return (np.fft.fftfreq(n) * n)[keep], power[keep] / power.sum(), n


def _circular_autocorrelation(sparse_power, lags: np.ndarray) -> np.ndarray:
    """Σ_y w(y) w(y + s) / Σ w² at (fractional) lags s, from :func:`_sparse_power`."""
    k, power, n = sparse_power
    return np.cos(2.0 * np.pi * np.outer(lags, k) / n) @ power


def _window_terms(window, shape, xp) -> WindowTerms:
    """Cached for named windows (they depend on the shape only)."""
    if window is None or isinstance(window, str | tuple):
        try:
            return _named_window_terms(window, tuple(shape), xp.__name__)
        except TypeError:  # unhashable tuple contents
            pass
    return _build_window_terms(_parse_window(window, shape), shape, xp)


@lru_cache(maxsize=16)
def _named_window_terms(window, shape, xp_name) -> WindowTerms:
    import importlib

    xp = importlib.import_module(xp_name)
    return _build_window_terms(_parse_window(window, shape), shape, xp)


def _separable(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(wy, wx) with ``w = outer(wy, wx)`` when the window is separable, else None.

    A separable window is its largest element's column times its row over that element, so
    checking that takes one outer product; a rank test by SVD took 12 s on a 1023 × 1440
    frame (K3 bin 4) at its first registration. The factors' scale and sign do not matter:
    only their normalised power spectra are used."""
    i, j = np.unravel_index(int(np.argmax(np.abs(w))), w.shape)
    peak = float(w[i, j])
    if peak == 0.0:
        return None
    wy, wx = w[:, j] / peak, w[i, :]
    if not np.allclose(np.outer(wy, wx), w, rtol=1e-6, atol=1e-9 * abs(peak)):
        return None
    return wy, wx


def _build_window_terms(w, shape, xp) -> WindowTerms:
    has_window = w is not None
    if not has_window:
        w = np.ones(shape)
    w_spec = np.fft.rfft2(w).ravel()
    support = np.flatnonzero(np.abs(w_spec) > 1e-7 * np.abs(w_spec).max())
    overlap = None
    if has_window:
        ov = np.fft.irfft2(np.abs(np.fft.rfft2(w * w)) ** 2, s=w.shape)
        overlap = xp.asarray((ov / ov.mean()).astype(np.float32))
    autocorrelation = None
    factors = _separable(w) if has_window else None
    if factors is not None:  # w = outer(wy, wx)
        autocorrelation = (_sparse_power(factors[0]), _sparse_power(factors[1]))
    return WindowTerms(
        window=xp.asarray(w.astype(np.float32)) if has_window else None,
        support=xp.asarray(support),
        values=xp.asarray(w_spec[support].astype(np.complex64)),
        total=float(w.sum()),
        overlap=overlap,
        autocorrelation=autocorrelation,
        total_sq=float((w * w).sum()),
    )


@lru_cache(maxsize=16)
def _cached_transfer_np(shape, band):
    return bandpass_transfer(shape, band)


def _cached_transfer(shape, band, xp):
    band = tuple(None if b is None else float(b) for b in band)
    if len(band) != 2:
        raise RegistrationError(f"band must be (low_sigma, high_sigma), got {band}")
    return xp.asarray(_cached_transfer_np(tuple(shape), band))


def bandpass_transfer(shape, band, xp=np, dtype=np.float32):
    """Transfer function of the difference-of-Gaussians band-pass on the rfft2 grid.

    Parameters
    ----------
    shape : (rows, cols) of the image.
    band : (low_sigma, high_sigma), pixels: Gaussian sigmas of the low-pass (suppresses
        structures and noise finer than about ``low_sigma``) and of the removed background
        (structures coarser than about ``high_sigma``); either may be None (no low-pass / no
        background removal). ``high_sigma > low_sigma``.

    Returns
    -------
    H : (rows, cols // 2 + 1) array of ``dtype``, ``G_low - G_high`` in frequency.
    """
    low, high = band
    if low is not None and low < 0 or high is not None and high <= 0:
        raise RegistrationError(f"band sigmas must be positive pixels, got {band}")
    if low is not None and high is not None and not high > low:
        raise RegistrationError(f"band high_sigma must exceed low_sigma, got {band}")
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    k2 = ky**2 + kx**2
    h = np.exp(-2.0 * np.pi**2 * (low or 0.0) ** 2 * k2)
    if high is not None:
        h = h - np.exp(-2.0 * np.pi**2 * high**2 * k2)
    return xp.asarray(h.astype(dtype))


# --------------------------------------------------------------------------- preparation


def _parse_roi(roi, shape) -> tuple[slice, slice] | None:
    """ROI as two slices (rows, cols) from slices, (start, stop) pairs or None (whole axis)."""
    if roi is None:
        return None
    if len(roi) != 2:
        raise RegistrationError(f"roi must be (rows, cols) slices or ((y0, y1), (x0, x1)), got {roi!r}")
    out = []
    for r, n in zip(roi, shape, strict=True):
        s = r if isinstance(r, slice) else slice(None) if r is None else slice(int(r[0]), int(r[1]))
        start, stop, step = s.indices(n)
        if step != 1 or stop - start < 4:
            raise RegistrationError(f"roi {roi!r} must be a contiguous region of >= 4 px per axis")
        out.append(slice(start, stop))
    return out[0], out[1]


@dataclass(frozen=True, eq=False)
class PreparedReference:
    """A reference image made ready for many registrations (its spectrum, cached).

    Build it with :func:`prepare_reference`; pass it to :func:`register` in place of the
    reference image. The preprocessing options it was prepared with apply to every moving
    image registered against it.

    Attributes
    ----------
    spectrum : conjugate spectrum of the preprocessed reference, (channels, rows, cols//2+1)
        complex64, band-pass folded in unless ``normalization == 'phase'``.
    image_shape : (rows, cols) of the full images.
    roi : (rows, cols) slices or None.
    window : :class:`WindowTerms` of the ROI.
    transfer : band-pass transfer function, applied after phase normalisation, or None.
    normalization : None or 'phase'.
    n_channels : number of channels (1 for a plain image).
    workers : scipy.fft threads.
    featureless : True when the reference has no fluctuation above float32 rounding.
    energy : Σ H|F|² of the preprocessed reference over the half spectrum (H the band-pass
        transfer, or 1; for phase correlation Σ H), for the correlation coefficient.
    weights : the band-pass transfer H used for the moving image's energy, or None.
    noise_samples : effective number of independent noise samples in the region.
    """

    spectrum: object
    image_shape: tuple[int, int]
    roi: tuple[slice, slice] | None
    window: WindowTerms
    transfer: object
    normalization: str | None
    n_channels: int
    workers: int | None
    featureless: bool
    energy: float = 0.0
    weights: object = None
    noise_samples: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the correlated region (the ROI, or the whole image)."""
        if self.roi is None:
            return self.image_shape
        return tuple(s.stop - s.start for s in self.roi)


def _as_channels(image, xp, name: str):
    """(channels, rows, cols) float32 view/copy of a 2-D image or a channel stack."""
    a = xp.asarray(image)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise RegistrationError(f"{name} must be (rows, cols) or (channels, rows, cols), got {a.shape}")
    if a.dtype.kind not in "fiu":
        raise RegistrationError(f"{name} must be real numbers, got dtype {a.dtype}")
    return a.astype(xp.float32, copy=False)


def prepare_reference(
    reference,
    *,
    roi=None,
    window="hann",
    band=None,
    normalization=None,
    workers: int | None = None,
) -> PreparedReference:
    """Precompute everything about ``reference`` that :func:`register` needs.

    Parameters
    ----------
    reference : (rows, cols) or (channels, rows, cols) real array, numpy or cupy. Channels
        (e.g. horizontal and vertical DPC) are correlated pairwise and the correlations
        summed. Not modified.
    roi : region correlated, as (row_slice, col_slice) or ((y0, y1), (x0, x1)), pixels; the
        same region is cut from the moving image. Default the whole image.
    window : 'hann', 'tukey' (alpha 0.25), ('tukey', alpha), a (rows, cols) array, or None.
        Tapers the region's borders so that the edges of the field do not correlate.
    band : (low_sigma, high_sigma) pixels of a difference-of-Gaussians band-pass applied to
        the correlation (see :func:`bandpass_transfer`), or None.
    normalization : None (plain cross-correlation) or 'phase' (phase correlation: the
        cross-power spectrum divided by its modulus; sharper peaks, more noise-sensitive;
        combine with ``band``).
    workers : threads of scipy.fft (numpy only); None uses every core.

    Returns
    -------
    PreparedReference
    """
    xp = get_array_module(reference)
    ref = _as_channels(reference, xp, "reference")
    image_shape = tuple(int(n) for n in ref.shape[-2:])
    roi_s = _parse_roi(roi, image_shape)
    if roi_s is not None:
        ref = ref[:, roi_s[0], roi_s[1]]
    shape = tuple(int(n) for n in ref.shape[-2:])
    if normalization not in (None, "phase"):
        raise RegistrationError(f"normalization must be None or 'phase', got {normalization!r}")
    terms = _window_terms(window, shape, xp)
    transfer = None if band is None else _cached_transfer(shape, band, xp)
    spec, featureless, energy = _spectrum(ref, terms, xp, workers)
    spec = xp.conjugate(spec, out=spec)  # in place: a fresh 4 MB array costs ~1 ms of page faults
    weights = transfer
    if normalization == "phase":
        spec = spec / (xp.abs(spec) + _tiny(spec, xp))
        energy = float(xp.sum(transfer)) if transfer is not None else float(np.prod(spec.shape[-2:]))
    elif transfer is not None:
        energy = _weighted_energy(spec, transfer, xp)
        spec = spec * transfer
        transfer = None
    return PreparedReference(
        spectrum=spec.astype(xp.complex64, copy=False),
        image_shape=image_shape,
        roi=roi_s,
        window=terms,
        transfer=transfer,
        normalization=normalization,
        n_channels=int(ref.shape[0]),
        workers=workers,
        featureless=featureless,
        energy=energy,
        weights=weights,
        noise_samples=_noise_samples(terms, weights, shape, xp),
    )


def _weighted_energy(spec, weights, xp) -> float:
    """Σ weights·|spec|² over the half spectrum, all channels."""
    return float(xp.sum((spec.real**2 + spec.imag**2) * weights))


def _noise_samples(terms: WindowTerms, weights, shape, xp) -> float:
    """Effective number of independent noise samples in the correlated region.

    Σ w² pixels of white noise, reduced by the band-pass: white noise filtered by H has
    ``(Σ H)² / (n Σ H²)`` independent samples per pixel (1 without a filter).
    """
    w2 = terms.total_sq
    if weights is None:
        return w2
    h = to_numpy(weights).astype(np.float64)
    return w2 * float(h.sum() ** 2 / (h.size * (h**2).sum() + 1e-300))


def _tiny(spec, xp):
    """A floor for spectral moduli, relative to their mean (avoids 0/0 in phase correlation)."""
    return 1e-6 * float(xp.abs(spec).mean()) + 1e-30


def _spectrum(channels, terms: WindowTerms, xp, workers):
    """rfft2 of ``(image - weighted mean) * window`` per channel, (c, rows, cols//2+1).

    ``FFT((a - m) w) = FFT(a w) - m FFT(w)`` with ``m = sum(a w) / sum(w)``; FFT(w) is
    non-negligible on a few coefficients only (9 for Hann), so the mean is removed there.
    The result has an exactly zero DC term: the window's own autocorrelation (a broad hump
    at zero shift that would pull every result towards 0) never enters the correlation.

    Returns
    -------
    spec : (c, rows, cols//2+1) complex64.
    featureless : True when the fluctuations are below about 1e-5 of the mean (float32
        rounding of a constant image) or the image is all zero.
    energy : Σ|spec|² over the half spectrum, all channels.
    """
    a = channels * terms.window if terms.window is not None else channels.copy()
    spec = rfft2(a, xp, workers)
    flat = spec.reshape(spec.shape[0], -1)
    support, values = terms.support, terms.values
    mean = flat[:, 0].real / terms.total  # DC term / sum(w) = weighted mean
    if support.size > 0.05 * flat.shape[1]:
        w_full = xp.zeros(flat.shape[1], dtype=xp.complex64)
        w_full[support] = values
        flat -= mean[:, None].astype(xp.complex64) * w_full[None, :]
    else:
        flat[:, support] -= mean[:, None].astype(xp.complex64) * values[None, :]
    # Fluctuation energy against the squared DC term (ratio ≈ relative rms² of the image).
    energy = float(xp.vdot(flat, flat).real)
    dc2 = float(xp.sum(mean * mean)) * terms.total**2
    return spec, bool(energy <= 1e-10 * dc2 + 1e-30), energy


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class Registration:
    """Result of :func:`register`.

    Attributes
    ----------
    shift : (dy, dx) pixels that register moving onto reference:
        ``ndimage.shift(moving, shift) ≈ reference`` (scikit-image's convention).
    quality : :class:`~livetomo.processing.quality.RegistrationQuality`.
    """

    shift: tuple[float, float]
    quality: RegistrationQuality

    def as_dict(self) -> dict:
        """Plain floats, for JSON/msgpack publishing."""
        return {"shift_px": list(self.shift), **self.quality.as_dict()}


def register(
    reference,
    moving,
    *,
    upsample_factor: int = 100,
    max_shift: float | tuple[float, float] | None = None,
    roi=None,
    window="hann",
    band=None,
    normalization=None,
    workers: int | None = None,
) -> Registration:
    """Sub-pixel shift that registers ``moving`` onto ``reference``, with its quality.

    Parameters
    ----------
    reference : (rows, cols) or (channels, rows, cols) real array (numpy or cupy), or a
        :class:`PreparedReference` (then ``roi``, ``window``, ``band``, ``normalization``
        and ``workers`` come from it and must be left at their defaults).
    moving : array of the same shape as the reference image.
    upsample_factor : the result is on a 1/upsample_factor pixel grid (>= 1).
    max_shift : largest |shift| searched, pixels, scalar or (y, x); default: anywhere
        (shifts wrap at half the correlated size).
    roi, window, band, normalization, workers : see :func:`prepare_reference`.

    Returns
    -------
    Registration
        ``shift`` (dy, dx) in pixels, float, with ``ndimage.shift(moving, shift)`` ≈
        ``reference`` (scikit-image's sign), and ``quality``.

    Notes
    -----
    Inputs are not modified. float32 throughout; cost at 1024 × 1024 about that of three
    real FFTs (two when the reference is prepared). A shift beyond 1 % of the field along
    either axis is measured again on the moving image shifted by the first estimate (the
    window then weights the same content in both images), which costs three more.
    """
    if isinstance(reference, PreparedReference):
        if (roi, window, band, normalization, workers) != (None, "hann", None, None, None):
            raise RegistrationError(
                "roi, window, band, normalization and workers are fixed by prepare_reference; "
                "leave them at their defaults when passing a PreparedReference"
            )
        prepared = reference
    else:
        prepared = prepare_reference(
            reference, roi=roi, window=window, band=band, normalization=normalization, workers=workers
        )
    if int(upsample_factor) != upsample_factor or upsample_factor < 1:
        raise RegistrationError(f"upsample_factor must be an integer >= 1, got {upsample_factor}")
    xp = get_array_module(prepared.spectrum)
    mov = _as_channels(moving, xp, "moving")
    if tuple(mov.shape[-2:]) != prepared.image_shape or mov.shape[0] != prepared.n_channels:
        raise RegistrationError(
            f"moving has shape {tuple(mov.shape)}, the reference "
            f"({prepared.n_channels}, {prepared.image_shape[0]}, {prepared.image_shape[1]})"
        )
    first = _register_once(prepared, mov, int(upsample_factor), max_shift, xp)
    shape = prepared.shape
    if prepared.window.window is None or not first.quality.psr > 0.0:  # no window; no peak
        return first
    if max(abs(d) / n for d, n in zip(first.shift, shape, strict=True)) <= _FOLLOW_FRACTION:
        return first
    # The window stays put while the content moves under it: features in its taper are
    # weighted differently in the two images, which pulls the peak (by pixels for a strong
    # edge or a lone spot near the border: livetomo bench align, part f). A second pass on
    # the moving image shifted by the first estimate compares the same content under the
    # same weights; the first pass's lag still says how much of the field the match rests on.
    moved = shift_image(mov, first.shift, mode="edge", workers=prepared.workers)
    gain = prepared.window.lag_gain([-first.shift[0]], [-first.shift[1]])
    overlap = 1.0 if gain is None else float(gain[0, 0])
    second = _register_once(prepared, moved, int(upsample_factor), None, xp, overlap=overlap)
    total = (first.shift[0] + second.shift[0], first.shift[1] + second.shift[1])
    if max_shift is not None and any(
        abs(t) > m + 1e-9 for t, m in zip(total, np.broadcast_to(max_shift, 2), strict=True)
    ):
        return first
    return Registration((float(total[0]), float(total[1])), second.quality)


def _register_once(prepared: PreparedReference, mov, upsample: int, max_shift, xp, overlap=None):
    """One correlation of ``mov`` (channels, full image) with the prepared reference."""
    if prepared.roi is not None:
        mov = mov[:, prepared.roi[0], prepared.roi[1]]
    spec, featureless, energy = _spectrum(mov, prepared.window, xp, prepared.workers)
    if featureless or prepared.featureless:
        return Registration((0.0, 0.0), failed_quality())
    if prepared.normalization == "phase":
        energy = prepared.energy
    elif prepared.weights is not None:
        energy = _weighted_energy(spec, prepared.weights, xp)
    n_rows, n_cols = prepared.shape
    # Parseval on the half spectrum: Σ_pixels x² ≈ 2 Σ_half |X|² / (rows·cols).
    norm = 2.0 * math.sqrt(max(energy * prepared.energy, 0.0)) / (n_rows * n_cols)
    noise = (norm, prepared.noise_samples)
    cross = xp.multiply(spec, prepared.spectrum, out=spec)  # spec is ours and not needed after
    cross = cross[0] if cross.shape[0] == 1 else cross.sum(axis=0)
    if prepared.normalization == "phase":
        cross /= xp.abs(cross) + _tiny(cross, xp)
        if prepared.transfer is not None:
            cross *= prepared.transfer
    with single_thread_blas():
        return _locate_peak(cross, prepared.shape, upsample, max_shift, prepared.window, xp,
                            prepared.workers, noise, overlap)  # fmt: skip


def _locate_peak(
    cross, shape, upsample, max_shift, window, xp, workers, noise=(0.0, 1.0), lag_overlap=None
) -> Registration:
    """Integer peak of irfft2(cross), DFT refinement, quality. ``cross`` = conj(R)·M.

    ``lag_overlap``: the windows' overlap the match rests on (default: at the found lag)."""
    n_rows, n_cols = shape
    kernel = _DFTKernel(cross, shape, xp, window)
    surface = _Surface(cross, shape, xp, workers, kernel)
    iy, ix = surface.integer_peak(max_shift)
    # Signed correlation lag of the integer peak (wraps at half the size).
    py, px = _signed(iy, n_rows), _signed(ix, n_cols)
    overlap = window.overlap
    around = surface.block(iy, ix, 1, 1)
    peak_value = float(around[1, 1])
    if peak_value <= 0.0:
        return Registration((float(-py), float(-px)), failed_quality())
    step = 1.0
    if upsample > 1:
        step = 1.0 / upsample
        anchor = (py, px)
        py, px = _parabolic_vertex(
            around, py, px, window.lag_gain(np.arange(py - 1, py + 2), np.arange(px - 1, px + 2))
        )
        py, px, peak_value = _refine(kernel, py, px, upsample, anchor)
    noise_gain = 1.0 if overlap is None else math.sqrt(max(float(overlap[iy, ix]), 1e-6))
    gain = window.lag_gain([py], [px])
    corrected = peak_value / (1.0 if gain is None else float(gain[0, 0]))
    rho = corrected / noise[0] if noise[0] > 0 else 0.0
    if lag_overlap is None:
        lag_overlap = 1.0 if gain is None else float(gain[0, 0])
    quality = _quality(
        surface, kernel, (iy, ix), (py, px), peak_value, step, noise_gain, (rho, noise[1]), lag_overlap
    )
    py, px = _wrap(py, n_rows), _wrap(px, n_cols)
    # The correlation peaks at the displacement of moving; the registering shift is its negative.
    return Registration((float(-py) + 0.0, float(-px) + 0.0), quality)


def _refine(kernel, py, px, upsample, anchor):
    """Maximum of the correlation on the 1/upsample grid near (py, px): (y, x, raw value).

    Two hill climbs on 7 x 7 DFT grids: 1/20 px (when that is coarser than the final grid),
    then 1/upsample, each re-centred while its maximum sits on the border. At upsample 100
    that is 14 DFT rows when the start is good, against the 151 of a single ±0.75 px grid
    (scikit-image) or the 21 of one ±0.1 px grid.
    """
    steps = [1.0 / upsample]
    if _COARSE_STEP > 1.5 / upsample:
        steps.insert(0, _COARSE_STEP)
    value = None
    for step in steps:
        py, px = round(py / step) * step, round(px / step) * step  # on this stage's grid
        py, px, value = kernel.climb(py, px, step, _STAGE_REACH, anchor)
    return py, px, value


def _parabolic_vertex(around: np.ndarray, py, px, gain=None) -> tuple[float, float]:
    """Sub-pixel start for the DFT search: vertex of a parabola through 3 samples per axis.

    ``around`` is the 3 x 3 block of the surface centred on the integer peak (py, px);
    ``gain``, the window's overlap at those lags, is divided out first (as the refinement
    does) so that the start is where the refinement will look.
    """
    if gain is not None:
        around = around / gain
    out = []
    for p, (a, b, c) in ((py, around[:, 1]), (px, around[1, :])):
        curvature = a - 2.0 * b + c
        delta = 0.5 * (a - c) / curvature if curvature < 0 else 0.0
        out.append(p + float(np.clip(delta, -0.5, 0.5)))
    return out[0], out[1]


class _Surface:
    """Integer-lag samples of the correlation surface ``irfft2(cross)``, computed where needed.

    Below ``_COARSE_MIN`` px per axis the whole surface is computed, as the inverse FFT is
    cheap there. Above, the inverse FFT of the full spectrum is the largest single cost of
    a registration (at 1024², 4.7 ms against 2.9 ms for the forward rfft2 on one core: its
    column pass is strided), so the integer peak is found on a coarse surface, the inverse
    FFT of the eighth band (|ky| < rows/8, kx <= cols/8: a sixteenth of the work, samples
    every 4 px of the low-passed correlation) when the peak is at least 8 px wide there,
    else of the quarter band (samples every 2 px), and then exactly by a hill climb on
    blocks of DFT samples at integer lags around the best (up to 3) coarse maxima. The sums the
    peak-to-sidelobe ratio needs come from Parseval's theorem and the exclusion box from
    the climb's block, so the full surface is never built. Shift, FWHM and PSR equal the
    whole-surface ones, except that a broad peak's box (half-width over ``_EXACT_BOX`` px)
    is summed on the coarse surface (:meth:`box_sums`, PSR within 0.1 %), and that among
    competing peaks of nearly equal height (pure noise) another one may be taken; the
    registration is then flagged either way.
    """

    def __init__(self, cross, shape, xp, workers, kernel):
        self.cross, self.shape, self.xp, self.workers, self.kernel = cross, tuple(shape), xp, workers, kernel
        self.coarse = min(self.shape) >= _COARSE_MIN
        self._full = None
        self._coarse = None  # (surface, lags per axis, px per sample, full-spectrum power)
        self._sums = None  # (Σ, Σ²) of the whole surface, once computed
        self._blocks: dict[tuple[int, int], np.ndarray] = {}  # exact DFT blocks by centre

    @property
    def full(self):
        """The whole (rows, cols) surface (array of the input's module), built once."""
        if self._full is None:
            self._full = irfft2(self.cross, self.shape, self.xp, self.workers, overwrite=False)
        return self._full

    def block(self, iy: int, ix: int, hy: int, hx: int) -> np.ndarray:
        """Surface at rows iy-hy..iy+hy and columns ix-hx..ix+hx (periodic), numpy."""
        n_rows, n_cols = self.shape
        if self._full is None and self.coarse:
            for (cy, cx), cached in self._blocks.items():  # a block already evaluated around it
                ry, rx = cached.shape[0] // 2, cached.shape[1] // 2
                oy, ox = int(_wrap_int(np.array(iy - cy), n_rows)), int(_wrap_int(np.array(ix - cx), n_cols))
                if abs(oy) + hy <= ry and abs(ox) + hx <= rx:
                    return cached[ry + oy - hy : ry + oy + hy + 1, rx + ox - hx : rx + ox + hx + 1].copy()
            block = self.kernel.integer_block(iy, ix, hy, hx)
            self._blocks[(iy % n_rows, ix % n_cols)] = block
            return block.copy()
        rows = self.xp.asarray(np.arange(iy - hy, iy + hy + 1) % n_rows)
        cols = self.xp.asarray(np.arange(ix - hx, ix + hx + 1) % n_cols)
        return to_numpy(self.full[rows[:, None], cols[None, :]]).astype(np.float64)

    def line(self, axis: int, iy: int, ix: int) -> np.ndarray:
        """The whole column (axis 0) through column ix or row (axis 1) through row iy, numpy."""
        if self._full is not None or not self.coarse:
            return to_numpy(self.full[:, ix] if axis == 0 else self.full[iy, :])
        xp, k = self.xp, self.kernel
        if axis == 0:  # sum over kx at this column, then a 1-D inverse FFT over ky
            return to_numpy(xp.fft.ifft((self.cross @ k.ex(float(ix), 1.0, 0))[:, 0]).real)
        return to_numpy(xp.fft.irfft((k.ey(float(iy), 1.0, 0) @ self.cross)[0], n=self.shape[1]))

    def box_sums(self, iy: int, ix: int, hy: int, hx: int) -> tuple[float, float, int]:
        """Σ, Σ² and number of the surface's samples in the box iy±hy, ix±hx.

        Exact (DFT block or the whole surface) up to ``_EXACT_BOX`` px half-width. A broader
        box holds a smooth peak that the coarse surface resolves (2 or 4 px samples of the
        band): its sums are the coarse samples' times the density of integer lags,
        plus, for Σ², the box's share of the power outside the band (Parseval).
        The PSR from these sums is within 0.11 % of the exact one on the benchmark's K3
        pairs (FWHM 10 px) and within 0.3 % for 10-45 px peaks on 256-512 px images; it
        saves a DFT block of 2·FWHM rows.
        """
        n_box = (2 * hy + 1) * (2 * hx + 1)
        if self._full is not None or not self.coarse or max(hy, hx) <= _EXACT_BOX or self._coarse is None:
            box = self.block(iy, ix, hy, hx)
            return float(box.sum()), float((box * box).sum()), n_box
        coarse, lags, scale, band_power = self._coarse
        n_rows, n_cols = self.shape
        rows = np.flatnonzero(np.abs(_wrap_float(lags[0] - iy, n_rows)) <= hy + 1e-9)
        cols = np.flatnonzero(np.abs(_wrap_float(lags[1] - ix, n_cols)) <= hx + 1e-9)
        values = to_numpy(coarse[self.xp.asarray(rows)[:, None], self.xp.asarray(cols)[None, :]])
        values = values.astype(np.float64) / (scale[0] * scale[1])  # the band-limited surface
        density = scale[0] * scale[1]  # integer lags per coarse sample
        _, total_sq = self.sums()
        high = max(total_sq - band_power / (n_rows * n_cols), 0.0) / (n_rows * n_cols)
        return float(density * values.sum()), float(density * (values * values).sum() + n_box * high), n_box

    def second_peak(self, iy: int, ix: int, hy: int, hx: int) -> float:
        """Highest local maximum of the surface outside the box iy±hy, ix±hx (the runner-up).

        On the whole surface when it is built (below ``_COARSE_MIN``); on the large-image path,
        the best coarse candidate outside the box (NaN when the coarse search kept none: no
        competitor reached half the peak there).
        """
        n_rows, n_cols = self.shape
        if self._full is not None or not self.coarse:
            c = to_numpy(self.full).astype(np.float64)
            local = np.ones(c.shape, dtype=bool)
            for axis in (0, 1):
                for step in (1, -1):
                    local &= c >= np.roll(c, step, axis=axis)
            dy = np.abs(_wrap_int(np.arange(n_rows) - iy, n_rows))[:, None]
            dx = np.abs(_wrap_int(np.arange(n_cols) - ix, n_cols))[None, :]
            local &= (dy > hy) | (dx > hx)
            return float(c[local].max()) if local.any() else float("nan")
        if self._coarse is None:
            return float("nan")
        coarse, lags, scale, _ = self._coarse
        flat = to_numpy(coarse).astype(np.float64) / (scale[0] * scale[1])
        ly = np.abs(_wrap_float(lags[0] - iy, n_rows))[:, None]
        lx = np.abs(_wrap_float(lags[1] - ix, n_cols))[None, :]
        local = np.ones(flat.shape, dtype=bool)
        for axis in (0, 1):
            for step in (1, -1):
                local &= flat >= np.roll(flat, step, axis=axis)
        local &= ((ly > hy) | (lx > hx)) & np.isfinite(flat)
        return float(flat[local].max()) if local.any() else float("nan")

    def sums(self) -> tuple[float, float]:
        """Σ and Σ² of the whole surface (Parseval on the half spectrum unless it is built)."""
        if self._sums is None:
            self._sums = self._compute_sums()
        return self._sums

    def _compute_sums(self) -> tuple[float, float]:
        xp = self.xp
        if self._full is not None or not self.coarse:
            flat = self.full.ravel()
            return float(flat.sum()), float(xp.dot(flat, flat))
        n_rows, n_cols = self.shape
        q = self.cross
        # Columns kx = 1..C/2-1 stand for two of the full spectrum, kx = 0 (and C/2) for one.
        once = [q[:, 0]] + ([q[:, -1]] if n_cols % 2 == 0 else [])
        power = 2.0 * float(xp.vdot(q, q).real) - sum(float(xp.vdot(c, c).real) for c in once)
        sumsq = power / (n_rows * n_cols)
        return float(q[0, 0].real), sumsq

    def integer_peak(self, max_shift) -> tuple[int, int]:
        """(row, col) index of the maximum, optionally within ±max_shift lags."""
        if not self.coarse:
            return _integer_peak(self.full, max_shift, self.xp)
        limits = None
        if max_shift is not None:
            limits = (max_shift, max_shift) if np.isscalar(max_shift) else tuple(max_shift)
            if min(limits) < 0:
                raise RegistrationError(f"max_shift must be >= 0 pixels, got {max_shift}")
        best = None
        candidates, reach = self._coarse_candidates(limits)
        for y0, x0 in candidates:
            iy, ix, value = self._climb(y0, x0, limits, reach)
            if best is None or value > best[2]:
                best = (iy, ix, value)
        n_rows, n_cols = self.shape
        return best[0] % n_rows, best[1] % n_cols

    def _coarse_candidates(self, limits, n_candidates: int = 3, keep: float = 0.5):
        """Lags (y, x) of the highest local maxima of the coarse surface (up to
        ``n_candidates``, each at least ``keep`` of the highest), and the half-width of the
        first exact block (see :meth:`_coarse_reach`).

        The eighth band is tried first (a sixteenth of the full inverse FFT); a peak it
        shows narrower than ``_EIGHTH_WIDTH`` px is searched again on the quarter band."""
        for fraction in _COARSE_BANDS:
            found = self._band_candidates(fraction, limits, n_candidates, keep)
            if found[2] >= _EIGHTH_WIDTH or fraction == _COARSE_BANDS[-1]:
                return found[0], found[1]
        raise AssertionError("unreachable")

    def _band_candidates(self, fraction, limits, n_candidates, keep):
        xp = self.xp
        n_rows, n_cols = self.shape
        r4, c4 = n_rows // fraction, n_cols // fraction
        q = self.cross
        crop = xp.concatenate([q[:r4, : c4 + 1], q[n_rows - r4 :, : c4 + 1]], axis=0)
        coarse = irfft2(crop, (2 * r4, 2 * c4), xp, self.workers)
        scale = (n_rows / (2 * r4), n_cols / (2 * c4))
        lags = [(np.fft.fftfreq(m) * m) * f for m, f in zip(coarse.shape, scale, strict=True)]
        band_power = 2.0 * float(xp.vdot(crop, crop).real) - float(xp.vdot(crop[:, 0], crop[:, 0]).real)
        self._coarse = (coarse.copy() if limits is not None else coarse, lags, scale, band_power)
        if limits is not None:  # the climb masks exactly; here only keep the window's reach
            for axis, (lag, m) in enumerate(zip(lags, limits, strict=True)):
                far = xp.asarray(np.abs(lag) > math.floor(m) + scale[axis] / 2.0)
                coarse[(far, slice(None)) if axis == 0 else (slice(None), far)] = -np.inf
        flat = coarse.ravel()
        best = int(xp.argmax(flat))
        top = float(flat[best])
        if not np.isfinite(top):
            return [(0, 0)], 3, 0.0
        # Local maxima (over 4 neighbours) that come near the highest: a single sharp peak
        # gives one candidate; competing peaks (ambiguous data) up to n_candidates.
        n_r, n_c = coarse.shape
        above = to_numpy(xp.flatnonzero(flat >= keep * top))
        if above.size > 4096:  # noise: keep the highest few thousand
            values = to_numpy(flat[xp.asarray(above)])
            above = above[np.argsort(-values)[:4096]]
        i, j = np.divmod(above, n_c)
        values = to_numpy(flat[xp.asarray(above)])
        local = np.ones(above.size, bool)
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            neighbour = ((i + di) % n_r) * n_c + (j + dj) % n_c
            local &= values >= to_numpy(flat[xp.asarray(neighbour)])
        order = np.argsort(-values[local])[:n_candidates]
        out = [
            (int(round(lags[0][a])), int(round(lags[1][b])))
            for a, b in zip(i[local][order], j[local][order], strict=True)
        ]
        reach, width = self._coarse_reach(coarse, best // n_c, best % n_c, top, scale)
        return out or [(0, 0)], reach, width

    @staticmethod
    def _coarse_reach(coarse, i, j, top, scale) -> tuple[int, float]:
        """Half-width for the first exact block: the coarse peak's FWHM plus 2 px, so that
        the block usually holds the exclusion box of the quality (half-width ceil(FWHM)) too;
        3 for a broad peak, whose box is not evaluated exactly (see :meth:`box_sums`)."""
        n_r, n_c = coarse.shape
        widths = []
        for line, centre, step in ((coarse[:, j], i, scale[0]), (coarse[i, :], j, scale[1])):
            values = to_numpy(line[np.arange(centre - 16, centre + 17) % line.shape[0]])
            below = np.flatnonzero(values < 0.5 * top)
            left = 16 - below[below < 16].max() if np.any(below < 16) else 17
            right = below[below > 16].min() - 16 if np.any(below > 16) else 17
            widths.append((left + right - 1) * step)  # between the samples that cross half
        width = max(widths)
        if width > _EXACT_BOX - 2:  # broad: its box will be summed on the coarse surface
            return 3, width
        return int(max(3, math.ceil(width) + 2)), width

    def _climb(self, y0: int, x0: int, limits, reach: int, max_moves: int = 8):
        """Integer-lag hill climb on exact DFT samples: (y, x, value) of a local maximum."""
        n_rows, n_cols = self.shape
        value = -np.inf
        for _ in range(max_moves):
            block = self.block(y0, x0, reach, reach)  # also the peak's 3 x 3 and (usually) its box
            offsets = np.arange(-reach, reach + 1)
            if limits is not None:
                ys, xs = (np.abs(_wrap_int(c + offsets, n)) > math.floor(m)
                          for c, n, m in ((y0, n_rows, limits[0]), (x0, n_cols, limits[1])))  # fmt: skip
                block[ys, :] = -np.inf
                block[:, xs] = -np.inf
            r, c = np.unravel_index(int(np.argmax(block)), block.shape)
            if not block[r, c] > value:
                break
            y0, x0, value = y0 + r - reach, x0 + c - reach, float(block[r, c])
            if 0 < r < 2 * reach and 0 < c < 2 * reach:
                break
        return y0, x0, value


def _wrap_float(lags: np.ndarray, n: int) -> np.ndarray:
    """Lags folded into [-n/2, n/2)."""
    return (np.asarray(lags, float) + n / 2.0) % n - n / 2.0


def _wrap_int(lags: np.ndarray, n: int) -> np.ndarray:
    """Integer lags folded into the signed range of :func:`_signed`."""
    m = np.mod(lags, n)
    return np.where(m > n // 2, m - n, m)


def _signed(i: int, n: int) -> int:
    return i - n if i > n // 2 else i


def _wrap(p: float, n: int) -> float:
    """Lag folded into [-n/2, n/2)."""
    return (p + n / 2.0) % n - n / 2.0


def _integer_peak(surface, max_shift, xp) -> tuple[int, int]:
    """(row, col) index of the maximum, optionally within ±max_shift lags."""
    n_rows, n_cols = surface.shape
    if max_shift is None:
        flat = int(xp.argmax(surface))
        return divmod(flat, n_cols)
    my, mx = (max_shift, max_shift) if np.isscalar(max_shift) else max_shift
    if my < 0 or mx < 0:
        raise RegistrationError(f"max_shift must be >= 0 pixels, got {max_shift}")
    rows = _lags(int(math.floor(my)), n_rows)
    cols = _lags(int(math.floor(mx)), n_cols)
    sub = surface[xp.asarray(rows)[:, None], xp.asarray(cols)[None, :]]
    r, c = divmod(int(xp.argmax(sub)), len(cols))
    return int(rows[r]), int(cols[c])


def _lags(m: int, n: int) -> np.ndarray:
    """Indices of lags -m..m on a periodic axis of length n (each once)."""
    m = min(m, (n - 1) // 2)
    return np.unique(np.arange(-m, m + 1) % n)


class _DFTKernel:
    """Evaluates the inverse DFT of a half (rfft) spectrum at arbitrary lags (y, x).

    ``c(y, x) = 1/(R C) Σ_ky Σ_kx w_kx Re[Q(ky, kx) exp(2πi (ky y / R + kx x / C))]`` with
    ``w = 1`` on the kx = 0 (and Nyquist) column and 2 elsewhere: the same values as
    irfft2, at non-integer lags, by two small matrix products. Lags are ``centre +
    step·(-reach..reach)``; the factor for the offsets is cached per (size, step, reach) and
    only the centre's phase ramp is computed per call.
    """

    def __init__(self, cross, shape, xp, window=None):
        self.q = cross
        self.xp = xp
        self.shape = shape
        self.window = window

    def _unbias(self, values, py, px, step_y, reach_y, step_x, reach_x):
        """Divide out the window's overlap at these lags (see WindowTerms.lag_gain)."""
        if self.window is None:
            return values
        ys = py + step_y * np.arange(-reach_y, reach_y + 1)
        xs = px + step_x * np.arange(-reach_x, reach_x + 1)
        gain = self.window.lag_gain(ys, xs)
        return values if gain is None else values / gain

    def ey(self, y0, step, reach):  # (2 reach + 1, rows)
        n = self.shape[0]
        base = _offset_kernel(n, n, step, reach, False, self.xp.__name__)
        return base * self.xp.asarray(_ramp(n, n, y0, False))[None, :]

    def ex(self, x0, step, reach):  # (cols//2+1, 2 reach + 1)
        n = self.shape[1]
        base = _offset_kernel(n, self.q.shape[-1], step, reach, True, self.xp.__name__)
        return base * self.xp.asarray(_ramp(n, self.q.shape[-1], x0, True))[:, None]

    def grid(self, py, px, step, reach):
        """Correlation on (py, px) + step·(-reach..reach)², numpy (2 reach + 1,)²: the
        window-corrected values (to locate the peak) and the raw ones (its height)."""
        values = to_numpy((self.ey(py, step, reach) @ self.q @ self.ex(px, step, reach)).real)
        return self._unbias(values, py, px, step, reach, step, reach), values

    def integer_block(self, iy, ix, hy, hx) -> np.ndarray:
        """Raw correlation at integer lags iy-hy..iy+hy by ix-hx..ix+hx, float64 numpy."""
        values = self.ey(float(iy), 1.0, hy) @ self.q @ self.ex(float(ix), 1.0, hx)
        return to_numpy(values.real).astype(np.float64)

    def row(self, py, px, step, reach):
        """Correlation at lag row py, columns px + step·(-reach..reach), numpy."""
        values = to_numpy((self.ey(py, 1.0, 0) @ self.q @ self.ex(px, step, reach)).real)
        return self._unbias(values, py, px, 1.0, 0, step, reach)[0]

    def col(self, py, px, step, reach):
        """Correlation at lag column px, rows py + step·(-reach..reach), numpy."""
        values = to_numpy((self.ey(py, step, reach) @ (self.q @ self.ex(px, 1.0, 0))).real)
        return self._unbias(values, py, px, step, reach, 1.0, 0)[:, 0]

    def grid_peak(self, py, px, step, reach):
        """Maximum on the grid (py, px) + step·(-reach..reach)²: (y, x, raw value, on_border)."""
        values, raw = self.grid(py, px, step, reach)
        r, c = np.unravel_index(int(np.argmax(values)), values.shape)
        border = r in (0, 2 * reach) or c in (0, 2 * reach)
        return py + step * (r - reach), px + step * (c - reach), float(raw[r, c]), border

    def climb(self, py, px, step, reach, anchor, max_moves: int = 8):
        """Grid maximum, re-centred while it sits on the grid's border (a hill climb that
        corrects a poor starting estimate), never more than 1 px from the integer peak
        ``anchor`` (so a max_shift window is respected): (y, x, raw value)."""
        best = None
        for _ in range(max_moves):
            ny, nx, value, border = self.grid_peak(py, px, step, reach)
            inside = max(abs(ny - anchor[0]), abs(nx - anchor[1])) <= 1.0
            if best is None or inside:
                py, px, best = ny, nx, value
            if not (border and inside):
                break
        return py, px, best


def _frequencies(n: int, n_half: int, half: bool) -> np.ndarray:
    """Signed integer frequencies of a full axis, or 0..n_half-1 of an rfft axis."""
    return np.arange(n_half, dtype=float) if half else np.fft.fftfreq(n) * n


@lru_cache(maxsize=64)
def _ramp(n: int, n_half: int, centre: float, half: bool) -> np.ndarray:
    """exp(2πi k centre / n) (times the rfft weights / n on a half axis), complex64.

    Cached: the refinement, the FWHM profiles and the box revisit the same centres.
    """
    k = _frequencies(n, n_half, half)
    phase = 2.0 * np.pi * np.mod(k * centre, n) / n  # mod keeps float32 phases exact
    e = np.exp(1j * phase)
    if half:
        w = np.full(k.shape, 2.0)
        w[0] = 1.0
        if n % 2 == 0:
            w[-1] = 1.0
        e *= w
    out = (e / n).astype(np.complex64)
    out.flags.writeable = False  # shared by the cache
    return out


@lru_cache(maxsize=64)
def _offset_kernel(n, n_half, step, reach, half, xp_name):
    """exp(2πi k o / n) for offsets o = step·(-reach..reach): (n_o, n) or (n_half, n_o)."""
    import importlib

    k = _frequencies(n, n_half, half)
    offsets = step * np.arange(-reach, reach + 1)
    e = np.exp(2j * np.pi * np.outer(offsets, k) / n).astype(np.complex64)
    return importlib.import_module(xp_name).asarray(e.T.copy() if half else e)


def _quality(
    surface, kernel, integer_peak, peak, peak_value, step, noise_gain, match, overlap=1.0
) -> RegistrationQuality:
    """FWHM from fine profiles (or the integer surface for broad peaks), PSR, uncertainty."""
    n_rows, n_cols = surface.shape
    iy, ix = integer_peak
    py, px = peak
    reach = round(_FWHM_REACH / _FWHM_STEP)
    half = 0.5 * peak_value
    fy = half_max_width(kernel.col(py, px, _FWHM_STEP, reach), reach, half, _FWHM_STEP)
    fx = half_max_width(kernel.row(py, px, _FWHM_STEP, reach), reach, half, _FWHM_STEP)
    if not np.isfinite(fy):  # broad peak: integer samples through the peak suffice
        col = np.roll(surface.line(0, iy, ix), n_rows // 2 - iy)
        fy = half_max_width(col, n_rows // 2, half, 1.0)
    if not np.isfinite(fx):
        row = np.roll(surface.line(1, iy, ix), n_cols // 2 - ix)
        fx = half_max_width(row, n_cols // 2, half, 1.0)
    hy = min(max(3, math.ceil(fy) if np.isfinite(fy) else n_rows), n_rows // 4)
    hx = min(max(3, math.ceil(fx) if np.isfinite(fx) else n_cols), n_cols // 4)
    box_sum, box_sq, n_box = surface.box_sums(iy, ix, hy, hx)
    total, total_sq = surface.sums()
    second = surface.second_peak(iy, ix, hy, hx)
    return assess_peak(
        peak_value,
        (fy, fx),
        total,
        total_sq,
        box_sum,
        box_sq,
        n_rows * n_cols,
        n_box,
        step,
        (n_rows, n_cols),
        noise_gain=noise_gain,
        correlation=match[0],
        noise_samples=match[1],
        second_peak=second,
        overlap=overlap,
    )


# --------------------------------------------------------------------------- shifting


def shift_image(image, shift, *, mode: str = "edge", workers: int | None = None):
    """Translate an image by a sub-pixel ``shift`` with a Fourier (band-limited) shift.

    Parameters
    ----------
    image : (rows, cols) or (..., rows, cols) real array, numpy or cupy; not modified.
    shift : (dy, dx) pixels, in the sense of ``scipy.ndimage.shift`` (content moves by +shift).
    mode : 'edge' (pad with the border values by ceil(|shift|) + 8 px before shifting, so
        nothing wraps around) or 'wrap' (periodic).
    workers : scipy.fft threads.

    Returns
    -------
    shifted : array of the same shape, float32.
    """
    xp = get_array_module(image)
    a = xp.asarray(image, dtype=xp.float32)
    if a.ndim < 2:
        raise RegistrationError(f"image must have at least 2 dimensions, got shape {a.shape}")
    dy, dx = (float(s) for s in shift)
    if mode not in ("edge", "wrap"):
        raise RegistrationError(f"mode must be 'edge' or 'wrap', got {mode!r}")
    pads = (0, 0)
    if mode == "edge":
        pads = (int(math.ceil(abs(dy))) + 8, int(math.ceil(abs(dx))) + 8)
        width = [(0, 0)] * (a.ndim - 2) + [(pads[0], pads[0]), (pads[1], pads[1])]
        a = xp.pad(a, width, mode="edge")
    n_rows, n_cols = a.shape[-2:]
    ky = np.fft.fftfreq(n_rows)[:, None]
    kx = np.fft.rfftfreq(n_cols)[None, :]
    ramp = np.exp(-2j * np.pi * (ky * dy + kx * dx))  # as scipy.ndimage.fourier_shift
    spec = rfft2(a.copy(), xp, workers) * xp.asarray(ramp.astype(np.complex64))
    out = irfft2(spec, (n_rows, n_cols), xp, workers).astype(xp.float32, copy=False)
    if mode == "edge":
        out = out[..., pads[0] : n_rows - pads[0], pads[1] : n_cols - pads[1]]
    return out
