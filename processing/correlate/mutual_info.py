"""3D registration by Mattes mutual information, rigid then affine, with SimpleITK (ITK).

Images are numpy arrays indexed ``[z, y, x]`` with voxel sizes (x, y, z); SimpleITK works on
the host, so cupy inputs are copied there. ITK transforms map fixed physical points to moving
physical points, which is the EM -> LM direction when EM is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arrays import to_numpy
from .detect import per_axis
from .errors import RegistrationError

STAGES = ("translation", "rigid", "affine")


@dataclass(frozen=True)
class MIStage:
    """One optimisation stage: its transform (4x4, fixed physical -> moving physical) and metric."""

    name: str
    matrix: np.ndarray
    metric: float
    iterations: int
    stop: str


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - SimpleITK is a declared dependency of this route
        raise RegistrationError(
            "intensity-based registration needs SimpleITK (pip install SimpleITK)"
        ) from exc
    return sitk


def to_sitk(volume, spacing, origin=(0.0, 0.0, 0.0)):
    """A SimpleITK float32 image of a [z, y, x] array with voxel size and origin (x, y, z)."""
    sitk = _sitk()
    img = sitk.GetImageFromArray(np.ascontiguousarray(to_numpy(volume), dtype=np.float32))
    img.SetSpacing(tuple(float(s) for s in per_axis(spacing, 3, "spacing")))
    img.SetOrigin(tuple(float(o) for o in origin))
    return img


def _matrix(tx) -> np.ndarray:
    """4x4 homogeneous matrix of an ITK matrix-offset transform (Euler, affine, translation)."""
    m = np.eye(4)
    if hasattr(tx, "GetMatrix"):
        m[:3, :3] = np.asarray(tx.GetMatrix()).reshape(3, 3)
        centre = np.asarray(tx.GetCenter())
        m[:3, 3] = np.asarray(tx.GetTranslation()) + centre - m[:3, :3] @ centre
    else:
        m[:3, 3] = np.asarray(tx.GetOffset())
    return m


def _transform(sitk, stage: str, matrix: np.ndarray, centre: np.ndarray):
    """An ITK transform of kind ``stage`` about ``centre`` initialised to ``matrix``."""
    lin, off = matrix[:3, :3], matrix[:3, 3]
    translation = off + lin @ centre - centre  # ITK: p -> A (p - c) + c + t
    if stage == "translation":
        return sitk.TranslationTransform(3, tuple(off))
    if stage == "rigid":
        tx = sitk.Euler3DTransform()
        tx.SetCenter(tuple(centre))
        u, _, vt = np.linalg.svd(lin)
        rot = u @ vt if np.linalg.det(u @ vt) > 0 else u @ np.diag([1, 1, -1]) @ vt
        tx.SetMatrix(tuple(rot.ravel()))
        tx.SetTranslation(tuple(off + rot @ centre - centre))
        return tx
    tx = sitk.AffineTransform(3)
    tx.SetCenter(tuple(centre))
    tx.SetMatrix(tuple(lin.ravel()))
    tx.SetTranslation(tuple(translation))
    return tx


def register_mi(
    fixed,
    moving,
    *,
    initial: np.ndarray,
    stages=("rigid", "affine"),
    shrink=(4, 2, 1),
    smoothing_um=(1.0, 0.5, 0.0),
    bins: int = 32,
    sampling: float = 0.05,
    iterations: int = 150,
    learning_rate: float = 1.0,
    min_step: float = 1e-4,
    max_step_um: float = 0.0,
    gradient_images: bool = True,
    seed: int = 1,
    threads: int | None = None,
    progress=None,
) -> list[MIStage]:
    """Optimise mutual information between two SimpleITK images, stage after stage.

    Parameters
    ----------
    fixed, moving : SimpleITK images (:func:`to_sitk`), physical units um.
    initial : (4, 4) starting transform fixed physical -> moving physical.
    stages : any of "translation", "rigid", "affine", run in order, each starting from the last.
    shrink, smoothing_um : multi-resolution pyramid: shrink factors and Gaussian smoothing (um).
    bins : Mattes MI histogram bins.
    sampling : fraction of fixed voxels sampled at random each iteration.
    iterations : most iterations per pyramid level (regular-step gradient descent).
    learning_rate : first step, in units of the physical-shift parameter scales (~1 voxel).
    min_step : the optimiser stops once its step (halved at every reversal) falls below this.
    gradient_images : ITK computes whole gradient images at every level (more accurate); False
        computes gradients only where samples fall (much faster on large moving stacks).
    max_step_um : if > 0, the step length is estimated once so that no point moves more than
        this far per iteration (keeps the affine stage from running off: without it 1 of 2
        repeats diverged by 4 um on the simulated source-shaped stacks).
    seed : seed of the sampling, >= 1 (ITK reads 0 as 'seed from the wall clock').
    threads : ITK threads (default: ITK's own choice).
    progress : optional callable(str) told when each stage starts and ends.

    Returns
    -------
    stages : list of :class:`MIStage`, in the order run; the last one's ``matrix`` is the result.
    """
    sitk = _sitk()
    if int(seed) < 1:
        raise RegistrationError(f"seed must be >= 1 (ITK takes 0 to mean the wall clock), got {seed}")
    for stage in stages:
        if stage not in STAGES:
            raise RegistrationError(f"unknown registration stage {stage!r}; allowed: {', '.join(STAGES)}")
    if len(shrink) != len(smoothing_um):
        raise RegistrationError("shrink and smoothing_um need one entry per pyramid level")
    size, sp, org = np.array(fixed.GetSize()), np.array(fixed.GetSpacing()), np.array(fixed.GetOrigin())
    centre = org + sp * (size - 1) / 2.0
    matrix = np.asarray(initial, dtype=np.float64)
    out = []
    for stage in stages:
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(sampling, int(seed))
        reg.SetMetricUseFixedImageGradientFilter(gradient_images)
        reg.SetMetricUseMovingImageGradientFilter(gradient_images)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=learning_rate,
            minStep=min_step,
            numberOfIterations=iterations,
            relaxationFactor=0.6,
            gradientMagnitudeTolerance=1e-8,
            estimateLearningRate=reg.Once if max_step_um > 0 else reg.Never,
            maximumStepSizeInPhysicalUnits=max_step_um,
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(list(shrink))
        reg.SetSmoothingSigmasPerLevel(list(smoothing_um))
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        if threads:
            reg.SetNumberOfThreads(int(threads))
        tx = _transform(sitk, stage, matrix, centre)
        reg.SetInitialTransform(tx, inPlace=True)  # optimised in place
        if progress:
            progress(f"mutual information, {stage} stage")
        try:
            reg.Execute(fixed, moving)
        except RuntimeError as exc:
            raise RegistrationError(
                f"{stage} registration failed ({str(exc).strip().splitlines()[-1]}); the stacks probably "
                "do not overlap under the initial transform: check the pre-alignment and the voxel sizes"
            ) from exc
        matrix = _matrix(tx)
        out.append(
            MIStage(
                stage,
                matrix,
                float(reg.GetMetricValue()),
                int(reg.GetOptimizerIteration()),
                reg.GetOptimizerStopConditionDescription(),
            )
        )
    return out
