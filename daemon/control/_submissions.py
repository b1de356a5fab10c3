"""Submissions: binding a plan's parameters by name and checking them before the plan is queued.

A submission is a plan name, parameters (JSON values: numbers, strings, lists, mappings) and
metadata. ``PlanCatalog.check`` converts each parameter to what the plan's signature
annotates (``num: int``, ``start: float``, ``angles: Sequence[float]``, ``raster_shape:
tuple[int, int]`` ...), resolves device parameters by device name, then runs the plan's
own checks (a plan checks everything before its first message), so an impossible
submission is refused before it is queued and nothing moves. Every message names the
parameter and what it expects.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from ...devices.presets import PRESETS
from ...plans import PLANS, RecipeError, load_recipe

# Plan parameters that take devices, and what such a device must have (methods, parts):
# a string there names a device of the beamline.
DEVICE_KINDS = {
    "detectors": ("a detector", ("trigger", "read")),
    "dpc": ("a detector", ("trigger", "read")),
    "xrf": ("a detector", ("trigger", "read")),
    "camera": ("a detector", ("trigger", "read")),
    "sxt": ("a detector", ("trigger", "read")),
    "fm": ("a detector", ("trigger", "read")),
    "rotation": ("a movable axis", ("set", "check")),
    "tilt": ("a movable axis", ("set", "check")),
    "scan": ("a fly-scan stage", ("kickoff", "complete")),
    "fib": ("a FIB", ("eels", "current", "pattern")),
    "measurements": ("livetomo's live measurements", ("trigger", "read", "board")),
    "image_shift": ("an image shift", ("set", "check", "target_for")),
    "raster_offset": ("a raster offset", ("set", "check", "target_for")),
}
DEVICE_PARAMETERS = set(DEVICE_KINDS)
# Plan parameters that take Python callables (unannotated, so queueserver can validate the plans).
CALLABLE_PARAMETERS = {"on_tilt"}
MAX_LIST = 100_000  # longest list a parameter may hold (a list of angles, say)
MAX_MD_BYTES = 64 << 10  # metadata travels in every document of the run


class SubmissionError(ValueError):
    """A submitted plan cannot run: unknown plan or device, bad arguments, impossible parameter."""


def _kind(tp) -> str:
    """What a value of annotation ``tp`` is, in words."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        words = [_kind(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" (or null)" if type(None) in args else "")
    if origin is tuple:
        return f"a list of {len(args)} {_kind(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin in (list, collections.abc.Sequence):
        return f"a list of {_kind(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def convert(value, tp, name: str):
    """``value`` as annotation ``tp`` wants it; SubmissionError naming ``name`` when it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def refuse(extra: str = ""):
        return SubmissionError(f"{name} = {_short(value)} is not {_kind(tp)}{extra}")

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return convert(value, option, name)
            except SubmissionError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else refuse()
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        raise refuse()
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise refuse()
        return tuple(convert(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (list, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            raise refuse()
        if len(value) > MAX_LIST:
            raise SubmissionError(f"{name} has {len(value)} entries; at most {MAX_LIST} are allowed")
        return [convert(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if tp in (dict,) or origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise refuse()
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise refuse()
    if tp is int:
        if isinstance(value, bool):
            raise refuse()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise refuse(" (a whole number, e.g. 61)" if isinstance(value, float) else "")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise refuse()
        if not math.isfinite(value):
            raise SubmissionError(f"{name} = {value} is not a finite number")
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise refuse()
    if tp in (typing.Callable, collections.abc.Callable) or origin is collections.abc.Callable:
        raise SubmissionError(f"{name} takes a Python callable; it cannot be given in a submission")
    return value  # unannotated: the plan checks it


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_md(md) -> dict:
    """Run metadata: a JSON-able mapping of string keys, small enough to travel in every document."""
    if md is None:
        return {}
    if not isinstance(md, dict):
        raise SubmissionError(f"md must be a mapping of metadata, got {_short(md)}")
    try:
        size = len(json.dumps(md, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise SubmissionError(
            f"md must hold plain JSON values (strings, finite numbers, lists, mappings): {exc}"
        ) from None
    if size > MAX_MD_BYTES:
        raise SubmissionError(f"md is {size} bytes of JSON; at most {MAX_MD_BYTES} are allowed")
    return dict(md)


@dataclass
class PlanCatalog:
    """The plans the daemon offers and the devices they may use, with the checks of submissions.

    ``plan_defaults`` maps a plan to the device names used for device parameters a submission
    leaves out (the beamline module's ``PLAN_DEFAULTS``). ``sized_for``: the scan presets
    (``devices.presets``) the beamline's instruments are sized for (None: any, real hardware).
    """

    devices: dict[str, Any]
    plans: dict[str, Any] = field(default_factory=lambda: dict(PLANS))
    plan_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    recipe_directories: tuple = ()
    sized_for: tuple[str, ...] | None = None

    def expand_preset(self, name: str, kwargs: dict | None, md: dict | None) -> tuple[str, dict, dict]:
        """A submission naming a preset as its plan: (the preset's plan, its parameters updated by
        ``kwargs``, its metadata with ``preset: name`` updated by ``md``); other names unchanged."""
        preset = PRESETS.get(name) if isinstance(name, str) else None
        if preset is None:
            return name, kwargs, md
        if self.sized_for is not None and name not in self.sized_for:
            sized = ", ".join(self.sized_for) or "small specimens"
            raise SubmissionError(
                f"{name}: the simulated beamline is sized for {sized}; start the daemon with "
                f"'beamline: {{preset: {name}}}' to simulate this scan at its size"
            )
        if kwargs is not None and not isinstance(kwargs, dict):
            raise SubmissionError(f"{name}: parameters must be a mapping of name: value")
        if md is not None and not isinstance(md, dict):
            raise SubmissionError(f"{name}: md must be a mapping")
        return (
            preset.plan,
            {**preset.parameters, **(kwargs or {})},
            {**preset.md, "preset": name, **(md or {})},
        )

    def describe_plans(self) -> dict[str, dict]:
        """Each plan's parameters (kind, default, required) and docstring's first line, for clients."""
        out = {}
        for name, plan in self.plans.items():
            hints = typing.get_type_hints(plan)
            params = {}
            for p in inspect.signature(plan).parameters.values():
                device = p.name in DEVICE_PARAMETERS
                params[p.name] = {
                    "kind": "device name" if device else (_kind(hints[p.name]) if p.name in hints else "any"),
                    "default": self.plan_defaults.get(name, {}).get(p.name)
                    if device
                    else (None if p.default is inspect.Parameter.empty else p.default),
                    "required": p.default is inspect.Parameter.empty
                    and p.name not in self.plan_defaults.get(name, {}),
                }
            out[name] = {"parameters": params, "doc": (inspect.getdoc(plan) or "").split("\n")[0]}
        return out

    def _plan(self, plan_name):
        if not isinstance(plan_name, str) or plan_name not in self.plans:
            close = difflib.get_close_matches(str(plan_name), self.plans, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SubmissionError(
                f"unknown plan {_short(plan_name)}{hint}; plans: {', '.join(sorted(self.plans))}"
            )
        return self.plans[plan_name]

    def _device(self, parameter: str, value, where: str):
        if isinstance(value, list | tuple) and parameter == "detectors":
            return [self._device(parameter, v, where) for v in value]
        if not isinstance(value, str) or value not in self.devices:
            raise SubmissionError(
                f"{where} = {_short(value)} is not a device name; devices: {', '.join(sorted(self.devices))}"
            )
        device = self.devices[value]
        what, methods = DEVICE_KINDS[parameter]
        if not all(hasattr(device, m) for m in methods):
            fits = sorted(
                n for n, d in self.devices.items() if all(callable(getattr(d, m, None)) for m in methods)
            )
            raise SubmissionError(
                f"{where} = {value!r} is a {type(device).__name__}; "
                f"{parameter} takes {what}: {', '.join(fits)}"
            )
        return device

    def _convert(self, plan_name: str, kwargs: dict) -> dict:
        """Parameters converted to the plan's annotations, device names resolved."""
        plan = self._plan(plan_name)
        if not isinstance(kwargs, dict):
            raise SubmissionError(f"{plan_name}: parameters must be a mapping of name: value")
        signature = inspect.signature(plan)
        hints = typing.get_type_hints(plan)
        unknown = [k for k in kwargs if k not in signature.parameters or k == "md"]
        if unknown:
            key = str(unknown[0])
            close = difflib.get_close_matches(key, signature.parameters, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            names = ", ".join(p for p in signature.parameters if p != "md")
            raise SubmissionError(f"{plan_name} has no parameter {key!r}{hint}; parameters: {names}")
        merged = {**self.plan_defaults.get(plan_name, {}), **kwargs}
        out = {}
        for key, value in merged.items():
            where = f"{plan_name}: {key}"
            if key in DEVICE_PARAMETERS:
                out[key] = self._device(key, value, where)
            elif key in CALLABLE_PARAMETERS:
                raise SubmissionError(f"{where} takes a Python callable; it cannot be given in a submission")
            elif key == "recipe":
                try:  # a submission names a recipe or gives its stages; it never reads a file
                    out[key] = load_recipe(value, directories=self.recipe_directories, allow_paths=False)
                except RecipeError as exc:
                    raise SubmissionError(f"{plan_name}: {exc}") from None
            else:
                out[key] = convert(value, hints.get(key, Any), where)
        missing = [
            p.name
            for p in signature.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in out
        ]
        if missing:
            kinds = ", ".join(
                f"{m} ({'a device name' if m in DEVICE_PARAMETERS else _kind(hints.get(m, Any))})"
                for m in missing
            )
            raise SubmissionError(f"{plan_name} needs parameter(s) {kinds}")
        return out

    def check(self, plan_name: str, kwargs: dict | None, md: dict | None = None) -> tuple[dict, dict]:
        """Convert and run the plan's own checks without running it; returns (kwargs, md) as checked.

        The returned kwargs are JSON values (devices by name), ready to queue and persist.
        """
        kwargs = dict(kwargs or {}) if isinstance(kwargs, dict) else kwargs
        md = check_md(md)
        converted = self._convert(plan_name, kwargs)
        generator = self.plans[plan_name](**converted, md=md or None)
        try:
            next(generator)
        except StopIteration:
            pass
        except ValueError as exc:  # ParameterError, RecipeError: the plan refused before anything moved
            raise SubmissionError(f"{plan_name}: {exc}") from None
        finally:
            generator.close()
        return {k: _plain(v) for k, v in kwargs.items()}, md

    def make_plan(self, plan_name: str, kwargs: dict, md: dict | None = None):
        """The plan generator of a checked submission, with ``md`` merged into the plan's own."""
        return self.plans[plan_name](**self._convert(plan_name, kwargs), md=md or None)


def _plain(value):
    """Tuples as lists, so a queued item reads back from JSON as it was checked."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
