"""``ops.local_correlation`` against other ways to compute it: time and peak memory.

- ``band``: ``atmvideo.ops.local_correlation`` (one batched product over overlapping row windows).
- ``full``: the full ``(HW x HW)`` similarity matrix of every pair, then one gather of the ``P x P``
  neighbours of every position: the fastest way we know to take them from the full matrix.
- ``diagonals``: the full matrix, re-indexed the way the authors' code does it when the correlation
  sampler package is missing: the ``P`` diagonals of the column offsets, then the ``P`` diagonals of
  the row offsets, each written into a zero tensor.
- ``shifts``: a loop over the ``P * P`` displacements, one shifted product and channel sum each.

None but ``band`` is in the library; the others are written here, for comparison only.
The variants run interleaved (band, full, diagonals, shifts, band, ...) and every time is the median of
``--repeats``. Peak memory is what the call allocates on top of its inputs: on CUDA from
``torch.cuda.max_memory_allocated``, on CPU from the PyTorch profiler's memory timeline (one extra run
per case). ``N`` maps of ``C`` channels: the default 80 is 8 frames x 5 pairs x batch 2.

    python benchmarks/correlation.py                      # 14, 16, 24, 28; forward and forward+backward
    python benchmarks/correlation.py --sizes 24 --repeats 5 --no-memory
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from atmvideo import ops

VARIANTS = ("band", "full", "diagonals", "shifts")
MODES = ("forward", "backward")


def correlation_full_matrix(a: torch.Tensor, b: torch.Tensor, patch_size: int = 9) -> torch.Tensor:
    """The authors' approach: all ``HW x HW`` dot products of a pair, then gather the ``P x P`` neighbours."""
    n, _, height, width = a.shape
    k = patch_size // 2
    full = torch.bmm(a.flatten(2).transpose(1, 2), b.flatten(2))  # (n, HW, HW)
    ys = torch.arange(height, device=a.device).view(height, 1, 1, 1)
    xs = torch.arange(width, device=a.device).view(1, width, 1, 1)
    offsets = torch.arange(patch_size, device=a.device) - k
    yy, xx = ys + offsets.view(1, 1, -1, 1), xs + offsets.view(1, 1, 1, -1)  # (H, W, P, P)
    inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
    index = (yy.clamp(0, height - 1) * width + xx.clamp(0, width - 1)).view(1, height * width, -1)
    out = full.gather(2, index.expand(n, -1, -1)) * inside.view(1, height * width, -1).to(full.dtype)
    return out.view(n, height, width, patch_size, patch_size).permute(0, 3, 4, 1, 2)


def correlation_diagonals(a: torch.Tensor, b: torch.Tensor, patch_size: int = 9) -> torch.Tensor:
    """The full matrix re-indexed by diagonals: first the column offsets, then the row offsets."""
    n, _, height, width = a.shape
    k = patch_size // 2
    full = torch.bmm(a.flatten(2).transpose(1, 2), b.flatten(2)).view(n, height, width, height, width)
    by_column = full.new_zeros(n, height, height, patch_size, width)  # (y, y', v, x)
    for v in range(patch_size):
        offset = v - k  # x' = x + offset; the diagonal runs over the x that keep x' on the map
        diagonal = torch.diagonal(full, offset=offset, dim1=2, dim2=4)  # (n, y, y', W - |offset|)
        by_column[:, :, :, v, max(-offset, 0) : max(width - offset, 0)] = diagonal
    out = full.new_zeros(n, patch_size, patch_size, height, width)
    for u in range(patch_size):
        offset = u - k
        diagonal = torch.diagonal(by_column, offset=offset, dim1=1, dim2=2)  # (n, v, x, H - |offset|)
        out[:, u, :, max(-offset, 0) : max(height - offset, 0)] = diagonal.transpose(2, 3)
    return out


def correlation_shifts(a: torch.Tensor, b: torch.Tensor, patch_size: int = 9) -> torch.Tensor:
    """A loop over the ``P * P`` displacements: multiply by the shifted map, sum over channels."""
    height, width = a.shape[-2:]
    k = patch_size // 2
    padded = F.pad(b, (k, k, k, k))
    planes = [
        (a * padded[..., u : u + height, v : v + width]).sum(dim=1)
        for u in range(patch_size)
        for v in range(patch_size)
    ]
    return torch.stack(planes, dim=1).unflatten(1, (patch_size, patch_size))


IMPLEMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "band": ops.local_correlation,
    "full": correlation_full_matrix,
    "diagonals": correlation_diagonals,
    "shifts": correlation_shifts,
}


@dataclass
class Case:
    """One map size and mode: median milliseconds and peak MiB per variant."""

    size: int
    mode: str
    ms: dict[str, float] = field(default_factory=dict)
    mib: dict[str, float] = field(default_factory=dict)


def make_call(
    variant: str, a: torch.Tensor, b: torch.Tensor, mode: str, patch_size: int
) -> Callable[[], None]:
    """One timed call: the correlation alone (no grad), or it and the gradients of both inputs."""
    fn = IMPLEMENTATIONS[variant]
    if mode == "forward":

        def forward() -> None:
            with torch.no_grad():
                fn(a, b, patch_size)

        return forward
    grad_out = torch.randn(a.shape[0], patch_size, patch_size, *a.shape[2:], device=a.device, dtype=a.dtype)

    def backward() -> None:
        out = fn(a, b, patch_size)
        torch.autograd.grad(out, (a, b), grad_out)

    return backward


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA) so that wall time covers the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    calls: dict[str, Callable[[], None]], repeats: int, device: torch.device, budget_s: float
) -> dict[str, float]:
    """Median milliseconds of every call, the calls interleaved; stops early after ``budget_s`` seconds."""
    for call in calls.values():  # warm-up (and CUDA/cuBLAS initialisation)
        call()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in calls}
    start_all = time.perf_counter()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
        if time.perf_counter() - start_all > budget_s:
            break
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a while: the profiler's native library logs every start and
    stop there (two lines per measurement, a hundred per table)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_mib(call: Callable[[], None], device: torch.device) -> float:
    """MiB allocated by ``call`` at its peak, beyond what was live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    # The timeline also counts tensors that were live before (the inputs): measure them the same way.
    def live_before() -> None:
        return None

    peaks = []
    for fn in (live_before, call):
        with (
            native_stderr_silenced(),
            profile(
                activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
            ) as prof,
        ):
            fn()
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
        peaks.append(max((sum(row) for row in sizes), default=0))
    return max(peaks[1] - peaks[0], 0) / 2**20


def run_cases(
    sizes: Sequence[int],
    modes: Sequence[str],
    *,
    n: int,
    channels: int,
    patch_size: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    variants: Sequence[str] = VARIANTS,
    memory: bool = True,
    budget_s: float = 60.0,
) -> list[Case]:
    """Time (and measure the memory of) every variant at every size and mode."""
    cases = []
    for size in sizes:
        torch.manual_seed(size)
        a = torch.randn(n, channels, size, size, device=device, dtype=dtype, requires_grad=True)
        b = torch.randn(n, channels, size, size, device=device, dtype=dtype, requires_grad=True)
        for mode in modes:
            calls = {variant: make_call(variant, a, b, mode, patch_size) for variant in variants}
            case = Case(size=size, mode=mode, ms=time_interleaved(calls, repeats, device, budget_s))
            if memory:
                case.mib = {variant: peak_mib(call, device) for variant, call in calls.items()}
            cases.append(case)
    return cases


def format_cases(cases: Sequence[Case], variants: Sequence[str] = VARIANTS) -> str:
    """A markdown table: times, memory, and how many times more the others take than ``band``."""
    others = [v for v in variants if v != "band"]
    head = ["size", "mode", *(f"{v} ms" for v in variants), *(f"{v}/band time" for v in others)]
    with_memory = any(case.mib for case in cases)
    if with_memory:
        head += [*(f"{v} MiB" for v in variants), *(f"{v}/band mem" for v in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for case in cases:
        cells = [f"{case.size}x{case.size}", case.mode]
        cells += [f"{case.ms[v]:.2f}" for v in variants]
        cells += [f"{case.ms[v] / case.ms['band']:.2f}" if "band" in case.ms else "-" for v in others]
        if with_memory:
            cells += [f"{case.mib.get(v, float('nan')):.1f}" for v in variants]
            cells += [
                f"{case.mib[v] / case.mib['band']:.2f}" if case.mib.get("band") else "-" for v in others
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="14,16,24,28", help="comma-separated map sizes (H = W)")
    parser.add_argument("--modes", default=",".join(MODES), help="forward, backward (= forward + backward)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"from {VARIANTS}")
    parser.add_argument("--n", type=int, default=80, help="maps per call (frames x pairs x batch)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every case and print one table."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = args.variants.split(",")
    cases = run_cases(
        [int(s) for s in args.sizes.split(",")],
        args.modes.split(","),
        n=args.n,
        channels=args.channels,
        patch_size=args.patch_size,
        repeats=args.repeats,
        device=device,
        dtype=getattr(torch, args.dtype),
        variants=variants,
        memory=not args.no_memory,
    )
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, N={args.n}, "
        f"C={args.channels}, P={args.patch_size}, {args.dtype}, median of {args.repeats}",
        file=sys.stdout,
    )
    print(format_cases(cases, variants))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
