"""Errors of correlative registration; each says what was wrong and what is allowed."""

from __future__ import annotations


class CorrelationError(ValueError):
    """Base of every correlative-registration error."""


class TooFewBeadsError(CorrelationError):
    """Fewer fiducial beads (detected or matched) than the transform model needs."""


class BeadMatchingError(CorrelationError):
    """The bead sets of the two modalities could not be matched consistently."""


class RegistrationError(CorrelationError):
    """Intensity-based registration could not be carried out (bad stacks, no overlap)."""
