"""Bluesky plans for livetomo: generators taking devices, checked before anything moves."""

from .correlative import correlative_acquire
from .milling import MillingError, mill_lamella
from .recipes import MillingRecipe, MillingStage, RecipeError, bundled_recipes, load_recipe, recipe_names
from .tilt import tilt_series
from .tilt_order import tilt_order
from .tomo import tomo_scan, xray_dose_gy, xrf_dpc_tomo

PLANS = {
    "tomo_scan": tomo_scan,
    "xrf_dpc_tomo": xrf_dpc_tomo,
    "tilt_series": tilt_series,
    "mill_lamella": mill_lamella,
    "correlative_acquire": correlative_acquire,
}

__all__ = [
    "PLANS",
    "MillingError",
    "MillingRecipe",
    "MillingStage",
    "RecipeError",
    "bundled_recipes",
    "correlative_acquire",
    "load_recipe",
    "mill_lamella",
    "recipe_names",
    "tilt_order",
    "tilt_series",
    "tomo_scan",
    "xray_dose_gy",
    "xrf_dpc_tomo",
]
