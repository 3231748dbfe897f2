"""``atmvideo flops``: GFLOPs and parameters of a model for one view."""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from atmvideo.flops import count_flops


def parse_model_kwargs(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["atm_context=2", "tconv=false"]`` into keyword arguments (values parsed as YAML scalars)."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"atmvideo flops: -k expects name=value, got {pair!r}")
        kwargs[name.strip()] = yaml.safe_load(value) if value.strip() else ""
    return kwargs


def run(args: argparse.Namespace) -> int:
    """Count and print the cost of one view."""
    kwargs = parse_model_kwargs(args.kwarg)
    result = count_flops(args.model, frames=args.frames, size=args.size, convention=args.convention, **kwargs)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(
            f"{result.model}: {result.frames}x{result.size}x{result.size} -> "
            f"{result.gflops:.2f} GFLOPs, {result.params / 1e6:.2f} M parameters"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``flops`` sub-command."""
    parser = subparsers.add_parser(
        "flops",
        help="count GFLOPs (1 multiply-add = 1 FLOP) and parameters of a model",
        description="Count GFLOPs and parameters of one view, on the meta device (no weights needed).",
    )
    parser.add_argument("model", help="registered model name, e.g. atm_resnet50")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    parser.add_argument("--size", type=int, default=None, help="input side (default: the model's, 224/336)")
    parser.add_argument(
        "-k", dest="kwarg", action="append", default=[], metavar="NAME=VALUE", help="model keyword argument"
    )
    parser.add_argument(
        "--convention",
        choices=("full", "paper"),
        default="full",
        help="full: every multiply-add; paper: without ViT attention, as the paper's table (docs/flops.md)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object with gflops and params")
    parser.set_defaults(func=run)
