"""``livetomo`` subcommands that drive a running daemon through its control API.

Each prints sentences and tables for people; ``--json`` prints the daemon's reply as JSON for
scripts. A refused command prints the daemon's reason and exits with status 1.
"""

from __future__ import annotations

import json
import re
import sys
import time

import yaml

from ..control import ControlClient
from . import _format as fmt
from ._curve import add_curve_arguments, cmd_keys, curve_options

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _numbers(value):
    """YAML 1.1 reads ``3e-3`` (no dot) as a string; people mean the number."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return float(value)
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def parse_assignments(pairs: list[str]) -> dict:
    """``key=value`` pairs; values are read as YAML: ``angles=[0, 90]`` is a list, ``num=61`` a number."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"parameter {pair!r} is not key=value (e.g. num=61, angles='[0, 90]')")
        try:
            out[key] = _numbers(yaml.safe_load(value))
        except yaml.YAMLError:
            out[key] = value  # the plan's checks say what it should have been
    return out


def _client(args) -> ControlClient:
    return ControlClient(args.control, timeout_s=args.timeout, socket_options=curve_options(args))


def _emit(args, result, text) -> int:
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(text(result) if callable(text) else text)
    return 0


def cmd_submit(args) -> int:
    client = _client(args)
    md = parse_assignments(args.md) if args.md else None
    item = client("queue_add", plan=args.plan, kwargs=parse_assignments(args.params), md=md)
    started = client("queue_start") if args.start else None
    if args.json and not args.watch:
        return _emit(args, item, None)
    print(f"queued {fmt.item_name(item)}: {fmt.parameters(item['kwargs'])}")
    if started is not None:
        print(started)
    if args.watch:
        return watch(client, item["uid"])
    return 0


def cmd_status(args) -> int:
    return _emit(args, _client(args)("status"), fmt.status_text)


def cmd_plans(args) -> int:
    def text(plans):
        blocks = []
        for name, plan in plans.items():
            rows = [
                [
                    p,
                    info["kind"],
                    "yes" if info["required"] else "",
                    "" if info["default"] is None else info["default"],
                ]
                for p, info in plan["parameters"].items()
                if p != "md"
            ]
            blocks.append(
                f"{name}: {plan['doc']}\n" + fmt.table(rows, ["parameter", "expects", "required", "default"])
            )
        return "\n\n".join(blocks)

    return _emit(args, _client(args)("plans"), text)


def cmd_devices(args) -> int:
    return _emit(
        args,
        _client(args)("devices"),
        lambda d: fmt.table([[k, v] for k, v in d.items()], ["device", "class"]),
    )


def cmd_history(args) -> int:
    def text(items):
        if not items:
            return "no finished plans yet"
        rows = [
            [
                fmt.when(i.get("finished")),
                i["uid"][:8],
                i["plan"],
                i["state"],
                ", ".join(r[:8] for r in i.get("run_uids") or []) or "–",
                (i.get("error") or "")[:70],
            ]
            for i in items
        ]
        return fmt.table(rows, ["finished", "item", "plan", "outcome", "runs", "reason"])

    return _emit(args, _client(args)("history", limit=args.limit), text)


def cmd_simple(args) -> int:
    """pause, resume, abort, stop, halt: the daemon says what it does."""
    kwargs = {"defer": True} if getattr(args, "defer", False) else {}
    return _emit(args, _client(args)(args.command, **kwargs), str)


def cmd_shutdown(args) -> int:
    return _emit(args, _client(args)("shutdown", abort=args.abort), str)


def cmd_cancel_refinement(args) -> int:
    def text(result) -> str:
        return "refinement cancelled for run(s) " + ", ".join(u[:8] for u in result["cancelled"])

    return _emit(args, _client(args)("cancel_refinement", uid=args.uid), text)


def cmd_queue(args) -> int:
    client = _client(args)
    action = args.action
    if action == "list":

        def text(items):
            if not items:
                return "the queue is empty"
            rows = [
                [i, it["uid"][:8], it["plan"], fmt.parameters(it["kwargs"], 70)] for i, it in enumerate(items)
            ]
            return fmt.table(rows, ["pos", "item", "plan", "parameters"])

        return _emit(args, client("queue_list"), text)
    if action in ("start", "stop"):
        return _emit(args, client(f"queue_{action}"), str)
    if action == "clear":
        return _emit(args, client("queue_clear"), lambda n: f"removed {n} item(s) from the queue")
    if args.uid is None:
        raise SystemExit(f"queue {action} needs the item's uid (see 'livetomo queue list')")
    uid = _full_uid(client, args.uid)
    if action == "remove":
        return _emit(args, client("queue_remove", uid=uid), lambda i: f"removed {fmt.item_name(i)}")
    if args.position is None:
        raise SystemExit("queue move needs the new position (0 is the front)")
    return _emit(
        args,
        client("queue_move", uid=uid, position=args.position),
        lambda i: f"moved {fmt.item_name(i)} to {args.position}",
    )


def _full_uid(client: ControlClient, prefix: str) -> str:
    """An item's uid from its first characters, as the tables show them."""
    matches = [i["uid"] for i in client("queue_list") if i["uid"].startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    raise SystemExit(f"{'no' if not matches else 'more than one'} queued item matches {prefix!r}")


def watch(client: ControlClient, uid: str | None = None, *, interval: float = 0.5, stream=None) -> int:
    """Print progress until the item ``uid`` (or the running plan) has finished, and its run's end."""
    stream = stream or sys.stdout
    seen_running, last_line, misses = False, None, 0
    while True:
        try:
            status = client("status")
            misses = 0
        except TimeoutError as exc:  # say so, and keep watching: the daemon may be busy starting
            misses += 1
            if misses >= 6:
                raise
            print(f"(no answer yet: {exc})", file=stream, flush=True)
            continue
        current = status.get("current")
        if current is not None and (uid is None or current["uid"] == uid):
            seen_running = True
            line = _progress_line(status)
            if line != last_line:
                print(line, file=stream, flush=True)
                last_line = line
        else:
            finished = [h for h in client("history") if uid is None or h["uid"] == uid]
            if finished and (seen_running or uid is not None):
                return _report_end(client, finished[-1], stream)
            if (
                uid is None
                and not seen_running
                and status["re_state"] == "idle"
                and not status["queue_length"]
            ):
                print("nothing is running", file=stream)
                return 0
            if uid is not None and not seen_running and not status["queue_running"]:
                position = next((i for i, it in enumerate(client("queue_list")) if it["uid"] == uid), None)
                if position is not None and last_line != "waiting":
                    print(
                        f"waiting in the queue at position {position}; "
                        "the queue is stopped ('livetomo queue start')",
                        file=stream,
                    )
                    last_line = "waiting"
        time.sleep(interval)


def _progress_line(status: dict) -> str:
    current = status["current"]
    run = status.get("run")
    state = "PAUSED" if status.get("re_state") == "paused" else status.get("re_state")
    if run is None:
        return f"{fmt.item_name(current)}: {state}"
    return f"{fmt.run_line(run)}  [{state}]"


def _report_end(client: ControlClient, item: dict, stream, wait_s: float = 600.0) -> int:
    """The item's outcome, then its runs' end (run-end work may still be going on)."""
    print(
        f"{fmt.item_name(item)} {item['state']}" + (f": {item['error']}" if item.get("error") else ""),
        file=stream,
    )
    pending = set(item.get("run_uids") or [])
    deadline, last = time.monotonic() + wait_s, None
    while pending and time.monotonic() < deadline:
        status = client("status")
        for summary in status.get("finished_runs") or []:
            if summary["run_uid"] in pending:
                pending.discard(summary["run_uid"])
                unit = summary.get("progress_unit") or "frames"
                print(
                    f"run {summary['run_uid'][:8]}: "
                    f"{summary['frames_received']}/{summary['frames_expected']} {unit}, "
                    f"{'complete' if summary['complete'] else 'INCOMPLETE'}; {summary['file']}"
                    + (f"\n  error: {summary['error']}" if summary.get("error") else ""),
                    file=stream,
                    flush=True,
                )
        finishing = [r for r in status.get("runs_finishing") or [] if r["uid"] in pending]
        for run in finishing:
            line = fmt.run_line(run)
            if line != last:
                print(line, file=stream, flush=True)
                last = line
        if pending:
            time.sleep(0.5)
    return 0 if item["state"] in ("completed", "stopped") else 1


def cmd_watch(args) -> int:
    return watch(_client(args), args.uid)


def add_parsers(sub) -> None:
    def with_control(parser, json_flag: bool = True):
        parser.add_argument("--control", default="tcp://127.0.0.1:5580", help="daemon control endpoint")
        parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
        add_curve_arguments(parser)
        if json_flag:
            parser.add_argument("--json", action="store_true", help="print the daemon's reply as JSON")
        return parser

    submit = with_control(sub.add_parser("submit", help="queue a plan on a running daemon"))
    submit.add_argument("plan")
    submit.add_argument("params", nargs="*", help="key=value (values as YAML), e.g. num=61 angles='[0, 90]'")
    submit.add_argument("--md", nargs="*", help="run metadata key=value, e.g. sample=cell3 proposal=12345")
    submit.add_argument("--start", action="store_true", help="start the queue after adding")
    submit.add_argument("--watch", action="store_true", help="show progress until the plan and its run end")
    submit.set_defaults(func=cmd_submit)

    for name, text, func in [
        ("status", "what runs, progress, queues and the last run", cmd_status),
        ("plans", "plans the daemon offers and their parameters", cmd_plans),
        ("devices", "devices the daemon drives", cmd_devices),
    ]:
        with_control(sub.add_parser(name, help=text)).set_defaults(func=func)
    history = with_control(sub.add_parser("history", help="finished queue items and their outcome"))
    history.add_argument("-n", "--limit", type=int, default=20, help="how many (default %(default)s)")
    history.set_defaults(func=cmd_history)

    for name, text in [
        ("pause", "pause the running plan (now, or at its next checkpoint with --defer)"),
        ("resume", "resume a paused plan"),
        ("abort", "abort the running or paused plan; the queue stops"),
        ("stop", "stop the running or paused plan, keeping it as a success; the queue stops"),
        ("halt", "halt the running or paused plan without cleanup; the queue stops"),
    ]:
        parser = with_control(sub.add_parser(name, help=text))
        if name == "pause":
            parser.add_argument("--defer", action="store_true", help="pause at the next checkpoint")
        parser.set_defaults(func=cmd_simple)

    shutdown = with_control(sub.add_parser("shutdown", help="shut the daemon down cleanly"))
    shutdown.add_argument("--abort", action="store_true", help="abort a running plan first (else refused)")
    shutdown.set_defaults(func=cmd_shutdown)

    cancel = with_control(
        sub.add_parser("cancel-refinement", help="stop a run-end refinement; the run keeps its FBP volume")
    )
    cancel.add_argument("uid", nargs="?", default=None, help="run uid or a prefix (default: all ending)")
    cancel.set_defaults(func=cmd_cancel_refinement)

    queue = with_control(sub.add_parser("queue", help="list, start, stop, clear, remove or move queue items"))
    queue.add_argument("action", choices=["list", "start", "stop", "clear", "remove", "move"])
    queue.add_argument("uid", nargs="?", help="item uid or its first characters (remove, move)")
    queue.add_argument("position", nargs="?", type=int, help="new position (move; 0 is the front)")
    queue.set_defaults(func=cmd_queue)

    watch_parser = with_control(
        sub.add_parser("watch", help="show progress of the running plan"), json_flag=False
    )
    watch_parser.add_argument("uid", nargs="?", help="queue item to follow (default: whatever runs)")
    watch_parser.set_defaults(func=cmd_watch)

    keys = sub.add_parser("keys", help="make CURVE key pairs for non-loopback endpoints")
    keys.add_argument("directory")
    keys.set_defaults(func=cmd_keys)
