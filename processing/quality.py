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
  effective number of independent noise samples (window- and band-weighted pixels). A
  floor of one upsampled-grid step over sqrt(12) is added (the rounding of the grid
  search). Anything that makes the images differ besides the shift (parallax, deformation)
  lowers ρ and raises the estimate. The tests check that it follows the real error of
  simulated registrations within a small factor.
- ``ok``: ``score >= min_score`` and a peak narrower than half the field: featureless or
  all-noise input is flagged here instead of being returned as a confident shift. When
  ``ok`` is False the uncertainty is set to infinity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
MIN_SCORE = 1.6  # pure noise scores about 0.85 +- 0.1 (measured: tests/test_register.py)


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

    def as_dict(self) -> dict:
        """Plain floats and bools, for JSON/msgpack publishing."""
        return asdict(self)


def failed_quality() -> RegistrationQuality:
    """The quality of a registration that could not be made (featureless input)."""
    nan, inf = float("nan"), float("inf")
    return RegistrationQuality((nan, nan), 0.0, 0.0, (inf, inf), False)


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
) -> RegistrationQuality:
    """Build the quality record from the peak and the sidelobe sums.

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
    min_score : threshold of ``ok``.
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
    narrow = all(np.isfinite(f) and f < 0.5 * n for f, n in zip((fy, fx), shape, strict=True))
    ok = bool(score >= min_score and narrow)
    rho = min(max(float(correlation), 1e-6), 1.0) if math.isfinite(correlation) else 1e-6
    if ok:
        floor = grid_step / math.sqrt(12.0)
        spread = math.sqrt(2.0 * (1.0 - rho) / (rho * max(noise_samples, 1.0)))
        unc = tuple(math.hypot(f / FWHM_PER_SIGMA * spread, floor) for f in (fy, fx))
    else:
        unc = (float("inf"), float("inf"))
    return RegistrationQuality((fy, fx), float(psr), float(score), unc, ok, float(rho))
