"""Turn each detector channel into line-integral projections for reconstruction.

The reconstructors are channel-agnostic: they back-project whatever is (approximately) a
line integral of a volume property. These helpers make each channel one:

- XRF element maps (counts in an element's window) are already proportional to the
  projected areal mass; :func:`normalized_counts` divides out dead time and incident flux.
- DPC phase: :func:`phase_from_dpc` integrates the two differential-phase signals
  (Fourier integration, ``livetomo.processing.dpc.integrate_gradients``) into the phase
  φ = -(2π/λ)∫δ dl, with a background level that is the same at every angle.
- SXT (and any absorption image): :func:`absorption_from_transmission` gives ∫μ dl =
  -ln(I / I0).
- K3 tilt series: :func:`contrast_from_counts` gives the relative (phase) contrast
  1 - I/⟨I⟩ of a counted frame, which is proportional to the projected excess potential
  within the contrast transfer function's first passband.

All take numpy or cupy arrays (the module is inferred) and never modify their input.
"""

from __future__ import annotations

import numpy as np

from ..arrays import get_array_module
from ..dpc import integrate_gradients
from .errors import ReconstructionError


def normalized_counts(counts, *, live_fraction=None, reference=None):
    """XRF element counts per unit live time and incident flux.

    Parameters
    ----------
    counts : array (rows, cols), counts in an element's window.
    live_fraction : optional array or scalar in (0, 1], detector live time fraction.
    reference : optional array or scalar, incident flux (e.g. ion-chamber counts) relative to
        its nominal value.

    Returns
    -------
    projection : float32 array (rows, cols).
    """
    xp = get_array_module(counts)
    out = xp.asarray(counts, dtype=xp.float32)
    for name, factor in (("live_fraction", live_fraction), ("reference", reference)):
        if factor is not None:
            f = xp.asarray(factor, dtype=xp.float32)
            if bool(xp.any(f <= 0)):
                raise ReconstructionError(f"{name} must be > 0 everywhere")
            out = out / f
    return out


def phase_from_dpc(horizontal, vertical, *, sensitivity: float, background: str = "edge", pad: int = 16):
    """Phase projection (rad) from horizontal and vertical DPC signals.

    Parameters
    ----------
    horizontal, vertical : arrays (rows z, cols u), difference-over-sum signals of the
        segmented detector (``livetomo.processing.dpc.dpc_from_segments``).
    sensitivity : κ, difference-over-sum per rad/pixel of phase gradient (> 0).
    background : "edge": the phase is offset so the median of the first and last two
        columns is 0 (the field edges see the same material, or vacuum, at every angle, so
        all projections share one baseline); "mean": zero mean (as integrated).
    pad : reflect padding of the Fourier integration, pixels.

    Returns
    -------
    phase : float32 array (rows, cols), rad.
    """
    if not sensitivity > 0:
        raise ReconstructionError(
            f"sensitivity must be > 0 (difference-over-sum per rad/pixel), got {sensitivity}"
        )
    if background not in ("edge", "mean"):
        raise ReconstructionError(f"background must be 'edge' or 'mean', got {background!r}")
    xp = get_array_module(horizontal, vertical)
    gx = xp.asarray(horizontal, dtype=xp.float32) / np.float32(sensitivity)
    gy = xp.asarray(vertical, dtype=xp.float32) / np.float32(sensitivity)
    if gx.shape != gy.shape or gx.ndim != 2:
        raise ReconstructionError(
            f"horizontal and vertical must be 2-D of one shape, got {gx.shape}, {gy.shape}"
        )
    phase = integrate_gradients(gy, gx, pad=pad)
    if background == "edge":
        edge = xp.concatenate([phase[:, :2].ravel(), phase[:, -2:].ravel()])
        phase = phase - xp.median(edge)
    return phase.astype(xp.float32)


def absorption_from_transmission(intensity, flat=1.0, *, dark=0.0, floor: float = 1e-6):
    """Line integral of the attenuation, -ln((I - dark) / (flat - dark)).

    Parameters
    ----------
    intensity : array (rows, cols), transmitted intensity or counts.
    flat : incident intensity (flat field), scalar or array of the same shape.
    dark : dark level, scalar or array.
    floor : smallest transmission used (zero-count pixels would give infinity).

    Returns
    -------
    projection : float32 array (rows, cols), dimensionless (μ × length).
    """
    xp = get_array_module(intensity)
    i = xp.asarray(intensity, dtype=xp.float32) - xp.asarray(dark, dtype=xp.float32)
    i0 = xp.asarray(flat, dtype=xp.float32) - xp.asarray(dark, dtype=xp.float32)
    if bool(xp.any(i0 <= 0)):
        raise ReconstructionError("flat must exceed dark everywhere (incident intensity > 0)")
    return (-xp.log(xp.maximum(i / i0, np.float32(floor)))).astype(xp.float32)


def contrast_from_counts(counts, *, mean=None):
    """Relative contrast 1 - I / ⟨I⟩ of a counted frame (K3), positive where the specimen scatters.

    Parameters
    ----------
    counts : array (rows, cols), electrons per pixel.
    mean : reference level ⟨I⟩ (e.g. dose × pixel area × zero-loss transmission); default
        the frame's mean, which also divides out the 1/cos(tilt) loss of a tilted slab.

    Returns
    -------
    contrast : float32 array (rows, cols), dimensionless.
    """
    xp = get_array_module(counts)
    c = xp.asarray(counts, dtype=xp.float32)
    m = float(xp.mean(c)) if mean is None else float(mean)
    if not m > 0:
        raise ReconstructionError(f"the reference level must be > 0 electrons per pixel, got {m}")
    return (1.0 - c / np.float32(m)).astype(xp.float32)
