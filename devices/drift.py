"""Where the specimen would be at the next tilt without correction: eucentric error and drift.

The model of tracking in a tilt series (as PACEtomo's): between two exposures the specimen
moves by ``e·(sin α_b − sin α_a)`` (its height off the eucentric point, ``e`` per camera axis,
so any in-plane tilt-axis angle fits) plus ``r·(k_b − k_a)`` (steady drift per exposure, k the
acquisition index). Fitting the *differences* of consecutive measurements, not the positions,
makes the stage's random walk an independent error per step instead of a correlated one, and
predicting from the last position keeps what the walk did so far. ``e`` is seeded by the first
tilts: after 0, 3 and 6 degrees it is not yet separable from ``r`` (both grow alike), but then
neither does the prediction need it (the next step grows alike too); the first tilt on the
other side separates them, and its own prediction is off by about ``0.21 e`` for 3° steps (the
step from 6° to −3° is ``r − e·(sin 6° + sin 3°)``, predicted as the earlier ``r + e·sin 3°``:
nothing measured before it can tell).
"""

from __future__ import annotations

import numpy as np

HALF_LIFE = 12.0  # exposures: older steps count less, so a drift that slows down is followed
# Directions of (e, r) the steps so far barely see are left out (truncated least squares): after
# 0, 3 and 6 deg the two columns differ by 2e-4, and an unregularised fit amplifies the
# measurement noise into a wild e (hundreds of nm at the first tilt on the other side).
RCOND = 0.05


def predict_uncorrected(seqs, angles_deg, positions, next_seq: int, next_angle_deg: float):
    """The uncorrected position ``(2,)`` at exposure ``next_seq`` (same units as ``positions``),
    or None without any position.

    ``seqs`` acquisition indices, ``angles_deg`` their tilts, ``positions`` (n, 2) where the
    specimen would have been without correction (measured shift less the correction in place).
    """
    seqs = np.asarray(seqs, dtype=float)
    if seqs.size == 0:
        return None
    order = np.argsort(seqs)
    k = seqs[order]
    s = np.sin(np.deg2rad(np.asarray(angles_deg, dtype=float)[order]))
    u = np.asarray(positions, dtype=float).reshape(-1, 2)[order]
    last = u[-1]
    if k.size < 2:
        return last.copy()
    design = np.stack([np.diff(s), np.diff(k)], axis=1)
    weight = np.sqrt(0.5 ** ((k[-1] - k[1:]) / HALF_LIFE))[:, None]
    coef, *_ = np.linalg.lstsq(design * weight, np.diff(u, axis=0) * weight, rcond=RCOND)
    step = np.array([np.sin(np.deg2rad(next_angle_deg)) - s[-1], next_seq - k[-1]])
    return last + step @ coef


def predict_runout(seqs, angles_deg, positions, next_seq: int, next_angle_deg: float):
    """A rotation stage's runout at ``next_angle_deg``: per axis a constant and the first and
    second harmonics of the angle (``RotationStageModel``'s wobble), fitted to the positions so
    far (the jitter is independent per move, so positions, not steps, are fitted); as many
    harmonics as the points allow (three per harmonic pair and the constant), the last position
    with fewer than three. ``next_seq`` is unused (runout depends on the angle only)."""
    angles = np.deg2rad(np.asarray(angles_deg, dtype=float))
    u = np.asarray(positions, dtype=float).reshape(-1, 2)
    if u.shape[0] == 0:
        return None
    if u.shape[0] < 3:
        return u[-1].copy()
    harmonics = 2 if u.shape[0] >= 9 else 1

    def basis(t):
        t = np.atleast_1d(t)
        cols = [np.ones_like(t)]
        for h in range(1, harmonics + 1):
            cols += [np.cos(h * t), np.sin(h * t)]
        return np.stack(cols, axis=1)

    # no truncation here: over part of the turn the harmonics are ill-conditioned but distinct,
    # and cutting them (RCOND) biased the next angle's prediction by up to 1.7 px in a test
    coef, *_ = np.linalg.lstsq(basis(angles), u, rcond=1e-6)
    return (basis(np.deg2rad(next_angle_deg)) @ coef)[0]
