"""One script for a CUDA machine: training throughput and memory of TSN / ATM models, and the correlation.

Rows: ``tsn_resnet50``, ``atm_resnet50``, ``tsn_vit_base_patch16_clip_224`` and
``atm_vit_base_patch16_clip_224``, each trained on 8 x 224 x 224 clips, batch 16, bf16 autocast, SGD,
eager and under ``torch.compile``: clips per second and peak memory. Then ``benchmarks/correlation.py``
on the GPU. Everything prints as one table. Every row is time-boxed and a failure (out of memory, a
compile error, the time box) is reported in its row instead of ending the run; the whole script stays
within ``--budget`` seconds (default 450: under 8 minutes with start-up).

    python benchmarks/gpu.py                          # on a CUDA machine
    python benchmarks/gpu.py --device cpu --quick --budget 900 --compile-box 300   # smoke test (CPU)

``--quick`` checks that the script runs end to end: batch 1, 2 frames, 112 px, ResNet-18 rows only
(``--models`` to choose others); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import atmvideo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import correlation as correlation_bench  # noqa: E402  (a sibling script, not a package)

MODELS = (
    "tsn_resnet50",
    "atm_resnet50",
    "tsn_vit_base_patch16_clip_224",
    "atm_vit_base_patch16_clip_224",
)


@dataclass
class Row:
    """One model, eager or compiled: training clips/s and peak memory, or why there is no number."""

    model: str
    compiled: bool
    clips_per_s: float | None = None
    peak_gib: float | None = None
    steps: int = 0
    note: str = ""


class TimeBox(Exception):
    """Raised inside a measurement when its time box runs out."""


@contextlib.contextmanager
def time_box(seconds: float) -> Iterator[None]:
    """Interrupt the block with ``TimeBox`` after ``seconds`` (SIGALRM; main thread on Unix only)."""
    if seconds <= 0:
        raise TimeBox("no time left")
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise TimeBox(f"time box of {seconds:.0f}s ran out")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def synchronize(device: torch.device) -> None:
    """Wait for the GPU so that wall time covers the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, clips: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    """A full training step: bf16 autocast forward, loss, backward, SGD update."""
    device_type = clips.device.type

    def step() -> None:
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(clips), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_model(
    name: str, compiled: bool, args: argparse.Namespace, device: torch.device, seconds: float
) -> Row:
    """Train ``name`` for a few steps inside a time box; clips/s over the timed steps, peak memory."""
    row = Row(model=name, compiled=compiled)
    model = optimizer = step = None
    try:
        with time_box(seconds):
            start = time.perf_counter()
            torch.manual_seed(0)
            model = atmvideo.create_model(name, num_frames=args.frames, num_classes=174).to(device).train()
            if args.channels_last and "resnet" in name:
                model = model.to(memory_format=torch.channels_last)
            runner = torch.compile(model) if compiled else model
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            clips = torch.randn(args.batch, args.frames, 3, args.size, args.size, device=device)
            labels = torch.randint(0, 174, (args.batch,), device=device)
            step = training_step(runner, optimizer, clips, labels)
            for _ in range(args.warmup):  # includes compilation
                step()
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            # Timed steps: at least 2, then as many as fit in what is left of a third of the box.
            timed_start = time.perf_counter()
            deadline = timed_start + max((seconds - (timed_start - start)) / 3, 0.0)
            while row.steps < 2 or (row.steps < args.max_steps and time.perf_counter() < deadline):
                step()
                synchronize(device)
                row.steps += 1
            elapsed = time.perf_counter() - timed_start
            row.clips_per_s = args.batch * row.steps / elapsed
            if device.type == "cuda":
                row.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
            row.note = f"warm-up+compile {timed_start - start:.0f}s" if compiled else ""
    except TimeBox as error:
        row.note = f"skipped: {error}"
    except torch.cuda.OutOfMemoryError:
        row.note = "out of memory"
    except Exception as error:  # a row's failure must not end the run
        message = str(error).splitlines()[0][:120] if str(error) else ""
        row.note = (
            "skipped: time box ran out"
            if "TimeBox" in message
            else f"failed: {type(error).__name__}: {message}"
        )
        if args.verbose:
            traceback.print_exc()
    finally:
        del model, optimizer, step
        if compiled:
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"{name} compiled={compiled}: {row}", file=sys.stderr, flush=True)
    return row


def format_rows(rows: Sequence[Row]) -> str:
    """The model table, with ATM/TSN throughput ratios per backbone and mode."""
    by_key = {(row.model, row.compiled): row for row in rows}
    lines = [
        "| model | torch.compile | clips/s | ATM/TSN time | peak GiB | steps | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ratio = "-"
        baseline = by_key.get((row.model.replace("atm_", "tsn_", 1), row.compiled))
        if row.model.startswith("atm_") and baseline and baseline.clips_per_s and row.clips_per_s:
            ratio = f"{baseline.clips_per_s / row.clips_per_s:.3f}"
        rate = f"{row.clips_per_s:.2f}" if row.clips_per_s else "-"
        peak = f"{row.peak_gib:.2f}" if row.peak_gib is not None else "-"
        lines.append(
            f"| {row.model} | {'yes' if row.compiled else 'no'} | {rate} | {ratio} | {peak} | "
            f"{row.steps} | {row.note} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny batch and clips: checks the script runs")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--channels-last", action="store_true", help="run the ResNets channels-last")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole script")
    parser.add_argument("--eager-box", type=float, default=40.0, help="time box of an eager row (s)")
    parser.add_argument("--compile-box", type=float, default=110.0, help="time box of a compiled row (s)")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failed rows")
    args = parser.parse_args(argv)
    if args.quick:  # ResNet-18 at 112 px: a CPU can compile and train it within the time boxes
        args.batch, args.frames, args.size, args.warmup, args.max_steps = 1, 2, 112, 2, 3
        if args.models == ",".join(MODELS):
            args.models = "tsn_resnet18,atm_resnet18"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every row within the budget, then the correlation; print one report."""
    args = parse_args(argv)
    device = torch.device(args.device)
    start = time.perf_counter()

    def left() -> float:
        return args.budget - (time.perf_counter() - start)

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    models = args.models.split(",")
    rows = [measure_model(name, False, args, device, min(args.eager_box, left() - 60)) for name in models]
    correlation_cases: list[correlation_bench.Case] = []
    correlation_note = ""
    try:
        with time_box(min(90.0, left() - 10)):
            correlation_cases = correlation_bench.run_cases(
                [14, 24] if args.quick else [14, 16, 24, 28],
                correlation_bench.MODES,
                n=8 if args.quick else 80,
                channels=64,
                patch_size=9,
                repeats=2 if args.quick else 10,
                device=device,
                memory=device.type == "cuda",  # the CPU profiler is too slow for a smoke test
                budget_s=15.0,
            )
    except Exception as error:
        correlation_note = f"correlation benchmark failed: {type(error).__name__}: {error}"
    if not args.no_compile:
        rows += [
            measure_model(name, True, args, device, min(args.compile_box, left() - 5)) for name in models
        ]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"## {name}, torch {torch.__version__}: training, batch {args.batch} x {args.frames} x "
        f"{args.size}^2, bf16 autocast, SGD ({time.perf_counter() - start:.0f}s in all)"
    )
    print(format_rows(rows))
    print(f"\n## local_correlation on {name} (N = {8 if args.quick else 80}, C = 64, P = 9, float32)")
    print(correlation_bench.format_cases(correlation_cases) if correlation_cases else correlation_note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
