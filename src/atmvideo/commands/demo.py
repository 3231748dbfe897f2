"""``atmvideo demo``: the one-command tour (synthetic data, ATM vs TSN, a results table)."""

from __future__ import annotations

import argparse
import logging

from atmvideo.engine.config import ConfigError
from atmvideo.engine.runner import add_set_argument, setup_logging

_logger = logging.getLogger("atmvideo.demo")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its table."""
    from atmvideo.engine.demo import run_demo
    from atmvideo.engine.trainer import NonFiniteLossError

    setup_logging(args.verbose)
    try:
        run_demo(
            args.output, videos=args.videos, seed=args.seed, overrides=args.overrides, device=args.device
        )
    except (ConfigError, NonFiniteLossError) as err:
        _logger.error("%s", err)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo",
        help="train ATM and TSN on a synthetic temporal dataset and compare them (a few CPU minutes)",
        description=(
            "Generate the synthetic twin-class dataset (if missing) under OUT/data, train ATM-ResNet-18 and "
            "TSN-ResNet-18 from scratch, evaluate both and print top-1 overall / on motion-defined classes, "
            "GFLOPs and training time. Re-running reuses finished runs."
        ),
    )
    parser.add_argument(
        "--output", default="runs/demo", metavar="OUT", help="demo folder (default runs/demo)"
    )
    parser.add_argument("--videos", type=int, default=500, help="synthetic training videos (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of training (default 0)")
    add_set_argument(parser, "override both demo recipes, e.g. --set train.epochs=4")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=run)
