"""The ``atmvideo`` command line: one sub-command per module in ``atmvideo.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module defines ``register(subparsers)`` that adds its parser and sets ``func``.
COMMAND_MODULES: tuple[str, ...] = (
    "atmvideo.commands.flops",
    "atmvideo.commands.make_synthetic",
    "atmvideo.commands.prepare",
    "atmvideo.commands.train",
    "atmvideo.commands.eval",
    "atmvideo.commands.predict",
    "atmvideo.commands.recipes",
    "atmvideo.commands.demo",
    "atmvideo.commands.visualize",
    "atmvideo.commands.export",
    "atmvideo.commands.report",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every sub-command attached."""
    parser = argparse.ArgumentParser(
        prog="atmvideo",
        description="Arithmetic Temporal Module video recognition: models, data, training, evaluation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    status = args.func(args)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
