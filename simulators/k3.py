"""Gatan K3 direct electron detector in counting mode, imaging a cryo-FIB lamella.

The forward model is the textbook one for cryo electron tomography of thin specimens:

1. project the electrostatic potential along the beam at the tilt angle (rotation about z);
2. phase shift ``phi = sigma_e * integral(V dl)`` (weak-phase object);
3. image contrast through the contrast transfer function (defocus, spherical aberration,
   amplitude contrast, B-factor envelope), applied in Fourier space;
4. zero-loss transmission ``exp(-t / (lambda_in * cos(alpha)))``: the path through a laterally
   extended slab grows as ``1 / cos(alpha)`` and the energy filter removes inelastic electrons;
5. expected electrons per pixel ``dose * pixel_area * intensity``, sub-pixel drift, Poisson
   counting noise.

Volumes are indexed ``(z, y, x)``; z is the tilt axis and the beam runs along y at 0 deg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from livetomo.simulators.faults import FaultInjector, SimulatedTimeout, as_faults
from livetomo.simulators.projector import projection_matrix

# Physical constants (CODATA 2018).
_H = 6.62607015e-34  # J s
_E = 1.602176634e-19  # C
_M_E = 9.1093837015e-31  # kg
_C = 299792458.0  # m / s
_REST_ENERGY_KV = 510.99895  # m_e c^2 / e, in kV

# Mean inner potentials (V). Vitreous ice and protein from the cryo-EM literature; gold is
# the bulk mean inner potential, so fiducials are several radians thick (not weak-phase).
V_ICE = 4.5
V_PROTEIN = 7.0
V_MEMBRANE = 7.0
V_GOLD = 30.0
GOLD_DIAMETER_NM = 10.0
# counting-mode K3 with the beam blanked: a few stray events per hundred pixels
STRAY_COUNTS_PER_PX = 0.02

# Inelastic mean free path of vitreous ice at 300 kV with an energy filter (nm).
MFP_ICE_300KV_NM = 350.0

K3_FULL_FRAME = (4092, 5760)  # (rows, columns) of a real counted K3 frame
_UINT16_MAX = np.iinfo(np.uint16).max


# --------------------------------------------------------------------------- electron optics


def electron_wavelength_nm(voltage_kv: float = 300.0) -> float:
    """Relativistic electron wavelength.

    Parameters
    ----------
    voltage_kv : accelerating voltage in kV.

    Returns
    -------
    wavelength : float, nm (1.969e-3 nm at 300 kV).
    """
    v = voltage_kv * 1e3
    p = np.sqrt(2.0 * _M_E * _E * v * (1.0 + _E * v / (2.0 * _M_E * _C**2)))
    return float(_H / p * 1e9)


def interaction_constant(voltage_kv: float = 300.0) -> float:
    """Interaction constant sigma_e, in rad / (V nm) (0.00653 at 300 kV).

    ``sigma_e = 2 pi / (lambda V) * (E0 + eV) / (2 E0 + eV)`` with E0 the electron rest energy.
    """
    lam = electron_wavelength_nm(voltage_kv)
    v = voltage_kv * 1e3
    e0 = _REST_ENERGY_KV * 1e3
    return float(2.0 * np.pi / (lam * v) * (e0 + v) / (2.0 * e0 + v))


def inelastic_mfp_nm(voltage_kv: float = 300.0, mfp_300kv_nm: float = MFP_ICE_300KV_NM) -> float:
    """Inelastic mean free path of vitreous ice, in nm.

    The inelastic cross-section scales as ``1 / v^2`` to leading order, so the path is
    scaled from its 300 kV value by ``beta^2(V) / beta^2(300 kV)`` (about 280 nm at 200 kV).
    """

    def beta2(kv: float) -> float:
        gamma = 1.0 + kv / _REST_ENERGY_KV
        return 1.0 - 1.0 / gamma**2

    return float(mfp_300kv_nm * beta2(voltage_kv) / beta2(300.0))


def ctf(
    shape: tuple[int, int],
    pixel_size_A: float,
    *,
    voltage_kv: float = 300.0,
    defocus_um: float = -3.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    bfactor_A2: float = 200.0,
) -> np.ndarray:
    """Contrast transfer function of a weak phase / weak amplitude object.

    Image contrast is ``ifft(CTF * fft(phi))`` with phi the phase in rad.
    ``chi(k) = pi lambda df k^2 - pi/2 Cs lambda^3 k^4`` with ``df = -defocus`` (underfocus
    positive) and ``CTF = -2 (sqrt(1 - A^2) sin chi + A cos chi) exp(-B k^2 / 4)``, so that in
    underfocus (negative ``defocus_um``) dense material appears dark.

    Parameters
    ----------
    shape : (ny, nx) of the image.
    pixel_size_A : pixel size in angstrom.
    voltage_kv, defocus_um, cs_mm : kV, micrometre (negative = underfocus), mm.
    amplitude_contrast : fraction A in [0, 1).
    bfactor_A2 : B-factor of the envelope in square angstrom.

    Returns
    -------
    ctf : (ny, nx) float64 array on the ``numpy.fft.fftfreq`` grid; its DC term is 0 because
        the mean intensity is set by the zero-loss transmission, not by the CTF.
    """
    lam = electron_wavelength_nm(voltage_kv) * 10.0  # angstrom
    df = -defocus_um * 1e4  # angstrom, underfocus positive
    cs = cs_mm * 1e7  # angstrom
    ky = sfft.fftfreq(shape[0], d=pixel_size_A)[:, None]
    kx = sfft.fftfreq(shape[1], d=pixel_size_A)[None, :]
    k2 = kx**2 + ky**2
    chi = np.pi * lam * df * k2 - 0.5 * np.pi * cs * lam**3 * k2**2
    w = np.sqrt(1.0 - amplitude_contrast**2)
    out = -2.0 * (w * np.sin(chi) + amplitude_contrast * np.cos(chi)) * np.exp(-bfactor_A2 * k2 / 4)
    out[0, 0] = 0.0
    return out


# --------------------------------------------------------------------------- specimen


def _slab_fraction(ny: int, thickness_vox: float) -> np.ndarray:
    """Partial-volume fraction of a slab centred in y; its sum is exactly ``thickness_vox``."""
    y = np.arange(ny) - (ny - 1) / 2.0
    return np.clip(thickness_vox / 2.0 - np.abs(y) + 0.5, 0.0, 1.0)


def _paint_ball(vol, slab, centre, r_out, r_in, value) -> None:
    """Blend a (hollow) ball of radii in voxels into ``vol`` in place, clipped to the slab."""
    lo = [max(int(np.floor(c - r_out - 1)), 0) for c in centre]
    hi = [min(int(np.ceil(c + r_out + 2)), n) for c, n in zip(centre, vol.shape, strict=True)]
    grids = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    d = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)))
    # Linear partial-volume edge, one voxel wide, so small objects are not jagged.
    frac = np.clip(r_out - d + 0.5, 0.0, 1.0) - np.clip(r_in - d + 0.5, 0.0, 1.0)
    frac = frac * slab[lo[1] : hi[1]][None, :, None]  # lamella faces are milled flat
    sub = vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    sub *= 1.0 - frac
    sub += value * frac


def _random_centre(rng, shape, radius, thickness_vox) -> np.ndarray:
    """A centre (z, y, x) in voxels that keeps a ball of ``radius`` inside box and slab."""
    nz, ny, nx = shape
    half = max(thickness_vox / 2.0 - radius, 0.0)
    z = rng.uniform(min(radius, nz / 2), max(nz - 1 - radius, nz / 2))
    x = rng.uniform(min(radius, nx / 2), max(nx - 1 - radius, nx / 2))
    y = (ny - 1) / 2.0 + rng.uniform(-half, half)
    return np.array([z, y, x])


def make_lamella(
    shape: tuple[int, int, int] = (64, 32, 64),
    *,
    voxel_size_nm: float = 2.0,
    thickness_nm: float | None = None,
    n_particles: int = 40,
    n_vesicles: int = 2,
    n_gold: int = 3,
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """Electrostatic potential of a small window of a cryo-FIB lamella.

    A slab of vitreous ice (4.5 V), thinner along y (the beam at 0 deg tilt), with vacuum
    (0 V) outside, containing protein complexes (7 V balls, 5-12 nm across), membrane
    vesicles (7 V shells 4 nm thick) and gold fiducials (30 V, 10 nm across).

    Parameters
    ----------
    shape : (nz, ny, nx) in voxels; z is the tilt axis.
    voxel_size_nm : edge of a voxel in nm.
    thickness_nm : lamella thickness along y in nm; default 75 % of the box height
        ``ny * voxel_size_nm`` (48 nm for the default box).
    n_particles, n_vesicles, n_gold : numbers of proteins, vesicles and gold beads.
    seed : seed or generator for object placement.

    Returns
    -------
    potential : (nz, ny, nx) float64 array in V.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    box_nm = ny * voxel_size_nm
    if thickness_nm is None:
        thickness_nm = 0.75 * box_nm
    if not 0.0 < thickness_nm <= box_nm:
        raise ValueError(f"thickness_nm must be in (0, {box_nm}] nm for this box, got {thickness_nm}")
    t_vox = thickness_nm / voxel_size_nm
    slab = _slab_fraction(ny, t_vox)
    vol = np.broadcast_to(V_ICE * slab[None, :, None], shape).copy()
    for _ in range(n_vesicles):
        r = rng.uniform(10.0, 20.0) / voxel_size_nm
        c = _random_centre(rng, shape, r, t_vox)
        _paint_ball(vol, slab, c, r, r - 4.0 / voxel_size_nm, V_MEMBRANE)
    for _ in range(n_particles):
        r = rng.uniform(2.5, 6.0) / voxel_size_nm
        _paint_ball(vol, slab, _random_centre(rng, shape, r, t_vox), r, 0.0, V_PROTEIN)
    r_gold = GOLD_DIAMETER_NM / 2.0 / voxel_size_nm
    for _ in range(n_gold):
        _paint_ball(vol, slab, _random_centre(rng, shape, r_gold, t_vox), r_gold, 0.0, V_GOLD)
    return vol


def _paint_segment(vol, slab, p0, p1, r_out, r_in, value) -> None:
    """Blend a (hollow) cylinder of radii in voxels from ``p0`` to ``p1`` (z, y, x) into
    ``vol`` in place, clipped to the slab; painted in short pieces so that each box is small."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1 - p0))
    n_pieces = max(1, int(np.ceil(length / max(2.0 * r_out, 2.0))))
    for k in range(n_pieces):
        a = p0 + (p1 - p0) * (k / n_pieces)
        b = p0 + (p1 - p0) * ((k + 1) / n_pieces)
        lo = [max(int(np.floor(min(u, v) - r_out - 1)), 0) for u, v in zip(a, b, strict=True)]
        hi = [min(int(np.ceil(max(u, v) + r_out + 2)), n) for u, v, n in zip(a, b, vol.shape, strict=True)]
        if any(h <= l for l, h in zip(lo, hi, strict=True)):
            continue
        g = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        # Distance to the whole segment p0-p1 (not only the piece), so pieces join smoothly.
        full = p1 - p0
        full2 = max(float(full @ full), 1e-12)
        t = sum((gi - p0[i]) * full[i] for i, gi in enumerate(g)) / full2
        t = np.clip(t, 0.0, 1.0)
        d = np.sqrt(sum((gi - (p0[i] + t * full[i])) ** 2 for i, gi in enumerate(g)))
        frac = np.clip(r_out - d + 0.5, 0.0, 1.0) - np.clip(r_in - d + 0.5, 0.0, 1.0)
        frac = frac * slab[lo[1] : hi[1]][None, :, None]
        sub = vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        # max-blend: overlapping pieces of one cylinder must not paint twice
        np.maximum(sub, sub * (1.0 - frac) + value * frac, out=sub)


def _paint_disc(vol, slab, centre, normal, radius, half_thickness, value) -> None:
    """Blend a flat disc (a membrane sheet) of ``radius`` and ``2 half_thickness`` voxels."""
    c = np.asarray(centre, float)
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    lo = [max(int(np.floor(ci - radius - 2)), 0) for ci in c]
    hi = [min(int(np.ceil(ci + radius + 3)), m) for ci, m in zip(c, vol.shape, strict=True)]
    if any(h <= l for l, h in zip(lo, hi, strict=True)):
        return
    g = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    rel = [gi - c[i] for i, gi in enumerate(g)]
    h = sum(r * n[i] for i, r in enumerate(rel))
    rad = np.sqrt(np.maximum(sum(r * r for r in rel) - h * h, 0.0))
    frac = np.clip(half_thickness - np.abs(h) + 0.5, 0.0, 1.0) * np.clip(radius - rad + 0.5, 0.0, 1.0)
    frac = frac * slab[lo[1] : hi[1]][None, :, None]
    sub = vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    np.maximum(sub, sub * (1.0 - frac) + value * frac, out=sub)


def _random_direction(rng, in_plane: float = 0.0) -> np.ndarray:
    """A random unit vector (z, y, x); ``in_plane`` in [0, 1) flattens it towards the z-x plane."""
    v = rng.normal(size=3)
    v[1] *= 1.0 - in_plane
    return v / np.linalg.norm(v)


def make_filament_lamella(
    shape: tuple[int, int, int] = (64, 32, 64),
    *,
    voxel_size_nm: float = 2.0,
    thickness_nm: float | None = None,
    n_filaments: int = 30,
    n_microtubules: int = 2,
    n_sheets: int = 2,
    n_granules: int = 15,
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """A second phantom family: the cytoskeleton-rich window of a lamella.

    Where :func:`make_lamella` fills the ice with round things (globular proteins, vesicles,
    gold), this one holds long and flat ones: actin-like filaments (7 nm across, 40-250 nm
    long, mostly in the plane of the lamella), microtubules (hollow tubes 25 nm across, 15 nm
    lumen), flat membrane sheets (ER-like cisternae, 4 nm thick, 30-80 nm across) and small
    ribosome-like granules (20-26 nm); no gold. Objects fade out over the last sixteenth of
    the box towards its faces across the tilt axis (x), where they leave the window. Alignment
    methods tuned or trained on one family are tested on the other.

    Parameters
    ----------
    shape, voxel_size_nm, thickness_nm, seed : as in :func:`make_lamella`.
    n_filaments, n_microtubules, n_sheets, n_granules : numbers of each kind of object.

    Returns
    -------
    potential : (nz, ny, nx) float64 array in V.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    box_nm = ny * voxel_size_nm
    if thickness_nm is None:
        thickness_nm = 0.75 * box_nm
    if not 0.0 < thickness_nm <= box_nm:
        raise ValueError(f"thickness_nm must be in (0, {box_nm}] nm for this box, got {thickness_nm}")
    t_vox = thickness_nm / voxel_size_nm
    slab = _slab_fraction(ny, t_vox)
    vol = np.broadcast_to(V_ICE * slab[None, :, None], shape).copy()
    vs = voxel_size_nm
    for _ in range(n_sheets):
        radius = rng.uniform(30.0, 80.0) / vs
        c = _random_centre(rng, shape, 0.0, t_vox)
        _paint_disc(vol, slab, c, _random_direction(rng), radius, 2.0 / vs, V_MEMBRANE)
    for _ in range(n_microtubules):
        length = rng.uniform(100.0, 400.0) / vs
        c = _random_centre(rng, shape, 0.0, t_vox)
        d = _random_direction(rng, in_plane=0.8)
        _paint_segment(vol, slab, c - d * length / 2, c + d * length / 2, 12.5 / vs, 7.5 / vs, V_PROTEIN)
    for _ in range(n_filaments):
        length = rng.uniform(40.0, 250.0) / vs
        c = _random_centre(rng, shape, 0.0, t_vox)
        d = _random_direction(rng, in_plane=0.7)
        _paint_segment(vol, slab, c - d * length / 2, c + d * length / 2, 3.5 / vs, 0.0, V_PROTEIN)
    for _ in range(n_granules):
        r = rng.uniform(10.0, 13.0) / vs
        _paint_ball(vol, slab, _random_centre(rng, shape, r, t_vox), r, 0.0, V_PROTEIN + 0.5)
    # Long objects leave the box: fade them out towards the faces across the tilt axis (x),
    # so the box's edges do not show as walls that move with the tilt (the lamella goes on
    # beyond the window as ice, as K3Camera assumes).
    ramp = max(4, nx // 16)
    taper = np.clip((np.minimum(np.arange(nx), nx - 1 - np.arange(nx)) + 0.5) / ramp, 0.0, 1.0)
    ice = V_ICE * slab[None, :, None]
    return ice + (vol - ice) * (0.5 - 0.5 * np.cos(np.pi * taper))[None, None, :]


LAMELLA_FAMILIES = {"particles": make_lamella, "filaments": make_filament_lamella}


def make_specimen(
    family: str,
    shape: tuple[int, int, int],
    *,
    voxel_size_nm: float = 2.0,
    thickness_nm: float,
    density: float = 1.0,
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """A lamella of ``family`` ('particles' or 'filaments') whose object counts scale with
    its volume (``density`` 1: the default box of :func:`make_lamella` with 40 particles in
    64 x 64 voxels of 48 nm ice), so thicker lamellae hold more material along the beam.

    Returns
    -------
    potential : (nz, ny, nx) float64 array in V.
    """
    nz, _, nx = shape
    scale = density * (nz * nx / 64**2) * (thickness_nm / 48.0)
    if family == "particles":
        return make_lamella(
            shape, voxel_size_nm=voxel_size_nm, thickness_nm=thickness_nm, n_particles=int(40 * scale),
            n_vesicles=max(1, int(round(2 * scale))), n_gold=max(1, int(round(nz * nx / 64**2))), seed=seed,
        )  # fmt: skip
    if family == "filaments":
        return make_filament_lamella(
            shape, voxel_size_nm=voxel_size_nm, thickness_nm=thickness_nm, n_filaments=int(30 * scale),
            n_microtubules=max(1, int(round(1.5 * scale))), n_sheets=max(1, int(round(1.5 * scale))),
            n_granules=int(12 * scale), seed=seed,
        )  # fmt: skip
    raise ValueError(f"unknown lamella family {family!r}; known: {', '.join(LAMELLA_FAMILIES)}")


# --------------------------------------------------------------------------- projection


def _project(volume: np.ndarray, angle_deg: float) -> np.ndarray:
    """Sum of ``volume`` along the beam at tilt ``angle_deg``, in voxel units.

    Bilinear samples one voxel apart along each ray, so that a voxel lands at
    ``u = x cos(a) + y sin(a)``: the same sums as rotating the (y, x) plane (order 1, padded to
    its diagonal) and summing along y, to 1e-15, but as one sparse product over every slice
    (0.23 against 1.2 s for a 256 × 75 × 360 lamella).

    Returns
    -------
    projection : (nz, nx) array.
    """
    nz, ny, nx = volume.shape
    a = projection_matrix((ny, nx), angle_deg)
    return np.asarray((a @ volume.reshape(nz, ny * nx).T).T)


def _fit_centre(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop or zero-pad ``image`` about its centre to ``shape``."""
    out = image
    for axis, n in enumerate(shape):
        m = out.shape[axis]
        if m > n:
            start = (m - n) // 2
            out = np.take(out, np.arange(start, start + n), axis=axis)
        elif m < n:
            pad = [(0, 0), (0, 0)]
            pad[axis] = ((n - m) // 2, n - m - (n - m) // 2)
            out = np.pad(out, pad)
    return out


# --------------------------------------------------------------------------- camera


def axis_vectors(tilt_axis_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (dy, dx) along the tilt axis and across it, on the camera.

    ``tilt_axis_deg`` is measured from the image's x axis (columns) towards its rows; at 90
    the axis runs along the rows' direction (the image's vertical) and "across" is x.
    """
    a = np.deg2rad(tilt_axis_deg)
    return np.array([np.sin(a), np.cos(a)]), np.array([-np.cos(a), np.sin(a)])


def rotate_to_axis(image: np.ndarray, tilt_axis_deg: float) -> np.ndarray:
    """Turn an image whose tilt axis is vertical so that it lies at ``tilt_axis_deg``.

    A point at (a, c) from the centre (a along the rows, c along the columns) goes to
    ``a · along + c · across`` (:func:`axis_vectors`); cubic interpolation, edge values.
    """
    along, across = axis_vectors(tilt_axis_deg)
    rot = np.stack([along, across], axis=1)  # columns: images of (1, 0) and (0, 1)
    centre = (np.asarray(image.shape, dtype=float) - 1.0) / 2.0
    # output -> input: x_in = Rᵀ (x_out - c) + c
    return ndimage.affine_transform(image, rot.T, offset=centre - rot.T @ centre, order=3, mode="nearest")


@dataclass(frozen=True, eq=False)
class K3Frame:
    """One counted K3 frame.

    Attributes
    ----------
    tilt_deg : specimen tilt in degrees (rotation about z).
    dose_e_per_A2 : incident electron dose of this frame in e-/A^2.
    counts : (ny_img, nx_img) uint16 counted electrons per pixel; float32 filled with NaN when
        a ``nan_frame`` fault fired.
    true_shift_px : drift (dy, dx) in pixels applied to the frame,
        ``observed = scipy.ndimage.shift(ideal, (dy, dx))``.
    expected : noise-free expected electrons per pixel (drift applied), float64: (ny_img, nx_img),
        or the rendered image (ny_img, nx_img) / render_binning with ``render_binning`` > 1.
    """

    tilt_deg: float
    dose_e_per_A2: float
    counts: np.ndarray
    true_shift_px: tuple[float, float]
    expected: np.ndarray


class K3Camera:
    """Energy-filtered TEM with a Gatan K3 in counting mode, looking at a lamella.

    Parameters
    ----------
    potential : (nz, ny, nx) electrostatic potential in V (see :func:`make_lamella`); not
        modified.
    voxel_size_nm : voxel edge of ``potential`` in nm.
    pixel_size_A : detector pixel size at the specimen in angstrom; default the voxel size.
    image_shape : (ny_img, nx_img) of the frames; default the projection size (nz, nx) scaled
        by voxel / pixel size. A real K3 frame is 4092 x 5760; simulate smaller.
    voltage_kv, defocus_um, cs_mm, amplitude_contrast, bfactor_A2 : optics, see :func:`ctf`.
    mfp_nm : inelastic mean free path of the specimen in nm; default
        :func:`inelastic_mfp_nm` (350 nm at 300 kV).
    thickness_nm : lamella thickness along y at 0 deg in nm; default estimated from
        ``potential`` as the mean path through material (voxels weighted by
        ``clip(V / V_ice, 0, 1)``, with V_ice the median of the positive voxels).
    tilt_axis_deg : in-plane angle of the tilt axis on the camera, degrees from the image's
        x axis (columns) towards its rows: 90 puts the axis along the image's vertical (the
        volume's z); real microscopes have it anywhere, often 80-95 degrees. The image is
        rotated accordingly; a drift given to :meth:`acquire` is in camera pixels.
    seed : seed or generator for the counting noise.
    faults : fault injector; each :meth:`acquire` is one opportunity for ``detector_timeout``,
        ``dropped_frame``, ``nan_frame`` and ``blanked_frame``.
    render_binning : the noise-free image is computed at ``image_shape / render_binning``
        (pixels ``render_binning`` times larger, which must divide ``image_shape``) and each of
        its pixels spread evenly over ``render_binning²`` detector pixels before counting: a
        full 4092 × 5760 counted frame costs a 1023 × 1440 optical image (its FFTs are what is
        slow) plus one Poisson draw per pixel. Detail finer than the rendered pixel is absent;
        the counting noise is at full resolution. ``K3Frame.expected`` is then the rendered image.

    Notes
    -----
    The box is treated as a window of a laterally infinite lamella: the contrast comes from
    the potential in excess of the ice, and the zero-loss transmission from the slab thickness
    ``t`` as ``exp(-t / (mfp cos(tilt)))`` everywhere in the image. Material drifting in from
    outside the box is plain ice.
    """

    def __init__(
        self,
        potential: np.ndarray,
        *,
        voxel_size_nm: float = 2.0,
        pixel_size_A: float | None = None,
        image_shape: tuple[int, int] | None = None,
        voltage_kv: float = 300.0,
        defocus_um: float = -3.0,
        cs_mm: float = 2.7,
        amplitude_contrast: float = 0.07,
        bfactor_A2: float = 200.0,
        mfp_nm: float | None = None,
        thickness_nm: float | None = None,
        seed: int | np.random.Generator | None = None,
        faults: FaultInjector | None = None,
        tilt_axis_deg: float = 90.0,
        render_binning: int = 1,
    ) -> None:
        potential = np.asarray(potential, dtype=np.float64)
        self.tilt_axis_deg = float(tilt_axis_deg)
        if potential.ndim != 3:
            raise ValueError(f"potential must be (nz, ny, nx), got shape {potential.shape}")
        self.voxel_size_nm = float(voxel_size_nm)
        self.pixel_size_A = float(pixel_size_A) if pixel_size_A else 10.0 * self.voxel_size_nm
        self.voltage_kv = float(voltage_kv)
        self.defocus_um = float(defocus_um)
        self.cs_mm = float(cs_mm)
        self.amplitude_contrast = float(amplitude_contrast)
        self.bfactor_A2 = float(bfactor_A2)
        self.mfp_nm = float(mfp_nm) if mfp_nm else inelastic_mfp_nm(voltage_kv)
        self.sigma_e = interaction_constant(voltage_kv)
        self._excess, est_thickness = self._split_ice(potential)
        self.thickness_nm = float(thickness_nm) if thickness_nm is not None else est_thickness
        zoom = 10.0 * self.voxel_size_nm / self.pixel_size_A
        native = (round(potential.shape[0] * zoom), round(potential.shape[2] * zoom))
        self.image_shape = tuple(image_shape) if image_shape is not None else native
        self.render_binning = b = int(render_binning)
        if b < 1 or self.image_shape[0] % b or self.image_shape[1] % b:
            raise ValueError(
                f"render_binning {render_binning} must be >= 1 and divide the frame {self.image_shape}"
            )
        # what the optics are computed at (the detector's pixels unless render_binning > 1)
        self._render_shape = (self.image_shape[0] // b, self.image_shape[1] // b)
        self._render_pixel_A = self.pixel_size_A * b
        self._rng = np.random.default_rng(seed)
        self.faults = as_faults(faults)

    def _split_ice(self, potential: np.ndarray) -> tuple[np.ndarray, float]:
        """Excess potential over ice (V) and slab thickness (nm) estimated from ``potential``."""
        positive = potential[potential > 0]
        if positive.size == 0:
            return np.zeros_like(potential), 0.0
        v_ice = float(np.median(positive))
        material = np.clip(potential / v_ice, 0.0, 1.0)
        thickness = float(material.sum(axis=1).mean() * self.voxel_size_nm)
        return potential - v_ice * material, thickness

    def transmission(self, tilt_deg: float) -> float:
        """Zero-loss fraction ``exp(-t / (mfp cos(tilt)))`` at ``tilt_deg`` (dimensionless)."""
        return float(np.exp(-self.thickness_nm / (self.mfp_nm * np.cos(np.deg2rad(tilt_deg)))))

    def phase(self, tilt_deg: float) -> np.ndarray:
        """Phase shift of the excess potential at ``tilt_deg``, (nz, nx) in rad, voxel grid."""
        return self.sigma_e * self.voxel_size_nm * _project(self._excess, tilt_deg)

    def _image_phase(self, tilt_deg: float) -> np.ndarray:
        """:meth:`phase` resampled to the detector pixels; the last few tilts are cached, so
        several doses or defoci of one view cost one projection."""
        key = float(tilt_deg)
        cache = self.__dict__.setdefault("_phase_cache", {})
        if key not in cache:
            phi = self.phase(tilt_deg)
            zoom = 10.0 * self.voxel_size_nm / self._render_pixel_A
            if not np.isclose(zoom, 1.0):
                phi = ndimage.zoom(phi, zoom, order=1)
            while len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = phi
        return cache[key]

    def expected_image(
        self,
        tilt_deg: float,
        dose_e_per_A2: float,
        shift_px=(0.0, 0.0),
        *,
        defocus_um: float | None = None,
        bfactor_A2: float | None = None,
    ):
        """Noise-free expected electrons per rendered pixel, (ny_img, nx_img) / render_binning, float64.

        ``dose * pixel_area * transmission * max(1 + contrast, 0)``; the specimen is drifted
        by ``shift_px`` (dy, dx) pixels, in the sense of ``scipy.ndimage.shift``, by a Fourier
        (band-limited, exact sub-pixel) translation. ``defocus_um`` and ``bfactor_A2``
        override the camera's optics for this image (a defocus series of one view, as
        training data needs).
        """
        phi = self._image_phase(tilt_deg)
        shift_px = np.asarray(shift_px, dtype=float) / self.render_binning  # camera -> rendered pixels
        # Pad with ice (zero excess phase): avoids FFT wrap-around and supplies the material
        # that drifts into the field of view (or turns into it with an inclined tilt axis).
        turn = abs(np.sin(np.deg2rad(self.tilt_axis_deg - 90.0)))
        margin = 16 + int(np.ceil(np.max(np.abs(shift_px)) + 0.5 * turn * max(self._render_shape)))
        canvas = [sfft.next_fast_len(n + 2 * margin) for n in self._render_shape]
        phi = _fit_centre(phi, tuple(canvas))
        tf = ctf(
            phi.shape,
            self._render_pixel_A,
            voltage_kv=self.voltage_kv,
            defocus_um=self.defocus_um if defocus_um is None else float(defocus_um),
            cs_mm=self.cs_mm,
            amplitude_contrast=self.amplitude_contrast,
            bfactor_A2=self.bfactor_A2 if bfactor_A2 is None else float(bfactor_A2),
        )
        spectrum = tf * sfft.fft2(phi)
        if self.tilt_axis_deg != 90.0:  # the axis (the volume's z) turns to the camera's tilt-axis direction
            spectrum = sfft.fft2(rotate_to_axis(sfft.ifft2(spectrum).real, self.tilt_axis_deg))
        if np.any(np.asarray(shift_px) != 0):
            # Drift moves the specimen: a band-limited (Fourier) sub-pixel translation, same
            # sign as scipy.ndimage.shift; what wraps around is ice from the margin.
            spectrum = ndimage.fourier_shift(spectrum, shift_px)
        contrast = sfft.ifft2(spectrum).real
        # Clip: strong scatterers (gold) violate the weak-phase approximation.
        intensity = self.transmission(tilt_deg) * np.clip(1.0 + contrast, 0.0, None)
        electrons = dose_e_per_A2 * self._render_pixel_A**2 * intensity
        return _fit_centre(electrons, self._render_shape)

    def acquire(
        self,
        tilt_deg: float,
        *,
        dose_e_per_A2: float = 3.0,
        shift_px: tuple[float, float] = (0.0, 0.0),
    ) -> K3Frame | None:
        """Record one counted frame.

        Parameters
        ----------
        tilt_deg : tilt about z in degrees, ``|tilt| < 90``.
        dose_e_per_A2 : dose of this frame in e-/A^2 (about 3 per tilt in a tilt series).
        shift_px : stage/beam drift (dy, dx) in camera pixels.

        Returns
        -------
        frame : :class:`K3Frame`, or None when a ``dropped_frame`` fault fired. Counts saturate
            at 65535 (uint16). After a ``blanked_frame`` fault the counts (and ``expected``) are
            the camera's stray counts, ``STRAY_COUNTS_PER_PX`` per pixel, without the specimen.

        Raises
        ------
        SimulatedTimeout : when a ``detector_timeout`` fault fired.
        """
        if not abs(tilt_deg) < 90.0:
            raise ValueError(f"tilt_deg must be within (-90, 90) deg, got {tilt_deg}")
        if dose_e_per_A2 < 0:
            raise ValueError(f"dose_e_per_A2 must be >= 0 e-/A^2, got {dose_e_per_A2}")
        # Ask about every fault on every call so a schedule indexes frames, not survivors.
        timeout = self.faults.fires("detector_timeout")
        dropped = self.faults.fires("dropped_frame")
        nan = self.faults.fires("nan_frame")
        blanked = self.faults.fires("blanked_frame")
        if timeout:
            raise SimulatedTimeout(f"K3 did not return the frame at tilt {tilt_deg} deg")
        if dropped:
            return None
        shift = (float(shift_px[0]), float(shift_px[1]))
        expected = self.expected_image(tilt_deg, dose_e_per_A2, shift)
        if blanked:  # no electrons reached the camera: stray counts only (per rendered pixel)
            expected = np.full(expected.shape, STRAY_COUNTS_PER_PX * self.render_binning**2)
        b = self.render_binning
        if nan:
            counts = np.full(self.image_shape, np.nan, dtype=np.float32)
        elif b == 1:
            counts = np.minimum(self._rng.poisson(expected), _UINT16_MAX).astype(np.uint16)
        else:
            per_pixel = (expected / b**2).astype(np.float32)
            counts = self._rng.poisson(np.repeat(np.repeat(per_pixel, b, axis=0), b, axis=1))
            counts = np.minimum(counts, _UINT16_MAX).astype(np.uint16)
        return K3Frame(float(tilt_deg), float(dose_e_per_A2), counts, shift, expected)
