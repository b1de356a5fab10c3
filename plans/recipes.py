"""Milling recipes: YAML files of staged FIB milling (rough → fine → polish), validated."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from ..devices.base import ParameterError

_CURRENT = re.compile(r"^\s*([0-9.eE+-]+)\s*(pA|nA|uA|µA|A)\s*$")
_SCALE = {"pA": 1e-12, "nA": 1e-9, "uA": 1e-6, "µA": 1e-6, "A": 1.0}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a recipe name, never a path
_STAGE_KEYS = {"name", "current", "target_thickness_nm", "angle_deg", "max_time_s", "tolerance_nm"}


class RecipeError(ParameterError):
    """A milling recipe is malformed; the message names the stage and the field."""


def parse_current(value, where: str) -> float:
    """A current in A from a number (amperes) or a string such as '0.74 nA' or '20 pA'."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _CURRENT.match(str(value))
    if not match:
        raise RecipeError(f"{where}: current {value!r} is not a number of A, pA, nA or uA (e.g. '0.74 nA')")
    return float(match.group(1)) * _SCALE[match.group(2)]


@dataclass(frozen=True)
class MillingStage:
    """One stage: mill at ``current_A`` and ``angle_deg`` until EELS reads ``target_thickness_nm``."""

    name: str
    current_A: float
    target_thickness_nm: float
    angle_deg: float
    max_time_s: float = 1800.0
    tolerance_nm: float = 10.0


@dataclass(frozen=True)
class MillingRecipe:
    name: str
    stages: tuple[MillingStage, ...]


def _number(stage: Mapping, key: str, where: str, default=None) -> float:
    value = stage.get(key, default)
    if value is None:
        raise RecipeError(f"{where}: missing required field {key!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecipeError(f"{where}: {key} = {value!r} must be a number")
    if not value > 0 and key != "angle_deg":
        raise RecipeError(f"{where}: {key} = {value} must be > 0")
    return float(value)


def _stage(raw, index: int) -> MillingStage:
    where = f"stage {index}"
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{where}: expected a mapping of fields, got {type(raw).__name__}")
    where = f"stage {index} ({raw.get('name', 'unnamed')})"
    unknown = set(raw) - _STAGE_KEYS
    if unknown:
        raise RecipeError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_STAGE_KEYS)}")
    if "current" not in raw:
        raise RecipeError(f"{where}: missing required field 'current'")
    return MillingStage(
        name=str(raw.get("name", f"stage{index}")),
        current_A=parse_current(raw["current"], where),
        target_thickness_nm=_number(raw, "target_thickness_nm", where),
        angle_deg=_number(raw, "angle_deg", where),
        max_time_s=_number(raw, "max_time_s", where, 1800.0),
        tolerance_nm=_number(raw, "tolerance_nm", where, 10.0),
    )


def parse_recipe(data) -> MillingRecipe:
    """Validate a recipe given as a mapping (parsed YAML)."""
    if not isinstance(data, Mapping) or "stages" not in data:
        raise RecipeError("recipe must be a mapping with a 'stages' list")
    raw_stages = data["stages"]
    if not isinstance(raw_stages, list) or not raw_stages:
        raise RecipeError("recipe 'stages' must be a non-empty list")
    stages = tuple(_stage(raw, i) for i, raw in enumerate(raw_stages))
    for before, after in zip(stages, stages[1:], strict=False):
        if after.target_thickness_nm >= before.target_thickness_nm:
            raise RecipeError(
                f"stage {after.name!r}: target_thickness_nm {after.target_thickness_nm:g} must be thinner "
                f"than the previous stage's {before.target_thickness_nm:g} nm"
            )
    return MillingRecipe(name=str(data.get("name", "recipe")), stages=stages)


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped with livetomo (``plans/recipes/*.yaml``)."""
    folder = resources.files("livetomo.plans") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def find_recipe(name: str, directories=()) -> Path | None:
    """The file of recipe ``name`` in ``directories`` (searched first) or among the bundled ones."""
    if not _NAME.fullmatch(name):
        return None
    for directory in directories:
        path = Path(directory) / f"{name}.yaml"
        if path.is_file():
            return path
    bundled = resources.files("livetomo.plans") / "recipes" / f"{name}.yaml"
    return Path(str(bundled)) if bundled.is_file() else None


def recipe_names(directories=()) -> list[str]:
    """Every recipe name ``load_recipe`` finds in ``directories`` and among the bundled ones."""
    names = set(bundled_recipes())
    for directory in directories:
        names |= {p.stem for p in Path(directory).glob("*.yaml") if _NAME.fullmatch(p.stem)}
    return sorted(names)


def load_recipe(source, *, directories=(), allow_paths: bool = True) -> MillingRecipe:
    """A recipe from a mapping, a recipe name (searched in ``directories``, then the bundled
    recipes), or, when ``allow_paths``, a YAML file path or YAML text.

    The daemon passes ``allow_paths=False``: a submission names a recipe or gives its
    stages, and never makes the daemon read another file. Errors never echo file contents.
    """
    if isinstance(source, MillingRecipe):
        return source
    if isinstance(source, Mapping):
        return parse_recipe(source)
    if not isinstance(source, str):
        raise RecipeError(f"recipe must be a recipe name or a mapping of stages, got {type(source).__name__}")
    text = source.strip()
    path = find_recipe(text, directories)
    if path is not None:
        text = path.read_text()
    elif (_NAME.fullmatch(text) and Path(text).suffix not in (".yaml", ".yml")) or not allow_paths:
        raise RecipeError(
            f"unknown recipe {source!r}; known recipes: {', '.join(recipe_names(directories)) or 'none'}"
            + (
                " (or give a YAML file path or the recipe's stages)"
                if allow_paths
                else " (or give its stages)"
            )
        )
    elif "\n" not in text and Path(text).suffix in (".yaml", ".yml"):
        file = Path(text)
        if not file.is_file():
            raise RecipeError(f"recipe file {file} does not exist")
        text = file.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        raise RecipeError(f"recipe is not valid YAML{f' (line {where.line + 1})' if where else ''}") from None
    return parse_recipe(data)
