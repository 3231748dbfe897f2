"""``atmvideo train``: train a recipe (single process, or one process per GPU under torchrun)."""

from __future__ import annotations

import argparse
import logging

from atmvideo.engine.config import ConfigError, dump_config
from atmvideo.engine.runner import add_config_arguments, config_from_args, setup_logging

_logger = logging.getLogger("atmvideo.train")


def run(args: argparse.Namespace) -> int:
    """Resolve the config and train; exit status 2 for a bad config, 1 for a diverged run."""
    from atmvideo.data import AnnotationError, VideoReadError
    from atmvideo.engine.runner import train
    from atmvideo.engine.trainer import NonFiniteLossError

    setup_logging(args.verbose)
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        _logger.error("%s", err)
        return 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    try:
        metrics = train(cfg, args.output, resume=args.resume, device=args.device)
    except (ConfigError, AnnotationError, VideoReadError, FileNotFoundError, FileExistsError) as err:
        _logger.error("%s", err)
        return 2
    except NonFiniteLossError as err:
        _logger.error("%s", err)
        return 1
    if metrics:
        shown = {
            k: v for k, v in metrics.items() if k in ("top1", "top5", "mean_class_acc", "mAP", "num_samples")
        }
        _logger.info(
            "final: %s (files in %s)", ", ".join(f"{k}={v:.4g}" for k, v in shown.items()), args.output
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    parser = subparsers.add_parser(
        "train",
        help="train a model from a recipe",
        description=(
            "Train a recipe. Multi-GPU / multi-node: torchrun --nproc_per_node N -m atmvideo train ... "
            "(train.batch_size is the global batch)."
        ),
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--output", required=True, metavar="OUT", help="run folder (checkpoints, logs, metrics)"
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="auto|PATH",
        help="continue a run: auto = OUT/last.pt when it exists",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=run)
