"""Entry points shared by the ``train`` / ``eval`` / ``demo`` commands: logging, config arguments, a run."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from atmvideo.engine.config import RunConfig, resolve_config
from atmvideo.engine.distributed import distributed_session

__all__ = ["add_config_arguments", "config_from_args", "setup_logging", "train"]


def setup_logging(verbose: bool = False) -> None:
    """INFO logs on rank 0 (WARNING on the other ranks), to stderr, once per process."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        if rank == 0
        else f"[rank {rank}] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def add_set_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE ...``: several items per flag, repeatable, collected in ``args.overrides``."""
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help_text
    )


def add_config_arguments(parser: argparse.ArgumentParser, *, config_required: bool = True) -> None:
    """``--config`` and ``--set`` (several KEY=VALUE per flag, repeatable) and ``--device``."""
    parser.add_argument(
        "--config",
        required=config_required,
        metavar="CFG",
        help="a recipe name (list them with `atmvideo recipes`) or the path of a YAML file",
    )
    add_set_argument(
        parser, "override config values, e.g. --set optim.lr=0.02 train.epochs=10 (values parsed as YAML)"
    )
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if available"
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config of ``--config`` and ``--set``."""
    return resolve_config(args.config, args.overrides)


def train(
    cfg: RunConfig, output: str | Path, *, resume: str | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Train one run (joining the torchrun process group if there is one); returns the last metrics."""
    from atmvideo.engine.trainer import Trainer

    with distributed_session(cfg.train.dist_backend, device) as dist:
        if dist.is_main and not cfg.model.pretrained and resume is None:
            logging.getLogger(__name__).info(
                "model.pretrained is empty: the backbone starts from random weights"
            )
        return Trainer(cfg, output, dist, resume=resume).fit()
