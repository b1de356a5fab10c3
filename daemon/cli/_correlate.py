"""``livetomo correlate``: correlative registration of image files (TIFF, HDF5, MRC, NumPy).

Subcommands::

    livetomo correlate fiducial FIXED MOVING --fixed-pixel-nm 20 --moving-pixel-nm 150 --out DIR
    livetomo correlate intensity LM EM --lm-spacing-um 0.22,0.22,0.6 --em-spacing-um 0.14,0.14,0.05 --out DIR
    livetomo correlate simulate {fiducial,stacks} --out DIR

A file argument is a path, or ``FILE.h5::/path/to/dataset`` for one dataset of an HDF5 file
(without it the first dataset of two or more dimensions is used). MRC files carry their voxel
size, which is used unless a size is given. Singleton axes are dropped, so the one-frame
datasets livetomo's frame files hold read as images.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

FIDUCIAL_OPTIONS = (
    "fixed_polarity",
    "moving_polarity",
    "fixed_psf_fwhm_nm",
    "moving_psf_fwhm_nm",
    "bead_diameter_nm",
    "model",
    "method",
    "tolerance_nm",
    "allow_reflection",
)


class InputError(ValueError):
    """A file or option the command cannot use; the message says which and why."""


# --------------------------------------------------------------------------- files


def read_image(spec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Array and voxel size (x, y[, z]) in nm when the file records one (MRC), else None."""
    path, _, dataset = spec.partition("::")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such file: {path}")
    suffix = p.suffix.lower()
    voxel = None
    if suffix in (".tif", ".tiff"):
        import tifffile

        data = tifffile.imread(p)
    elif suffix in (".mrc", ".mrcs", ".rec", ".st", ".map"):
        import mrcfile

        with mrcfile.open(p, permissive=True) as mrc:
            data = np.array(mrc.data)
            size = np.array([mrc.voxel_size.x, mrc.voxel_size.y, mrc.voxel_size.z], dtype=float) / 10.0
            voxel = size if np.all(size > 0) else None
    elif suffix in (".h5", ".hdf5", ".nxs", ".hdf"):
        data = _read_hdf5(p, dataset)
    elif suffix == ".npy":
        data = np.load(p)
    else:
        raise InputError(f"unknown file type {suffix!r} of {path}; use TIFF, MRC, HDF5 (.h5) or .npy")
    data = np.squeeze(np.asarray(data))
    if data.ndim not in (2, 3):
        raise InputError(
            f"{spec} holds a {data.ndim}D array of shape {data.shape}; a 2D image or 3D stack is needed"
        )
    if voxel is not None and data.ndim == 2:
        voxel = voxel[:2]
    return data, voxel


def _read_hdf5(path: Path, dataset: str) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        if dataset:
            if dataset not in f:
                raise InputError(f"{path} has no dataset {dataset!r}")
            return f[dataset][()]
        found: list[str] = []
        f.visititems(
            lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 else None
        )
        if not found:
            raise InputError(f"{path} holds no dataset of two or more dimensions")
        return f[found[0]][()]


def write_image(path: Path, data: np.ndarray, voxel_nm=None) -> Path:
    """Write TIFF or MRC (by suffix); MRC gets the voxel size (x, y, z) in nm."""
    if path.suffix.lower() == ".mrc":
        import mrcfile

        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data))
            if voxel_nm is not None:
                mrc.voxel_size = tuple(float(v) * 10.0 for v in voxel_nm)
    else:
        import tifffile

        tifffile.imwrite(path, np.ascontiguousarray(data))
    return path


def _numbers(text: str, n: int | tuple[int, ...], name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{name} must be comma-separated numbers, got {text!r}") from None
    allowed = (n,) if isinstance(n, int) else n
    if len(values) not in allowed:
        raise InputError(f"{name} needs {' or '.join(map(str, allowed))} numbers, got {text!r}")
    return values


def _size(given: str | None, from_file, ndim: int, name: str):
    """A pixel size from the option (one number or one per axis) or the file, else an error."""
    if given is not None:
        values = _numbers(given, (1, ndim), name)
        return values[0] if len(values) == 1 else values
    if from_file is not None:
        return list(from_file)
    raise InputError(f"{name} is needed: the file does not record its pixel size")


# --------------------------------------------------------------------------- subcommands


def _fiducial(args) -> dict:
    from ...processing.correlate import register_fiducial
    from ..storage import write_fiducial_result

    fixed, fixed_vox = read_image(args.fixed)
    moving, moving_vox = read_image(args.moving)
    d = fixed.ndim
    regions = {
        key: [_numbers(r, 2 * d, f"--{key.replace('_', '-')[:-1]}") for r in getattr(args, key)] or None
        for key in ("fixed_regions", "moving_regions")
    }
    psf = {
        key: (_numbers(getattr(args, key), (1, d), key) if getattr(args, key) else None)
        for key in ("fixed_psf_nm", "moving_psf_nm")
    }
    t0 = time.perf_counter()
    reg = register_fiducial(
        fixed,
        moving,
        fixed_pixel_nm=_size(args.fixed_pixel_nm, fixed_vox, d, "--fixed-pixel-nm"),
        moving_pixel_nm=_size(args.moving_pixel_nm, moving_vox, d, "--moving-pixel-nm"),
        fixed_polarity=args.fixed_polarity,
        moving_polarity=args.moving_polarity,
        fixed_psf_fwhm_nm=_one_or_many(psf["fixed_psf_nm"], 30.0),
        moving_psf_fwhm_nm=_one_or_many(psf["moving_psf_nm"], 350.0),
        bead_diameter_nm=args.bead_nm,
        model=args.model,
        method=args.method,
        fixed_regions=regions["fixed_regions"],
        moving_regions=regions["moving_regions"],
        tolerance_nm=args.tolerance_nm,
    )
    seconds = time.perf_counter() - t0
    fused, overview, h5 = write_fiducial_result(
        args.out, reg, fixed, moving, hue_deg=args.hue, stem=args.stem
    )
    summary = {**reg.summary(), "seconds": seconds, "matrix_px": reg.matrix_px.tolist()}
    return {**summary, "fused_png": str(fused), "overview_png": str(overview), "hdf5": str(h5)}


def _one_or_many(values, default):
    if values is None:
        return default
    return values[0] if len(values) == 1 else values


def _intensity(args) -> dict:
    from ...processing.correlate import register_stacks
    from ..storage import write_intensity_result

    lm, lm_vox = read_image(args.lm)
    em, em_vox = read_image(args.em)
    if lm.ndim != 3 or em.ndim != 3:
        raise InputError(f"the intensity route needs two 3D stacks, got {lm.ndim}D LM and {em.ndim}D EM")
    lm_sp = _size(args.lm_spacing_um, None if lm_vox is None else lm_vox / 1e3, 3, "--lm-spacing-um")
    em_sp = _size(args.em_spacing_um, None if em_vox is None else em_vox / 1e3, 3, "--em-spacing-um")
    roi = _numbers(args.roi, 6, "--roi") if args.roi else None
    say = (lambda m: None) if args.json else (lambda m: print(f"  {m}", flush=True))
    reg = register_stacks(
        lm,
        em,
        lm_spacing_um=lm_sp,
        em_spacing_um=em_sp,
        roi=roi,
        prealign=not args.no_prealign,
        descriptor=args.descriptor,
        progress=say,
    )
    fused, overview, h5 = write_intensity_result(args.out, reg, lm, em, stem=args.stem)
    return {
        "matrix_um": reg.matrix_um.tolist(),
        "timings_s": reg.timings_s,
        "sigma_lm_um": reg.sigma_lm_um,
        "sigma_em_um": reg.sigma_em_um,
        "fused_png": str(fused),
        "overview_png": str(overview),
        "hdf5": str(h5),
    }


def _simulate(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.kind == "fiducial":
        from ...simulators.correlative import make_correlative_scene

        s = make_correlative_scene(seed=args.seed, spurious_fraction=0.2, missing_fraction=0.2)
        files = {"fixed": write_image(out / "sxt.tif", s.sxt), "moving": write_image(out / "fm.tif", s.fm)}
        np.save(out / "true_fm_to_sxt.npy", s.true_fm_to_sxt)
        command = (
            f"livetomo correlate fiducial {files['fixed']} {files['moving']} --fixed-pixel-nm "
            f"{s.sxt_pixel_nm:g} --moving-pixel-nm {s.fm_pixel_nm:g} --out {out / 'result'}"
        )
    else:
        from ...simulators.correlative3d import make_correlative_stacks

        kw = (
            {}
            if not args.small
            else {
                "lm_shape": (16, 192, 192),
                "lm_spacing_um": (0.44, 0.44, 0.6),
                "em_shape": (64, 180, 140),
                "em_spacing_um": (0.28, 0.28, 0.15),
            }
        )
        s = make_correlative_stacks(seed=args.seed, **kw)
        files = {
            "lm": write_image(out / "lm.tif", s.lm),
            "em": write_image(out / "em.mrc", s.em, voxel_nm=s.em_spacing_um * 1e3),
        }
        np.save(out / "true_em_to_lm.npy", s.true_em_to_lm)
        spacing = ",".join(f"{v:g}" for v in s.lm_spacing_um)
        command = (
            f"livetomo correlate intensity {files['lm']} {files['em']} --lm-spacing-um {spacing} "
            f"--out {out / 'result'}"
        )
    return {"files": {k: str(v) for k, v in files.items()}, "command": command}


# --------------------------------------------------------------------------- argparse


def add_parser(subparsers) -> None:
    """Add ``correlate`` and its subcommands to the ``livetomo`` subparsers."""
    parser = subparsers.add_parser("correlate", help="register fluorescence onto X-ray / EM images (files)")
    sub = parser.add_subparsers(dest="route", required=True)

    fid = sub.add_parser(
        "fiducial", help="bead-based registration, 2D or 3D, with error budget and HSI fusion"
    )
    fid.add_argument("fixed", help="structural image: SXT (beads dark) or EM/tomogram; FILE[::DATASET]")
    fid.add_argument("moving", help="fluorescence image with the same beads; FILE[::DATASET]")
    fid.add_argument("--fixed-pixel-nm", help="fixed pixel size in nm: one number or x,y[,z]")
    fid.add_argument("--moving-pixel-nm", help="moving pixel size in nm: one number or x,y[,z]")
    fid.add_argument(
        "--fixed-polarity",
        default="absorbing",
        choices=("absorbing", "dark", "bright"),
        help="beads in the fixed image: absorbing (SXT transmission, default), dark, bright",
    )
    fid.add_argument("--moving-polarity", default="bright", choices=("absorbing", "dark", "bright"))
    fid.add_argument("--fixed-psf-nm", help="fixed resolution (FWHM) nm, one number or x,y[,z] (default 30)")
    fid.add_argument(
        "--moving-psf-nm", help="moving resolution (FWHM) nm, one number or x,y[,z] (default 350)"
    )
    fid.add_argument(
        "--bead-nm", type=float, default=200.0, help="bead diameter in nm (default: %(default)s)"
    )
    fid.add_argument("--model", default="affine", choices=("rigid", "similarity", "affine"))
    fid.add_argument(
        "--method",
        default="gaussian",
        choices=("gaussian", "quadratic", "radial"),
        help="sub-pixel localisation (default: %(default)s; quadratic is the source's)",
    )
    fid.add_argument(
        "--fixed-region",
        dest="fixed_regions",
        action="append",
        default=[],
        help="search beads only in this box x0,y0,x1,y1 (3D: x0,y0,z0,x1,y1,z1), pixels; repeatable",
    )
    fid.add_argument(
        "--moving-region",
        dest="moving_regions",
        action="append",
        default=[],
        help="the same for the moving image",
    )
    fid.add_argument("--tolerance-nm", type=float, help="bead pairing tolerance (default: from the data)")
    fid.add_argument("--hue", type=float, default=0.0, help="fluorescence hue in the fusion, degrees (0 red)")
    fid.add_argument("--out", default="livetomo_correlate", help="output directory (default: %(default)s)")
    fid.add_argument("--stem", default="correlation", help="output file name stem")
    fid.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    fid.set_defaults(func=run, route_func=_fiducial)

    inten = sub.add_parser("intensity", help="3D LM / EM registration without beads (pre-alignment + MI)")
    inten.add_argument("lm", help="fluorescence (LM) stack; FILE[::DATASET]")
    inten.add_argument("em", help="EM (or X-ray) stack; FILE[::DATASET]")
    inten.add_argument("--lm-spacing-um", help="LM voxel size x,y,z in um (MRC: from the header)")
    inten.add_argument("--em-spacing-um", help="EM voxel size x,y,z in um (MRC: from the header)")
    inten.add_argument(
        "--roi", help="EM region of interest x0,y0,z0,x1,y1,z1 in voxels (default: central 60%%)"
    )
    inten.add_argument(
        "--descriptor",
        default="ncc",
        choices=("ncc", "histogram"),
        help="pre-alignment search (default: %(default)s; histogram is the source's)",
    )
    inten.add_argument("--no-prealign", action="store_true", help="start MI from the stacks' centres")
    inten.add_argument("--out", default="livetomo_correlate", help="output directory (default: %(default)s)")
    inten.add_argument("--stem", default="correlation", help="output file name stem")
    inten.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    inten.set_defaults(func=run, route_func=_intensity)

    sim = sub.add_parser("simulate", help="write simulated input files with their true transform")
    sim.add_argument("kind", choices=("fiducial", "stacks"), help="2D SXT/FM bead images or 3D LM/EM stacks")
    sim.add_argument(
        "--out", default="livetomo_correlate_sim", help="output directory (default: %(default)s)"
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--small", action="store_true", help="stacks: a small, fast scene instead of the source's sizes"
    )
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sim.set_defaults(func=run, route_func=_simulate)


def run(args) -> int:
    """Run the chosen ``correlate`` subcommand; 0 on success, 2 with a message on bad input."""
    try:
        result = args.route_func(args)
    except (ValueError, OSError) as exc:  # CorrelationError, InputError, unreadable files
        print(f"livetomo correlate {args.route}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=float))
        return 0
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key:>16}: {value:.4g}")
        elif not isinstance(value, list):
            print(f"{key:>16}: {value}")
    return 0
