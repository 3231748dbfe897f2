"""``atmvideo visualize``: the paper's Figure 1 on any video, and a trained ATM's learned cue maps."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    """Draw the figure; a video that cannot be read ends with its reason on stderr and status 1."""
    from atmvideo.data.errors import VideoReadError
    from atmvideo.viz import visualize_video

    try:
        out = visualize_video(
            args.video,
            args.out,
            frame=args.frame,
            checkpoint=args.checkpoint,
            backend=args.backend,
            max_side=args.max_side or None,
            stride=args.stride,
        )
    except (
        VideoReadError,
        ValueError,
        FileNotFoundError,
        RuntimeError,
    ) as err:  # RuntimeError: a bad checkpoint
        print(f"atmvideo visualize: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``visualize`` sub-command."""
    parser = subparsers.add_parser(
        "visualize",
        help="draw the paper's Figure 1 (+, -, x, / of two consecutive frames) for a video",
        description=(
            "Draw frames K and K+1 of VIDEO and the maps of the four arithmetic operations between them "
            "(6 panels, as in the paper's Figure 1). With --checkpoint, also the learned ATM cue maps of "
            "frame K for every operation and context offset. See docs/tools.md for what each map shows."
        ),
    )
    parser.add_argument("video", metavar="VIDEO", help="video file (or frame folder with --backend frames)")
    parser.add_argument("--out", required=True, metavar="FIG.png", help="PNG file to write")
    parser.add_argument(
        "--frame", type=int, default=None, metavar="K", help="first frame (default: the middle)"
    )
    parser.add_argument("--checkpoint", default=None, metavar="CKPT", help="also show this ATM model's cues")
    parser.add_argument(
        "--stride", type=int, default=1, help="frame step of the clip fed to the model (default 1)"
    )
    parser.add_argument(
        "--backend", default="pyav", choices=("pyav", "decord", "torchcodec", "frames"), help="decoder"
    )
    parser.add_argument(
        "--max-side", type=int, default=512, help="shrink frames to this longer side first (0: full size)"
    )
    parser.set_defaults(func=run)
