"""``atmvideo eval``: test one checkpoint, or an ensemble of several, with single- or multi-view testing."""

from __future__ import annotations

import argparse
import json
import logging

from atmvideo.engine.config import ConfigError
from atmvideo.engine.runner import add_config_arguments, setup_logging

_logger = logging.getLogger("atmvideo.eval")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the metrics as JSON (rank 0)."""
    from atmvideo.data import AnnotationError, VideoReadError
    from atmvideo.engine.distributed import distributed_session
    from atmvideo.engine.inference import evaluate_checkpoints, resolved_eval_config

    setup_logging(args.verbose)
    try:
        cfg = resolved_eval_config(args.config, args.overrides, args.checkpoint[0])
        with distributed_session(cfg.train.dist_backend, args.device) as dist:
            metrics = evaluate_checkpoints(cfg, args.checkpoint, args.output, dist, views=args.views)
    except (ConfigError, AnnotationError, VideoReadError, FileNotFoundError, ValueError) as err:
        _logger.error("%s", err)
        return 2
    if metrics is not None:
        print(json.dumps({k: v for k, v in metrics.items() if k != "members"}, indent=1))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` sub-command."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate checkpoints (several = ensemble) with CROPSxCLIPS views",
        description=(
            "Evaluate on the config's validation split. Without --config the first checkpoint's own "
            "config is used. Several --checkpoint average their probabilities (e.g. 8- and 16-frame models)."
        ),
    )
    add_config_arguments(parser, config_required=False)
    parser.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="CKPT",
        help="checkpoint file; repeat for an ensemble",
    )
    parser.add_argument(
        "--views", default=None, metavar="CROPSxCLIPS", help="test views, e.g. 3x10 (default eval.views)"
    )
    parser.add_argument(
        "--output", required=True, metavar="OUT", help="folder for metrics.json, predictions, plots"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=run)
