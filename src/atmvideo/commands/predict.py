"""``atmvideo predict``: class names and probabilities of one video from a checkpoint alone."""

from __future__ import annotations

import argparse
import json
import sys


def run(args: argparse.Namespace) -> int:
    """Print the top-k classes of the video (a table, or JSON with ``--json``)."""
    import torch

    from atmvideo.data import VideoReadError
    from atmvideo.engine.inference import predict_video

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        top = predict_video(args.checkpoint, args.video, topk=args.topk, views=args.views, device=device)
    except (VideoReadError, FileNotFoundError, ValueError) as err:
        print(f"atmvideo predict: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"video": args.video, "predictions": [{"label": n, "prob": p} for n, p in top]}))
        return 0
    width = max(len(name) for name, _ in top)
    for name, prob in top:
        print(f"{name.ljust(width)}  {prob:.4f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` sub-command."""
    parser = subparsers.add_parser(
        "predict",
        help="predict the classes of one video",
        description=(
            "Top-k labels and probabilities of a video file or frame folder; the checkpoint is all it needs."
        ),
    )
    parser.add_argument("video", help="video file (any format PyAV decodes) or a folder of frames")
    parser.add_argument(
        "--checkpoint", required=True, metavar="CKPT", help="best.pt / last.pt of a training run"
    )
    parser.add_argument("--topk", type=int, default=5, help="how many classes to print (default 5)")
    parser.add_argument("--views", default="1x1", metavar="CROPSxCLIPS", help="test views (default 1x1)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)
