"""``livetomo train shift-net``: train the learned shift estimator (needs the ``train`` extra).

The training itself is ``livetomo.daemon.training`` (JAX); this module is the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``train`` (with ``shift-net``) to the ``livetomo`` sub-parsers ``sub``."""
    train = sub.add_parser("train", help="train a learned model on simulated data (the 'train' extra)")
    models = train.add_subparsers(dest="model", required=True)
    net = models.add_parser(
        "shift-net",
        help="the learned sub-pixel shift estimator for tilt series (K3 simulator pairs, JAX)",
        description="Train the shift network on simulated K3 pairs and write shift_net.npz + shift_net.json.",
    )
    net.add_argument("--seed", type=int, default=0, help="decides lamellae, samples and initial weights")
    net.add_argument("--steps", type=int, help="optimiser steps (default: the shipped weights' 3000)")
    net.add_argument("--lamellae", type=int, help="training lamellae to simulate (default 40)")
    net.add_argument("--batch", type=int, help="pairs per step (default 32)")
    net.add_argument(
        "--out",
        default="shift_net_out",
        help="output folder (default: %(default)s); --install writes into the installed package instead",
    )
    net.add_argument(
        "--install", action="store_true", help="replace the weights shipped in livetomo.processing"
    )
    net.add_argument("--json", action="store_true", help="print the training record as JSON at the end")
    net.set_defaults(func=run_train)
    return train


def run_train(args) -> int:
    """Run the training described by ``args``; 0 on success, 2 without JAX."""
    from ..training import TrainingUnavailable, save, train_shift_net

    overrides = {}
    for key, field in (("steps", "steps"), ("lamellae", "n_lamellae"), ("batch", "batch")):
        value = getattr(args, key, None)
        if value is not None:
            overrides[field] = value
    log = (lambda *a: None) if args.json else print
    try:
        net, record = train_shift_net(args.seed, log=log, **overrides)
    except TrainingUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.install:
        from importlib import resources

        folder = Path(str(resources.files("livetomo.processing")))
    else:
        folder = Path(args.out)
    weights, rec = save(net, record, folder)
    if args.json:
        print(json.dumps(json.loads(rec.read_text())))
    else:
        print(f"weights: {weights} ({weights.stat().st_size} bytes); record: {rec}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="livetomo")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
