"""Wall time of ATM models against their TSN baselines, next to the FLOP ratio (tracker issue 5).

For every backbone the TSN and ATM models run interleaved (TSN, ATM, TSN, ATM, ...) in one process, so
load from other programs hits both alike; each time is the median of ``--repeats`` runs. The "paired"
column is the median of the per-round ATM/TSN ratios, which is steadier still on a busy machine.

    python benchmarks/atm_overhead.py                                  # ResNet-18/50 at 224, both modes
    python benchmarks/atm_overhead.py --models resnet18 --sizes 112 --repeats 3   # a one-minute check
    python benchmarks/atm_overhead.py --models vit_base_patch16_clip_224 --modes inference
    python benchmarks/atm_overhead.py -k tconv=false     # the ATM alone (no T-Conv in res4/res5)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import atmvideo
from atmvideo.flops import count_flops

DEFAULT_MODELS = ("resnet18", "resnet50")
ALL_MODELS = ("resnet18", "resnet50", "vit_base_patch16_clip_224")
MODES = ("inference", "training")


@dataclass
class Row:
    """One backbone at one size in one mode: median seconds per clip of both models and their ratios."""

    backbone: str
    size: int
    mode: str
    tsn_s: float
    atm_s: float
    paired: float
    flop_ratio: float

    @property
    def ratio(self) -> float:
        """ATM time over TSN time (ratio of the medians)."""
        return self.atm_s / self.tsn_s

    @property
    def excess(self) -> float:
        """Time ratio over FLOP ratio: 1.0 means the ATM costs exactly as much time as its FLOPs predict."""
        return self.ratio / self.flop_ratio


def make_step(model: torch.nn.Module, clip: torch.Tensor, mode: str) -> Callable[[], None]:
    """One timed unit of work: a no-grad forward pass, or a forward + backward pass of a training step."""
    if mode == "inference":
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model(clip)

        return infer
    model.train()
    labels = torch.zeros(clip.shape[0], dtype=torch.long)

    def train() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(clip), labels).backward()

    return train


def interleaved_medians(steps: Sequence[Callable[[], None]], repeats: int, warmup: int) -> list[list[float]]:
    """Seconds of every run of every step, the steps interleaved round by round after ``warmup`` rounds."""
    for _ in range(warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for index, step in enumerate(steps):
            start = time.perf_counter()
            step()
            times[index].append(time.perf_counter() - start)
    return times


def measure(backbone: str, size: int, mode: str, args: argparse.Namespace) -> Row:
    """Time ``tsn_<backbone>`` against ``atm_<backbone>`` on one ``batch x frames x size^2`` clip batch."""
    torch.manual_seed(0)
    names = (f"tsn_{backbone}", f"atm_{backbone}")
    kwargs = [{}, args.atm_kwargs]
    models = [
        atmvideo.create_model(name, num_frames=args.frames, num_classes=174, **extra)
        for name, extra in zip(names, kwargs, strict=True)
    ]
    clip = torch.randn(args.batch, args.frames, 3, size, size)
    if args.channels_last:
        models = [model.to(memory_format=torch.channels_last) for model in models]
    steps = [make_step(model, clip, mode) for model in models]
    tsn_times, atm_times = interleaved_medians(steps, args.repeats, args.warmup)
    flops = [
        count_flops(name, frames=args.frames, size=size, **extra).gflops
        for name, extra in zip(names, kwargs, strict=True)
    ]
    per_clip = 1.0 / args.batch
    return Row(
        backbone=backbone,
        size=size,
        mode=mode,
        tsn_s=statistics.median(tsn_times) * per_clip,
        atm_s=statistics.median(atm_times) * per_clip,
        paired=statistics.median(a / t for a, t in zip(atm_times, tsn_times, strict=True)),
        flop_ratio=flops[1] / flops[0],
    )


def format_table(rows: Sequence[Row]) -> str:
    """A markdown table of the rows."""
    lines = [
        "| backbone | size | mode | TSN s/clip | ATM s/clip | time ratio | paired | FLOP ratio | time/FLOP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.backbone} | {row.size} | {row.mode} | {row.tsn_s:.3f} | {row.atm_s:.3f} | "
            f"{row.ratio:.3f} | {row.paired:.3f} | {row.flop_ratio:.3f} | {row.excess:.3f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated backbones from {ALL_MODELS}"
    )
    parser.add_argument("--sizes", default="224", help="comma-separated input sizes, e.g. 224,112")
    parser.add_argument("--modes", default=",".join(MODES), help="inference, training or both")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="clips per step (times are reported per clip)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--channels-last", action="store_true", help="run both models in channels_last")
    parser.add_argument(
        "-k",
        "--atm-kwarg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="model option for the ATM model only, e.g. -k tconv=false (ints, floats, true/false, strings)",
    )
    args = parser.parse_args(argv)
    args.atm_kwargs = dict(parse_kwarg(item) for item in args.atm_kwarg)
    return args


def parse_kwarg(item: str) -> tuple[str, object]:
    """``"name=value"`` -> ``(name, value)`` with ints, floats and booleans converted."""
    name, sep, text = item.partition("=")
    if not sep or not name:
        raise SystemExit(f"expected NAME=VALUE, got {item!r}")
    lowered = text.lower()
    if lowered in ("true", "false"):
        return name, lowered == "true"
    for kind in (int, float):
        try:
            return name, kind(text)
        except ValueError:
            pass
    return name, text


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every (backbone, size, mode) and print one table."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for backbone in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for mode in args.modes.split(","):
                if mode not in MODES:
                    raise SystemExit(f"unknown mode {mode!r}; choose from {MODES}")
                row = measure(backbone, size, mode, args)
                print(
                    f"{backbone} {size} {mode}: TSN {row.tsn_s:.3f} s, ATM {row.atm_s:.3f} s, "
                    f"ratio {row.ratio:.3f} (paired {row.paired:.3f}), FLOP ratio {row.flop_ratio:.3f}",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(row)
    extra = f", ATM options {args.atm_kwargs}" if args.atm_kwargs else ""
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.frames} frames, "
        f"batch {args.batch}, median of {args.repeats}{extra}"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
