"""Rotation and tilt stages that misbehave the way real ones do, and know by how much.

Both models keep the truth (where the specimen really is) beside the readback, so
alignment can be scored against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .faults import FaultInjector, as_faults


class MotionStalled(RuntimeError):
    """A simulated axis did not reach its target."""


@dataclass
class RotationStageModel:
    """Tomography rotation stage with runout.

    The specimen's lateral displacement at angle θ (µm, vertical and horizontal) is
    ``axis_offset_um + A·sin(θ + φ) + A2·sin(2θ + φ2)`` plus Gaussian jitter drawn
    anew at every move, which is what a worn air-bearing or a mis-centred sample does.

    Parameters
    ----------
    wobble_amplitude_um : (vertical, horizontal) first-harmonic runout amplitude, µm.
    wobble_phase_deg : (vertical, horizontal) phase of the first harmonic, degrees.
    second_harmonic_um : horizontal second-harmonic amplitude, µm (eccentric bearing).
    jitter_um : standard deviation of the random jitter per move, µm, both axes.
    axis_offset_um : horizontal offset of the rotation axis from the raster centre, µm;
        it is the rotation-centre error a reconstruction must find.
    limits_deg : travel limits, degrees.
    """

    wobble_amplitude_um: tuple[float, float] = (0.3, 1.2)
    wobble_phase_deg: tuple[float, float] = (40.0, -25.0)
    second_harmonic_um: float = 0.25
    jitter_um: float = 0.03
    axis_offset_um: float = 0.45
    limits_deg: tuple[float, float] = (-370.0, 370.0)
    seed: int | None = 0
    faults: FaultInjector | None = None
    position_deg: float = field(default=0.0, init=False)
    _jitter: np.ndarray = field(default_factory=lambda: np.zeros(2), init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self.faults = as_faults(self.faults)

    def runout_um(self, angle_deg: float | np.ndarray) -> np.ndarray:
        """Deterministic displacement (vertical, horizontal) in µm at ``angle_deg``.

        Returns shape ``(2,)`` for a scalar angle, ``(2, n)`` for ``n`` angles.
        """
        t = np.deg2rad(np.asarray(angle_deg, dtype=float))
        av, ah = self.wobble_amplitude_um
        pv, ph = np.deg2rad(self.wobble_phase_deg)
        vertical = av * np.sin(t + pv)
        horizontal = self.axis_offset_um + ah * np.sin(t + ph) + self.second_harmonic_um * np.sin(2 * t)
        return np.stack([vertical, horizontal])

    def move(self, angle_deg: float) -> float:
        """Move to ``angle_deg``; return the reached angle. Raises MotionStalled on a fault."""
        lo, hi = self.limits_deg
        if not lo <= angle_deg <= hi:
            raise ValueError(f"rotation angle {angle_deg} deg outside limits [{lo}, {hi}] deg")
        if self.faults.fires("stalled_motion"):
            raise MotionStalled(
                f"rotation stalled at {self.position_deg:.3f} deg on the way to {angle_deg:.3f} deg"
            )
        self.position_deg = float(angle_deg)
        self._jitter = self._rng.normal(0.0, self.jitter_um, 2)
        return self.position_deg

    @property
    def true_offset_um(self) -> np.ndarray:
        """Where the specimen really is now: (vertical, horizontal) displacement, µm."""
        return self.runout_um(self.position_deg) + self._jitter


@dataclass
class TiltStageModel:
    """TEM goniometer (single tilt axis along the image's vertical) with eucentric error and drift.

    A specimen ``eucentric_error_nm`` off the tilt axis (along the beam at 0°) moves
    sideways by ``eucentric_error_nm · sin α`` when tilted; on top of that the stage
    drifts by a random walk of ``drift_step_nm`` per tilt and a steady
    ``drift_rate_nm_per_s`` over the elapsed time; both axes, so the image shifts.

    Attributes ``true_offset_nm`` (vertical, horizontal) hold the truth after each move.
    """

    eucentric_error_nm: float = 40.0
    drift_step_nm: float = 1.5
    drift_rate_nm_per_s: tuple[float, float] = (0.02, 0.05)
    seconds_per_tilt: float = 20.0
    limits_deg: tuple[float, float] = (-70.0, 70.0)
    seed: int | None = 0
    faults: FaultInjector | None = None
    position_deg: float = field(default=0.0, init=False)
    elapsed_s: float = field(default=0.0, init=False)
    _walk: np.ndarray = field(default_factory=lambda: np.zeros(2), init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self.faults = as_faults(self.faults)

    def move(self, tilt_deg: float) -> float:
        """Tilt to ``tilt_deg``; return the reached angle. Raises MotionStalled on a fault."""
        lo, hi = self.limits_deg
        if not lo <= tilt_deg <= hi:
            raise ValueError(f"tilt angle {tilt_deg} deg outside limits [{lo}, {hi}] deg")
        if self.faults.fires("stalled_motion"):
            raise MotionStalled(
                f"tilt stalled at {self.position_deg:.3f} deg on the way to {tilt_deg:.3f} deg"
            )
        self.position_deg = float(tilt_deg)
        self.elapsed_s += self.seconds_per_tilt
        self._walk = self._walk + self._rng.normal(0.0, self.drift_step_nm, 2)
        return self.position_deg

    def recentre(self) -> None:
        """Centre the target again (the operator's or SerialEM's "Realign to Item" before a tilt
        series): drift starts again from zero; the eucentric error stays."""
        self.elapsed_s = 0.0
        self._walk = np.zeros(2)

    @property
    def true_offset_nm(self) -> np.ndarray:
        """Specimen displacement in the image plane now: (vertical, horizontal), nm."""
        eucentric = np.array([0.0, self.eucentric_error_nm * np.sin(np.deg2rad(self.position_deg))])
        steady = np.asarray(self.drift_rate_nm_per_s) * self.elapsed_s
        return eucentric + steady + self._walk


@dataclass
class ImageShiftModel:
    """The TEM's image shift (beam deflection) in the camera's frame, nm on the specimen.

    A setpoint ``(y, x)`` moves the image by ``gain`` times it (a calibration that is a few per
    cent off is usual); ``true_shift_nm`` is what it really moved, the truth tracking is scored
    against. ``limit_nm`` is the deflectors' range on each axis.
    """

    gain: float = 1.0
    limit_nm: float = 2000.0
    setpoint_nm: np.ndarray = field(default_factory=lambda: np.zeros(2), init=False)

    def move(self, axis: int, target_nm: float) -> float:
        if not abs(target_nm) <= self.limit_nm:
            raise ValueError(
                f"image shift {target_nm:g} nm outside the deflectors' range ±{self.limit_nm:g} nm"
            )
        self.setpoint_nm = self.setpoint_nm.copy()
        self.setpoint_nm[axis] = float(target_nm)
        return float(target_nm)

    def recentre(self) -> None:
        self.setpoint_nm = np.zeros(2)

    @property
    def true_shift_nm(self) -> np.ndarray:
        return self.gain * self.setpoint_nm
