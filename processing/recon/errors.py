"""Errors of reconstruction; each message says what was wrong and what is allowed."""

from __future__ import annotations


class ReconstructionError(ValueError):
    """Base of every reconstruction error (bad shape, option, angle set, ...)."""


class NonFiniteProjectionError(ReconstructionError):
    """A projection holds NaN or infinite values; it is rejected, the volume is left as it was."""


class UnknownProjectionError(ReconstructionError, KeyError):
    """A projection key that the reconstructor has not received (or has removed)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
