"""``livetomo monitor``: the monitor page's essentials as text, refreshed in place, for SSH sessions.

It subscribes to the daemon's results stream (docs/results-stream.md) into a ``MonitorState``
and polls the control API's ``status`` (once a second by default; a daemon that does not answer
is shown, not fatal). Plain ANSI escapes only (cursor home, clear line), so it works in any terminal;
when stdout is not a terminal it prints one progress line per change instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time

import zmq

from ..monitoring import MonitorState, run_state
from ..transport import ResultsFollower
from ._curve import add_curve_arguments, curve_options
from ._format import number

SPARK = "▁▂▃▄▅▆▇█"
RED, BOLD, DIM, RESET = "\x1b[31m", "\x1b[1m", "\x1b[2m", "\x1b[0m"


def _num(value, digits: int = 2, unit: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def _text(value) -> str:
    return "–" if value is None else str(value)


def _duration(seconds) -> str:
    if seconds is None:
        return "–"
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_bar(done, planned, width: int) -> str:
    """``[#####-----]`` of ``width`` characters inside the brackets; empty when nothing is planned."""
    width = max(width, 4)
    filled = int(width * min(max(done / planned, 0.0), 1.0)) if planned and done is not None else 0
    return "[" + "#" * filled + "." * (width - filled) + "]"


def sparkline(values, width: int) -> str:
    """The last ``width`` values as block characters (space where a value is missing)."""
    values = list(values)[-width:]
    finite = [v for v in values if v is not None]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    return "".join(" " if v is None else SPARK[int((v - lo) / span * (len(SPARK) - 1))] for v in values)


def render(
    snapshot: dict, width: int = 100, *, color: bool = False, unicode: bool = True, notes=()
) -> list[str]:
    """The terminal view of a MonitorState snapshot, one string per line (no trailing newlines)."""

    def red(text: str) -> str:
        return f"{RED}{BOLD}{text}{RESET}" if color else text

    run, p, health = snapshot.get("run"), snapshot.get("progress") or {}, snapshot.get("health") or {}
    frames = snapshot.get("frames") or []
    lines = []
    if run:
        state, kind = run_state(snapshot)
        state = red(state) if kind in ("bad", "warn") else state
        title = f"{run.get('plan_name') or 'run joined mid-run'} ({run.get('method') or '?'})"
        lines.append(f"livetomo monitor | {title} | run {(run.get('uid') or '?')[:8]} | {state}")
    else:
        lines.append("livetomo monitor | no run yet")
    bar_width = max(10, min(50, width - 40))
    units = p.get("dose_units") or ""
    unit = (run or {}).get("progress_unit") or "frames"
    for name, done, planned, text in (
        ("angles", p.get("angles_done"), p.get("angles_planned"), None),
        (unit, p.get("frames_done"), p.get("frames_planned"), None),
        (
            "dose",
            p.get("dose_so_far"),
            p.get("dose_planned"),
            f"{number(p.get('dose_so_far'), units)} of {number(p.get('dose_planned'), units)} planned",
        ),
    ):
        shown = text or f"{done if done is not None else 0}/{planned if planned is not None else '?'}"
        percent = f"{100 * done / planned:5.1f}%" if planned and done is not None else ""
        lines.append(f"{name:<7}{progress_bar(done, planned, bar_width)} {shown} {percent}".rstrip())
    lines.append(
        f"elapsed {_duration(p.get('elapsed_s'))}   left {_duration(p.get('eta_s'))}   "
        f"angle {_num(p.get('last_angle'), 2, '°')}"
    )
    last = frames[-1] if frames else None
    if last:
        quality = (
            f"FWHM {_num(last['fwhm_y'], 1)}x{_num(last['fwhm_x'], 1)} px  PSR {_num(last['psr'], 1)}"
            if last["psr"] is not None or last["fwhm_y"] is not None
            else "no quality figures"
        )
        marker = "  " + red("LOW QUALITY") if last["ok"] is False else ""
        lines.append(
            f"shift   dy {_num(last['dy'], 2)}  dx {_num(last['dx'], 2)} px   {quality}{marker}"
            f"   (frame {last['seq']})"
        )
    low = [f["seq"] for f in frames if f["ok"] is False]
    low_text = f"{p.get('low_quality', 0)}" + (f" (frames {', '.join(map(str, low[-10:]))})" if low else "")
    lines.append(f"low-quality frames: {red(low_text) if low else low_text}")
    runout = snapshot.get("runout") or {}
    if runout.get("centre_px") is not None:
        lines.append(f"rotation centre {_num(runout['centre_px'], 2, ' px')} (runout fit)")
    if unicode and frames:
        spark_width = max(10, width - 12)
        lines.append(f"x trace  {sparkline([f['dx'] for f in frames], spark_width)}")
        lines.append(f"y trace  {sparkline([f['dy'] for f in frames], spark_width)}")
    rejected = health.get("frames_rejected") or 0
    reasons = ", ".join(f"{k}: {v}" for k, v in (health.get("rejected_by_reason") or {}).items())
    rejected_text = f"{rejected}" + (f" ({reasons})" if reasons else "")
    lines.append(
        f"pipeline  RE {_text(health.get('re_state'))}  queue {_text(health.get('queue_length'))}  "
        f"received {_text(health.get('frames_received'))}  "
        f"rejected {red(rejected_text) if rejected else rejected_text}"
    )
    stages, latest = health.get("stages") or {}, health.get("latency_ms") or {}
    if stages or latest:
        lines.append(f"  {'stage':<14}{'count':>8}{'mean ms':>10}{'last ms':>10}{'queue':>7}")
        for name in dict.fromkeys([*stages, *latest]):
            s = stages.get(name) or {}
            lines.append(
                f"  {name:<14}{_text(s.get('count')):>8}{_num(s.get('mean_latency_ms'), 1):>10}"
                f"{_num(latest.get(name), 1):>10}{_text(s.get('queue_depth')):>7}"
            )
    errors = list(health.get("last_errors") or []) + [
        f"monitor: {e}" for e in health.get("monitor_errors") or []
    ]
    if errors:
        lines.append("last errors:")
        lines += [f"  {e}"[:width] for e in errors[-5:]]
    milling = snapshot.get("milling")
    if milling:
        parts = []
        for s in milling["stages"]:
            thickness = s["readings"][-1][1] if s["readings"] else None
            parts.append(f"{s['stage']} {_num(thickness, 0)}/{_num(s['target_nm'], 0)} nm")
        lines.append("milling (EELS/target): " + "  ".join(parts))
    corr = snapshot.get("correlative")
    if corr:
        lines.append(
            f"correlative: sigma_T {_num(corr['sigma_t_nm'], 0)} nm (X {_num(corr['sigma_x_nm'], 0)}, "
            f"F {_num(corr['sigma_f_nm'], 0)}, A {_num(corr['sigma_a_nm'], 0)})"
        )
    if run and run.get("ended"):
        lines.append(
            f"run end: {run_state(snapshot)[0].split(': ', 1)[-1]}, "
            f"{run.get('frames_received')}/{run.get('frames_expected')} "
            f"{unit}, {'complete' if run.get('complete') else 'INCOMPLETE'}"
            + (f", file {run['file']}" if run.get("file") else "")
        )
    lines += list(notes)
    return lines


class _StatusPoller(threading.Thread):
    """Polls the control API's status into the state from its own thread, so that a daemon that
    is slow or gone never freezes the screen; ``note`` says why the last poll failed."""

    def __init__(self, client, state: MonitorState, interval_s: float):
        super().__init__(name="livetomo-monitor-status", daemon=True)
        self.client, self.state, self.interval_s = client, state, interval_s
        self.note: str | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.state.update("status", self.client("status"))
                self.note = None
            except (TimeoutError, RuntimeError, OSError, zmq.ZMQError) as exc:
                self.note = f"control API {self.client.endpoint}: {exc}"
            self.stopping.wait(self.interval_s)


def run(args) -> int:
    """Follow the daemon until Ctrl-C (or the run's end with ``--exit-at-run-end``)."""
    state = MonitorState()
    # Straight from the results module: the terminal view needs no web libraries.
    follower = ResultsFollower(state.update, args.results, secure=curve_options(args))
    poller = None
    if not args.no_control:
        from ..control import ControlClient

        poller = _StatusPoller(
            ControlClient(args.control, timeout_s=2.0, socket_options=curve_options(args)),
            state,
            args.status_interval,
        )
        poller.start()
    out = sys.stdout
    tty = out.isatty()
    color = tty and not os.environ.get("NO_COLOR")
    unicode = (getattr(out, "encoding", "") or "").lower().replace("-", "") == "utf8"
    started, shown_version = time.monotonic(), -1
    code = 0
    if tty:
        out.write("\x1b[2J\x1b[?25l")  # clear once, hide the cursor while refreshing
    try:
        while True:
            now = time.monotonic()
            snap = state.snapshot()
            run_ = snap["run"] or {}
            ended = bool(run_.get("ended"))
            notes = [f"results {args.results}" + ("" if follower.received else "  (nothing received yet)")]
            notes += [poller.note] if poller is not None and poller.note else []
            if tty:
                width = shutil.get_terminal_size((100, 40)).columns
                lines = render(snap, width, color=color, unicode=unicode, notes=notes)
                out.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
                out.flush()
            elif snap["version"] != shown_version:
                shown_version = snap["version"]
                p = snap["progress"]
                print(
                    f"{unit_of(snap)} {p['frames_done']}/{p['frames_planned']} angles {p['angles_done']}/"
                    f"{p['angles_planned']} low-quality {p['low_quality']}  {run_state(snap)[0]}",
                    file=out,
                    flush=True,
                )
            if args.exit_at_run_end and ended:
                code = 0 if run_.get("complete") and run_.get("exit_status") == "success" else 1
                break
            if args.duration and now - started >= args.duration:
                break
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        if poller is not None:
            poller.stopping.set()
        follower.stop()
        if tty:
            out.write("\x1b[?25h")
            out.flush()
    return code


def unit_of(snapshot: dict) -> str:
    return (snapshot.get("run") or {}).get("progress_unit") or "frames"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``monitor`` to the ``livetomo`` subcommands."""
    parser = subparsers.add_parser(
        "monitor", help="live progress, alignment quality and pipeline health of the running scan (text)"
    )
    parser.add_argument("--results", default="tcp://127.0.0.1:5579", help="daemon results endpoint (PUB)")
    parser.add_argument("--control", default="tcp://127.0.0.1:5580", help="daemon control endpoint")
    parser.add_argument("--no-control", action="store_true", help="do not poll the control API's status")
    parser.add_argument(
        "--status-interval",
        type=_positive,
        default=1.0,
        help="control API poll interval, s (default %(default)s)",
    )
    parser.add_argument(
        "--interval", type=_positive, default=0.5, help="refresh interval, s (default %(default)s)"
    )
    parser.add_argument(
        "--exit-at-run-end", action="store_true", help="exit when the run ends (1 if incomplete)"
    )
    parser.add_argument("--duration", type=_positive, default=None, help="exit after this many seconds")
    add_curve_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def main(argv=None) -> int:
    """``python -m livetomo.daemon.cli._monitor`` (the same as ``livetomo monitor``)."""
    parser = argparse.ArgumentParser(prog="livetomo")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["monitor", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
