"""Correlative registration of X-ray / electron images with cryo-fluorescence.

Two routes, both pure computation (arrays in, arrays and small dataclasses out):

* fiducial (2D and 3D): :func:`register_fiducial` finds 200 nm beads in both modalities,
  localises them sub-pixel, pairs them without user input (similar triangles + consensus),
  fits a rigid / similarity / affine transform and reports the error budget
  σ_T = √(σ_X² + σ_F² + σ_A²), leave-one-out TRE and a TRE map; :func:`warp_image` and
  :func:`fuse_hsi` make the overlay.
* intensity (3D stacks, no beads): :func:`register_stacks`: LoG common representation with
  automatic scale selection, XY pre-alignment by patch search in the LM MIP, then mutual
  information (SimpleITK), rigid then affine.

Conventions: images are indexed ``[y, x]`` / ``[z, y, x]``; points, pixel sizes, spacings and
boxes are ``(x, y[, z])``; transforms are homogeneous matrices on column vectors ``(x, y[, z], 1)``.
Errors are :class:`CorrelationError` (a ValueError) subclasses naming the problem.
"""

from .accuracy import leave_one_out, mapping_std, tre_map
from .detect import BeadDetections, bead_signal, detect_beads
from .errors import BeadMatchingError, CorrelationError, RegistrationError, TooFewBeadsError
from .fiducial import BeadSet, FiducialRegistration, find_beads, register_beads, register_fiducial
from .fuse import fuse_hsi, hsi_to_rgb, warp_image
from .intensity import IntensityRegistration, register_stacks
from .laplacian import ScaleSelection, log_filter, select_log_scale
from .localize import Localisation, localize_beads
from .match import BeadMatch, match_beads
from .prealign import Prealignment, prealign_xy
from .transforms import MODELS, apply_transform, estimate_transform

__all__ = [
    "MODELS",
    "BeadDetections",
    "BeadMatch",
    "BeadMatchingError",
    "BeadSet",
    "CorrelationError",
    "FiducialRegistration",
    "IntensityRegistration",
    "Localisation",
    "Prealignment",
    "RegistrationError",
    "ScaleSelection",
    "TooFewBeadsError",
    "apply_transform",
    "bead_signal",
    "detect_beads",
    "estimate_transform",
    "find_beads",
    "fuse_hsi",
    "hsi_to_rgb",
    "leave_one_out",
    "localize_beads",
    "log_filter",
    "mapping_std",
    "match_beads",
    "prealign_xy",
    "register_beads",
    "register_fiducial",
    "register_stacks",
    "select_log_scale",
    "tre_map",
    "warp_image",
]
