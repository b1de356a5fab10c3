"""``livetomo`` subcommands that drive a running daemon through its control API."""

from __future__ import annotations

import json
import sys
import time

import yaml

from .client import ControlClient


def parse_assignments(pairs: list[str]) -> dict:
    """``key=value`` pairs; values are read as YAML, so ``angles=[0, 90]`` is a list."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"parameter {pair!r} is not key=value")
        out[key] = yaml.safe_load(value)
    return out


def _print(result) -> None:
    print(json.dumps(result, indent=2, default=str))


def _client(args) -> ControlClient:
    return ControlClient(args.control, timeout_s=args.timeout)


def cmd_submit(args) -> int:
    client = _client(args)
    item = client("queue_add", plan=args.plan, kwargs=parse_assignments(args.params))
    print(f"queued {item['plan']} as {item['uid']}")
    if args.start:
        client("queue_start")
        print("queue started")
    if args.watch:
        return watch(client, item["uid"])
    return 0


def cmd_simple(args) -> int:
    """status, plans, devices, history, pause, resume, abort, stop, halt."""
    _print(_client(args)(args.command))
    return 0


def cmd_queue(args) -> int:
    client = _client(args)
    action = args.action
    if action == "list":
        for item in client("queue_list"):
            print(f"{item['uid']}  {item['plan']}  {json.dumps(item['kwargs'])}")
    elif action in ("start", "stop", "clear"):
        _print(client(f"queue_{action}"))
    elif action == "remove":
        _print(client("queue_remove", uid=args.uid))
    elif action == "move":
        _print(client("queue_move", uid=args.uid, position=args.position))
    return 0


def _progress_line(status: dict) -> str:
    current = status.get("current") or {}
    run = status.get("run") or {}
    done, planned = run.get("frames_done", 0), run.get("frames_planned") or 0
    width = 30
    filled = int(width * done / planned) if planned else 0
    bar = "#" * filled + "-" * (width - filled)
    return (
        f"{current.get('plan', '-'):>14} [{bar}] {done}/{planned or '?'} frames  "
        f"RE {status.get('re_state')}  received {status.get('frames_received', 0)} "
        f"rejected {status.get('frames_rejected', 0)}"
    )


def watch(client: ControlClient, uid: str | None = None, *, interval: float = 0.5, stream=None) -> int:
    """Print progress until the item ``uid`` (or the running plan) has finished."""
    stream = stream or sys.stdout
    seen_running = False
    while True:
        status = client("status")
        current = status.get("current")
        if current is not None and (uid is None or current["uid"] == uid):
            seen_running = True
            print(_progress_line(status), file=stream, flush=True)
        else:
            finished = [h for h in client("history") if uid is None or h["uid"] == uid]
            if finished and (seen_running or uid is not None):
                last = finished[-1]
                print(
                    f"{last['plan']} finished: {last['state']}"
                    + (f" ({last['error']})" if last["error"] else ""),
                    file=stream,
                )
                return 0 if last["state"] == "success" else 1
            if (
                uid is None
                and not seen_running
                and status["re_state"] == "idle"
                and not status["queue_length"]
            ):
                print("nothing is running", file=stream)
                return 0
        time.sleep(interval)


def cmd_watch(args) -> int:
    return watch(_client(args), args.uid)


def cmd_keys(args) -> int:
    from .security import make_keys

    for name, path in make_keys(args.directory).items():
        print(f"{name}: {path}")
    print(f"in the daemon's config:  curve: {{server_secret_key: {args.directory}/server.key_secret}}")
    return 0


def add_parsers(sub) -> None:
    def with_control(parser):
        parser.add_argument("--control", default="tcp://127.0.0.1:5580", help="daemon control endpoint")
        parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
        return parser

    submit = with_control(sub.add_parser("submit", help="queue a plan on a running daemon"))
    submit.add_argument("plan")
    submit.add_argument("params", nargs="*", help="key=value (values as YAML), e.g. angles='[0, 90]'")
    submit.add_argument("--start", action="store_true", help="start the queue after adding")
    submit.add_argument("--watch", action="store_true", help="show progress until the plan ends")
    submit.set_defaults(func=cmd_submit)

    for name, text in [
        ("status", "daemon status: RunEngine, queue, pipeline counters"),
        ("plans", "plans the daemon offers and their parameters"),
        ("devices", "devices the daemon drives"),
        ("history", "finished queue items"),
        ("pause", "pause the running plan at the next checkpoint"),
        ("resume", "resume a paused plan"),
        ("abort", "abort the running or paused plan (exit status 'abort')"),
        ("stop", "stop the running or paused plan (exit status 'success')"),
        ("halt", "halt the running or paused plan without cleanup"),
    ]:
        with_control(sub.add_parser(name, help=text)).set_defaults(func=cmd_simple)

    queue = with_control(sub.add_parser("queue", help="list, start, stop, clear, remove or move queue items"))
    queue.add_argument("action", choices=["list", "start", "stop", "clear", "remove", "move"])
    queue.add_argument("uid", nargs="?")
    queue.add_argument("position", nargs="?", type=int)
    queue.set_defaults(func=cmd_queue)

    watch_parser = with_control(sub.add_parser("watch", help="show progress of the running plan"))
    watch_parser.add_argument("uid", nargs="?", help="queue item to follow (default: whatever runs)")
    watch_parser.set_defaults(func=cmd_watch)

    keys = sub.add_parser("keys", help="make CURVE key pairs for non-loopback endpoints")
    keys.add_argument("directory")
    keys.set_defaults(func=cmd_keys)
