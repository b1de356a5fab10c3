"""Per-projection weights of a weighted back-projection.

Two factors multiply each projection's filtered back-projection:

- the angular-spacing weight ``Δθ_k`` (radians): a back-projection approximates the integral
  over the half-turn ∫_0^π dθ by a sum, so each projection stands for the arc of directions
  closer to it than to its neighbours. For uniform sets this is π/N; for non-uniform sets
  (dose-symmetric tilt orders, golden-angle interlacing, repeated angles) it follows the
  local spacing, and a missing wedge is *not* filled by inflating the weights of the
  projections at its edges (gaps much wider than the typical spacing count as one typical
  step). Directions are taken modulo 180°, so 0° and 180° are the same direction and a
  full 360° scan is weighted correctly.
- the tilt weight ``w_k = cos α_k / (1 + λ sin² α_k)`` of the cryo-FIB/K3 source (weighted
  back-projection of a tilt series, α the tilt angle): it is 1 at zero tilt and
  down-weights high tilts, whose projections cross a slab obliquely (longer path, fewer
  zero-loss electrons, lower SNR). It is not normalised, so the grey scale at low tilt is
  that of plain FBP.
"""

from __future__ import annotations

import numpy as np

from .errors import ReconstructionError


def _as_angles(angles_deg) -> np.ndarray:
    a = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64)).ravel()
    if a.size == 0:
        raise ReconstructionError("angles_deg is empty; at least one angle (degrees) is needed")
    if not np.all(np.isfinite(a)):
        raise ReconstructionError(f"angles_deg must be finite degrees, got {a[~np.isfinite(a)][:3]}")
    return a


def angular_weights(angles_deg, *, max_gap_factor: float = 6.0) -> np.ndarray:
    """Angular-spacing weight Δθ_k of every projection, radians.

    Parameters
    ----------
    angles_deg : sequence of N rotation angles, degrees, in any order (acquisition order is
        fine), any range; directions are compared modulo 180°.
    max_gap_factor : a gap between neighbouring directions wider than this many typical
        (median) gaps is treated as missing data (a missing wedge, or the unmeasured part of
        a scan in progress) and counts as one typical gap. The default 6 leaves golden-angle
        and moderately uneven sets alone (gap ratios up to about 3) and catches wedges (a
        ±60° series in 2° steps has a 30x gap).

    Returns
    -------
    weights : ndarray, shape (N,), float64, radians. Each projection gets half the gap to its
        lower neighbour plus half the gap to its upper neighbour (circularly over 180°);
        projections at the same direction share their arc. For N uniform angles over 180°
        every weight is π/N and they sum to π.
    """
    a = _as_angles(angles_deg)
    if not max_gap_factor >= 1.0:
        raise ReconstructionError(f"max_gap_factor must be >= 1, got {max_gap_factor}")
    d = np.mod(a, 180.0)
    order = np.argsort(d, kind="stable")
    s = d[order]
    gaps = np.diff(np.append(s, s[0] + 180.0))  # gap above each sorted direction, circular
    positive = gaps[gaps > 1e-9]
    typical = float(np.median(positive)) if positive.size else 180.0
    gaps = np.where(gaps > max_gap_factor * typical, typical, gaps)
    w_sorted = 0.5 * (gaps + np.roll(gaps, 1))
    weights = np.empty_like(w_sorted)
    weights[order] = w_sorted
    return np.deg2rad(weights)


def tilt_weights(angles_deg, lam: float) -> np.ndarray:
    """Tilt weights ``cos α / (1 + λ sin² α)`` of a tilt series.

    Parameters
    ----------
    angles_deg : sequence of N tilt angles α, degrees, each within (-90, 90) (0 = untilted,
        the beam along y of the volume).
    lam : λ >= 0, dimensionless; 0 gives plain cosine weighting, larger values damp high
        tilts more.

    Returns
    -------
    weights : ndarray, shape (N,), float64, in (0, 1], equal to 1 at zero tilt.
    """
    a = _as_angles(angles_deg)
    if not (np.isfinite(lam) and lam >= 0):
        raise ReconstructionError(f"tilt weighting lambda must be a finite number >= 0, got {lam}")
    if np.any(np.abs(a) >= 90.0):
        bad = a[np.abs(a) >= 90.0][:3]
        raise ReconstructionError(
            f"tilt weights need tilt angles within (-90, 90) degrees, got {bad}; "
            "use tilt_lambda=None for rotation scans"
        )
    r = np.deg2rad(a)
    return np.cos(r) / (1.0 + lam * np.sin(r) ** 2)


def normalised_tilt_weights(angles_deg, lam: float, dtheta=None) -> np.ndarray:
    """Tilt weights scaled to keep the reconstruction's gain: ``Σ Δθ_k w_k = Σ Δθ_k``.

    The source's ``w_k = cos α_k / (1 + λ sin² α_k)`` is 1 at zero tilt and smaller elsewhere,
    so applied as is it scales the whole volume down by their Δθ-weighted mean (0.82 for
    λ = 0 over ±60°, 0.59 for λ = 2): part of the RMSE they added in ``livetomo bench recon``
    was that scale, not their shape (docs/reconstruction.md). ``dtheta``: the angular weights
    the tilt weights multiply (default :func:`angular_weights` of the angles).
    """
    w = tilt_weights(angles_deg, lam)
    d = angular_weights(angles_deg) if dtheta is None else np.asarray(dtheta, dtype=np.float64)
    total = float(np.sum(d * w))
    return w * (float(np.sum(d)) / total) if total > 0 else w


def directions_per_half_turn(angles_deg) -> float:
    """How densely the angles sample directions: π over the typical (median) angular gap.

    Parameters
    ----------
    angles_deg : sequence of N angles, degrees, any order and range (modulo 180°).

    Returns
    -------
    n_eff : float, the number of uniformly spaced directions over 180° with the same typical
        spacing. N for N uniform angles over 180° (and for 2N over 360°: a direction measured
        twice adds no new one); 90 for a ±60° tilt series in 2° steps (the wedge is missing
        data, not coarser sampling).
    """
    a = _as_angles(angles_deg)
    s = np.sort(np.mod(a, 180.0))
    gaps = np.diff(np.append(s, s[0] + 180.0))
    positive = gaps[gaps > 1e-9]
    return 180.0 / float(np.median(positive)) if positive.size else 1.0
