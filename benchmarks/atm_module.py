"""The ATM module of an earlier commit against the working tree's: time per call, interleaved.

Loads ``src/atmvideo/ops.py``, ``src/atmvideo/models/_encoder_training.py`` and
``src/atmvideo/models/atm.py`` as they were at ``--baseline`` (any git revision) next to the current
ones; the rest of the package is the working tree's. Both modules get
the same weights (random BatchNorm statistics and a non-zero projection, so that every path does
real work) and the same input, the ``(B*T, C, H, W)`` output of res3 for one 8-frame clip by default
(28x28 at 224 px: C = 128 for ResNet-18, 512 for ResNet-50). Training is forward plus backward of the
sum of the output; evaluation runs under ``torch.inference_mode``. The largest difference between
the two outputs is printed too: a speed-up must not change the results beyond rounding.

    python benchmarks/atm_module.py --baseline dcc9145
    python benchmarks/atm_module.py --baseline HEAD --channels 128 --size 14 --modes train
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from atmvideo.models.atm import ATM

ROOT = Path(__file__).resolve().parent.parent


# The files of the module at a revision, and how ``atm.py`` imports the first two (older revisions
# have no ``_encoder_training.py``).
BASELINE_FILES = (
    ("baseline_ops", "src/atmvideo/ops.py", "from atmvideo import ops as atm_ops"),
    (
        "baseline_encoder_training",
        "src/atmvideo/models/_encoder_training.py",
        "from atmvideo.models import _encoder_training",
    ),
    ("baseline_atm", "src/atmvideo/models/atm.py", None),
)


def load_baseline(revision: str) -> type[nn.Module]:
    """The ``ATM`` class of ``revision``, with that revision's ``ops`` and encoder training pass behind it."""
    modules = {}
    imports = {}
    for name, path, import_line in BASELINE_FILES:
        shown = subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=ROOT, text=True, capture_output=True, check=False
        )
        if shown.returncode != 0:
            if name == "baseline_atm":
                raise SystemExit(f"git show {revision}:{path} failed: {shown.stderr.strip()}")
            continue
        source = shown.stdout
        if import_line is not None:
            imports[import_line] = f"import {name} as {import_line.split()[-1]}"
        else:
            for line, replacement in imports.items():
                source = source.replace(line, replacement)
        module = types.ModuleType(name)
        module.__file__ = f"<{revision}:{path}>"
        sys.modules[name] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        modules[name] = module
    return modules["baseline_atm"].ATM


def randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and a non-zero projection, in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                sub.running_mean.copy_(torch.rand(sub.num_features, generator=generator) - 0.5)
                sub.running_var.copy_(torch.rand(sub.num_features, generator=generator) + 0.5)
        for projection in module.project:
            projection.weight.normal_(0, 0.01, generator=generator)
    return module


def timed(module: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], torch.Tensor]:
    """One call of ``module`` in ``mode`` (``train``: forward and backward; ``eval``: inference)."""
    getattr(module, mode)()

    def call() -> torch.Tensor:
        if mode == "eval":
            with torch.inference_mode():
                return module(x)
        inputs = x.clone().requires_grad_()
        out = module(inputs)
        out.sum().backward()
        return out.detach()

    return call


def compare(revision: str, channels: int, size: int, mode: str, repeats: int) -> tuple[float, float, float]:
    """``(baseline ms, current ms, largest output difference)`` for one configuration."""
    torch.manual_seed(0)
    current = randomised(ATM(channels, num_frames=8, downsample=True))
    baseline = load_baseline(revision)(channels, num_frames=8, downsample=True)
    baseline.load_state_dict(current.state_dict())
    x = torch.randn(8, channels, size, size)
    calls = {"baseline": timed(baseline, x, mode), "current": timed(current, x, mode)}
    difference = (calls["current"]() - calls["baseline"]()).abs().max().item()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats + 1):  # the first round warms up
        order = list(calls) if round_ % 2 else list(reversed(calls))
        for name in order:
            start = time.perf_counter()
            calls[name]()
            if round_:
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["baseline"]) * 1e3, statistics.median(times["current"]) * 1e3, difference


def main(argv: Sequence[str] | None = None) -> int:
    """Print one markdown row per channel count and mode."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument("--channels", default="128,512", help="comma-separated input channels")
    parser.add_argument("--size", type=int, default=28, help="input map size (H = W)")
    parser.add_argument("--modes", default="train,eval", help="train, eval or both")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave the default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print("| module | mode | baseline ms | current ms | speed-up | largest difference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for channels in (int(c) for c in args.channels.split(",")):
        for mode in args.modes.split(","):
            before, after, difference = compare(args.baseline, channels, args.size, mode, args.repeats)
            name = f"ATM(C={channels}), 8x{channels}x{args.size}x{args.size}"
            print(
                f"| {name} | {mode} | {before:.1f} | {after:.1f} | {before / after:.2f} | {difference:.1e} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
