"""Text for people: tables, durations, progress bars and the daemon's status in sentences."""

from __future__ import annotations

import time


def table(rows: list[list], headers: list[str]) -> str:
    """Rows as aligned columns under ``headers`` (None shows as '–')."""
    cells = [[("–" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def duration(seconds) -> str:
    if seconds is None:
        return "–"
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def when(timestamp) -> str:
    return "–" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def bar(done, planned, width: int = 30) -> str:
    filled = int(width * min(max(done / planned, 0.0), 1.0)) if planned and done is not None else 0
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def number(value, unit: str = "") -> str:
    """A quantity for people: three significant digits, large values with an SI prefix (4.71 MGy);
    the page's ``quantity`` does the same."""
    if value is None:
        return "–"
    prefixes = ((1e9, "G"), (1e6, "M"), (1e3, "k"))
    scale, prefix = next(((s, p) for s, p in prefixes if abs(value) >= s), (1, ""))
    return f"{float(f'{value / scale:.3g}'):g} {prefix}{unit}".rstrip()


def parameters(kwargs: dict, limit: int = 60) -> str:
    text = " ".join(f"{k}={_value(v)}" for k, v in kwargs.items())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value(v) -> str:
    if isinstance(v, list) and len(v) > 4:
        return f"[{', '.join(map(str, v[:3]))}, ... ({len(v)})]"
    return str(v).replace(" ", "")


def item_name(item: dict | None) -> str:
    return "–" if not item else f"{item['plan']} ({item['uid'][:8]})"


def run_line(run: dict) -> str:
    """The progress of a run in flight, one line."""
    unit = run.get("progress_unit") or "frames"
    done, planned = run.get("frames_done") or 0, run.get("frames_planned")
    parts = [
        f"{run.get('plan_name') or 'run'} {run['uid'][:8]}",
        f"{bar(done, planned, 20)} {done}/{planned if planned is not None else '?'} {unit}",
        f"elapsed {duration(run.get('elapsed_s'))}",
    ]
    if run.get("eta_s") is not None:
        parts.append(f"left {duration(run['eta_s'])}")
    if run.get("dose_so_far") is not None:
        parts.append(f"dose {number(run['dose_so_far'], run.get('dose_units') or '')}")
    finishing = run.get("finishing")
    if run.get("state") in ("processing", "finishing") and finishing:
        count = f" {finishing['step']}/{finishing['total']}" if finishing.get("total", 0) > 1 else ""
        parts.append(f"finishing: {finishing['text']}{count}")
    elif run.get("state") == "processing":
        parts.append("processing the last frames")
    return "  ".join(parts)


def status_text(status: dict) -> str:
    """``livetomo status`` for people."""
    lines = []
    current = status.get("current")
    re_state = status.get("re_state")
    queue = "running" if status.get("queue_running") else "stopped"
    if status.get("queue_stop_pending"):
        queue = "stops after the current plan"
    lines.append(
        f"RunEngine {re_state}; queue {queue}, {status.get('queue_length', 0)} waiting; "
        f"beamline {status.get('beamline', '?')}"
    )
    if current:
        state = "PAUSED" if current.get("state") == "paused" else current.get("state")
        lines.append(f"plan: {item_name(current)} {state}, {parameters(current.get('kwargs') or {})}")
    runs = [status["run"]] if status.get("run") else []
    runs += [r for r in status.get("runs_finishing") or [] if not runs or r["uid"] != runs[0]["uid"]]
    for run in runs:
        lines.append(f"run:  {run_line(run)}")
    rejected = status.get("frames_rejected", 0)
    reasons = ", ".join(f"{k} {v}" for k, v in (status.get("rejected_by_reason") or {}).items())
    lines.append(
        f"frames: {status.get('frames_received', 0)} received, {rejected} rejected"
        + (f" ({reasons})" if reasons else "")
        + f"; queues: ingest {status.get('pipeline_queue_depth', 0)}, processing "
        f"{status.get('processing_queue_depth', 0)}, finishing {status.get('finishing_queue_depth', 0)}"
    )
    finished = status.get("finished_runs") or []
    if finished:
        last = finished[-1]
        unit = last.get("progress_unit") or "frames"
        outcome = "complete" if last.get("complete") else "INCOMPLETE"
        lines.append(
            f"last run: {last.get('plan_name') or ''} {last['run_uid'][:8]} exit {last.get('exit_status')}, "
            f"{last.get('frames_received')}/{last.get('frames_expected')} {unit} ({outcome}); "
            f"{last.get('file')}"
        )
        if last.get("error"):
            lines.append(f"  error: {last['error']}")
    errors = status.get("last_errors") or []
    if errors:
        lines.append("recent errors:")
        lines += [f"  {e}" for e in errors[-5:]]
    lines.append(f"storage: {status.get('storage_directory', '?')}")
    return "\n".join(lines)
