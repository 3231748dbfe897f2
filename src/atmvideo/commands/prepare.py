"""``atmvideo prepare``: extract frames, re-encode videos for fast seeking, write list files."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _frames(args: argparse.Namespace) -> int:
    from atmvideo.data.prepare import find_videos, run_jobs

    src = Path(args.src)
    videos = find_videos(src)
    base = src if src.is_dir() else src.parent
    jobs = [
        (
            v,
            Path(args.out) / v.relative_to(base).with_suffix(""),
            args.template,
            args.start,
            args.short_side,
            args.quality,
        )
        for v in videos
    ]
    done, errors = run_jobs(_extract_job, jobs, args.workers)
    return _report("extracted frames of", done, errors)


def _extract_job(video, out_dir, template, start, short_side, quality) -> int:
    from atmvideo.data.prepare import extract_frames

    return extract_frames(
        video, out_dir, template=template, start=start, short_side=short_side, quality=quality
    )


def _resize_job(src, dst, short_side, gop, crf) -> int:
    from atmvideo.data.prepare import resize_video

    return resize_video(src, dst, short_side=short_side, gop=gop, crf=crf)


def _resize(args: argparse.Namespace) -> int:
    from atmvideo.data.prepare import find_videos, run_jobs

    src = Path(args.src)
    videos = find_videos(src)
    base = src if src.is_dir() else src.parent
    jobs = [
        (v, Path(args.out) / v.relative_to(base).with_suffix(".mp4"), args.short_side, args.gop, args.crf)
        for v in videos
    ]
    done, errors = run_jobs(_resize_job, jobs, args.workers)
    return _report("re-encoded", done, errors)


def _lists(args: argparse.Namespace) -> int:
    from atmvideo.data.annotations import read_annotations
    from atmvideo.data.prepare import write_list

    ann = read_annotations(
        args.format, args.ann, root=args.root, labels=args.labels or "", split=args.split, frames=args.frames
    )
    backend = "frames" if args.frames else "pyav"
    n = write_list(ann, args.out, root=args.root, count=args.count_frames, backend=backend)
    print(f"wrote {n} lines to {args.out} ({len(ann.class_names)} classes)")
    return 0


def _report(what: str, done: int, errors: list[str]) -> int:
    print(f"{what} {done} video(s); {len(errors)} failed")
    for error in errors:
        print(f"  failed: {error}", file=sys.stderr)
    return 1 if errors else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` sub-command and its actions (frames, resize, lists)."""
    parser = subparsers.add_parser(
        "prepare",
        help="prepare a dataset: extract frames, re-encode videos, write list files",
        description="Convert a raw video dataset into what the data pipeline reads fastest.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    workers = max(1, (os.cpu_count() or 1))

    frames = actions.add_parser("frames", help="extract every frame of each video as numbered JPEGs")
    frames.add_argument("src", help="a video, or a folder searched recursively for videos")
    frames.add_argument("out", help="output folder: OUT/<video path without extension>/<frames>")
    frames.add_argument(
        "--template", default="{:05d}.jpg", help="frame file name (default {:05d}.jpg; sthv2: {:06d}.jpg)"
    )
    frames.add_argument("--start", type=int, default=1, help="number of the first frame (default 1)")
    frames.add_argument(
        "--short-side", type=int, default=0, help="resize the shorter side to this (default 0: keep)"
    )
    frames.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    frames.add_argument("--workers", type=int, default=workers, help=f"processes (default {workers})")
    frames.set_defaults(func=_frames)

    resize = actions.add_parser(
        "resize", help="re-encode videos to a short side with dense keyframes (h264 mp4)"
    )
    resize.add_argument("src", help="a video, or a folder searched recursively for videos")
    resize.add_argument("out", help="output folder: OUT/<video path>.mp4")
    resize.add_argument("--short-side", type=int, default=256, help="shorter side in pixels (default 256)")
    resize.add_argument("--gop", type=int, default=8, help="a keyframe every this many frames (default 8)")
    resize.add_argument("--crf", type=int, default=23, help="h264 quality, lower is better (default 23)")
    resize.add_argument("--workers", type=int, default=workers, help=f"processes (default {workers})")
    resize.set_defaults(func=_resize)

    lists = actions.add_parser(
        "lists", help="write a 'path [num_frames] label[,label...]' list from official annotations"
    )
    lists.add_argument(
        "--format",
        required=True,
        choices=["sthv1", "sthv2", "kinetics400", "activitynet", "charades", "list"],
    )
    lists.add_argument("--ann", required=True, help="official annotation file of one split")
    lists.add_argument(
        "--labels", default="", help="class file (sthv1/sthv2 labels, optional for the others)"
    )
    lists.add_argument(
        "--root", required=True, help="folder of the videos or frame folders; list paths are relative to it"
    )
    lists.add_argument("--out", required=True, help="list file to write")
    lists.add_argument("--split", default="train", help="train or val (selects the ActivityNet subset)")
    lists.add_argument("--frames", action="store_true", help="the data are frame folders, not video files")
    lists.add_argument("--count-frames", action="store_true", help="read and write each video's frame count")
    lists.set_defaults(func=_lists)
