"""The ``livetomo`` command line: the demo, the daemon, its clients, benchmarks and tools."""

from __future__ import annotations

import argparse
import json
import sys

from ...devices.presets import PRESETS

DEMO_ANGLES = 61


def _demo(args) -> int:
    from ..demo import run_demo, run_preset_demo

    if args.preset:
        frames = None if args.angles == DEMO_ANGLES else args.angles
        result = run_preset_demo(args.preset, args.out, frames=frames, seed=args.seed)
        print(f"demo done: {args.preset}, {result.frames} frames, results in {result.nxtomo.parent}")
        return 0
    result = run_demo(args.out, n_angles=args.angles, size=args.size, dwell_ms=args.dwell_ms, seed=args.seed)
    print(f"demo done: {result.n_angles} angles, results in {result.nxtomo.parent}")
    return 0


def _bench(args) -> int:
    from ..bench import load

    try:
        run = load(args.name)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    extra = {}
    if getattr(args, "preset", None):
        if args.name != "scale":
            print("--preset applies to 'livetomo bench scale' only", file=sys.stderr)
            return 2
        extra = {"presets": args.preset, "dask": False}
    figures = run(quick=args.quick, log=(lambda *a: None) if args.json else print, **extra)
    if args.json:
        print(json.dumps(figures))
    return 0


def _serve(args) -> int:
    import logging

    from ..app import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = {"storage_directory": args.data} if args.data else None
    return serve(args.config, overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livetomo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="simulated XRF-DPC tomography scan, end to end")
    demo.add_argument("--out", default="livetomo_demo", help="output directory (default: %(default)s)")
    demo.add_argument(
        "--angles",
        type=int,
        default=DEMO_ANGLES,
        help="number of angles over 0-180 deg (with --preset: frames, default the preset's)",
    )
    demo.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a realistic scan preset at its instrument's size instead of the small XRF-DPC scan",
    )
    demo.add_argument("--size", type=int, default=48, help="raster width in pixels (height is half)")
    demo.add_argument("--dwell-ms", type=float, default=3.0, help="dwell per pixel and angle, ms")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    serve = sub.add_parser("serve", help="run the acquisition daemon (Ctrl-C or SIGTERM stops it cleanly)")
    serve.add_argument("--config", help="YAML configuration (default: loopback endpoints, see README)")
    serve.add_argument("--data", help="storage directory (overrides the configuration)")
    serve.set_defaults(func=_serve)

    bench = sub.add_parser("bench", help="benchmark livetomo against its peer in one run")
    bench.add_argument("name", help="benchmark name, e.g. orchestration")
    bench.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, for CI smoke runs")
    bench.add_argument(
        "--preset",
        action="append",
        choices=sorted(PRESETS),
        help="scale: run only this scan preset (repeatable), without the Dask part",
    )
    bench.set_defaults(func=_bench)

    from ._control import add_parsers
    from ._correlate import add_parser as add_correlate
    from ._monitor import add_parser as add_monitor
    from ._train import add_parser as add_train

    add_parsers(sub)
    add_train(sub)
    add_monitor(sub)
    add_correlate(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RuntimeError, TimeoutError, ValueError, OSError) as exc:  # the daemon's or the input's reason
        print(f"livetomo {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
