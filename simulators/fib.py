"""Cryo-FIB lamella milling with a 30 kV Ga+ beam, and the EELS log-ratio thickness probe.

Milling removes a volume ``rate(current) * time * f(angle)`` where ``rate`` is the measured
sputter volume rate at normal incidence (DESIGN.md, 30 kV) and ``f`` the angular dependence of
the sputter yield. Thickness is verified in situ by EELS: the zero-loss fraction of a filtered
spectrum is ``exp(-t / mfp)``, so ``t = mfp * ln(I_total / I_zero_loss)``.
"""

from __future__ import annotations

import math

import numpy as np

from livetomo.simulators.faults import FaultInjector, as_faults
from livetomo.simulators.k3 import inelastic_mfp_nm

# Sputter volume rates of vitreous ice / biological material at 30 kV, normal incidence.
# Keys are beam currents in A, values um^3/s (DESIGN.md).
SPUTTER_RATES_UM3_PER_S: dict[float, float] = {
    20e-12: 0.0069,
    0.2e-9: 0.066,
    0.74e-9: 0.335,
    2e-9: 0.955,
    7.6e-9: 3.04,
}

# Yamamura angular-dependence parameters (see sputter_yield_factor).
YAMAMURA_F = 1.8
YAMAMURA_THETA_OPT_DEG = 78.0


class UnknownCurrentError(ValueError):
    """A beam current that the FIB does not offer (no aperture / no calibrated rate)."""


def _format_current(current_A: float) -> str:
    """'20 pA', '0.74 nA': the way operators name FIB currents."""
    if current_A < 1e-10:
        return f"{current_A * 1e12:g} pA"
    return f"{current_A * 1e9:g} nA"


def available_currents() -> tuple[float, ...]:
    """Beam currents with a calibrated sputter rate, in A, ascending."""
    return tuple(sorted(SPUTTER_RATES_UM3_PER_S))


def sputter_rate_um3_per_s(current_A: float) -> float:
    """Sputter volume rate at normal incidence for an offered current, in um^3/s.

    Raises
    ------
    UnknownCurrentError : ``current_A`` is not one of :func:`available_currents`
        (relative tolerance 1e-6).
    """
    for known, rate in SPUTTER_RATES_UM3_PER_S.items():
        if math.isclose(current_A, known, rel_tol=1e-6):
            return rate
    offered = ", ".join(_format_current(c) for c in available_currents())
    raise UnknownCurrentError(
        f"current_A={current_A!r} A is not an available FIB current; offered currents: {offered}"
    )


def sputter_yield_factor(
    angle_deg: float | np.ndarray,
    *,
    f: float = YAMAMURA_F,
    theta_opt_deg: float = YAMAMURA_THETA_OPT_DEG,
) -> float | np.ndarray:
    """Angular dependence of the sputter yield relative to normal incidence (Yamamura form).

    ``Y(theta) / Y(0) = t^f * exp(-Sigma (t - 1))`` with ``t = 1 / cos(theta)`` and
    ``Sigma = f cos(theta_opt)``. It grows about as ``1 / cos(theta)^f`` at small angles, peaks
    at ``theta_opt`` (about 4x for the defaults) and falls to 0 at grazing incidence, where
    ions are reflected instead of sputtering.

    Parameters
    ----------
    angle_deg : angle of incidence in degrees, from the normal of the milled surface
        (0 = normal incidence); the sign is ignored.
    f, theta_opt_deg : shape parameter (dimensionless) and angle of maximum yield (deg).

    Returns
    -------
    factor : dimensionless, same shape as ``angle_deg``; 0 for ``|angle| >= 90``.
    """
    theta = np.deg2rad(np.abs(np.asarray(angle_deg, dtype=np.float64)))
    cos = np.cos(theta)
    grazing = cos <= 1e-12
    t = 1.0 / np.where(grazing, 1.0, cos)
    sigma = f * np.cos(np.deg2rad(theta_opt_deg))
    out = np.where(grazing, 0.0, t**f * np.exp(-sigma * (t - 1.0)))
    return float(out) if out.ndim == 0 else out


def _as_rng(rng: int | np.random.Generator | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def eels_spectrum_ratio(
    thickness_nm: float,
    *,
    mfp_nm: float | None = None,
    voltage_kv: float = 300.0,
    counts: float = 1e6,
    rng: int | np.random.Generator | None = None,
) -> tuple[int, int]:
    """Integrated intensities of an EELS spectrum of a specimen of given thickness.

    Parameters
    ----------
    thickness_nm : specimen thickness along the beam in nm.
    mfp_nm : inelastic mean free path in nm; default that of vitreous ice at ``voltage_kv``
        (350 nm at 300 kV).
    voltage_kv : accelerating voltage in kV.
    counts : expected number of electrons in the whole spectrum.
    rng : seed or generator.

    Returns
    -------
    (I_total, I_zero_loss) : electron counts; ``I_total`` is Poisson with mean ``counts`` and
        each electron is unscattered (zero-loss) with probability ``exp(-t / mfp)``.
    """
    if thickness_nm < 0:
        raise ValueError(f"thickness_nm must be >= 0 nm, got {thickness_nm}")
    mfp = mfp_nm if mfp_nm is not None else inelastic_mfp_nm(voltage_kv)
    gen = _as_rng(rng)
    total = int(gen.poisson(counts))
    zero_loss = int(gen.binomial(total, math.exp(-thickness_nm / mfp)))
    return total, zero_loss


def thickness_from_log_ratio(I_total, I_zero_loss, mfp_nm: float):
    """EELS log-ratio thickness ``mfp * ln(I_total / I_zero_loss)``.

    Parameters
    ----------
    I_total, I_zero_loss : integrated spectrum and zero-loss peak (counts, scalars or arrays).
    mfp_nm : inelastic mean free path in nm.

    Returns
    -------
    thickness : nm, float or array like the inputs.
    """
    total = np.asarray(I_total, dtype=np.float64)
    zl = np.asarray(I_zero_loss, dtype=np.float64)
    if np.any(zl <= 0) or np.any(total < zl):
        raise ValueError("need 0 < I_zero_loss <= I_total for a log-ratio thickness")
    t = mfp_nm * np.log(total / zl)
    return float(t) if t.ndim == 0 else t


class CryoFIBMill:
    """A lamella being thinned by the Ga+ beam, with its true thickness.

    ``thickness_nm`` is the full lamella thickness (face to face). The lamella is milled from
    both sides: the beam time of each :meth:`mill` call is shared equally between the upper and
    lower rectangle patterns, so the volume removed in that call, divided by the area of one
    lamella face, is the reduction of the full thickness (each face recedes by half of it).

    Parameters
    ----------
    initial_thickness_nm : starting thickness in nm (10 um: the trench-milled slab).
    pattern_area_um2 : area of one lamella face swept by a pattern in um^2
        (default 12 um wide x 5 um deep).
    rate_noise : relative standard deviation of the sputter rate from call to call.
    mfp_nm : inelastic mean free path used by the EELS probe in nm (350 nm, ice at 300 kV).
    seed : seed or generator for rate and EELS noise.
    faults : fault injector; each :meth:`mill` is one ``stalled_motion`` opportunity.
    """

    def __init__(
        self,
        initial_thickness_nm: float = 10000.0,
        pattern_area_um2: float = 60.0,
        *,
        rate_noise: float = 0.03,
        mfp_nm: float = 350.0,
        seed: int | np.random.Generator | None = None,
        faults: FaultInjector | None = None,
    ) -> None:
        if initial_thickness_nm < 0 or pattern_area_um2 <= 0 or rate_noise < 0:
            raise ValueError("initial_thickness_nm >= 0, pattern_area_um2 > 0, rate_noise >= 0")
        self.thickness_nm = float(initial_thickness_nm)
        self.pattern_area_um2 = float(pattern_area_um2)
        self.rate_noise = float(rate_noise)
        self.mfp_nm = float(mfp_nm)
        self._rng = np.random.default_rng(seed)
        self.faults = as_faults(faults)

    def _depth_rate_nm_per_s(self, current_A: float, angle_deg: float) -> float:
        """Expected thickness reduction rate in nm/s."""
        volume_rate = sputter_rate_um3_per_s(current_A) * sputter_yield_factor(angle_deg)
        return 1e3 * volume_rate / self.pattern_area_um2

    def mill(self, current_A: float, duration_s: float, angle_deg: float) -> float:
        """Mill for ``duration_s`` seconds at ``current_A`` amperes and ``angle_deg``.

        Parameters
        ----------
        current_A : beam current in A; one of :func:`available_currents`.
        duration_s : beam time in s, shared between both faces.
        angle_deg : ion incidence angle from the milled-surface normal in degrees.

        Returns
        -------
        removed_nm : reduction of the full thickness in nm (0 when ``stalled_motion`` fired;
            never more than the remaining thickness).
        """
        if duration_s < 0:
            raise ValueError(f"duration_s must be >= 0 s, got {duration_s}")
        rate = self._depth_rate_nm_per_s(current_A, angle_deg)  # validates the current first
        if self.faults.fires("stalled_motion"):
            return 0.0
        noise = max(1.0 + self.rate_noise * self._rng.standard_normal(), 0.0)
        removed = min(rate * noise * duration_s, self.thickness_nm)
        self.thickness_nm -= removed
        return removed

    def time_to_thickness(self, current_A: float, target_nm: float, angle_deg: float) -> float:
        """Expected beam time in s to thin from the current thickness to ``target_nm`` nm.

        0 when already at or below the target; ``inf`` where the angle sputters nothing.
        """
        excess = self.thickness_nm - target_nm
        rate = self._depth_rate_nm_per_s(current_A, angle_deg)
        if excess <= 0:
            return 0.0
        return excess / rate if rate > 0 else math.inf

    def eels_thickness_nm(self, counts: float = 1e6) -> float:
        """Noisy EELS log-ratio estimate of the current thickness, in nm.

        ``counts`` is the expected number of electrons in the spectrum; a lamella so thick that
        no zero-loss electron arrives reads as ``inf``.
        """
        total, zl = eels_spectrum_ratio(self.thickness_nm, mfp_nm=self.mfp_nm, counts=counts, rng=self._rng)
        if zl == 0:
            return math.inf
        return thickness_from_log_ratio(total, zl, self.mfp_nm)
