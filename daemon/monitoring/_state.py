"""What the monitors show, accumulated from the results stream (docs/results-stream.md).

``MonitorState.update(topic, payload)`` folds one results message into the state and returns a
*delta*; ``snapshot()`` is the whole state, so a viewer that connects mid-run sees everything
so far, then follows the deltas. ``apply_delta`` is the viewer side of that protocol (the web
page's JavaScript does the same).

A snapshot is a JSON-ready dict of sections:

``run``          header of the current run (uid, plan, method, channels, planned frames/angles,
                 dose per frame, start time; while run-end work goes on ``finishing`` {text, step,
                 total}; at run end exit status, completeness, file, pictures)
``progress``     frames/angles done and planned, elapsed and estimated remaining time (s), dose so
                 far and planned, low-quality count, latest angle
``frames``       one entry per processed frame, oldest first, at most ``max_frames``: ``seq``,
                 ``angle`` (deg), ``time`` (epoch s), ``dy``/``dx`` (shift, px), ``fwhm_y``/``fwhm_x``
                 (correlation-peak FWHM, px), ``psr``, ``unc`` (shift uncertainty, px), ``ok``
``runout``       the current shift of every frame so far (seqs, angles, shifts, ok, uncertainty_px:
                 earlier frames re-estimated as the scan grows), the fitted runout (fit_angles,
                 fit), centre_px, tilt_axis_deg
``projections``  channel -> latest ``{seq, angle, raw, aligned}`` (encoded images)
``slices``       channel -> latest ``{n_projections, point, xy, xz, yz}`` (encoded images)
``health``       daemon status (frames received/rejected, per-stage latency and queue depth, last
                 errors, RunEngine state) and the latest frame's per-stage latency
``milling``      stages in order, each with target and EELS thickness readings
``correlative``  σ_T and its parts (nm) and the fused overlay (encoded RGB image)

A delta is ``{"version": n, "set": {section: value}, "merge": {section: {key: value}},
"append": {"frames": [entries], "frame_versions": [n, ...]}}``, or ``{"version": n, "reset":
snapshot}`` when a new run starts. Versions increase by one per accepted message; ``coalesce``
folds consecutive deltas into one (the web page gets them a few times a second), which is why
frame entries carry their own versions (optional: absent, they have the delta's).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

SECTIONS = (
    "run",
    "progress",
    "frames",
    "runout",
    "projections",
    "slices",
    "health",
    "milling",
    "correlative",
)
_IMAGE_DTYPE_SIZE = {"float32": 4, "uint8": 1}


class BadResultsMessage(ValueError):
    """A results message whose fields do not follow docs/results-stream.md."""


def _number(value, name: str, *, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadResultsMessage(f"{name} must be a number, got {value!r}")
    return float(value) if math.isfinite(value) else None


def _pair(value, name: str):
    if value is None:
        return None, None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise BadResultsMessage(f"{name} must be a pair [y, x], got {value!r}")
    return _number(value[0], name), _number(value[1], name)


def _image(value, name: str) -> dict | None:
    """Cheap check of an encoded image (shape, dtype and base64 length agree); not decoded here."""
    if value is None:
        return None
    try:
        shape, dtype, data = value["shape"], value["dtype"], value["data"]
        nbytes = math.prod(shape) * _IMAGE_DTYPE_SIZE[dtype]
        valid = isinstance(data, str) and len(data) == 4 * math.ceil(nbytes / 3) and 2 <= len(shape) <= 3
    except (TypeError, KeyError):
        valid = False
    if not valid:
        raise BadResultsMessage(f"{name} is not an encoded image (shape, dtype float32/uint8, base64 data)")
    return {"shape": list(shape), "dtype": dtype, "data": data}


def _channel(payload) -> str:
    channel = payload.get("channel")
    if not isinstance(channel, str) or not channel:
        raise BadResultsMessage(f"channel must be a non-empty string, got {channel!r}")
    return channel


class MonitorState:
    """Thread-safe accumulation of the results stream for the web page and the terminal view.

    Parameters
    ----------
    max_frames : frame entries kept per run (oldest dropped first); bounds memory on long scans.
    max_errors : error lines kept.
    max_milling_readings : EELS readings kept per milling stage.

    Memory is bounded: per run at most ``max_frames`` small entries, and only the latest image
    of each kind per channel.
    """

    def __init__(self, *, max_frames: int = 4000, max_errors: int = 20, max_milling_readings: int = 500):
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        self.max_frames = int(max_frames)
        self.max_errors = int(max_errors)
        self.max_milling_readings = int(max_milling_readings)
        self._lock = threading.RLock()
        self._listeners: list[Callable[[dict], None]] = []
        self.version = 0
        self.rejected = 0
        self._finished_runs: deque[str] = deque(maxlen=16)
        self._handlers = {
            "run_start": self._on_run_start,
            "frame": self._on_frame,
            "projection": self._on_projection,
            "runout": self._on_runout,
            "slices": self._on_slices,
            "status": self._on_status,
            "milling": self._on_milling,
            "correlative": self._on_correlative,
            "finishing": self._on_finishing,
            "run_end": self._on_run_end,
        }
        self._health = self._empty_health()
        self._reset_run(None)

    # -- listeners -------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[dict], None]) -> None:
        """Call ``callback(delta)`` after every accepted message.

        Called with the state's lock held, so deltas arrive in version order; the callback must
        be quick and must not call back into the state (hand the delta to a queue or loop).
        """
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[dict], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Everything the page shows, JSON-ready (a copy: later updates do not change it)."""
        with self._lock:
            return {
                "version": self.version,
                "max_frames": self.max_frames,
                "run": copy.deepcopy(self._run),
                "progress": dict(self._progress),
                "frames": [dict(f) for f in self._frames],
                # runout, projections, slices and correlative are replaced, never mutated
                "runout": self._runout,
                "projections": dict(self._projections),
                "slices": dict(self._slices),
                "health": copy.deepcopy(self._health),
                "milling": copy.deepcopy(self._milling),
                "correlative": self._correlative,
            }

    def frame_arrays(self) -> dict[str, np.ndarray]:
        """The kept frame entries as arrays (NaN where a frame had no shift or quality).

        Returns ``seq`` (n,) int, ``angle`` (n,) deg, ``shift`` (n, 2) px (dy, dx), ``fwhm`` (n, 2) px,
        ``psr`` (n,), ``ok`` (n,) bool.
        """
        with self._lock:
            frames = list(self._frames)

        def column(*keys):
            values = [[np.nan if f[k] is None else f[k] for k in keys] for f in frames]
            return np.asarray(values, dtype=float).reshape(len(frames), len(keys))

        return {
            "seq": np.asarray([f["seq"] or 0 for f in frames], dtype=int),
            "angle": column("angle")[:, 0],
            "shift": column("dy", "dx"),
            "fwhm": column("fwhm_y", "fwhm_x"),
            "psr": column("psr")[:, 0],
            "ok": np.asarray([f["ok"] is not False for f in frames], dtype=bool),
        }

    # -- writing ---------------------------------------------------------------------------

    def update(self, topic: str, payload: dict) -> dict | None:
        """Fold one results message in; return its delta, or None if it was ignored.

        Messages of an unknown topic or of an already finished run are ignored; malformed ones
        are counted in ``rejected`` and their reason lands in ``health.monitor_errors`` (never
        raised: the stream comes from the network).
        """
        handler = self._handlers.get(topic)
        if handler is None or not isinstance(payload, dict):
            return None
        with self._lock:
            try:
                delta = handler(payload)
            except (BadResultsMessage, TypeError, KeyError, ValueError) as exc:
                self.rejected += 1
                self._health["monitor_rejected"] = self.rejected
                errors = self._health["monitor_errors"]
                errors.append(f"{topic}: {exc}")
                del errors[: -self.max_errors]
                delta = {
                    "merge": {"health": {"monitor_rejected": self.rejected, "monitor_errors": list(errors)}}
                }
            if delta is None:
                return None
            self.version += 1
            delta["version"] = self.version
            for callback in self._listeners:
                callback(delta)
            return delta

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _empty_health() -> dict:
        return {
            "frames_received": 0,
            "frames_rejected": 0,
            "rejected_by_reason": {},
            "stages": {},
            "last_errors": [],
            "re_state": None,
            "queue_length": None,
            "current": None,
            "suspended": [],
            "latency_ms": {},
            "status_time": None,
            "monitor_rejected": 0,
            "monitor_errors": [],
        }

    def _reset_run(self, run: dict | None) -> None:
        self._run = run
        planned = (run or {}).get("frames_planned")
        by_frame = (run or {}).get("progress_unit", "frames") == "frames"  # milling counts stages
        n_angles = len((run or {}).get("angles_planned") or []) or (planned if by_frame else None)
        dose = (run or {}).get("dose_per_frame")
        self._progress = {
            "frames_done": 0,
            "frames_planned": planned,
            "angles_done": 0,
            "angles_planned": n_angles,
            "elapsed_s": 0.0 if run else None,
            "eta_s": None,
            "dose_so_far": 0.0 if run else None,
            "dose_planned": dose * planned if dose is not None and planned else None,
            "dose_units": (run or {}).get("dose_units"),
            "low_quality": 0,
            "last_angle": None,
            "last_seq": None,
        }
        self._frames: deque[dict] = deque(maxlen=self.max_frames)
        self._angles_seen: set[float] = set()
        self._runout = None
        self._projections: dict[str, dict] = {}
        self._slices: dict[str, dict] = {}
        self._milling = None
        self._correlative = None

    def _reset_delta(self) -> dict:
        snap = self.snapshot()
        snap["version"] = self.version + 1
        return {"reset": snap}

    def _start_run(self, uid: str | None, header: dict) -> None:
        if self._run and self._run.get("uid") and not self._run.get("ended"):
            self._finished_runs.append(self._run["uid"])
        run = {
            "uid": uid,
            "plan_name": None,
            "method": None,
            "channels": [],
            "frames_planned": None,
            "angles_planned": [],
            "dose_per_frame": None,
            "dose_units": None,
            "start_time": None,
            "ended": False,
            "exit_status": None,
            "complete": None,
            "frames_received": None,
            "frames_expected": None,
            "file": None,
            "pictures": [],
            "joined_mid_run": False,
            "progress_unit": "frames",
            "finishing": None,
        }
        run.update(header)
        self._reset_run(run)

    def _accept(self, uid) -> tuple[bool, bool]:
        """Whether a message of run ``uid`` belongs to the current run, starting one if it is new.

        Returns (accept, started): a viewer that joined mid-run gets a header-less run
        (``joined_mid_run``) from the first message of an unknown run; late messages of a run
        that has already ended are refused.
        """
        if self._run is not None and (uid is None or uid == self._run["uid"]):
            return True, False
        if uid is not None and uid in self._finished_runs:
            return False, False
        self._start_run(uid, {"joined_mid_run": True})
        return True, True

    def _on_run_start(self, p: dict) -> dict:
        uid = p.get("run_uid")
        if not isinstance(uid, str):
            raise BadResultsMessage(f"run_uid must be a string, got {uid!r}")
        angles = p.get("angles_planned") or []
        channels = p.get("channels") or []
        header = {
            "plan_name": p.get("plan_name"),
            "method": p.get("method"),
            "channels": [str(c) for c in channels],
            "frames_planned": int(p["frames_planned"]) if p.get("frames_planned") is not None else None,
            "angles_planned": [_number(a, "angles_planned") for a in angles],
            "dose_per_frame": _number(p.get("dose_per_frame"), "dose_per_frame"),
            "dose_units": p.get("dose_units"),
            "start_time": _number(p.get("time"), "time"),
            "progress_unit": str(p.get("progress_unit") or "frames"),
        }
        self._start_run(uid, header)
        return self._reset_delta()

    def _on_frame(self, p: dict) -> dict | None:
        accept, reset = self._accept(p.get("run_uid"))
        if not accept:
            return None
        dy, dx = _pair(p.get("shift"), "shift")
        quality = p.get("quality") or {}
        if not isinstance(quality, dict):
            raise BadResultsMessage(f"quality must be an object or null, got {quality!r}")
        fy, fx = _pair(quality.get("fwhm_px"), "quality.fwhm_px")
        entry = {
            "seq": int(p["seq"]) if p.get("seq") is not None else None,
            "angle": _number(p.get("angle"), "angle"),
            "time": _number(p.get("time"), "time"),
            "dy": dy,
            "dx": dx,
            "fwhm_y": fy,
            "fwhm_x": fx,
            "psr": _number(quality.get("psr"), "quality.psr"),
            "unc": _number(quality.get("uncertainty_px"), "quality.uncertainty_px"),
            "ok": bool(quality["ok"]) if quality.get("ok") is not None else None,
        }
        self._frames.append(entry)
        progress = self._progress
        if entry["angle"] is not None:
            self._angles_seen.add(round(entry["angle"], 4))
        run = self._run
        if run["start_time"] is None and entry["time"] is not None:
            run["start_time"] = entry["time"]  # joined mid-run: elapsed counts from the first frame seen
        planned = p.get("frames_planned", progress["frames_planned"])
        planned = int(planned) if planned is not None else None
        if run["frames_planned"] is None:
            run["frames_planned"] = planned
        done = int(p.get("frames_done") or len(self._frames))
        elapsed = (
            entry["time"] - run["start_time"]
            if entry["time"] is not None and run["start_time"] is not None
            else progress["elapsed_s"]
        )
        progress.update(
            frames_done=done,
            frames_planned=planned,
            angles_done=len(self._angles_seen),
            angles_planned=progress["angles_planned"] or planned,
            elapsed_s=elapsed,
            eta_s=elapsed / done * max(planned - done, 0)
            if planned and done and elapsed is not None
            else None,
            dose_so_far=_number(p.get("dose_so_far"), "dose_so_far"),
            low_quality=progress["low_quality"]
            + (entry["ok"] is False and not progress.get("flagged_current")),
            last_angle=entry["angle"],
            last_seq=entry["seq"],
        )
        latency = p.get("latency_ms") or {}
        if not isinstance(latency, dict):
            raise BadResultsMessage(f"latency_ms must be an object, got {latency!r}")
        self._health["latency_ms"] = {str(k): _number(v, "latency_ms") for k, v in latency.items()}
        if reset:  # the reset snapshot already holds this frame
            return self._reset_delta()
        return {
            "set": {"progress": dict(progress)},
            "merge": {"health": {"latency_ms": dict(self._health["latency_ms"])}},
            "append": {"frames": [dict(entry)]},
        }

    def _on_projection(self, p: dict) -> dict | None:
        accept, reset = self._accept(p.get("run_uid"))
        if not accept:
            return None
        channel = _channel(p)
        value = {
            "seq": p.get("seq"),
            "angle": _number(p.get("angle"), "angle"),
            "raw": _image(p.get("raw"), "raw"),
            "aligned": _image(p.get("aligned"), "aligned"),
        }
        self._projections[channel] = value  # replaced, never mutated: deltas share it
        return self._reset_delta() if reset else {"merge": {"projections": {channel: value}}}

    def _on_runout(self, p: dict) -> dict | None:
        accept, reset = self._accept(p.get("run_uid"))
        if not accept:
            return None

        def pairs(name):
            return [list(_pair(v, name)) for v in p.get(name) or []]

        angles = [_number(a, "angles") for a in p.get("angles") or []]
        seqs = p.get("seqs")
        ok = p.get("ok")
        unc = p.get("uncertainty_px")
        for name, values in (("seqs", seqs), ("ok", ok), ("uncertainty_px", unc)):
            if values is not None and (not isinstance(values, list) or len(values) != len(angles)):
                raise BadResultsMessage(f"runout {name} must be a list as long as angles")
        self._runout = {
            "seqs": None if seqs is None else [int(v) for v in seqs],
            "angles": angles,
            "shifts": pairs("shifts"),
            "ok": None if ok is None else [None if v is None else bool(v) for v in ok],
            "uncertainty_px": None if unc is None else [_number(v, "uncertainty_px") for v in unc],
            "fit_angles": [_number(a, "fit_angles") for a in p.get("fit_angles") or []],
            "fit": pairs("fit"),
            "centre_px": _number(p.get("centre_px"), "centre_px"),
            "tilt_axis_deg": _number(p.get("tilt_axis_deg"), "tilt_axis_deg"),
        }
        if ok is not None:  # the current flags: earlier frames re-estimated may pass or fail now
            self._progress["low_quality"] = sum(v is False for v in self._runout["ok"])
            self._progress["flagged_current"] = True
        if reset:
            return self._reset_delta()
        return {"set": {"runout": self._runout, "progress": dict(self._progress)}}

    def _on_slices(self, p: dict) -> dict | None:
        accept, reset = self._accept(p.get("run_uid"))
        if not accept:
            return None
        channel = _channel(p)
        value = {
            "n_projections": p.get("n_projections"),
            "point": p.get("point"),
            **{plane: _image(p.get(plane), plane) for plane in ("xy", "xz", "yz")},
        }
        self._slices[channel] = value
        return self._reset_delta() if reset else {"merge": {"slices": {channel: value}}}

    def _on_status(self, p: dict) -> dict | None:
        run = p.get("run")
        reset = False
        if isinstance(run, dict) and run.get("uid"):
            accept, reset = self._accept(run["uid"])
            if accept and not self._run["ended"]:
                self._status_progress(run)
                finishing = run.get("finishing")
                if isinstance(finishing, dict) and run.get("state") in ("processing", "finishing"):
                    self._run["finishing"] = self._finishing(finishing)
        health = self._health
        for key in ("frames_received", "frames_rejected", "re_state", "queue_length", "current", "suspended"):
            if key in p:
                health[key] = p[key]
        for key in ("rejected_by_reason", "stages"):
            if isinstance(p.get(key), dict):
                health[key] = copy.deepcopy(p[key])
        if isinstance(p.get("last_errors"), list):
            health["last_errors"] = [str(e) for e in p["last_errors"]][-self.max_errors :]
        health["status_time"] = time.time()
        if reset:
            return self._reset_delta()
        out = {"health": copy.deepcopy(health), "progress": dict(self._progress)}
        if self._run is not None:
            out["run"] = copy.deepcopy(self._run)
        return {"set": out}

    def _status_progress(self, run: dict) -> None:
        """The daemon's own figures for the run win over the monitor's estimates."""
        progress = self._progress
        done = run.get("frames_done")
        if isinstance(done, int) and done >= progress["frames_done"]:
            progress["frames_done"] = done
        for key in ("frames_planned", "elapsed_s", "eta_s", "dose_so_far"):
            if run.get(key) is not None:
                progress[key] = run[key]
        if progress["angles_planned"] is None and self._run.get("progress_unit", "frames") == "frames":
            progress["angles_planned"] = progress["frames_planned"]
        if self._run.get("frames_planned") is None:
            self._run["frames_planned"] = progress["frames_planned"]

    def _on_milling(self, p: dict) -> dict | None:
        accept, reset = self._accept(p.get("run_uid"))
        if not accept:
            return None
        stage = p.get("stage")
        if not isinstance(stage, str):
            raise BadResultsMessage(f"milling stage must be a string, got {stage!r}")
        milling = self._milling or {"stages": []}
        stages = milling["stages"]
        if not stages or stages[-1]["stage"] != stage:
            stages.append({"stage": stage, "target_nm": None, "current_A": None, "readings": []})
        current = stages[-1]
        current["target_nm"] = _number(p.get("target_nm"), "target_nm")
        current["current_A"] = _number(p.get("current_A"), "current_A")
        reading = [_number(p.get("elapsed_s"), "elapsed_s"), _number(p.get("thickness_nm"), "thickness_nm")]
        current["readings"].append(reading)
        del current["readings"][: -self.max_milling_readings]
        self._milling = milling
        return self._reset_delta() if reset else {"set": {"milling": copy.deepcopy(milling)}}

    def _on_correlative(self, p: dict) -> dict | None:
        accept, reset = self._accept(p.get("run_uid"))
        if not accept:
            return None
        self._correlative = {
            **{k: _number(p.get(k), k) for k in ("sigma_t_nm", "sigma_x_nm", "sigma_f_nm", "sigma_a_nm")},
            "fused": _image(p.get("fused"), "fused"),
        }
        return self._reset_delta() if reset else {"set": {"correlative": self._correlative}}

    @staticmethod
    def _finishing(p: dict) -> dict:
        text = p.get("text")
        if not isinstance(text, str):
            raise BadResultsMessage(f"finishing text must be a string, got {text!r}")
        return {
            "text": text[:200],
            "step": _number(p.get("step"), "step"),
            "total": _number(p.get("total"), "total"),
        }

    def _on_finishing(self, p: dict) -> dict | None:
        accept, reset = self._accept(p.get("run_uid"))
        if not accept:
            return None
        self._run["finishing"] = self._finishing(p)
        self._progress["eta_s"] = None
        if reset:
            return self._reset_delta()
        return {"set": {"run": copy.deepcopy(self._run), "progress": dict(self._progress)}}

    def _on_run_end(self, p: dict) -> dict | None:
        accept, reset = self._accept(p.get("run_uid"))
        if not accept:
            return None
        run = self._run
        run.update(
            ended=True,
            exit_status=p.get("exit_status"),
            complete=p.get("complete"),
            frames_received=p.get("frames_received"),
            frames_expected=p.get("frames_expected"),
            file=p.get("file"),
            pictures=[str(x) for x in p.get("pictures") or []],
            finishing=None,
            error=p.get("error"),
            progress_unit=str(p.get("progress_unit") or run.get("progress_unit") or "frames"),
        )
        progress = self._progress
        progress["eta_s"] = 0.0
        if isinstance(p.get("frames_received"), int):  # the final count, whatever the last status said
            progress["frames_done"] = p["frames_received"]
        if isinstance(p.get("frames_expected"), int):
            progress["frames_planned"] = p["frames_expected"]
        if run.get("uid"):
            self._finished_runs.append(run["uid"])
        if reset:
            return self._reset_delta()
        return {"set": {"run": copy.deepcopy(run), "progress": dict(self._progress)}}


def run_state(snapshot: dict) -> tuple[str, str]:
    """(text, kind) of the run's state as the monitors show it; kind is ok, warn, bad or live.

    ended: completed / stopped / aborted / failed, or incomplete; finishing: the run-end step;
    suspended (a suspender holds the plan: beam lost, stage too warm); paused (the RunEngine
    is paused); running.
    """
    run = snapshot.get("run")
    if not run:
        return "", "live"
    if run.get("ended"):
        status = run.get("exit_status")
        word = {"success": "completed", "abort": "aborted", "fail": "failed"}.get(status, str(status))
        if run.get("error"):
            return f"ended: {word}, {run['error']}", "bad"
        if run.get("complete"):
            return f"ended: {word}", "ok"
        return f"ended incomplete: {word}", "bad" if status == "fail" else "warn"
    finishing = run.get("finishing")
    if finishing:
        step, total = finishing.get("step"), finishing.get("total")
        count = f" {step:g}/{total:g}" if step is not None and total and total > 1 else ""
        return f"finishing: {finishing.get('text')}{count}", "live"
    health = snapshot.get("health") or {}
    if health.get("suspended"):
        return f"suspended: {', '.join(map(str, health['suspended']))}", "warn"
    if health.get("re_state") == "paused":
        return "paused", "warn"
    return "running", "live"


def apply_delta(model: dict | None, delta: dict) -> dict:
    """A viewer's copy of the state after ``delta`` (what the page's JavaScript does too).

    ``model`` is a snapshot (or the result of earlier calls). A delta not newer than the model is
    skipped, and of a coalesced delta only the frames newer than the model are appended, so a
    viewer may subscribe before taking its snapshot. ``set`` and ``merge`` carry latest values,
    which are safe to apply again.
    """
    if "reset" in delta:
        if model is not None and model["version"] >= delta["reset"]["version"]:
            return model
        return copy.deepcopy(delta["reset"])
    if model is None:
        raise ValueError("a viewer needs a snapshot before it can apply deltas")
    if delta["version"] <= model["version"]:
        return model
    for section, value in delta.get("set", {}).items():
        model[section] = copy.deepcopy(value)
    for section, value in delta.get("merge", {}).items():
        model[section] = {**(model.get(section) or {}), **copy.deepcopy(value)}
    append = delta.get("append", {})
    frames = append.get("frames") or []
    versions = append.get("frame_versions") or [delta["version"]] * len(frames)
    new = [copy.deepcopy(f) for f, v in zip(frames, versions, strict=True) if v > model["version"]]
    if new:
        model["frames"] = (model["frames"] + new)[-model["max_frames"] :]
    model["version"] = delta["version"]
    return model


def coalesce(deltas: list[dict]) -> list[dict]:
    """Fewer deltas with the same effect on a viewer: consecutive deltas become one.

    The page is pushed at most a few times a second, so only the latest value of each section
    (each channel's images included) travels, while every frame entry is kept with its version
    (``append.frame_versions``). A reset starts a new group.
    """
    out: list[dict] = []
    for delta in deltas:
        if "reset" in delta or not out or "reset" in out[-1]:
            out.append(_plain_copy(delta))
            continue
        group = out[-1]
        sets, merges = group.setdefault("set", {}), group.setdefault("merge", {})
        for section, value in delta.get("set", {}).items():
            sets[section] = value
            merges.pop(section, None)
        for section, value in delta.get("merge", {}).items():
            if section in sets:
                sets[section] = {**(sets[section] or {}), **value}
            else:
                merges[section] = {**merges.get(section, {}), **value}
        frames = delta.get("append", {}).get("frames") or []
        if frames:
            append = group.setdefault("append", {})
            append.setdefault("frames", []).extend(frames)
            append.setdefault("frame_versions", []).extend([delta["version"]] * len(frames))
        group["version"] = delta["version"]
    return out


def _plain_copy(delta: dict) -> dict:
    """A delta whose containers may be extended by ``coalesce`` without touching the original."""
    if "reset" in delta:
        return delta
    out = {"version": delta["version"]}
    for key in ("set", "merge"):
        if key in delta:
            out[key] = dict(delta[key])
    frames = delta.get("append", {}).get("frames")
    if frames:
        versions = delta["append"].get("frame_versions") or [delta["version"]] * len(frames)
        out["append"] = {"frames": list(frames), "frame_versions": list(versions)}
    return out
