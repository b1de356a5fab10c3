"""Correlative acquisition: a cryo soft X-ray projection and a cryo-FM image of one region."""

from __future__ import annotations

from bluesky import plans as bp

from .tomo import _metadata


def correlative_acquire(sxt, fm, *, md: dict | None = None):
    """One event holding an SXT projection and an FM image of the same grid region."""
    md = _metadata(md, plan_name="correlative_acquire", livetomo_method="correlative-sxt-fm")
    return (yield from bp.count([sxt, fm], num=1, md=md))
