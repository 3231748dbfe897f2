"""``atmvideo make-synthetic``: write the synthetic temporal dataset (Something-Something V2 layout)."""

from __future__ import annotations

import argparse
import time


def run(args: argparse.Namespace) -> int:
    """Generate the dataset and print where it is and how to read it."""
    from atmvideo.data.synthetic import CLASSES, SYNTHETIC_FLIP_LABEL_MAP, make_synthetic

    start = time.perf_counter()
    out = make_synthetic(args.out, seed=args.seed, videos=args.videos)
    videos = len(list((out / "videos").glob("*.mp4")))
    print(f"wrote {videos} videos of {len(CLASSES)} classes to {out} in {time.perf_counter() - start:.1f} s")
    print(
        f"read it with: --set data.format=sthv2 data.root={out / 'videos'} data.train={out / 'train.json'} "
        f"data.val={out / 'validation.json'} data.labels={out / 'labels.json'} "
        f"data.flip_label_map={SYNTHETIC_FLIP_LABEL_MAP}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``make-synthetic`` sub-command."""
    parser = subparsers.add_parser(
        "make-synthetic",
        help="write a small synthetic dataset whose classes differ only in motion direction or order",
        description=(
            "Write mp4 videos and Something-Something-V2-style annotations (train.json, validation.json, "
            "labels.json) of 10 classes in 5 time-reversed pairs (left/right, down/up, closer/away, "
            "tall-to-wide/wide-to-tall, appearing/disappearing). Deterministic from the seed."
        ),
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--videos",
        type=int,
        default=500,
        help="training videos in total (default 500); validation gets 30%% more",
    )
    parser.set_defaults(func=run)
