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


def load_recipe(source) -> MillingRecipe:
    """A recipe from a mapping, a YAML file path, a YAML string, or a bundled recipe's name."""
    if isinstance(source, MillingRecipe):
        return source
    if isinstance(source, Mapping):
        return parse_recipe(source)
    text = str(source)
    bundled = resources.files("livetomo.plans") / "recipes" / f"{text}.yaml"
    if bundled.is_file():
        text = bundled.read_text()
    elif "\n" not in text and Path(text).suffix in (".yaml", ".yml"):
        path = Path(text)
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe is not valid YAML: {exc}") from exc
    return parse_recipe(data)
