"""What the daemon's RunEngine can drive: named devices and plans, and checks of submissions."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from ..devices.sim import make_correlative, make_fib, make_microprobe, make_tem
from ..devices.sinks import FrameSink
from ..plans import PLANS

# Plan parameters that take devices; a string there names a device of the beamline.
DEVICE_PARAMETERS = {"detectors", "rotation", "scan", "dpc", "xrf", "camera", "tilt", "fib", "sxt", "fm"}

# Devices used when a submission leaves a device parameter out.
DEFAULT_DEVICES: dict[str, dict[str, Any]] = {
    "tomo_scan": {"detectors": ["dpc"], "rotation": "rotation"},
    "xrf_dpc_tomo": {"dpc": "dpc", "xrf": "xrf", "rotation": "rotation", "scan": "scan"},
    "tilt_series": {"camera": "k3", "tilt": "tilt"},
    "mill_lamella": {"fib": "fib"},
    "correlative_acquire": {"sxt": "sxt", "fm": "fm"},
}


class SubmissionError(ValueError):
    """A submitted plan cannot run: unknown plan or device, bad arguments, impossible parameter."""


@dataclass
class Beamline:
    devices: dict[str, Any]
    plans: dict[str, Any] = field(default_factory=lambda: dict(PLANS))
    truth: dict[str, Any] = field(default_factory=dict)  # simulated worlds, for benchmarks and tests

    def describe_plans(self) -> dict[str, dict]:
        """Each plan's parameters (name, default) and docstring's first line, for clients."""
        out = {}
        for name, plan in self.plans.items():
            params = {
                p.name: (None if p.default is inspect.Parameter.empty else repr(p.default))
                for p in inspect.signature(plan).parameters.values()
            }
            out[name] = {"parameters": params, "doc": (inspect.getdoc(plan) or "").split("\n")[0]}
        return out

    def _resolve(self, name: str, value):
        if name not in DEVICE_PARAMETERS:
            return value
        if isinstance(value, list | tuple):
            return [self._resolve(name, v) for v in value]
        if isinstance(value, str):
            if value not in self.devices:
                raise SubmissionError(
                    f"unknown device {value!r} for {name}; devices: {', '.join(sorted(self.devices))}"
                )
            return self.devices[value]
        return value

    def bind(self, plan_name: str, kwargs: dict) -> tuple[Any, inspect.BoundArguments]:
        """The plan function and its arguments, devices resolved; SubmissionError if they do not fit."""
        if plan_name not in self.plans:
            raise SubmissionError(f"unknown plan {plan_name!r}; plans: {', '.join(sorted(self.plans))}")
        plan = self.plans[plan_name]
        merged = {**DEFAULT_DEVICES.get(plan_name, {}), **kwargs}
        resolved = {k: self._resolve(k, v) for k, v in merged.items()}
        try:
            bound = inspect.signature(plan).bind(**resolved)
        except TypeError as exc:
            raise SubmissionError(f"{plan_name}: {exc}") from exc
        return plan, bound

    def validate(self, plan_name: str, kwargs: dict) -> None:
        """Run the plan's own checks (they happen before its first message) without running it."""
        plan, bound = self.bind(plan_name, kwargs)
        generator = plan(*bound.args, **bound.kwargs)
        try:
            next(generator)
        except StopIteration:
            pass
        except ValueError as exc:  # ParameterError, RecipeError: the plan refused before anything moved
            raise SubmissionError(f"{plan_name}: {exc}") from exc
        finally:
            generator.close()

    def make_plan(self, plan_name: str, kwargs: dict, md: dict | None = None):
        plan, bound = self.bind(plan_name, kwargs)
        if md and "md" in inspect.signature(plan).parameters:
            bound.arguments["md"] = {**(bound.arguments.get("md") or {}), **md}
        return plan(*bound.args, **bound.kwargs)


def simulated_beamline(
    sink: FrameSink, *, seed: int = 0, microprobe_shape=(24, 48, 48), tem_shape=(48, 16, 48)
) -> Beamline:
    """Every simulated instrument, its image detectors writing to ``sink``."""
    probe = make_microprobe(shape=microprobe_shape, seed=seed, sink=sink)
    tem = make_tem(shape=tem_shape, seed=seed + 10, sink=sink)
    fib = make_fib(seed=seed + 20)
    correlative = make_correlative(seed=seed + 30, sink=sink)
    devices = {
        "rotation": probe.rotation,
        "scan": probe.scan,
        "dpc": probe.dpc,
        "xrf": probe.xrf,
        "tilt": tem.tilt,
        "k3": tem.k3,
        "fib": fib,
        "sxt": correlative.sxt,
        "fm": correlative.fm,
    }
    truth = {
        "microprobe": probe.world,
        "tem": tem.world,
        "fib": fib.backend,
        "correlative": correlative.scene,
    }
    return Beamline(devices=devices, truth=truth)
