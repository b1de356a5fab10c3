"""Synthetic frozen-hydrated cell in vitreous ice, as a voxel phantom.

One geometric model is rasterised into every property the simulators need:
hard-X-ray attenuation and phase (10 keV), electron-optical potential (TEM),
trace-element concentrations (XRF) and fluorescent label (cryo-FM).

The cell and its organelles are sized relative to the volume (the cell fills
about 70 % of the field), so a phantom can be rasterised at any voxel size;
FluoSpheres keep their physical 200 nm diameter and gold beads are 1.5 voxels
across.  Objects are painted in order (ice, cell, membranes, nucleus,
organelles, beads), each replacing what is below it in proportion to its
soft-edged occupancy, which anti-aliases every boundary over about one voxel.

Material values (10 keV, from tabulated mass attenuation and electron density):
ice mu 4.9e-4 /µm, delta 2.1e-6; protein-rich material up to ~3e-6; gold
mu 0.23 /µm, delta 3.0e-5; polystyrene mu 2.2e-4 /µm, delta 2.35e-6.
Element concentrations are typical cellular values in µg/cm³ (e.g. Zn about
60, i.e. ~1 mM; K about 3500, i.e. ~100 mM).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

ELEMENTS = ("Zn", "Fe", "Cu", "Ca", "P", "K", "S", "Mn")
_PROPS = ("mu", "delta", "potential", "label", *ELEMENTS)
_INDEX = {name: i for i, name in enumerate(_PROPS)}

FLUOSPHERE_DIAMETER_NM = 200.0
GOLD_DIAMETER_VOX = 1.5
GRAIN_CONTRAST = 0.08  # relative std of voxel-scale density granularity in the cell

# Property values per material, in the order of _PROPS: mu (1/µm at 10 keV),
# delta (10 keV), potential (V), label (arbitrary), then Zn, Fe, Cu, Ca, P, K, S, Mn
# concentrations (µg/cm³).
# fmt: off
_MATERIALS: dict[str, tuple[float, ...]] = {
    #                  mu      delta    V     label  Zn    Fe     Cu    Ca     P     K     S     Mn
    "ice":           (4.9e-4, 2.10e-6, 4.5,  0.0,   0,    0,     0,    0,     0,    0,    0,    0),
    "cytoplasm":     (5.3e-4, 2.45e-6, 5.0,  0.0,   60,   15,    4,    40,    900,  3500, 1500, 1.0),
    "membrane":      (5.6e-4, 3.00e-6, 7.0,  0.05,  40,   10,    3,    80,    2500, 2000, 1800, 1.0),
    "nucleoplasm":   (5.5e-4, 2.60e-6, 5.3,  0.3,   40,   10,    2,    30,    3500, 3000, 1200, 0.5),
    "mito_matrix":   (5.6e-4, 2.75e-6, 5.8,  1.0,   60,   80,    15,   60,    1200, 3500, 2200, 5.0),
    "mito_membrane": (5.7e-4, 3.00e-6, 7.0,  1.0,   40,   60,    10,   60,    2500, 2000, 2000, 3.0),
    "vesicle_lumen": (5.0e-4, 2.20e-6, 4.7,  0.0,   20,   5,     1,    100,   300,  1000, 500,  0.5),
    "dense_granule": (3.0e-3, 3.60e-6, 7.5,  0.0,   300,  20,    5,    8000,  6000, 1500, 800,  2.0),
    "iron_store":    (1.2e-3, 2.90e-6, 6.5,  0.0,   60,   2000,  5,    40,    1500, 2000, 1500, 2.0),
    "copper_site":   (6.0e-4, 2.80e-6, 6.0,  0.0,   60,   15,    400,  40,    900,  3000, 2500, 1.0),
    "polystyrene":   (2.2e-4, 2.35e-6, 8.5,  100.0, 0,    0,     0,    0,     0,    0,    0,    0),
    "gold":          (0.23,   3.0e-5,  30.0, 0.0,   0,    0,     0,    0,     0,    0,    0,    0),
}
# fmt: on
assert all(len(row) == len(_PROPS) for row in _MATERIALS.values())


def _material(name: str) -> np.ndarray:
    """Property vector (len(_PROPS),) of a material."""
    return np.asarray(_MATERIALS[name], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Specimen:
    """A voxel phantom; every array is (nz, ny, nx), z vertical (rotation axis).

    Attributes
    ----------
    voxel_size_nm : voxel edge length, nm.
    mu : float32, hard-X-ray linear attenuation at 10 keV, 1/µm.
    delta : float32, refractive index decrement at 10 keV.
    potential : float32, electron-optical (mean inner) potential, V; 0 in vacuum.
    elements : element symbol -> float32 concentration, µg/cm³.
    gold_beads : (n, 3) float, bead centres in voxel coordinates (z, y, x).
    fluospheres : (n, 3) float, 200 nm FluoSphere centres, voxel coordinates.
    label : float32, fluorescent-label density (arbitrary units), FluoSpheres included.
    """

    voxel_size_nm: float
    mu: np.ndarray
    delta: np.ndarray
    potential: np.ndarray
    elements: dict[str, np.ndarray]
    gold_beads: np.ndarray
    fluospheres: np.ndarray
    label: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """(nz, ny, nx) of the volumes."""
        return tuple(self.mu.shape)


# ----------------------------------------------------------------------------- geometry


def _rotation(yaw: float, tilt: float = 0.0) -> np.ndarray:
    """3x3 matrix (z, y, x order) rotating by ``yaw`` about z then ``tilt`` about x."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    ct, st = np.cos(tilt), np.sin(tilt)
    about_z = np.array([[1, 0, 0], [0, cy, -sy], [0, sy, cy]])
    about_x = np.array([[ct, -st, 0], [st, ct, 0], [0, 0, 1]])
    return about_x @ about_z


def _box(shape, centre, reach) -> tuple[slice, ...] | None:
    """Slices of the volume within ``reach`` voxels of ``centre``; None if empty."""
    box = []
    for n, c in zip(shape, centre, strict=True):
        lo, hi = max(int(np.floor(c - reach)), 0), min(int(np.ceil(c + reach)) + 1, n)
        if hi <= lo:
            return None
        box.append(slice(lo, hi))
    return tuple(box)


def _local_coords(box, centre, rot):
    """Coordinates (3 broadcastable arrays) of the box voxels in the object frame."""
    grids = np.ogrid[box]
    r = [g.astype(np.float32) - np.float32(c) for g, c in zip(grids, centre, strict=True)]
    rot = rot.astype(np.float32)
    return [rot[i, 0] * r[0] + rot[i, 1] * r[1] + rot[i, 2] * r[2] for i in range(3)]


def _ellipsoid_distance(local, semi_axes) -> np.ndarray:
    """Approximate signed distance (voxels, < 0 inside) to an ellipsoid surface.

    First-order estimate (rho - 1) / |grad rho| with rho the normalised radius:
    exact on the axes and good to a fraction of a voxel near the surface, which
    is all the anti-aliasing needs.
    """
    a = np.asarray(semi_axes, dtype=np.float32)
    rho2 = sum((r / ai) ** 2 for r, ai in zip(local, a, strict=True))
    g2 = sum((r / ai**2) ** 2 for r, ai in zip(local, a, strict=True))
    rho = np.sqrt(rho2)
    grad = np.where(rho2 > 0, np.sqrt(g2 / np.maximum(rho2, 1e-12)), 1.0 / a.min())
    return (rho - 1.0) / grad


def _inside(d: np.ndarray) -> np.ndarray:
    """Occupancy with a one-voxel linear ramp across the surface."""
    return np.clip(0.5 - d, 0.0, 1.0)


def _shell(d: np.ndarray, thickness: float) -> np.ndarray:
    """Occupancy of a shell of ``thickness`` voxels just inside the surface."""
    return _inside(d) - _inside(d + thickness)


class _Canvas:
    """Stack of property volumes painted object by object (painter's algorithm)."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.data = np.zeros((len(_PROPS), *self.shape), dtype=np.float32)

    def paint(self, box, occupancy, material: str) -> None:
        """Replace the content of ``box`` by ``material`` in proportion to occupancy."""
        vec = _material(material)[(slice(None),) + (None,) * 3]
        f = occupancy[None]
        self.data[(slice(None), *box)] *= 1.0 - f
        self.data[(slice(None), *box)] += vec * f

    def ellipsoid(self, centre, semi_axes, rot, material, membrane=None, thickness=1.0):
        """Paint a soft ellipsoid, optionally with a membrane shell of another material."""
        box = _box(self.shape, centre, max(semi_axes) + 2)
        if box is None:
            return
        d = _ellipsoid_distance(_local_coords(box, centre, rot), semi_axes)
        self.paint(box, _inside(d), material)
        if membrane is not None:
            self.paint(box, _shell(d, thickness), membrane)

    def sphere(self, centre, radius, material):
        """Paint a sphere of any size, sub-voxel ones as a volume-preserving Gaussian."""
        if radius >= 1.5:
            self.ellipsoid(centre, (radius,) * 3, np.eye(3), material)
            return
        # Small bead: spread its volume 4/3 pi r^3 over a Gaussian whose width is
        # the sphere's own second moment plus half a voxel of anti-aliasing.
        sigma = np.sqrt(radius**2 / 5.0 + 0.25)
        box = _box(self.shape, centre, 3.5 * sigma + 1)
        if box is None:
            return
        r2 = sum(c**2 for c in _local_coords(box, centre, np.eye(3)))
        vol = 4.0 / 3.0 * np.pi * radius**3
        g = vol * np.exp(-r2 / (2 * sigma**2)) / (2 * np.pi * sigma**2) ** 1.5
        self.paint(box, np.minimum(g, 1.0).astype(np.float32), material)


# ----------------------------------------------------------------------------- phantom


def _smooth_field(shape, rng, correlation: float) -> np.ndarray:
    """Zero-mean, unit-std random field smooth over ``correlation`` voxels."""
    step = max(int(correlation / 2), 1)
    coarse_shape = [max(n // step, 1) + 3 for n in shape]
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0, mode="wrap")
    zoom = [n / max(c - 3, 1) for n, c in zip(shape, coarse_shape, strict=True)]
    field = ndimage.zoom(coarse, zoom, order=1)[tuple(slice(0, n) for n in shape)]
    field = field - field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def _sample_in_ellipsoid(rng, centre, semi_axes, rot, n, max_rho=1.0):
    """n points uniform inside an ellipsoid (scaled by max_rho), voxel coords."""
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v *= max_rho * rng.random((n, 1)) ** (1 / 3)
    local = v * np.asarray(semi_axes)
    return np.asarray(centre) + local @ rot  # rot maps world->local, so rot.T maps back


def _rho(points, centre, semi_axes, rot) -> np.ndarray:
    """Normalised ellipsoid radius of points (n, 3)."""
    local = (np.asarray(points) - np.asarray(centre)) @ rot.T
    return np.sqrt(np.sum((local / np.asarray(semi_axes)) ** 2, axis=1))


def _place_beads(rng, shape, n, cell, ice_radius, min_sep, taken=()):
    """Centres of n beads in the ice around the cell, apart from each other."""
    nz, ny, nx = shape
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    margin = 2.0
    cand = np.column_stack(
        [
            rng.uniform(margin, nz - 1 - margin, 64 * max(n, 1)),
            rng.uniform(margin, ny - 1 - margin, 64 * max(n, 1)),
            rng.uniform(margin, nx - 1 - margin, 64 * max(n, 1)),
        ]
    )
    in_ice = np.hypot(cand[:, 1] - cy, cand[:, 2] - cx) < ice_radius - margin
    cand = cand[in_ice & (_rho(cand, *cell) > 1.1)]
    chosen = list(taken)
    start = len(chosen)
    for p in cand:
        if len(chosen) - start >= n:
            break
        if all(np.linalg.norm(p - q) >= min_sep for q in chosen):
            chosen.append(p)
    return np.asarray(chosen[start:], dtype=float).reshape(-1, 3)


def make_cell(
    shape: tuple[int, int, int] = (32, 64, 64),
    *,
    voxel_size_nm: float = 300.0,
    n_organelles: int = 12,
    n_gold: int = 6,
    n_fluospheres: int = 6,
    seed: int | np.random.Generator | None = 0,
) -> Specimen:
    """Rasterise a frozen-hydrated cell in a cylinder of vitreous ice.

    Parameters
    ----------
    shape : (nz, ny, nx) of the volume, voxels.
    voxel_size_nm : voxel edge length, nm (sets the FluoSphere size in voxels
        and the physical scale of every projection).
    n_organelles : number of mitochondria, vesicles and dense granules.
    n_gold, n_fluospheres : numbers of gold beads (1.5 voxels) and 200 nm
        FluoSpheres placed in the ice around the cell.
    seed : seed or generator; the same seed gives the same phantom.

    Returns
    -------
    Specimen
        Read-only float32 volumes of shape ``shape``.

    Notes
    -----
    The ice is a cylinder about the z (rotation) axis, like a capillary, so its
    projection is the same at every angle.  Zn is diffuse over the cytoplasm
    with a few broad Zn-rich zones (a smooth, low-contrast map); Fe sits in a
    few small stores, Cu in sparse spots, Ca in dense granules, P mostly in the
    nucleus, K and S are diffuse.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    nz, ny, nx = shape
    centre_vol = np.array([(n - 1) / 2 for n in shape])
    canvas = _Canvas(shape)

    # Ice cylinder filling the field (rotation-invariant projection).
    ice_radius = 0.47 * min(ny, nx)
    zz, yy, xx = np.ogrid[:nz, :ny, :nx]
    r_cyl = np.hypot(yy - centre_vol[1], xx - centre_vol[2]).astype(np.float32)
    full = tuple(slice(0, n) for n in shape)
    canvas.paint(full, np.broadcast_to(_inside(r_cyl - ice_radius), shape), "ice")

    # Cell body: a flattened ellipsoid, ~70 % of the field, random yaw.
    s_yx = 0.35 * min(ny, nx)
    cell_axes = (0.35 * nz, s_yx * rng.uniform(0.85, 1.0), s_yx * rng.uniform(0.7, 0.9))
    cell_rot = _rotation(rng.uniform(0, np.pi))
    cell_centre = centre_vol + rng.uniform(-0.03, 0.03, 3) * np.array(shape)
    cell = (cell_centre, cell_axes, cell_rot)
    membrane_t = max(1.0, 0.012 * min(ny, nx))
    d_cell = _ellipsoid_distance(_local_coords(full, cell_centre, cell_rot), cell_axes)
    f_cell = _inside(d_cell)
    canvas.paint(full, f_cell, "cytoplasm")

    # Cytoplasmic texture: smooth variations of density and of diffuse elements.
    texture = _smooth_field(shape, rng, 0.15 * min(ny, nx))
    for name, amp in (("mu", 0.03), ("delta", 0.03), ("potential", 0.03), ("Zn", 0.3)):
        canvas.data[_INDEX[name]] *= 1 + amp * texture * f_cell
    for name in ("K", "S"):
        canvas.data[_INDEX[name]] *= 1 + 0.1 * texture * f_cell
    canvas.paint(full, _shell(d_cell, membrane_t), "membrane")

    # Nucleus with its envelope, off-centre inside the cell.
    nuc_axes = tuple(0.45 * a for a in cell_axes)
    nuc_shift = np.array([0.0, *rng.uniform(-0.15, 0.15, 2)]) * np.array(cell_axes)
    nuc_centre = cell_centre + nuc_shift @ cell_rot
    canvas.ellipsoid(nuc_centre, nuc_axes, cell_rot, "nucleoplasm", "membrane", membrane_t)
    nucleus = (nuc_centre, nuc_axes, cell_rot)

    _paint_organelles(canvas, rng, n_organelles, cell, nucleus, s_yx, membrane_t)
    _paint_trace_sites(canvas, rng, cell, nucleus, s_yx, f_cell)

    # Granularity at the voxel scale (macromolecular crowding, ribosomes, cytoskeleton):
    # it gives the phase maps the fine detail that makes DPC align sharply.
    grain = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.7)
    grain *= GRAIN_CONTRAST / (grain.std() + 1e-12)
    for name in ("mu", "delta", "potential"):
        canvas.data[_INDEX[name]] *= 1 + grain * f_cell

    # Beads in the ice around the cell.
    fs_radius = 0.5 * FLUOSPHERE_DIAMETER_NM / float(voxel_size_nm)
    min_sep = max(3.0, 4 * fs_radius)
    fluospheres = _place_beads(rng, shape, n_fluospheres, cell, ice_radius, min_sep)
    gold = _place_beads(rng, shape, n_gold, cell, ice_radius, min_sep, taken=list(fluospheres))
    for c in fluospheres:
        canvas.sphere(c, fs_radius, "polystyrene")
    for c in gold:
        canvas.sphere(c, GOLD_DIAMETER_VOX / 2, "gold")

    return _to_specimen(canvas.data, voxel_size_nm, gold, fluospheres)


def _paint_organelles(canvas, rng, n, cell, nucleus, scale, thickness) -> None:
    """Mitochondria (membrane-bound ellipsoids), vesicles and dense granules."""
    kinds = rng.choice(["mito", "vesicle", "granule"], size=n, p=[0.4, 0.35, 0.25])
    cand = _sample_in_ellipsoid(rng, *cell, 40 * max(n, 1), max_rho=0.75)
    cand = cand[_rho(cand, *nucleus) > 1.3]
    for kind, centre in zip(kinds, cand, strict=False):
        if kind == "mito":
            axes = (0.09 * scale, 0.09 * scale, scale * rng.uniform(0.18, 0.28))
            rot = _rotation(rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3))
            canvas.ellipsoid(centre, axes, rot, "mito_matrix", "mito_membrane", thickness)
        elif kind == "vesicle":
            r = scale * rng.uniform(0.06, 0.1)
            canvas.ellipsoid(centre, (r, r, r), np.eye(3), "vesicle_lumen", "membrane", thickness)
        else:
            r = scale * rng.uniform(0.03, 0.06)
            canvas.ellipsoid(centre, (r, r, r), np.eye(3), "dense_granule")


def _paint_trace_sites(canvas, rng, cell, nucleus, scale, f_cell) -> None:
    """Broad Zn-rich zones, small Fe stores and sparse Cu spots in the cytoplasm."""
    pts = _sample_in_ellipsoid(rng, *cell, 200, max_rho=0.7)
    pts = pts[_rho(pts, *nucleus) > 1.2]
    zn, fe, cu = pts[:3], pts[3:6], pts[6:10]
    # Zn-rich zones: wide Gaussians (~0.15 of the cell) doubling the local Zn,
    # confined to the cell so the ice stays free of metal.
    sigma = 0.15 * scale
    zn_idx = _INDEX["Zn"]
    for c in zn:
        box = _box(canvas.shape, c, 3 * sigma)
        r2 = sum(q**2 for q in _local_coords(box, c, np.eye(3)))
        bump = 60.0 * np.exp(-r2 / (2 * sigma**2)) * f_cell[box]
        canvas.data[(zn_idx, *box)] += bump.astype(np.float32)
    for c in fe:
        r = max(0.8, 0.04 * scale)
        canvas.ellipsoid(c, (r, r, r), np.eye(3), "iron_store")
    for c in cu:
        canvas.sphere(c, 1.0, "copper_site")


def _to_specimen(data, voxel_size_nm, gold, fluospheres) -> Specimen:
    """Split the property stack into read-only arrays of a Specimen."""
    data = np.maximum(data, 0.0)  # guards texture modulation against negatives
    data.flags.writeable = False
    return Specimen(
        voxel_size_nm=float(voxel_size_nm),
        mu=data[_INDEX["mu"]],
        delta=data[_INDEX["delta"]],
        potential=data[_INDEX["potential"]],
        elements={el: data[_INDEX[el]] for el in ELEMENTS},
        gold_beads=gold,
        fluospheres=fluospheres,
        label=data[_INDEX["label"]],
    )
