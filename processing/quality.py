"""Quality of one registration: width and contrast of the cross-correlation peak.

A registration is only as good as its correlation peak. These figures are computed from
the correlation surface that :func:`livetomo.processing.register.register` has already
formed, so they cost a few reductions, not another FFT:

- ``fwhm_px``: full width at half maximum of the peak, pixels, along (y, x). The XRF/DPC
  source reports about 1.5 px for DPC and 25 px for zinc fluorescence at 3 ms dwell.
- ``psr``: peak-to-sidelobe ratio, ``(peak - mean) / std`` of the surface outside an
  exclusion box around the peak (box half-width ``max(3, ceil(FWHM))`` px per axis).
- ``score``: ``psr / sqrt(2 ln n)`` with ``n`` the number of correlation samples. The
  largest of ``n`` independent unit Gaussians is close to ``sqrt(2 ln n)``, so two images of
  pure noise give a score near (a little below) 1 whatever their size; a real match is far
  above it.
- ``correlation``: the correlation coefficient at the peak, ``c(p) / sqrt(E_ref E_mov)``
  of the preprocessed (windowed, band-passed) images: 1 for identical images, about
  ``S / (S + N)`` for signal S under independent noise N in each image.
- ``uncertainty_px``: estimated 1-sigma error of the shift, pixels, along (y, x): for two
  images of one signal under white noise the Cramér–Rao bound of a translation is
  ``σ² = 2 σ_n² / Σ(∂s/∂x)²``; with the peak curvature ``c(p) / s²`` (s = FWHM / 2.3548)
  and ``σ_n² = c(p) (1 − ρ) / (ρ n)`` this is ``s · sqrt(2 (1 − ρ) / (ρ n))``, n the
  effective number of independent noise samples (window- and band-weighted pixels). Near
  the detection threshold a peak-picking estimator leaves the Cramér–Rao bound (the peak
  can sit on a noise bump beside the true one), so this term grows as
  ``sqrt(1 + (3 / z)²)`` with z the peak's significance against white noise
  (``ρ sqrt(n) / sqrt(2 ln n)``: about 1 where noise alone could have made the peak).
  Two small bias terms follow the peak width (what the window and the field's edges
  change), and a floor of one upsampled-grid step over sqrt(12) (the rounding of the grid
  search); all in quadrature. Anything that makes the images differ besides the shift
  (parallax, deformation) lowers ρ and raises the estimate.
- ``ok``: the shift can be trusted to about a pixel. All of:

  - *significant against the content*: ``score >= MIN_SCORE`` (the peak stands above the
    surface's own sidelobes) or the correlation beats what unrelated content of this
    feature size reaches by chance (``ρ sqrt(n_f) / sqrt(2 ln n_f) >= 1``, n_f the number
    of peak-sized patches in the windowed field);
  - *significant against noise*: the chance that white noise alone peaks this high
    anywhere on the surface is below 1 % (``z >= sqrt(1 + ln(100) / ln n)``, the Gaussian
    tail bound over n samples);
  - *unique*: the peak exceeds the runner-up local maximum by ``MIN_PEAK_RATIO``;
  - *supported*: at the found lag the two windows still overlap by at least half of their
    weight (``MIN_OVERLAP``); beyond, the match rests on a corner of each field and the
    window correction that undoes the overlap's fall-off multiplies chance correlation;
  - *precise*: the stated uncertainty is at most ``OK_UNCERTAINTY_PX`` on both axes (a
    featureless axis, whose peak never falls to half, has an infinite one).

  When ``ok`` is False the uncertainty is set to infinity. ``livetomo bench align`` part
  (f) measures both against known shifts on 14 kinds of content (docs/alignment.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
MIN_SCORE = 1.6  # pure noise scores about 0.85 +- 0.1 (measured: tests/test_register.py)
SIGNIFICANCE = 1.0  # the same threshold for the peak's correlation against chance correlation
NOISE_FALSE_ALARM = 0.01  # accepted chance that white noise alone makes a peak this high
WINDOW_AREA = 0.375**2 * 4  # effective share of the field under a 2-D Hann window (0.375 per axis)
MIN_PEAK_RATIO = 1.2  # peak over the runner-up local maximum: below, the match is ambiguous
MIN_OVERLAP = 0.5  # share of the window weight that must overlap at the found lag
OK_UNCERTAINTY_PX = 1.0  # a registration is trusted when its stated 1-sigma error is within this
NOISE_CALIBRATION = 1.5  # factor on the Cramér–Rao term (livetomo bench align, quality part)
BREADTH_BIAS = 0.01  # px of bias per px² of FWHM over the field length (same benchmark)
CONTENT_BIAS = 0.01  # px of bias per px of FWHM (same benchmark)
LOW_SNR = 3.0  # noise significance below which the noise term leaves the Cramér–Rao bound


@dataclass(frozen=True)
class RegistrationQuality:
    """How far a registration can be trusted (see the module docstring for definitions).

    Attributes
    ----------
    fwhm_px : (y, x) full width at half maximum of the correlation peak, pixels
        (``nan`` when the surface has no positive peak).
    psr : peak-to-sidelobe ratio, dimensionless.
    score : psr / sqrt(2 ln n_samples); about 0.85 for pure noise.
    uncertainty_px : (y, x) estimated 1-sigma shift error, pixels; ``inf`` when not ok.
    ok : True when the registration is trustworthy.
    correlation : correlation coefficient at the peak (see the module docstring).
    """

    fwhm_px: tuple[float, float]
    psr: float
    score: float
    uncertainty_px: tuple[float, float]
    ok: bool
    correlation: float = float("nan")
    peak_ratio: float = float("nan")

    def as_dict(self) -> dict:
        """Plain floats and bools, for JSON/msgpack publishing."""
        return asdict(self)


def failed_quality() -> RegistrationQuality:
    """The quality of a registration that could not be made (featureless input)."""
    nan, inf = float("nan"), float("inf")
    return RegistrationQuality((nan, nan), 0.0, 0.0, (inf, inf), False, nan, nan)


def half_max_width(profile, centre: float, level: float, step: float) -> float:
    """Width between the two crossings of ``level`` around ``centre``, linear interpolation.

    Parameters
    ----------
    profile : 1-D array (numpy), samples ``step`` apart.
    centre : index (float) of the peak inside ``profile``.
    level : the half-maximum value.
    step : sample spacing, pixels.

    Returns
    -------
    width : pixels, or ``nan`` when the profile does not fall below ``level`` on both sides.
    """
    p = np.asarray(profile, dtype=float)
    i0 = int(round(centre))
    below = np.flatnonzero(p[:i0] < level)
    above = np.flatnonzero(p[i0 + 1 :] < level)
    if below.size == 0 or above.size == 0:
        return float("nan")
    lo = below[-1]  # p[lo] < level <= p[lo + 1]
    hi = i0 + 1 + above[0]  # p[hi - 1] >= level > p[hi]
    left = lo + (level - p[lo]) / (p[lo + 1] - p[lo])
    right = hi - 1 + (p[hi - 1] - level) / (p[hi - 1] - p[hi])
    return float((right - left) * step)


def assess_peak(
    peak: float,
    fwhm_px: tuple[float, float],
    sum_all: float,
    sumsq_all: float,
    sum_box: float,
    sumsq_box: float,
    n_all: int,
    n_box: int,
    grid_step: float,
    shape: tuple[int, int],
    *,
    noise_gain: float = 1.0,
    correlation: float = float("nan"),
    noise_samples: float = 1.0,
    min_score: float = MIN_SCORE,
    second_peak: float = float("nan"),
    overlap: float = 1.0,
) -> RegistrationQuality:
    """Build the quality record from the peak, the sidelobe sums and the runner-up peak.

    Parameters
    ----------
    peak : correlation maximum (refined).
    fwhm_px : (y, x) peak widths, pixels.
    sum_all, sumsq_all : sum and sum of squares of the whole correlation surface.
    sum_box, sumsq_box : the same over the exclusion box around the peak.
    n_all, n_box : numbers of samples of the surface and of the box.
    grid_step : step of the final upsampled grid, pixels.
    shape : (rows, cols) of the correlation surface.
    noise_gain : noise std at the peak's lag over the average noise std of the surface
        (windowing makes the correlation of noise larger near zero lag); divides the PSR.
    correlation : correlation coefficient ρ at the peak.
    noise_samples : effective number of independent noise samples n.
    min_score : significance threshold (see the module docstring).
    second_peak : the highest local maximum outside the exclusion box (NaN: none known).
    overlap : the windows' overlap at the found lag over their overlap at zero lag (1 for
        no window); with a second, content-following pass, that of the first pass's lag.
    """
    n_side = n_all - n_box
    if not (peak > 0.0) or n_side < 2:
        return failed_quality()
    mean = (sum_all - sum_box) / n_side
    var = max((sumsq_all - sumsq_box) / n_side - mean * mean, 0.0)
    if var <= 0.0:
        return failed_quality()
    psr = (peak - mean) / (math.sqrt(var) * noise_gain)
    score = psr / math.sqrt(2.0 * math.log(max(n_all, 3)))
    fy, fx = (float(f) for f in fwhm_px)
    rho = min(max(float(correlation), 1e-6), 1.0) if math.isfinite(correlation) else 1e-6
    n = max(noise_samples, 1.0)
    # Significance against noise alone: the largest of n_all chance correlations of white
    # noise is about sqrt(2 ln n_all / n); the surface's own sidelobes (score) are the other
    # test, which structured images with broad autocorrelations fail even when they match.
    # Chance correlation of unrelated content is not white: it fluctuates on the scale of the
    # features, so the independent samples are the field over the peak's area, not the pixels.
    area = math.pi / 4.0 * (fy if np.isfinite(fy) else shape[0]) * (fx if np.isfinite(fx) else shape[1])
    n_features = min(n, max(n_all * WINDOW_AREA / max(area, 1.0), 2.0))
    significance = rho * math.sqrt(n_features) / math.sqrt(2.0 * math.log(max(n_features, 3.0)))
    against_content = score >= min_score or significance >= SIGNIFICANCE
    # White noise: P(max of n unit Gaussians > t) <= n Q(t) ~ exp(-t²/2) n, so a false-alarm
    # rate α needs t = sqrt(2 ln(n / α)), i.e. z >= sqrt(1 + ln(1/α) / ln n).
    z = noise_significance(rho, n)
    against_noise = z >= math.sqrt(1.0 + math.log(1.0 / NOISE_FALSE_ALARM) / math.log(max(n, 3.0)))
    ratio = peak / second_peak if math.isfinite(second_peak) and second_peak > 0.0 else float("inf")
    unique = ratio >= MIN_PEAK_RATIO
    supported = not overlap < MIN_OVERLAP
    unc = uncertainty(fwhm_px, rho, n, grid_step, shape, significance=z)
    ok = bool(against_content and against_noise and unique and supported and max(unc) <= OK_UNCERTAINTY_PX)
    if not ok:
        unc = (float("inf"), float("inf"))
    return RegistrationQuality((fy, fx), float(psr), float(score), unc, ok, float(rho), float(ratio))


def noise_significance(rho: float, noise_samples: float) -> float:
    """Correlation ρ at the peak over the largest chance correlation of white noise,
    ``ρ sqrt(n) / sqrt(2 ln n)`` (n the effective number of noise samples)."""
    n = max(noise_samples, 3.0)
    return rho * math.sqrt(n) / math.sqrt(2.0 * math.log(n))


def uncertainty(
    fwhm_px, rho: float, noise_samples: float, grid_step: float, shape, *, significance: float = np.inf
) -> tuple[float, float]:
    """Stated 1-sigma shift error per axis (see the module docstring), pixels."""
    floor = grid_step / math.sqrt(12.0)
    spread = math.sqrt(2.0 * (1.0 - rho) / (rho * max(noise_samples, 1.0)))
    # Below a few times the chance level of white noise the Cramér–Rao bound is not reached
    # (the peak may sit on a noise bump next to the true one): the noise term grows.
    spread *= math.sqrt(1.0 + (LOW_SNR / max(significance, 1e-6)) ** 2)
    out = []
    for f, length in zip(fwhm_px, shape, strict=True):
        if not np.isfinite(f):
            out.append(float("inf"))
            continue
        noise = NOISE_CALIBRATION * f / FWHM_PER_SIGMA * spread
        breadth = BREADTH_BIAS * f * f / length  # windowed, gradient-dominated content: a biased peak
        content = CONTENT_BIAS * f  # window and edges change what is compared: a small bias
        out.append(math.sqrt(noise * noise + breadth * breadth + content * content + floor * floor))
    return out[0], out[1]
