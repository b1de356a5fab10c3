"""Cryo-FIB mill with an in-situ EELS thickness probe.

``CryoFIB`` is composed of four small devices a plan moves or reads on their own:
``fib.current`` (beam current, one of the offered apertures), ``fib.angle`` (milling
angle), ``fib.pattern`` (set(duration_s) mills the pattern for that long) and ``fib.eels``
(trigger to measure t/λ = ln(I_total / I_zero_loss) and the thickness it implies).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .base import ParameterError, check_range, number_key, reading, run_as_status


class FIBBackend(Protocol):
    offered_currents_A: tuple[float, ...]
    angle_limits_deg: tuple[float, float]
    pattern_area_um2: float

    def set_current(self, current_A: float) -> None: ...
    def set_angle(self, angle_deg: float) -> None: ...
    def mill(self, duration_s: float) -> None:
        """Run the milling pattern for ``duration_s`` at the current settings and wait."""

    def measure_eels(self) -> tuple[float, float]:
        """(I_total, I_zero_loss) of one EELS spectrum through the lamella."""

    def nominal_rate_um3_per_s(self, current_A: float) -> float:
        """Calibrated sputter volume rate at normal incidence."""

    def truth(self) -> dict[str, tuple[float, str]]: ...


def format_current(current_A: float) -> str:
    return f"{current_A * 1e12:g} pA" if current_A < 1e-10 else f"{current_A * 1e9:g} nA"


def match_current(current_A: float, offered: tuple[float, ...], tolerance: float = 0.02) -> float:
    """The offered current within ``tolerance`` (relative) of ``current_A``; ParameterError otherwise."""
    for offer in offered:
        if abs(current_A - offer) <= tolerance * offer:
            return offer
    allowed = ", ".join(format_current(c) for c in sorted(offered))
    raise ParameterError(
        f"FIB current {format_current(current_A)} is not offered; allowed currents: {allowed}"
    )


class _Component:
    def __init__(self, parent: CryoFIB, suffix: str):
        self.parent = parent
        self.name = f"{parent.name}_{suffix}"
        self.backend = parent.backend

    def read_configuration(self) -> dict:
        return {}

    def describe_configuration(self) -> dict:
        return {}


class CurrentSetting(_Component):
    """Beam current in A; only the offered apertures can be set."""

    def __init__(self, parent):
        super().__init__(parent, "current")
        self.value = min(self.backend.offered_currents_A)

    def check(self, current_A: float) -> float:
        return match_current(current_A, self.backend.offered_currents_A)

    def set(self, current_A: float):
        offer = self.check(current_A)

        def apply():
            self.backend.set_current(offer)
            self.value = offer

        return run_as_status(self, apply)

    def read(self) -> dict:
        return {self.name: reading(self.value)}

    def describe(self) -> dict:
        return {self.name: number_key("fib:current", "A")}


class AngleSetting(_Component):
    """Milling angle between ion beam and lamella surface, degrees."""

    def __init__(self, parent):
        super().__init__(parent, "angle")
        self.value = float(self.backend.angle_limits_deg[0])

    def check(self, angle_deg: float) -> None:
        check_range("milling angle", angle_deg, *self.backend.angle_limits_deg, "deg")

    def set(self, angle_deg: float):
        self.check(angle_deg)

        def apply():
            self.backend.set_angle(float(angle_deg))
            self.value = float(angle_deg)

        return run_as_status(self, apply)

    def read(self) -> dict:
        return {self.name: reading(self.value)}

    def describe(self) -> dict:
        return {self.name: number_key("fib:angle", "deg")}


class MillPattern(_Component):
    """set(duration_s) mills the pattern for that long at the present current and angle."""

    max_duration_s = 3600.0

    def __init__(self, parent):
        super().__init__(parent, "pattern")
        self.milled_s = 0.0

    def set(self, duration_s: float):
        check_range("mill duration", duration_s, 0.0, self.max_duration_s, "s")

        def apply():
            self.backend.mill(float(duration_s))
            self.milled_s += float(duration_s)

        return run_as_status(self, apply)

    def read(self) -> dict:
        return {f"{self.name}_time": reading(self.milled_s)}

    def describe(self) -> dict:
        return {f"{self.name}_time": number_key("fib:milled", "s")}


class EELSProbe(_Component):
    """Thickness from the EELS log-ratio: t = λ · ln(I_total / I_zero_loss)."""

    def __init__(self, parent, mean_free_path_nm: float):
        super().__init__(parent, "eels")
        self.mean_free_path_nm = mean_free_path_nm
        self._ratio = float("nan")

    def trigger(self):
        def measure():
            total, zero_loss = self.backend.measure_eels()
            self._ratio = float(np.log(total / zero_loss))

        return run_as_status(self, measure)

    @property
    def thickness_nm(self) -> float:
        return self._ratio * self.mean_free_path_nm

    def read(self) -> dict:
        out = {
            f"{self.name}_t_over_lambda": reading(self._ratio),
            f"{self.name}_thickness": reading(self.thickness_nm),
        }
        for suffix, (value, _) in self.backend.truth().items():
            out[f"{self.parent.name}_{suffix}"] = reading(value)
        return out

    def describe(self) -> dict:
        out = {
            f"{self.name}_t_over_lambda": number_key("eels:log_ratio"),
            f"{self.name}_thickness": number_key("eels:thickness", "nm", 1),
        }
        for suffix, (_, units) in self.backend.truth().items():
            out[f"{self.parent.name}_{suffix}"] = number_key("simulator-truth", units)
        return out

    def read_configuration(self) -> dict:
        return {f"{self.name}_mean_free_path": reading(self.mean_free_path_nm)}

    def describe_configuration(self) -> dict:
        return {f"{self.name}_mean_free_path": number_key("config", "nm")}


class CryoFIB:
    """Cryo-FIB mill (30 kV Ga⁺) with EELS thickness readback; see the module docstring."""

    def __init__(
        self, backend: FIBBackend, *, name: str = "fib", eels_mean_free_path_nm: float = 350.0, parent=None
    ):
        self.name = name
        self.parent = parent
        self.backend = backend
        self.current = CurrentSetting(self)
        self.angle = AngleSetting(self)
        self.pattern = MillPattern(self)
        self.eels = EELSProbe(self, eels_mean_free_path_nm)

    def _parts(self):
        return (self.current, self.angle, self.pattern, self.eels)

    def read(self) -> dict:
        return {k: v for part in self._parts() for k, v in part.read().items()}

    def describe(self) -> dict:
        return {k: v for part in self._parts() for k, v in part.describe().items()}

    def read_configuration(self) -> dict:
        return self.eels.read_configuration()

    def describe_configuration(self) -> dict:
        return self.eels.describe_configuration()

    @property
    def offered_currents_A(self) -> tuple[float, ...]:
        return tuple(sorted(self.backend.offered_currents_A))

    def nominal_thinning_rate_nm_per_s(self, current_A: float) -> float:
        """Expected thinning at normal incidence from the calibrated volume rate, nm/s."""
        return self.backend.nominal_rate_um3_per_s(current_A) / self.backend.pattern_area_um2 * 1000.0
