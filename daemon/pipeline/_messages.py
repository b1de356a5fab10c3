"""The results stream's messages, built in one place (docs/results-stream.md is their reference).

Each builder returns ``(topic, payload)``; the pipeline publishes them and the monitoring
state (``livetomo.daemon.monitoring.MonitorState``) folds them in.
"""

from __future__ import annotations

import numpy as np

from ...processing.register import shift_image
from ..transport import encode_image

Message = tuple[str, dict]


def quality_payload(quality) -> dict | None:
    """A registration's quality as the stream carries it (None when the frame was not aligned).

    ``quality`` is a ``RegistrationQuality`` (fwhm_px, psr, uncertainty_px, ok) or such a dict;
    a dict's ``failed`` (the frame's own measurement failed, not only its uncertainty) passes on.
    """
    if quality is None:
        return None
    get = quality.get if isinstance(quality, dict) else (lambda key: getattr(quality, key))
    fwhm = get("fwhm_px")
    fwhm = (float("nan"), float("nan")) if fwhm is None else fwhm
    psr = get("psr")
    out = {
        "fwhm_px": [_finite_or_none(fwhm[0]), _finite_or_none(fwhm[1])],
        "psr": None if psr is None else _finite_or_none(psr),
        "uncertainty_px": _finite_or_none(np.max(get("uncertainty_px"))),
        "ok": bool(get("ok")),
    }
    if isinstance(quality, dict) and "failed" in quality:
        out["failed"] = bool(quality["failed"])
    return out


def run_start(
    run_uid: str,
    *,
    plan_name,
    method: str,
    frames_planned,
    progress_unit: str = "frames",
    angles_planned=(),
    channels=(),
    dose_per_frame=None,
    dose_units=None,
    time=None,
) -> Message:
    return (
        "run_start",
        {
            "run_uid": run_uid,
            "plan_name": plan_name,
            "method": method,
            "frames_planned": frames_planned,
            "progress_unit": progress_unit,
            "angles_planned": list(angles_planned),
            "channels": list(channels),
            "dose_per_frame": dose_per_frame,
            "dose_units": dose_units if dose_per_frame is not None else None,
            "time": time,
        },
    )


def frame(
    run_uid: str,
    *,
    stream: str,
    seq: int,
    angle,
    time,
    done,
    planned,
    dose_so_far,
    shift,
    quality,
    latency_ms,
) -> Message:
    """One processed frame: where it is, its shift (dy, dx px) and quality, the run's progress."""
    return (
        "frame",
        {
            "run_uid": run_uid,
            "stream": stream,
            "seq": seq,
            "angle": angle,
            "time": time,
            "frames_done": done,
            "frames_planned": planned,
            "dose_so_far": dose_so_far,
            "shift": None if shift is None else [float(shift[0]), float(shift[1])],
            "quality": quality_payload(quality),
            "latency_ms": dict(latency_ms or {}),
        },
    )


def projection(run_uid: str, *, channel: str, seq: int, angle, raw, aligned) -> Message:
    """The latest projection of ``channel``, raw and aligned (2-D images, encoded)."""
    return (
        "projection",
        {
            "run_uid": run_uid,
            "channel": channel,
            "seq": seq,
            "angle": angle,
            "raw": encode_image(np.asarray(raw, dtype=np.float32)),
            "aligned": encode_image(np.asarray(aligned, dtype=np.float32)),
        },
    )


def aligned_projection(run_uid: str, channel: str, frame, image, shift) -> Message:
    """``projection`` of a frame's image, aligned by shifting it by ``shift`` (dy, dx px)."""
    image = np.asarray(image, dtype=np.float32)
    return projection(
        run_uid,
        channel=channel,
        seq=frame.seq,
        angle=frame.angle_deg,
        raw=image,
        aligned=shift_image(image, tuple(shift)),
    )


def slices(run_uid: str, *, channel: str, n_projections: int, point, xy, xz, yz) -> Message:
    """Three orthogonal slices through the current reconstruction of ``channel``."""
    return (
        "slices",
        {
            "run_uid": run_uid,
            "channel": channel,
            "n_projections": int(n_projections),
            "point": [int(p) for p in point],
            "xy": encode_image(np.asarray(xy)),
            "xz": encode_image(np.asarray(xz)),
            "yz": encode_image(np.asarray(yz)),
        },
    )


def reconstruction_slices(run_uid: str, channel: str, recon, index: int | None = None) -> Message:
    """``slices`` of an ``IncrementalReconstructor`` (channel ``index`` of a stacked one)."""
    p = recon.previews()
    pick = (lambda a: a[index]) if index is not None else (lambda a: a)
    return slices(
        run_uid,
        channel=channel,
        n_projections=p.n_projections,
        point=p.point,
        xy=pick(p.xy),
        xz=pick(p.xz),
        yz=pick(p.yz),
    )


def runout(
    run_uid: str,
    *,
    angles,
    shifts,
    fit_angles=(),
    fit=(),
    centre_px=None,
    seqs=None,
    ok=None,
    uncertainty=None,
    tilt_axis_deg=None,
) -> Message:
    """The current shift of every frame so far (re-estimated as the scan grows), its current
    uncertainty and trust flag, and the fitted runout over angle."""

    def optional(values, cast):
        return None if values is None else [None if v is None else cast(v) for v in values]

    return (
        "runout",
        {
            "run_uid": run_uid,
            "seqs": optional(seqs, int),
            "angles": np.asarray(angles, float).tolist(),
            "shifts": np.asarray(shifts, float).reshape(-1, 2).tolist(),
            "ok": optional(ok, bool),
            "uncertainty_px": optional(uncertainty, _finite_or_none),
            "fit_angles": np.asarray(fit_angles, float).tolist(),
            "fit": np.asarray(fit, float).reshape(-1, 2).tolist(),
            "centre_px": centre_px,
            "tilt_axis_deg": tilt_axis_deg,
        },
    )


def _finite_or_none(value):
    value = float(value)
    return value if np.isfinite(value) else None


def milling(run_uid: str, *, stage: str, target_nm, thickness_nm, current_A=None, elapsed_s=None) -> Message:
    return (
        "milling",
        {
            "run_uid": run_uid,
            "stage": stage,
            "target_nm": target_nm,
            "thickness_nm": thickness_nm,
            "current_A": current_A,
            "elapsed_s": elapsed_s,
        },
    )


def correlative(run_uid: str, *, summary: dict, fused_rgb, hdf5) -> Message:
    return (
        "correlative",
        {
            "run_uid": run_uid,
            **{k: summary[k] for k in ("sigma_t_nm", "sigma_x_nm", "sigma_f_nm", "sigma_a_nm")},
            "n_pairs": summary["n_pairs"],
            "fused": encode_image((np.clip(np.asarray(fused_rgb), 0.0, 1.0) * 255).astype(np.uint8)),
            "hdf5": str(hdf5),
        },
    )


def finishing(run_uid: str, *, text: str, step: int, total: int) -> Message:
    """Run-end work under way: ``step`` of ``total``, described by ``text``."""
    return ("finishing", {"run_uid": run_uid, "text": text, "step": step, "total": total})


def run_end(
    run_uid: str,
    *,
    exit_status,
    frames_received,
    frames_expected,
    complete: bool,
    file=None,
    pictures=(),
    exports=(),
    error=None,
    **extra,
) -> Message:
    """The run's summary: exit status, units done of planned, completeness, files written."""
    return (
        "run_end",
        {
            "run_uid": run_uid,
            "exit_status": exit_status,
            "frames_received": frames_received,
            "frames_expected": frames_expected,
            "complete": bool(complete),
            "file": file,
            "pictures": [str(p) for p in pictures],
            "exports": [str(p) for p in exports],
            "error": error,
            **extra,
        },
    )
