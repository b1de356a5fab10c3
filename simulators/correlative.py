"""Correlative cryo soft X-ray (SXT) projection and wide-field cryo-FM of one grid region.

The scene lives in world coordinates (nm) on the grid plane: a cell (carbon-rich, so it
absorbs in the water window), a nucleus and mitochondria, and 200 nm FluoSpheres. SXT is a
Beer-Lambert transmission image ``exp(-integral(mu dl))`` at ``sxt_pixel_nm``, where beads are
dark disks. Cryo-FM is sampled on a grid that is rotated, offset (and optionally scaled) with
respect to SXT; beads are bright PSF-blurred spots whose width grows with their distance from
the focal plane, and the cell carries a fluorescent label that SXT does not see.

Pixel coordinates are (x, y) = (column, row) with pixel centres at integers; images are
indexed ``[y, x]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import erf

# Linear absorption coefficients in the water window (~520 eV), 1/um.
MU_ICE = 0.109
MU_CYTOPLASM = 0.35
MU_NUCLEUS_EXTRA = 0.10  # over cytoplasm
MU_MITO_EXTRA = 0.20
MU_BEAD = 1.30  # polystyrene, carbon-rich
MU_SPURIOUS = 1.00  # dense contaminant particles
BEAD_DIAMETER_NM = 200.0  # FluoSpheres F-8810
EMISSION_NM = 605.0  # FluoSpheres red, emission maximum
SXT_RESOLUTION_NM = 30.0  # FWHM of the zone-plate blur
MIN_SPOT_SEPARATION_NM = 1000.0  # beads closer than this merge in FM


@dataclass(frozen=True, eq=False)
class CorrelativeScene:
    """An SXT / FM image pair of the same grid region, with the ground truth.

    Attributes
    ----------
    sxt : (ny_sxt, nx_sxt) float32 flat-field-normalised transmission (1 = no absorption).
    fm : (ny_fm, nx_fm) float32 fluorescence in photo-electrons per pixel.
    sxt_pixel_nm, fm_pixel_nm : nominal pixel sizes in nm.
    true_fm_to_sxt : (3, 3) affine mapping FM pixel (x, y, 1) to SXT pixel (x, y, 1).
    beads_sxt_px : (n, 2) true centres (x, y) of the dark spots in the SXT image, in pixels.
    beads_fm_px : (m, 2) true centres (x, y) of the bright spots in the FM image, in pixels.
    pairs : (k, 2) int index pairs (i_sxt, j_fm) of the same physical bead, sorted by i_sxt.
    spurious_fm : indices into ``beads_fm_px`` of spots that are not beads (FM only).
    spurious_sxt : indices into ``beads_sxt_px`` of dark blobs that are not beads (SXT only).
    fm_defocus_nm : (m,) distance of each FM spot from the focal plane, in nm.
    """

    sxt: np.ndarray
    fm: np.ndarray
    sxt_pixel_nm: float
    fm_pixel_nm: float
    true_fm_to_sxt: np.ndarray
    beads_sxt_px: np.ndarray
    beads_fm_px: np.ndarray
    pairs: np.ndarray
    spurious_fm: np.ndarray
    spurious_sxt: np.ndarray
    fm_defocus_nm: np.ndarray


def _apply(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map (n, 2) points through a 3x3 homogeneous affine."""
    return xy @ affine[:2, :2].T + affine[:2, 2]


# --------------------------------------------------------------------------- the cell


def _make_cell(rng, centre_nm) -> dict:
    """Random geometry in world nm: cell body, nucleus, mitochondria, ice-thickness phases."""
    cx, cy = centre_nm + rng.uniform(-1500, 1500, 2)
    a, b = rng.uniform(3000, 4500), rng.uniform(2500, 3500)
    ang = rng.uniform(0, np.pi)
    body = (cx, cy, a, b, ang, 3.0)  # centre, semi-axes (nm), angle (rad), height (um)
    nucleus = (cx + 0.2 * a * rng.uniform(-1, 1), cy + 0.2 * b * rng.uniform(-1, 1),
               0.45 * a, 0.45 * b, ang, 2.0)  # fmt: skip
    mitos = []
    for _ in range(10):
        r, phi = np.sqrt(rng.uniform(0.3, 0.75)), rng.uniform(0, 2 * np.pi)
        mx = cx + r * (a * np.cos(phi) * np.cos(ang) - b * np.sin(phi) * np.sin(ang))
        my = cy + r * (a * np.cos(phi) * np.sin(ang) + b * np.sin(phi) * np.cos(ang))
        mitos.append((mx, my, rng.uniform(500, 1200), 300.0, rng.uniform(0, np.pi), 0.4))
    return {"body": body, "nucleus": nucleus, "mitos": mitos, "ice_phase": rng.uniform(0, 6, 2)}


def _dome(x, y, shape) -> np.ndarray:
    """Height (um) of a smooth elliptic dome; ``(1 - q)^1.5`` has no kink at the rim."""
    cx, cy, a, b, ang, height = shape
    dx, dy = x - cx, y - cy
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = -dx * np.sin(ang) + dy * np.cos(ang)
    q = (u / a) ** 2 + (v / b) ** 2
    return height * np.clip(1.0 - q, 0.0, None) ** 1.5


def _cell_maps(cell, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Extra SXT optical depth (mu t, dimensionless) and FM label (0..~1) at world (x, y) nm."""
    body = _dome(x, y, cell["body"])
    inside = np.minimum(body / 0.3, 1.0)  # organelles only inside the cytoplasm
    nucleus = _dome(x, y, cell["nucleus"])
    mito = sum(_dome(x, y, m) for m in cell["mitos"]) * inside
    depth = (MU_CYTOPLASM - MU_ICE) * body + MU_NUCLEUS_EXTRA * nucleus + MU_MITO_EXTRA * mito
    label = 0.15 * inside + mito / 0.4  # mitochondrial label on a faint cytoplasmic one
    return depth, label


# --------------------------------------------------------------------------- placement


def _sample_positions(rng, n, ok, lo, hi) -> np.ndarray:
    """``n`` world positions (nm) in the box [lo, hi] accepted by ``ok``, well separated."""
    chosen: list[np.ndarray] = []
    for _ in range(200):
        cand = rng.uniform(lo, hi, size=(max(4 * n, 64), 2))
        for p in cand[ok(cand)]:
            if all(np.hypot(*(p - q)) >= MIN_SPOT_SEPARATION_NM for q in chosen):
                chosen.append(p)
                if len(chosen) == n:
                    return np.array(chosen)
    raise ValueError(f"cannot place {n} spots 1 um apart in the common field; use fewer")


# --------------------------------------------------------------------------- imaging


def _add_sphere_depth(depth, centres_px, radii_px, dmu_per_px) -> None:
    """Add the optical depth ``dmu * chord`` of spheres to ``depth`` in place."""
    ny, nx = depth.shape
    for (x, y), r, dmu in zip(centres_px, radii_px, dmu_per_px, strict=True):
        x0, x1 = max(int(x - r) - 1, 0), min(int(x + r) + 3, nx)
        y0, y1 = max(int(y - r) - 1, 0), min(int(y + r) + 3, ny)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        chord = 2.0 * np.sqrt(np.clip(r**2 - (xx - x) ** 2 - (yy - y) ** 2, 0.0, None))
        depth[y0:y1, x0:x1] += dmu * chord


def _add_spot(img, x, y, sig_x, sig_y, photons) -> None:
    """Add a pixel-integrated 2D Gaussian (sigma in pixels) holding ``photons`` in place."""
    ny, nx = img.shape
    hw_x, hw_y = int(np.ceil(5 * sig_x)) + 1, int(np.ceil(5 * sig_y)) + 1
    x0, x1 = max(int(round(x)) - hw_x, 0), min(int(round(x)) + hw_x + 1, nx)
    y0, y1 = max(int(round(y)) - hw_y, 0), min(int(round(y)) + hw_y + 1, ny)

    def frac(lo, hi, c, s):
        edges = np.arange(lo, hi + 1) - 0.5
        return np.diff(0.5 * erf((edges - c) / (np.sqrt(2) * s)))

    img[y0:y1, x0:x1] += photons * np.outer(frac(y0, y1, y, sig_y), frac(x0, x1, x, sig_x))


def _sxt_image(cell, shape, pixel_nm, spheres, rng, photons, noise) -> np.ndarray:
    """Transmission image: ice + cell + spheres, zone-plate blur; ``rng`` for Poisson noise."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx] * pixel_nm
    # Ice about 1 um thick, varying slowly across the grid square.
    k, (p1, p2) = 2 * np.pi / 20000.0, cell["ice_phase"]
    ice_um = 1.0 + 0.15 * np.sin(k * xx + p1) * np.cos(k * yy + p2)
    depth = MU_ICE * ice_um + _cell_maps(cell, xx, yy)[0]
    centres, radii_nm, dmu = spheres
    # mu in 1/um times chord in px needs um per px.
    _add_sphere_depth(depth, centres, radii_nm / pixel_nm, dmu * pixel_nm / 1000.0)
    trans = ndimage.gaussian_filter(np.exp(-depth), SXT_RESOLUTION_NM / 2.3548 / pixel_nm)
    if noise:
        trans = rng.poisson(photons * trans) / photons
    return trans.astype(np.float32)


def _fm_image(cell, shape, fm_to_world, spots, sigma_nm, rng, photons, noise) -> np.ndarray:
    """Fluorescence image on the FM grid: PSF-blurred cell label + bead spots, shot noise."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    world = _apply(fm_to_world, np.stack([xx.ravel(), yy.ravel()], axis=1))
    label = _cell_maps(cell, world[:, 0], world[:, 1])[1].reshape(shape)
    scale = np.hypot(fm_to_world[0, :2], fm_to_world[1, :2])  # nm per FM pixel along x, y
    sig_px = (sigma_nm / scale[0], sigma_nm / scale[1])
    img = 20.0 + 0.03 * photons * ndimage.gaussian_filter(label, sig_px[::-1])
    for (x, y), sig, n in zip(*spots, strict=True):
        _add_spot(img, x, y, sig / scale[0], sig / scale[1], n)
    if noise:
        img = rng.poisson(img) + rng.normal(0.0, 1.5, img.shape)  # shot + read noise
    return img.astype(np.float32)


def _fm_to_world(rng, c_world, c_fm, fm_pixel_nm, rotation_deg, scale_jitter, offset_um):
    """3x3 affine FM pixel -> world nm: scale about the FM centre, rotate, place, offset."""
    s = fm_pixel_nm * (1.0 + rng.uniform(-scale_jitter, scale_jitter, 2))
    t = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    a = np.eye(3)
    a[:2, :2] = rot @ np.diag(s)
    a[:2, 2] = c_world + 1000.0 * np.asarray(offset_um) - a[:2, :2] @ c_fm
    return a


def make_correlative_scene(
    *,
    field_um: tuple[float, float] = (12.0, 12.0),
    sxt_pixel_nm: float = 20.0,
    fm_pixel_nm: float = 150.0,
    n_beads: int = 12,
    rotation_deg: float = 7.0,
    scale_jitter: float = 0.0,
    offset_um: tuple[float, float] = (1.3, -0.8),
    fm_psf_fwhm_nm: float = 350.0,
    fm_defocus_nm: tuple[float, float] = (0.0, 400.0),
    spurious_fraction: float = 0.0,
    missing_fraction: float = 0.0,
    noise: bool = True,
    sxt_photons: float = 2000.0,
    fm_photons: float = 5000.0,
    seed: int | np.random.Generator | None = 0,
) -> CorrelativeScene:
    """Simulate an SXT projection and a cryo-FM image of the same region with FluoSpheres.

    Parameters
    ----------
    field_um : (height, width) of the SXT field in um; the FM image covers the same extent
        on its own (rotated, offset) grid.
    sxt_pixel_nm, fm_pixel_nm : pixel sizes in nm (SXT 10-30, wide-field cryo-FM 100-200).
    n_beads : number of physical 200 nm beads, all inside both fields.
    rotation_deg : rotation of the FM grid relative to SXT, counter-clockwise in (x, y) pixel
        coordinates (clockwise on screen, where y points down).
    scale_jitter : the true FM pixel size differs from the nominal one by a factor
        ``1 + U(-scale_jitter, scale_jitter)``, drawn separately for x and y (affine).
    offset_um : (x, y) offset of the FM field centre from the SXT field centre in um.
    fm_psf_fwhm_nm : FWHM of the in-focus FM PSF (Gaussian) in nm.
    fm_defocus_nm : (low, high) range of the per-bead distance from the focal plane in nm;
        the PSF widens as ``sigma0 sqrt(1 + (z / z_R)^2)``, ``z_R = 4 pi sigma0^2 / 605 nm``,
        and its peak falls since the bead's photon total is kept.
    spurious_fraction : ``round(spurious_fraction * n_beads)`` extra spots that are not beads,
        each at random either a bright FM-only spot or a dark SXT-only blob.
    missing_fraction : ``round(missing_fraction * n_beads)`` beads seen in one modality only
        (bleached in FM, or hidden from SXT), chosen at random.
    noise : add Poisson shot noise (and FM read noise); False gives the expected images.
    sxt_photons : incident photons per SXT pixel.
    fm_photons : photons collected from one in-focus bead (about 16 % in its peak pixel).
    seed : seed or generator.

    Returns
    -------
    scene : :class:`CorrelativeScene`. An SXT image of 600 x 600 px takes about 0.1 s.
    """
    rng = np.random.default_rng(seed)
    # Own stream for shot noise, so noise=False shows the very same scene without noise.
    noise_rng = rng.spawn(1)[0]
    if not (0 <= spurious_fraction and 0 <= missing_fraction <= 1):
        raise ValueError("spurious_fraction must be >= 0 and missing_fraction in [0, 1]")
    sxt_shape = (round(field_um[0] * 1e3 / sxt_pixel_nm), round(field_um[1] * 1e3 / sxt_pixel_nm))
    fm_shape = (round(field_um[0] * 1e3 / fm_pixel_nm), round(field_um[1] * 1e3 / fm_pixel_nm))
    c_world = sxt_pixel_nm * (np.array(sxt_shape[::-1]) - 1) / 2.0
    c_fm = (np.array(fm_shape[::-1]) - 1) / 2.0
    fm_to_world = _fm_to_world(rng, c_world, c_fm, fm_pixel_nm, rotation_deg, scale_jitter, offset_um)
    world_to_fm = np.linalg.inv(fm_to_world)
    sxt_to_world = np.diag([sxt_pixel_nm, sxt_pixel_nm, 1.0])
    fm_to_sxt = np.linalg.inv(sxt_to_world) @ fm_to_world
    cell = _make_cell(rng, c_world)

    def in_both(p):
        f = _apply(world_to_fm, p)
        return np.all((f >= 4) & (f <= np.array(fm_shape[::-1]) - 5), axis=1)

    n_spur = round(spurious_fraction * n_beads)
    n_miss = round(missing_fraction * n_beads)
    margin = 400.0
    hi = sxt_pixel_nm * (np.array(sxt_shape[::-1]) - 1) - margin
    pos = _sample_positions(rng, n_beads + n_spur, in_both, margin, hi)

    # Roles: 0 = bead in both, 1 = bead in SXT only, 2 = bead in FM only,
    # 3 = spurious SXT blob, 4 = spurious FM spot.
    role = np.zeros(n_beads + n_spur, dtype=int)
    role[:n_miss] = rng.choice([1, 2], n_miss)
    role[n_beads:] = rng.choice([3, 4], n_spur)
    sxt_ids = rng.permutation(np.flatnonzero(np.isin(role, (0, 1, 3))))
    fm_ids = rng.permutation(np.flatnonzero(np.isin(role, (0, 2, 4))))

    # SXT: beads absorb as polystyrene in place of ice; spurious blobs 150-350 nm across.
    radii = np.where(role[sxt_ids] == 3, rng.uniform(75, 175, sxt_ids.size), BEAD_DIAMETER_NM / 2)
    dmu = np.where(role[sxt_ids] == 3, MU_SPURIOUS, MU_BEAD) - MU_ICE
    beads_sxt = pos[sxt_ids] / sxt_pixel_nm
    sxt = _sxt_image(cell, sxt_shape, sxt_pixel_nm, (beads_sxt, radii, dmu), noise_rng, sxt_photons, noise)

    # FM: per-spot defocus widens the PSF; bead brightness varies by ~15 %.
    z = rng.uniform(*fm_defocus_nm, fm_ids.size)
    sigma0 = fm_psf_fwhm_nm / 2.3548
    sig = sigma0 * np.sqrt(1.0 + (z / (4 * np.pi * sigma0**2 / EMISSION_NM)) ** 2)
    bright = fm_photons * rng.lognormal(0.0, 0.15, fm_ids.size)
    bright = np.where(role[fm_ids] == 4, bright * rng.uniform(0.3, 1.0, fm_ids.size), bright)
    beads_fm = _apply(world_to_fm, pos[fm_ids])
    fm = _fm_image(cell, fm_shape, fm_to_world, (beads_fm, sig, bright), sigma0, noise_rng,
                   fm_photons, noise)  # fmt: skip

    fm_index = {pid: j for j, pid in enumerate(fm_ids)}
    pairs = [(i, fm_index[pid]) for i, pid in enumerate(sxt_ids) if role[pid] == 0]
    return CorrelativeScene(
        sxt=sxt,
        fm=fm,
        sxt_pixel_nm=float(sxt_pixel_nm),
        fm_pixel_nm=float(fm_pixel_nm),
        true_fm_to_sxt=fm_to_sxt,
        beads_sxt_px=beads_sxt,
        beads_fm_px=beads_fm,
        pairs=np.array(pairs, dtype=int).reshape(-1, 2),
        spurious_fm=np.flatnonzero(role[fm_ids] == 4),
        spurious_sxt=np.flatnonzero(role[sxt_ids] == 3),
        fm_defocus_nm=z,
    )
