"""3D correlative light / electron microscopy scenes, and 3D bead volumes, with known 3D affines.

``make_correlative_stacks`` renders one field of adherent cells (cell body, nucleus with its
envelope, mitochondria, lipid droplets) into two stacks shaped like the source's 3D CLEM
data set: a fluorescence LM stack (1024 x 1024 x 16 at 0.22 / 0.6 um; mitochondria and the
nuclear envelope labelled, blurred by an anisotropic PSF, shot noise) and an SBF-SEM-like EM
stack (666 x 903 x 247 at 0.14 / 0.05 um; every membrane stained dark, dense mitochondria and
droplets, noise). The EM grid is rotated, tilted, scaled, sheared and shifted with respect to
the LM grid by a known 3D affine.

``make_fiducial_volumes`` renders 200 nm beads into a small SXT tomogram (beads bright in
linear absorption) and a wide-field FM z-stack (anisotropic PSF), with spurious and missing
beads, for the 3D fiducial route.

Conventions: arrays are indexed ``[z, y, x]`` and shapes are array order; points, spacings
and transforms use ``(x, y, z)``: a voxel with index ``(i_x, i_y, i_z)`` sits at the physical
point ``(i_x * sx, i_y * sy, i_z * sz)`` in um; 4x4 homogeneous matrices act on column
vectors ``(x, y, z, 1)``. LM physical coordinates are the world coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import erf

FWHM_TO_SIGMA = 1.0 / 2.3548


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in world um: centre (3,), semi-axes (3,), rotation (3, 3) body -> world."""

    centre: np.ndarray
    axes: np.ndarray
    rotation: np.ndarray

    def extent(self) -> np.ndarray:
        """Half-widths of the axis-aligned bounding box, um."""
        return np.sqrt(((self.rotation * self.axes) ** 2).sum(axis=1))


@dataclass(frozen=True)
class Cell:
    body: Ellipsoid
    nucleus: Ellipsoid
    mitochondria: list[Ellipsoid]
    droplets: list[Ellipsoid]


@dataclass(frozen=True, eq=False)
class CorrelativeStacks:
    """An LM / EM stack pair of the same cells, with the ground truth.

    Attributes
    ----------
    lm : (nz, ny, nx) uint16 fluorescence counts (camera offset 100).
    em : (nz, ny, nx) uint8 EM stack, membranes dark on bright resin.
    lm_spacing_um, em_spacing_um : (3,) voxel size (x, y, z) in um.
    true_em_to_lm : (4, 4) EM physical (x, y, z) um -> LM physical um.
    cells : the scene's cells in world (= LM physical) um.
    """

    lm: np.ndarray
    em: np.ndarray
    lm_spacing_um: np.ndarray
    em_spacing_um: np.ndarray
    true_em_to_lm: np.ndarray
    cells: list[Cell]

    @property
    def true_em_to_lm_index(self) -> np.ndarray:
        """(4, 4) EM voxel index (x, y, z) -> LM voxel index (x, y, z)."""
        return (
            np.diag([*(1.0 / self.lm_spacing_um), 1.0])
            @ self.true_em_to_lm
            @ np.diag([*self.em_spacing_um, 1.0])
        )


def rotation_matrix(rz_deg: float, rx_deg: float = 0.0, ry_deg: float = 0.0) -> np.ndarray:
    """3x3 rotation: about x, then y, then z (degrees, counter-clockwise in (x, y, z))."""
    a, b, c = np.deg2rad([rx_deg, ry_deg, rz_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_rotation(rng, max_tilt_deg: float) -> np.ndarray:
    return rotation_matrix(rng.uniform(0, 360), *rng.uniform(-max_tilt_deg, max_tilt_deg, 2))


# --------------------------------------------------------------------------- scene


def _make_cell(rng, centre_xy, substrate_z: float) -> Cell:
    a, b = rng.uniform(9.0, 15.0), rng.uniform(7.0, 11.0)
    h = rng.uniform(3.0, 4.0)
    phi = rng.uniform(0, 360)
    body = Ellipsoid(
        np.array([*centre_xy, substrate_z + 0.55 * h]), np.array([a, b, h]), rotation_matrix(phi)
    )
    shift = rng.uniform(-0.15, 0.15, 2) * [a, b]
    rot = body.rotation
    nuc_centre = body.centre + rot @ np.array([*shift, 0.1 * h])
    nucleus = Ellipsoid(
        nuc_centre, np.array([0.45 * a, 0.5 * b, 0.6 * h]) * rng.uniform(0.85, 1.0), rotation_matrix(phi)
    )
    mitos, droplets = [], []
    for kind, count in (("mito", int(rng.integers(80, 150))), ("drop", int(rng.integers(6, 16)))):
        while len(mitos if kind == "mito" else droplets) < count:
            u = rng.uniform(-1, 1, 3) * [0.85, 0.85, 0.5]
            if np.sum(u**2) > 0.75:
                continue
            p = body.centre + rot @ (u * body.axes)
            q = np.linalg.norm(nucleus.rotation.T @ (p - nucleus.centre) / nucleus.axes)
            if q < 1.15:
                continue
            if kind == "mito":
                axes = np.array([rng.uniform(0.6, 2.0), *rng.uniform(0.22, 0.32, 2)])
                mitos.append(Ellipsoid(p, axes, _random_rotation(rng, 20)))
            else:
                droplets.append(Ellipsoid(p, np.full(3, rng.uniform(0.25, 0.5)), np.eye(3)))
    return Cell(body, nucleus, mitos, droplets)


def _place_cells(rng, lo, hi, n, min_dist, substrate_z) -> list[Cell]:
    centres: list[np.ndarray] = []
    for _ in range(50 * n):
        p = rng.uniform(lo, hi)
        if all(np.hypot(*(p - q)) >= min_dist for q in centres):
            centres.append(p)
            if len(centres) == n:
                break
    return [_make_cell(rng, c, substrate_z) for c in centres]


# --------------------------------------------------------------------------- ellipsoid fields


def _box(ell: Ellipsoid, world_to_index: np.ndarray, shape, margin_um: float):
    """Index slices (array order) of the voxels within ``margin_um`` of ``ell``'s bounding box."""
    ext = ell.extent() + margin_um
    corners = ell.centre + ext * np.array(np.meshgrid(*[[-1, 1]] * 3, indexing="ij")).reshape(3, -1).T
    idx = corners @ world_to_index[:3, :3].T + world_to_index[:3, 3]
    lo = np.maximum(np.floor(idx.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(idx.max(0)).astype(int) + 1, np.asarray(shape)[::-1])
    if np.any(hi <= lo):
        return None
    return tuple(slice(a, b) for a, b in zip(lo[::-1], hi[::-1], strict=True))


def _body_coords(ell: Ellipsoid, index_to_world: np.ndarray, box):
    """Normalised body coordinates u (3 broadcastable arrays): |u| = 1 on the surface."""
    m = (ell.rotation.T / ell.axes[:, None]) @ index_to_world[:3, :3]
    o = (ell.rotation.T @ (index_to_world[:3, 3] - ell.centre)) / ell.axes
    iz, iy, ix = (np.arange(s.start, s.stop, dtype=np.float32) for s in box)
    ix, iy, iz = ix[None, None, :], iy[None, :, None], iz[:, None, None]
    return [
        np.float32(m[k, 0]) * ix + np.float32(m[k, 1]) * iy + (np.float32(m[k, 2]) * iz + np.float32(o[k]))
        for k in range(3)
    ]


def _signed_distance(ell: Ellipsoid, u):
    """Approximate signed distance ``(q - 1) / |grad q|`` (um, negative inside) and body-frame gradient."""
    q2 = u[0] ** 2 + u[1] ** 2 + u[2] ** 2
    q = np.sqrt(q2)
    g = [u[k] / np.float32(ell.axes[k]) for k in range(3)]
    gn = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2) + np.float32(1e-6)
    return (q2 - q) / gn, g, gn


# --------------------------------------------------------------------------- LM


def _render_lm(cells, shape, spacing, psf_sigma, photons, rng, noise) -> np.ndarray:
    """Fluorescence: mitochondria (splats), nuclear envelope (blurred shell), cytoplasm, dark nucleoplasm."""
    index_to_world = np.diag([*spacing, 1.0])
    world_to_index = np.linalg.inv(index_to_world)
    img = np.zeros(shape, np.float32)
    cov_psf = np.diag(psf_sigma**2)
    for cell in cells:
        box = _box(cell.body, world_to_index, shape, 3 * psf_sigma.max())
        if box is not None:
            dist, g, gn = _signed_distance(cell.body, _body_coords(cell.body, index_to_world, box))
            img[box] += 0.12 * photons * (0.5 - 0.5 * erf(dist / (np.sqrt(2) * psf_sigma[0])))
        box = _box(cell.nucleus, world_to_index, shape, 3 * psf_sigma.max())
        if box is not None:
            nuc = cell.nucleus
            dist, g, gn = _signed_distance(nuc, _body_coords(nuc, index_to_world, box))
            # Blur across the shell: the PSF's width along the (world) surface normal.
            rot_psf = nuc.rotation.T @ cov_psf @ nuc.rotation
            var = sum(rot_psf[i, j] * g[i] * g[j] for i in range(3) for j in range(3)) / gn**2
            sig = np.sqrt(var + 0.03**2)
            img[box] += 0.35 * photons * 0.06 / (np.sqrt(2 * np.pi) * sig) * np.exp(-0.5 * dist**2 / sig**2)
            img[box] -= 0.1 * photons * (0.5 - 0.5 * erf(dist / (np.sqrt(2) * sig)))  # unlabelled nucleoplasm
        for m in cell.mitochondria:
            box = _box(m, world_to_index, shape, 3 * psf_sigma.max())
            if box is None:
                continue
            cov = m.rotation @ np.diag(m.axes**2 / 5.0) @ m.rotation.T + cov_psf
            prec = np.linalg.inv(cov).astype(np.float32)
            iz, iy, ix = (np.arange(s.start, s.stop, dtype=np.float32) for s in box)
            d = [
                (ix[None, None, :] * spacing[0] - m.centre[0]).astype(np.float32),
                (iy[None, :, None] * spacing[1] - m.centre[1]).astype(np.float32),
                (iz[:, None, None] * spacing[2] - m.centre[2]).astype(np.float32),
            ]
            quad = sum(prec[i, j] * d[i] * d[j] for i in range(3) for j in range(3))
            img[box] += photons * np.exp(-0.5 * quad)
    img += 100.0  # camera offset
    if noise:
        img = rng.poisson(img).astype(np.float32) + rng.normal(0, 2.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 65535).astype(np.uint16)


# --------------------------------------------------------------------------- EM


RESIN, CYTO, NUCLEOPLASM, MITO, DROPLET, MEMBRANE_DEPTH = 180.0, 150.0, 165.0, 85.0, 70.0, 40.0


def _paint(region, ell, index_to_world, box, inside_value, membrane_depth, width_um):
    """Fill ``ell`` with ``inside_value`` (soft edge), draw its membrane darker; ``region`` in place.

    ``region`` is the view of the output holding the voxels of index ``box``.
    """
    dist, _, _ = _signed_distance(ell, _body_coords(ell, index_to_world, box))
    w = np.float32(width_um)
    inside = np.clip(np.float32(0.5) - dist / w, 0, 1)
    region += (np.float32(inside_value) - region) * inside
    region -= np.float32(membrane_depth) * np.clip(1 - np.abs(dist) / w, 0, 1)


def _render_em(cells, shape, index_to_world, rng, noise, chunk_slices: int = 16) -> np.ndarray:
    """EM in z-chunks (bounded memory): resin, cells, nuclei, mitochondria, droplets, noise."""
    world_to_index = np.linalg.inv(index_to_world)
    out = np.empty(shape, np.uint8)
    width = 1.2 * np.abs(index_to_world[:3, :3]).max()  # membranes about one pixel wide
    objects = []
    for cell in cells:
        objects.append((cell.body, CYTO, MEMBRANE_DEPTH))
        objects.append((cell.nucleus, NUCLEOPLASM, MEMBRANE_DEPTH))
        objects += [(m, MITO, 0.5 * MEMBRANE_DEPTH) for m in cell.mitochondria]
        objects += [(d, DROPLET, 0.0) for d in cell.droplets]
    boxes = [(_box(e, world_to_index, shape, width), e, v, depth) for e, v, depth in objects]
    buf = np.empty((chunk_slices, *shape[1:]), np.float32)
    for z0 in range(0, shape[0], chunk_slices):
        z1 = min(z0 + chunk_slices, shape[0])
        chunk = buf[: z1 - z0]
        chunk.fill(RESIN)
        for box, ell, value, depth in boxes:
            if box is None or box[0].stop <= z0 or box[0].start >= z1:
                continue
            sub = (slice(max(box[0].start, z0), min(box[0].stop, z1)), box[1], box[2])
            local = (slice(sub[0].start - z0, sub[0].stop - z0), box[1], box[2])
            _paint(chunk[local], ell, index_to_world, sub, value, depth, width)
        if noise:  # uniform noise, sd 14 grey levels (Gaussian noise costs 4x more to draw)
            n = rng.random(chunk.shape, dtype=np.float32)
            chunk += (n - np.float32(0.5)) * np.float32(14.0 * np.sqrt(12.0))
        np.clip(chunk, 0, 255, out=chunk)
        out[z0:z1] = chunk
    return out


def _em_to_world(
    rng, em_centre_phys, world_centre, rotation_deg, tilt_deg, scale_jitter, shear
) -> np.ndarray:
    """4x4 EM physical -> world: about the EM centre, shear and scale, tilt and rotate, place."""
    lin = rotation_matrix(rotation_deg, *tilt_deg)
    s = 1.0 + rng.uniform(-scale_jitter, scale_jitter, 3)
    sh = np.eye(3)
    sh[0, 1], sh[1, 2] = rng.uniform(-shear, shear, 2)
    a = np.eye(4)
    a[:3, :3] = lin @ sh @ np.diag(s)
    a[:3, 3] = world_centre - a[:3, :3] @ em_centre_phys
    return a


def make_correlative_stacks(
    *,
    lm_shape: tuple[int, int, int] = (16, 1024, 1024),
    lm_spacing_um: tuple[float, float, float] = (0.22, 0.22, 0.6),
    em_shape: tuple[int, int, int] = (247, 903, 666),
    em_spacing_um: tuple[float, float, float] = (0.14, 0.14, 0.05),
    rotation_deg: float | None = None,
    tilt_deg: tuple[float, float] | None = None,
    scale_jitter: float = 0.03,
    shear: float = 0.02,
    z_offset_um: float | None = None,
    lm_psf_fwhm_um: tuple[float, float, float] = (0.3, 0.3, 0.9),
    lm_photons: float = 400.0,
    noise: bool = True,
    seed: int | np.random.Generator | None = 0,
) -> CorrelativeStacks:
    """Simulate a fluorescence LM stack and an EM stack of the same cells with a known 3D affine.

    Parameters
    ----------
    lm_shape, em_shape : stack shapes, array order (nz, ny, nx). The defaults are the source's
        LM 1024 x 1024 x 16 and EM 666 x 903 x 247 (x by y by z).
    lm_spacing_um, em_spacing_um : voxel sizes (x, y, z) in um (source: 0.22/0.6 and 0.14/0.05).
    rotation_deg : in-plane rotation of the EM grid relative to LM (default: U(-10, 10)).
    tilt_deg : tilts about x and y in degrees (default: U(-1.5, 1.5) each).
    scale_jitter : EM axis scales differ from nominal by factors ``1 + U(-scale_jitter, scale_jitter)``.
    shear : xy and yz shears drawn from U(-shear, shear).
    z_offset_um : EM centre height relative to the LM stack centre (default: U(-1, 1)).
    lm_psf_fwhm_um : LM PSF FWHM (x, y, z), um.
    lm_photons : peak photons of a mitochondrion.
    noise : shot/read noise in LM and grey-level noise in EM.
    seed : seed or generator.

    Returns
    -------
    stacks : :class:`CorrelativeStacks`. The EM field lies inside the LM field wherever it is
        placed (a random XY offset of tens of um). The default sizes take about 5-10 s on one
        core; stacks of a tenth of the size take well under a second.
    """
    rng = np.random.default_rng(seed)
    noise_rng = rng.spawn(1)[0]
    lm_sp, em_sp = np.asarray(lm_spacing_um, float), np.asarray(em_spacing_um, float)
    lm_extent = (np.asarray(lm_shape[::-1]) - 1) * lm_sp
    em_extent = (np.asarray(em_shape[::-1]) - 1) * em_sp
    rotation_deg = rng.uniform(-10, 10) if rotation_deg is None else rotation_deg
    tilt = rng.uniform(-1.5, 1.5, 2) if tilt_deg is None else np.asarray(tilt_deg, float)
    dz = rng.uniform(-1, 1) if z_offset_um is None else z_offset_um
    # The EM field (rotated) must fit inside the LM field in XY.
    t = np.deg2rad(abs(rotation_deg))
    half = (
        0.5
        * np.array(
            [
                em_extent[0] * np.cos(t) + em_extent[1] * np.sin(t),
                em_extent[0] * np.sin(t) + em_extent[1] * np.cos(t),
            ]
        )
        * (1 + scale_jitter + shear)
    )
    room = 0.5 * lm_extent[:2] - half
    if np.any(room < 0):
        raise ValueError(
            f"the EM field ({em_extent[:2]} um) does not fit inside the LM field ({lm_extent[:2]} um)"
        )
    centre_xy = 0.5 * lm_extent[:2] + rng.uniform(-1, 1, 2) * 0.8 * room
    world_centre = np.array([*centre_xy, 0.5 * lm_extent[2] + dz])
    em_to_world = _em_to_world(rng, 0.5 * em_extent, world_centre, rotation_deg, tilt, scale_jitter, shear)
    substrate_z = 0.5
    n_cells = max(3, int(lm_extent[0] * lm_extent[1] / 30.0**2 * 0.9))
    cells = _place_cells(rng, [0.0, 0.0], lm_extent[:2], n_cells, 30.0, substrate_z)
    psf_sigma = np.asarray(lm_psf_fwhm_um, float) * FWHM_TO_SIGMA
    lm = _render_lm(cells, lm_shape, lm_sp, psf_sigma, lm_photons, noise_rng, noise)
    em = _render_em(cells, em_shape, em_to_world @ np.diag([*em_sp, 1.0]), noise_rng, noise)
    return CorrelativeStacks(lm, em, lm_sp, em_sp, em_to_world, cells)


# --------------------------------------------------------------------------- 3D fiducial volumes

MU_ICE, MU_CYTOPLASM, MU_BEAD, MU_SPURIOUS = 0.109, 0.35, 1.30, 1.00  # 1/um in the water window


@dataclass(frozen=True, eq=False)
class FiducialVolumes:
    """An SXT tomogram and an FM z-stack of the same beads, with the ground truth.

    Attributes
    ----------
    sxt : (nz, ny, nx) float32 linear absorption coefficient (1/um); beads are bright.
    fm : (nz, ny, nx) float32 fluorescence (photo-electrons); beads are bright PSF spots.
    sxt_voxel_nm, fm_voxel_nm : (3,) voxel sizes (x, y, z) in nm.
    true_fm_to_sxt : (4, 4) FM voxel (x, y, z) -> SXT voxel (x, y, z).
    beads_sxt_px, beads_fm_px : (n, 3), (m, 3) true centres (x, y, z) in voxels.
    pairs : (k, 2) index pairs (i_sxt, j_fm) of the same physical bead.
    spurious_sxt, spurious_fm : indices of blobs / spots that are not beads.
    """

    sxt: np.ndarray
    fm: np.ndarray
    sxt_voxel_nm: np.ndarray
    fm_voxel_nm: np.ndarray
    true_fm_to_sxt: np.ndarray
    beads_sxt_px: np.ndarray
    beads_fm_px: np.ndarray
    pairs: np.ndarray
    spurious_sxt: np.ndarray
    spurious_fm: np.ndarray


def _bead_positions(rng, n, lo, hi, ok, min_dist) -> np.ndarray:
    chosen: list[np.ndarray] = []
    for _ in range(400):
        for p in rng.uniform(lo, hi, size=(64, 3)):
            if ok(p) and all(np.linalg.norm(p - q) >= min_dist for q in chosen):
                chosen.append(p)
                if len(chosen) == n:
                    return np.array(chosen)
    raise ValueError(f"cannot place {n} beads {min_dist:g} nm apart in the common volume; use fewer")


def make_fiducial_volumes(
    *,
    field_um: tuple[float, float, float] = (6.0, 6.0, 3.0),
    sxt_voxel_nm: float = 30.0,
    fm_voxel_nm: tuple[float, float, float] = (150.0, 150.0, 300.0),
    n_beads: int = 10,
    rotation_deg: float = 7.0,
    tilt_deg: tuple[float, float] = (2.0, -1.0),
    offset_um: tuple[float, float, float] = (0.4, -0.3, 0.2),
    fm_psf_fwhm_nm: tuple[float, float, float] = (350.0, 350.0, 900.0),
    spurious_fraction: float = 0.0,
    missing_fraction: float = 0.0,
    sxt_noise: float = 0.1,
    fm_photons: float = 5000.0,
    noise: bool = True,
    seed: int | np.random.Generator | None = 0,
) -> FiducialVolumes:
    """Simulate a cryo-SXT tomogram and a cryo-FM z-stack of 200 nm beads with a known 3D affine.

    Parameters
    ----------
    field_um : (x, y, z) extent of the SXT volume in um; the FM stack covers it on its own grid.
    sxt_voxel_nm : isotropic SXT voxel size, nm (10-30 nm; larger keeps tests fast).
    fm_voxel_nm : FM voxel size (x, y, z), nm (the z step of the stack is the third).
    n_beads : physical beads, all inside both volumes, at least 1 um apart.
    rotation_deg, tilt_deg : FM grid rotation about z, then tilts about x and y, degrees.
    offset_um : (x, y, z) offset of the FM centre from the SXT centre, um.
    fm_psf_fwhm_nm : FM PSF FWHM (x, y, z), nm (wide-field: axial ~2.5x lateral).
    spurious_fraction : ``round(spurious_fraction * n_beads)`` non-bead blobs, each at random a
        dense SXT-only particle (150-350 nm) or an FM-only spot.
    missing_fraction : ``round(missing_fraction * n_beads)`` beads seen in one modality only.
    sxt_noise : Gaussian noise of the tomogram, 1/um per voxel.
    fm_photons : photons from one bead.
    noise : add noise (False: the expected volumes).
    seed : seed or generator.

    Returns
    -------
    volumes : :class:`FiducialVolumes`; the defaults take well under a second.
    """
    rng = np.random.default_rng(seed)
    noise_rng = rng.spawn(1)[0]
    field_nm = np.asarray(field_um, float) * 1e3
    sxt_shape = tuple(int(round(f / sxt_voxel_nm)) for f in field_nm[::-1])  # (nz, ny, nx)
    fm_vox = np.asarray(fm_voxel_nm, float)
    fm_shape = tuple(int(round(f / v)) for f, v in zip(field_nm[::-1], fm_vox[::-1], strict=True))
    c_world = (np.asarray(sxt_shape[::-1]) - 1) / 2.0 * sxt_voxel_nm
    c_fm = (np.asarray(fm_shape[::-1]) - 1) / 2.0
    fm_to_world = np.eye(4)
    fm_to_world[:3, :3] = rotation_matrix(rotation_deg, *tilt_deg) @ np.diag(fm_vox)
    fm_to_world[:3, 3] = c_world + 1e3 * np.asarray(offset_um) - fm_to_world[:3, :3] @ c_fm
    world_to_fm = np.linalg.inv(fm_to_world)
    fm_to_sxt = np.diag([*(np.full(3, 1.0 / sxt_voxel_nm)), 1.0]) @ fm_to_world

    def in_both(p):
        f = world_to_fm[:3, :3] @ p + world_to_fm[:3, 3]
        return bool(np.all(f >= 2) and np.all(f <= np.asarray(fm_shape[::-1]) - 3))

    n_spur, n_miss = round(spurious_fraction * n_beads), round(missing_fraction * n_beads)
    margin = 300.0
    pos = _bead_positions(rng, n_beads + n_spur, margin, field_nm - margin, in_both, 1000.0)
    role = np.zeros(len(pos), int)  # 0 both, 1 SXT only, 2 FM only, 3 spurious SXT, 4 spurious FM
    role[:n_miss] = rng.choice([1, 2], n_miss)
    role[n_beads:] = rng.choice([3, 4], n_spur)
    sxt_ids = rng.permutation(np.flatnonzero(np.isin(role, (0, 1, 3))))
    fm_ids = rng.permutation(np.flatnonzero(np.isin(role, (0, 2, 4))))

    # SXT: ice, a soft cell blob, spheres with partial-volume edges, 30 nm resolution, noise.
    zz, yy, xx = (np.arange(n, dtype=np.float32) * sxt_voxel_nm for n in sxt_shape)
    cell = np.exp(
        -(
            ((xx[None, None] - 0.4 * field_nm[0]) / (0.35 * field_nm[0])) ** 2
            + ((yy[None, :, None] - 0.55 * field_nm[1]) / (0.3 * field_nm[1])) ** 2
        )
    )
    sxt = (MU_ICE + (MU_CYTOPLASM - MU_ICE) * cell * np.ones((sxt_shape[0], 1, 1))).astype(np.float32)
    beads_sxt = pos[sxt_ids] / sxt_voxel_nm
    radii = np.where(role[sxt_ids] == 3, rng.uniform(75, 175, len(sxt_ids)), 100.0) / sxt_voxel_nm
    mu = np.where(role[sxt_ids] == 3, MU_SPURIOUS, MU_BEAD)
    for c, r, m in zip(beads_sxt, radii, mu, strict=True):
        lo = np.maximum(np.floor(c - r - 2).astype(int), 0)
        hi = np.minimum(np.ceil(c + r + 3).astype(int), np.asarray(sxt_shape[::-1]))
        gz, gy, gx = np.ogrid[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        d = np.sqrt((gx - c[0]) ** 2 + (gy - c[1]) ** 2 + (gz - c[2]) ** 2)
        frac = np.clip(r - d + 0.5, 0.0, 1.0)
        region = sxt[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        region += (m - region) * frac
    sxt = ndimage.gaussian_filter(sxt, 30.0 * FWHM_TO_SIGMA / sxt_voxel_nm)
    if noise:
        sxt = sxt + noise_rng.normal(0.0, sxt_noise, sxt.shape).astype(np.float32)

    # FM: anisotropic Gaussian spots on background; spurious spots dimmer.
    beads_fm = pos[fm_ids] @ world_to_fm[:3, :3].T + world_to_fm[:3, 3]
    sig = np.asarray(fm_psf_fwhm_nm, float) * FWHM_TO_SIGMA
    cov_world = np.diag(sig**2 + (100.0 / np.sqrt(5.0)) ** 2)  # PSF and the 200 nm sphere
    lin = world_to_fm[:3, :3]
    prec = np.linalg.inv(lin @ cov_world @ lin.T)  # in FM voxel units
    bright = fm_photons * rng.lognormal(0.0, 0.15, len(fm_ids))
    bright = np.where(role[fm_ids] == 4, bright * rng.uniform(0.3, 1.0, len(fm_ids)), bright)
    fm = np.full(fm_shape, 20.0, np.float32)
    norm = np.sqrt(np.linalg.det(prec)) / (2 * np.pi) ** 1.5
    gz, gy, gx = np.ogrid[0 : fm_shape[0], 0 : fm_shape[1], 0 : fm_shape[2]]
    for c, n in zip(beads_fm, bright, strict=True):
        d = [gx - c[0], gy - c[1], gz - c[2]]
        quad = sum(prec[i, j] * d[i] * d[j] for i in range(3) for j in range(3))
        fm += (n * norm * np.exp(-0.5 * quad)).astype(np.float32)
    if noise:
        fm = (noise_rng.poisson(fm) + noise_rng.normal(0.0, 1.5, fm.shape)).astype(np.float32)

    fm_index = {pid: j for j, pid in enumerate(fm_ids)}
    pairs = [(i, fm_index[pid]) for i, pid in enumerate(sxt_ids) if role[pid] == 0]
    return FiducialVolumes(
        sxt=sxt.astype(np.float32),
        fm=fm,
        sxt_voxel_nm=np.full(3, float(sxt_voxel_nm)),
        fm_voxel_nm=fm_vox,
        true_fm_to_sxt=fm_to_sxt,
        beads_sxt_px=beads_sxt,
        beads_fm_px=beads_fm,
        pairs=np.array(pairs, dtype=int).reshape(-1, 2),
        spurious_sxt=np.flatnonzero(role[sxt_ids] == 3),
        spurious_fm=np.flatnonzero(role[fm_ids] == 4),
    )
