"""``atmvideo report``: a Markdown page for a training run or a folder of runs."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    """Write the report and print where it went."""
    from atmvideo.report import write_report

    try:
        out = write_report(args.run_dir, args.out, with_cost=not args.no_cost)
    except FileNotFoundError as err:
        print(f"atmvideo report: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` sub-command."""
    parser = subparsers.add_parser(
        "report",
        help="write a Markdown report of a training run (config, metrics, cost, plots, history)",
        description=(
            "Write a Markdown page for RUN_DIR: resolved configuration, final metrics, GFLOPs and "
            "parameters, training throughput, the curves and confusion-matrix PNGs and the per-epoch "
            "history. A folder of runs (e.g. the demo's output) gets one page with a comparison table "
            "and a section per run."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder, or a folder of run folders")
    parser.add_argument(
        "--out", default=None, metavar="REPORT.md", help="output file (default RUN_DIR/report.md)"
    )
    parser.add_argument("--no-cost", action="store_true", help="skip counting GFLOPs and parameters")
    parser.set_defaults(func=run)
