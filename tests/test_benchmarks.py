"""The benchmark scripts: their baselines compute what the library computes, and each prints its table."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from atmvideo import ops
from atmvideo.models import _encoder_training

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row of ``text`` but the header and its rule."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def ratio_of_rounded(ratio: float, top: float, bottom: float, half_step: float) -> bool:
    """Whether a printed ratio (2 decimals) can be that of two values printed rounded to ``half_step``."""
    low, high = (top - half_step) / (bottom + half_step), (top + half_step) / max(bottom - half_step, 1e-9)
    return low - 0.005 <= ratio <= high + 0.005


@pytest.mark.parametrize(("patch_size", "height", "width"), [(3, 6, 7), (5, 6, 7), (7, 2, 3)])
def test_correlation_baselines_compute_the_library_correlation(
    patch_size: int, height: int, width: int
) -> None:
    """The other ways of computing the correlation are only fair baselines if they give its numbers
    (also where the patch is larger than the map)."""
    correlation = load("correlation")
    torch.manual_seed(0)
    a = torch.randn(3, 4, height, width, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, height, width, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, patch_size, patch_size, height, width, dtype=torch.float64)
    want = ops.local_correlation(a, b, patch_size)
    want_grads = torch.autograd.grad(want, (a, b), grad)
    assert set(correlation.IMPLEMENTATIONS) == {"band", "full", "diagonals", "shifts"}
    for name in ("full", "diagonals", "shifts"):
        got = correlation.IMPLEMENTATIONS[name](a, b, patch_size)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for got_grad, want_grad in zip(torch.autograd.grad(got, (a, b), grad), want_grads, strict=True):
            torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12)


def test_correlation_benchmark_prints_its_table_without_profiler_logs(
    capfd: pytest.CaptureFixture[str],
) -> None:
    correlation = load("correlation")
    threads = str(torch.get_num_threads())
    argv = ["--sizes", "12,16", "--n", "8", "--channels", "16", "--patch-size", "5", "--repeats", "2"]
    assert correlation.main([*argv, "--threads", threads]) == 0
    out, err = capfd.readouterr()
    rows = table_rows(out)
    assert [(row[0], row[1]) for row in rows] == [
        ("12x12", "forward"), ("12x12", "backward"), ("16x16", "forward"), ("16x16", "backward"),
    ]  # fmt: skip
    for row in rows:
        assert len(row) == 16  # size, mode, 4 times, 3 time ratios, 4 peaks, 3 memory ratios
        times, memory = [float(cell) for cell in row[2:6]], [float(cell) for cell in row[9:13]]
        assert all(value > 0 for value in times) and all(value > 0 for value in memory)
        for other in range(1, 4):
            assert ratio_of_rounded(float(row[5 + other]), times[other], times[0], 0.005)
            assert ratio_of_rounded(float(row[12 + other]), memory[other], memory[0], 0.05)
    assert "profiler_start" not in err and "profiler_stop" not in err


def test_overhead_benchmark_reports_time_next_to_flops(capfd: pytest.CaptureFixture[str]) -> None:
    overhead = load("atm_overhead")
    threads = str(torch.get_num_threads())
    argv = ["--models", "resnet18", "--sizes", "64", "--frames", "2", "--repeats", "1", "--warmup", "0"]
    assert overhead.main([*argv, "--threads", threads]) == 0
    rows = table_rows(capfd.readouterr().out)
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("resnet18", "64", "inference"), ("resnet18", "64", "training"),
    ]  # fmt: skip
    for row in rows:
        tsn_s, atm_s, ratio, _, flop_ratio, excess = (float(cell) for cell in row[3:])
        assert tsn_s > 0 and atm_s > 0
        assert ratio == pytest.approx(atm_s / tsn_s, rel=0.1)  # of the times rounded to milliseconds
        assert 1.0 < flop_ratio < 2.0
        assert excess == pytest.approx(ratio / flop_ratio, abs=0.01)


def test_module_benchmark_compares_head_with_the_working_tree(capfd: pytest.CaptureFixture[str]) -> None:
    """Against ``HEAD`` the two modules are the same code, or a change of the working tree that must
    not change results beyond rounding."""
    inside_git = (
        subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=BENCHMARKS, capture_output=True, check=False
        ).returncode
        == 0
    )
    if not inside_git:
        pytest.skip("not a git checkout: the benchmark reads a revision's files with git")
    module_benchmark = load("atm_module")
    baseline_atm = sys.modules[module_benchmark.load_baseline("HEAD").__module__]
    # Every file of the module comes from the revision, the encoder's training pass included.
    assert baseline_atm.atm_ops is not ops and baseline_atm.atm_ops.__file__ == "<HEAD:src/atmvideo/ops.py>"
    assert baseline_atm._encoder_training is not _encoder_training
    assert baseline_atm._encoder_training.__file__ == "<HEAD:src/atmvideo/models/_encoder_training.py>"
    threads = str(torch.get_num_threads())
    argv = ["--baseline", "HEAD", "--channels", "16", "--size", "8", "--repeats", "1", "--threads", threads]
    assert module_benchmark.main(argv) == 0
    rows = table_rows(capfd.readouterr().out)
    name = "ATM(C=16), 8x16x8x8"
    assert [(row[0], row[1]) for row in rows] == [(name, "train"), (name, "eval")]
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) > 0
        assert re.fullmatch(r"\d\.\de[+-]\d\d", row[5]) and float(row[5]) < 1e-4
