"""Tomographic reconstruction while the scan runs.

- :func:`fbp`: filtered / weighted back-projection, parallel beam, any angle set.
- :class:`IncrementalReconstructor`: the volume grows projection by projection; previews;
  shift updates redo one contribution.
- :class:`SIRT`, :class:`TVDescent`: iterative refinement in bounded chunks, warm-started.
- :class:`Projector` / :func:`project`: the forward model A (matches
  ``livetomo.simulators.projector``) and its adjoint.
- ``channels``: XRF counts, DPC phase, SXT absorption and K3 contrast as projections.

Geometry: volumes (z, y, x), z the rotation axis; at θ = 0 the beam runs along y; detector
column u = x cos θ + y sin θ from the centres. See docs/reconstruction.md.
"""

from .angles import angular_weights, normalised_tilt_weights, tilt_weights
from .backprojection import FilterPlan, fbp, projection_weights
from .channels import absorption_from_transmission, contrast_from_counts, normalized_counts, phase_from_dpc
from .errors import NonFiniteProjectionError, ReconstructionError, UnknownProjectionError
from .filters import FILTERS, fourier_filter
from .incremental import IncrementalReconstructor, Previews, orthogonal_slices, previews_to_numpy
from .iterative import SIRT, TVDescent, estimate_noise, mu_from_noise
from .projector import Projector, project
from .shifts import shift_rows

__all__ = [
    "FILTERS",
    "SIRT",
    "FilterPlan",
    "IncrementalReconstructor",
    "NonFiniteProjectionError",
    "Previews",
    "Projector",
    "ReconstructionError",
    "TVDescent",
    "UnknownProjectionError",
    "absorption_from_transmission",
    "angular_weights",
    "contrast_from_counts",
    "estimate_noise",
    "fbp",
    "fourier_filter",
    "mu_from_noise",
    "normalized_counts",
    "orthogonal_slices",
    "phase_from_dpc",
    "previews_to_numpy",
    "project",
    "projection_weights",
    "shift_rows",
    "tilt_weights",
    "normalised_tilt_weights",
]
