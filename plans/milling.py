"""Cryo-FIB lamella milling by recipe, each stage stopped on the EELS thickness."""

from __future__ import annotations

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp

from ..devices.base import ParameterError
from .recipes import MillingRecipe, MillingStage, RecipeError, load_recipe
from .tomo import _metadata


class MillingError(RuntimeError):
    """A stage did not reach its target thickness within its time limit."""


def check_recipe(fib, recipe: MillingRecipe) -> None:
    """Every stage's current is offered and its angle within limits (before anything moves)."""
    for stage in recipe.stages:
        try:
            fib.current.check(stage.current_A)
            fib.angle.check(stage.angle_deg)
        except ParameterError as exc:
            raise RecipeError(f"stage {stage.name!r}: {exc}") from exc


def _next_chunk_s(remaining_nm: float, rate_nm_per_s: float, time_left_s: float) -> float:
    # Aim for 70 % of the remaining material so noise in the rate never overshoots the target.
    return float(np.clip(0.7 * remaining_nm / rate_nm_per_s, 0.5, max(time_left_s, 0.5)))


def _measure(readings, stream: str, eels_name: str):
    """Trigger and read everything into ``stream``; return the EELS thickness (nm)."""
    values = yield from bps.trigger_and_read(readings, name=stream)
    return values[f"{eels_name}_thickness"]["value"]


def _mill_stage(fib, stage: MillingStage):
    readings = [fib.eels, fib.current, fib.angle, fib.pattern]
    yield from bps.mv(fib.current, stage.current_A, fib.angle, stage.angle_deg)
    thickness = yield from _measure(readings, stage.name, fib.eels.name)
    rate = fib.nominal_thinning_rate_nm_per_s(fib.current.check(stage.current_A))
    spent = 0.0
    while thickness - stage.target_thickness_nm > stage.tolerance_nm:
        if spent >= stage.max_time_s:
            raise MillingError(
                f"stage {stage.name!r} did not reach {stage.target_thickness_nm:g} nm in "
                f"{stage.max_time_s:g} s; EELS reads {thickness:.0f} nm"
            )
        chunk = _next_chunk_s(thickness - stage.target_thickness_nm, rate, stage.max_time_s - spent)
        yield from bps.checkpoint()
        yield from bps.mv(fib.pattern, chunk)
        spent += chunk
        new_thickness = yield from _measure(readings, stage.name, fib.eels.name)
        if thickness - new_thickness > 0:
            rate = (thickness - new_thickness) / chunk  # the measured rate beats the calibration
        thickness = new_thickness


def mill_lamella(fib, recipe: str | dict, *, md: dict | None = None):
    """Thin a lamella through the recipe's stages (rough → fine → polish).

    ``recipe`` is a bundled recipe's name (``"standard_lamella"``), a YAML path or string,
    or a mapping. Each stage sets current and angle, then mills in chunks sized from the
    measured thinning rate and stops when EELS reads the target thickness (within the
    stage's tolerance). One event stream per stage, named after it.
    """
    recipe = load_recipe(recipe)
    check_recipe(fib, recipe)
    md = _metadata(
        md,
        plan_name="mill_lamella",
        livetomo_method="cryo-fib",
        recipe=recipe.name,
        stages=[stage.name for stage in recipe.stages],
        targets_nm=[stage.target_thickness_nm for stage in recipe.stages],
        tolerances_nm=[stage.tolerance_nm for stage in recipe.stages],
    )

    @bpp.run_decorator(md=md)
    def inner():
        for stage in recipe.stages:
            yield from _mill_stage(fib, stage)

    return (yield from inner())
