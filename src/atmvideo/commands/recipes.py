"""``atmvideo recipes``: list the shipped training recipes (or print one)."""

from __future__ import annotations

import argparse
import fnmatch

import yaml

from atmvideo.engine.config import ConfigError, list_recipes, recipe_dir, recipe_path


def _description(name: str) -> str:
    data = yaml.safe_load((recipe_dir() / f"{name}.yaml").read_text(encoding="utf-8")) or {}
    return str(data.get("description", ""))


def run(args: argparse.Namespace) -> int:
    """Print recipe names with their descriptions, or the text of one recipe with ``--show``."""
    if args.show:
        try:
            print(recipe_path(args.show).read_text(encoding="utf-8"), end="")
        except ConfigError as err:
            print(f"atmvideo recipes: {err}")
            return 2
        return 0
    names = [n for n in list_recipes() if fnmatch.fnmatch(n, args.pattern)]
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name.ljust(width)}  {_description(name)}" if args.long else name)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``recipes`` sub-command."""
    parser = subparsers.add_parser(
        "recipes",
        help="list the shipped training recipes",
        description="List the recipes usable as --config NAME (files in atmvideo/recipes/).",
    )
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'atm_r50*'")
    parser.add_argument("-l", "--long", action="store_true", help="also print each recipe's description")
    parser.add_argument("--show", metavar="NAME", help="print the YAML of one recipe")
    parser.set_defaults(func=run)
