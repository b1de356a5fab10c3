"""livetomo's latest measurements of the running scan as a bluesky device.

:class:`LiveMeasurements` reads what the daemon published for the frames of the scan it follows:
the last frame's shift and quality flag, the predicted shift at the next tilt and the age of
the measurement. It is built from a :class:`MeasurementBoard`, which folds the results
stream's messages (``run_start``, ``frame``, ``runout``; docs/results-stream.md). The daemon
feeds one board in-process; :mod:`livetomo.devices.results_stream` feeds one from the results
socket, so the same plan runs from an outside RunEngine or bluesky-queueserver.

Sign: shifts are the daemon's (dy, dx camera px, the correction that re-aligns the frame: the
negative of the specimen's displacement).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from .base import number_key, reading, run_as_status
from .drift import predict_runout, predict_uncorrected


@dataclass(frozen=True)
class Measurement:
    """One frame's published shift: ``received`` is ``time.monotonic()`` when it arrived."""

    run_uid: str
    seq: int
    angle_deg: float
    shift_px: tuple[float, float]
    ok: bool
    uncertainty_px: float | None
    received: float
    failed: bool = True  # the frame's own measurement failed (daemons that do not say: as untrusted)


class MeasurementBoard:
    """The measurements of one run, folded from results messages (any thread).

    ``follow_next_run()`` forgets what it had: the next ``run_start`` names the run to follow,
    so a board armed before a plan opens its run never mistakes an earlier run's frames for it.
    ``runout`` messages update every frame's current shift (the daemon re-estimates earlier
    frames as the scan grows).
    """

    def __init__(self):
        self._cond = threading.Condition()
        self.run_uid: str | None = None
        self.angles_planned: list[float] = []
        self.frames: dict[int, Measurement] = {}
        self.current: dict[int, tuple[tuple[float, float], bool]] = {}

    def follow_next_run(self) -> None:
        with self._cond:
            self.run_uid = None
            self.angles_planned = []
            self.frames.clear()
            self.current.clear()

    def on_message(self, topic: str, payload: dict) -> None:
        with self._cond:
            if topic == "run_start" and self.run_uid is None:
                self.run_uid = payload.get("run_uid")
                self.angles_planned = [float(a) for a in payload.get("angles_planned") or ()]
            elif payload.get("run_uid") != self.run_uid or self.run_uid is None:
                return
            elif topic == "frame" and payload.get("shift") is not None:
                quality = payload.get("quality") or {}
                seq = int(payload["seq"])
                self.frames[seq] = Measurement(
                    self.run_uid,
                    seq,
                    float(payload["angle"]),
                    (float(payload["shift"][0]), float(payload["shift"][1])),
                    quality.get("ok", True) is not False,
                    quality.get("uncertainty_px"),
                    time.monotonic(),
                    bool(quality.get("failed", quality.get("ok", True) is False)),
                )
                self.current.setdefault(seq, (self.frames[seq].shift_px, self.frames[seq].ok))
            elif topic == "runout" and payload.get("seqs"):
                oks = payload.get("ok") or [True] * len(payload["seqs"])
                for seq, shift, ok in zip(payload["seqs"], payload["shifts"], oks, strict=False):
                    self.current[int(seq)] = ((float(shift[0]), float(shift[1])), bool(ok))
            self._cond.notify_all()

    def wait_for(self, seq: int, timeout_s: float) -> Measurement | None:
        """Frame ``seq``'s measurement once it is in, or None after ``timeout_s``."""
        with self._cond:
            self._cond.wait_for(lambda: seq in self.frames, timeout=timeout_s)
            return self.frames.get(seq)

    def latest(self) -> Measurement | None:
        with self._cond:
            return self.frames[max(self.frames)] if self.frames else None

    def snapshot(self) -> tuple[list[float], dict, dict]:
        with self._cond:
            return list(self.angles_planned), dict(self.frames), dict(self.current)


NAN = float("nan")


class LiveMeasurements:
    """The daemon's measurements of the running scan (bluesky Readable, Triggerable, Movable).

    ``set(seq)`` names the frame to wait for (acquisition index), ``set((seq, step))`` also the
    plan's step it belongs to (they differ once a frame was re-acquired: the next angle is the
    next step's); ``trigger()`` finishes when
    that frame's measurement arrived, or after ``timeout_s`` with ``{name}_fresh`` False (the
    plan then goes on uncorrected). ``corrector`` (optional, e.g. the image shift) is read at
    each trigger: its position (``corrector.image_px``) was in place during the frame, so the
    prediction is of where the specimen would be with no correction at all. ``model``: "tilt"
    (eucentric error and drift) or "runout" (a rotation stage's wobble): devices/drift.py.

    Signals: ``seq`` (of the frame read, -1 if none), ``shift_dy``/``shift_dx`` (px), ``ok``,
    ``failed`` (the frame's own measurement failed, not only its shift uncertain),
    ``uncertainty`` (px), ``age`` (s since the measurement arrived), ``fresh``,
    ``predicted_dy``/``predicted_dx`` (px, the shift the next frame would show without any
    correction: :mod:`livetomo.devices.drift`), ``next_angle`` (deg). NaN where unknown.
    """

    def __init__(
        self,
        board: MeasurementBoard,
        *,
        name: str = "live",
        pixel_size_nm: float = 1.0,
        corrector=None,
        timeout_s: float = 10.0,
        parent=None,
    ):
        self.name = name
        self.parent = parent
        self.board = board
        self.pixel_size_nm = float(pixel_size_nm)
        self.corrector = corrector
        self.timeout_s = float(timeout_s)
        self.model = "tilt"  # or "runout" (rotation scans): which drift model predicts
        self.expected = 0
        self.expected_step = 0
        self.corrections: dict[int, tuple[float, float]] = {}  # seq -> corrector position (nm)
        self._last: dict = self._blank()

    # -- bluesky protocols -------------------------------------------------------------------
    def stage(self) -> list:
        self.board.follow_next_run()
        self.corrections.clear()
        self.expected = self.expected_step = 0
        self._last = self._blank()
        return [self]

    def unstage(self) -> list:
        return [self]

    def set(self, seq):
        seq, step = (seq, seq) if isinstance(seq, int | float) else seq

        def put():
            self.expected, self.expected_step = int(seq), int(step)

        return run_as_status(self, put)

    def trigger(self):
        seq, step = self.expected, self.expected_step
        if self.corrector is not None:
            self.corrections[seq] = tuple(float(v) for v in self.corrector.position)
        # waits in a worker thread: the RunEngine stays responsive (pause, stop) meanwhile
        return run_as_status(self, lambda: self._take(seq, step), thread=True)

    def read(self) -> dict:
        last = dict(self._last)
        received = last.pop("received")
        last["age"] = NAN if received is None else time.monotonic() - received
        return {f"{self.name}_{key}": reading(value) for key, value in last.items()}

    def describe(self) -> dict:
        units = {"shift_dy": "px", "shift_dx": "px", "uncertainty": "px", "age": "s"}
        units |= {"predicted_dy": "px", "predicted_dx": "px", "next_angle": "deg"}
        out = {f"{self.name}_{k}": number_key(f"livetomo:{self.name}", u) for k, u in units.items()}
        out[f"{self.name}_seq"] = {**number_key(f"livetomo:{self.name}"), "dtype": "integer"}
        for flag in ("ok", "failed", "fresh"):
            out[f"{self.name}_{flag}"] = {"source": f"livetomo:{self.name}", "dtype": "boolean", "shape": []}
        return out

    def read_configuration(self) -> dict:
        return {
            f"{self.name}_timeout": reading(self.timeout_s),
            f"{self.name}_pixel_size": reading(self.pixel_size_nm),
        }

    def describe_configuration(self) -> dict:
        return {
            f"{self.name}_timeout": number_key("config", "s"),
            f"{self.name}_pixel_size": number_key("config", "nm"),
        }

    # -- the work --------------------------------------------------------------------------
    @staticmethod
    def _blank() -> dict:
        return {
            "seq": -1,
            "shift_dy": NAN,
            "shift_dx": NAN,
            "ok": False,
            "failed": False,
            "uncertainty": NAN,
            "received": None,
            "fresh": False,
            "predicted_dy": NAN,
            "predicted_dx": NAN,
            "next_angle": NAN,
        }

    def _take(self, seq: int, step: int) -> None:
        found = self.board.wait_for(seq, self.timeout_s)
        measurement = found or self.board.latest()  # stale: the newest there is, said so
        out = self._blank()
        out["fresh"] = found is not None
        if measurement is not None:
            out |= {
                "seq": measurement.seq,
                "shift_dy": measurement.shift_px[0],
                "shift_dx": measurement.shift_px[1],
                "ok": measurement.ok,
                "failed": measurement.failed,
                "uncertainty": NAN
                if measurement.uncertainty_px is None
                else float(measurement.uncertainty_px),
                "received": measurement.received,
            }
        angles, _, _ = self.board.snapshot()
        if step + 1 < len(angles):
            out["next_angle"] = angles[step + 1]
            predicted = self.predict(seq + 1, angles[step + 1])
            if predicted is not None:
                out["predicted_dy"], out["predicted_dx"] = (float(v) for v in predicted)
        self._last = out

    def predict(self, next_seq: int, next_angle_deg: float):
        """The shift (px) frame ``next_seq`` would show with no correction, from every trusted
        current shift so far less the correction in place when it was taken; None without any."""
        _, frames, current = self.board.snapshot()
        seqs, angles, positions = [], [], []
        for seq, (shift, ok) in sorted(current.items()):
            if not ok or seq not in frames or not all(math.isfinite(v) for v in shift):
                continue
            if self.corrector is not None and seq not in self.corrections:
                continue  # the correction in place then is unknown
            cy, cx = (0.0, 0.0)
            if self.corrector is not None:
                cy, cx = self.corrector.image_px(self.corrections[seq], self.pixel_size_nm)
            # the published shift is minus the displacement; the correction moved the image by c
            seqs.append(seq)
            angles.append(frames[seq].angle_deg)
            positions.append((-shift[0] - cy, -shift[1] - cx))
        model = predict_runout if self.model == "runout" else predict_uncorrected
        predicted = model(seqs, angles, positions, next_seq, next_angle_deg)
        return None if predicted is None else -predicted
