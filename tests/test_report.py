"""The Markdown run report (atmvideo.report) on run folders laid out as the trainer writes them."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from atmvideo.commands import report as report_command
from atmvideo.engine.config import RunConfig, dump_config
from atmvideo.engine.outputs import plot_confusion_matrix, plot_curves
from atmvideo.flops import count_flops
from atmvideo.report import epoch_throughput, find_runs, load_run, render_report, write_report

# A small model keeps the FLOP count (done by the report on the meta device) quick.
MODEL = {"name": "atm_resnet18", "num_frames": 4, "input_size": 32, "batch_size": 4}


def make_run(folder: Path, *, name: str = MODEL["name"], top1: float = 62.5, plots: bool = True) -> Path:
    """A finished 3-epoch run folder: config.yaml, metrics.json, history.jsonl, PNGs, a checkpoint file."""
    folder.mkdir(parents=True)
    cfg = RunConfig(description=f"{name} on a synthetic dataset")
    cfg.model.name, cfg.model.num_frames, cfg.model.num_classes = name, MODEL["num_frames"], 5
    cfg.data.format, cfg.data.input_size = "list", MODEL["input_size"]
    cfg.train.epochs, cfg.train.batch_size = 3, MODEL["batch_size"]
    (folder / "config.yaml").write_text(dump_config(cfg))
    # 10 optimiser steps of 4 clips per epoch in 2 s of training each: 20 clips/s
    history = [
        {"epoch": e, "global_step": 10 * e, "train_loss": 1.6 - 0.3 * e, "lr": 0.01, "train_time": 2.0 * e}
        | ({"val_top1": top1 - 10 * (3 - e), "val_top5": 100.0} if e > 1 else {})
        for e in (1, 2, 3)
    ]
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    metrics = {"top1": top1, "top5": 100.0, "mean_class_acc": 60.0, "num_samples": 40, "epoch": 3}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if plots:
        plot_curves(history, folder / "curves.png")
        plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"], folder / "confusion_matrix.png")
    (folder / "best.pt").write_bytes(b"0" * 1024)
    return folder


def _links(markdown: str) -> list[str]:
    return re.findall(r"\]\(([^)#]+)\)", markdown)


def test_single_run_report(tmp_path: Path) -> None:
    run = make_run(tmp_path / "atm")
    text = render_report(run)
    assert text.startswith("# Run report: atm\n")
    assert "_atm_resnet18 on a synthetic dataset_" in text
    assert "| top1 | 62.5 |" in text and "| mean_class_acc | 60 |" in text
    assert "![Training curves](curves.png)" in text
    assert "![Confusion matrix](confusion_matrix.png)" in text
    cost = count_flops("atm_resnet18", frames=4, size=32, num_classes=5)
    assert f"| {cost.gflops:.2f} | {cost.params / 1e6:.2f} M | 20.0 clips/s |" in text
    assert "4 frames x 32x32" in text
    assert "name: atm_resnet18" in text  # the resolved configuration
    history = text.split("### History")[1] if "### History" in text else text.split("## History")[1]
    assert "clips_per_s" in history and "1.3" in history  # epoch 1's loss


def test_links_are_relative_to_the_report_and_resolve(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs" / "atm")
    out = write_report(run, tmp_path / "reports" / "atm.md")
    text = out.read_text()
    links = _links(text)
    assert "../runs/atm/curves.png" in links
    assert all((out.parent / link).is_file() for link in links), links


def test_demo_folder_gets_one_page_with_a_comparison(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    make_run(demo / "atm_resnet18", top1=70.0)
    make_run(demo / "tsn_resnet18", name="tsn_resnet18", top1=30.0)
    (demo / "data" / "videos").mkdir(parents=True)  # the demo's dataset: not a run
    (demo / "data" / "labels.json").write_text("{}")
    assert find_runs(demo) == [demo / "atm_resnet18", demo / "tsn_resnet18"]
    (demo / "demo_results.txt").write_text("model  top1  top1_motion\nATM      70         66\n")
    out = write_report(demo)
    assert out == demo / "report.md"
    text = out.read_text()
    assert "## Demo summary (demo_results.txt)" in text and "top1_motion" in text
    assert text.startswith("# Runs in demo\n")
    table = text.split("\n\n")[1]
    assert "| run | model | frames | top1 | top5 | GFLOPs | params | clips/s |" in table
    assert "[atm_resnet18](#atm_resnet18)" in table and "| 70 |" in table and "| 30 |" in table
    tsn, atm = count_flops("tsn_resnet18", frames=4, size=32), count_flops("atm_resnet18", frames=4, size=32)
    assert f"| {atm.gflops:.2f} |" in table and f"| {tsn.gflops:.2f} |" in table
    assert "## atm_resnet18" in text and "## tsn_resnet18" in text
    assert "![Training curves](atm_resnet18/curves.png)" in text
    assert all((demo / link).is_file() for link in _links(text))


def test_partial_run_and_unknown_model(tmp_path: Path) -> None:
    run = tmp_path / "crashed"
    run.mkdir()
    (run / "history.jsonl").write_text('{"epoch": 1, "train_loss": 2.0}\n{"epoch": 2, "train_lo')  # torn line
    (run / "config.yaml").write_text("model:\n  name: no_such_model\n")
    summary = load_run(run)
    assert len(summary.history) == 1
    text = render_report(run)
    assert "No `metrics.json`" in text
    assert "Cost not counted (ValueError: unknown model 'no_such_model'" in text


def test_throughput_prefers_a_logged_value() -> None:
    history = [
        {"epoch": 1, "global_step": 5, "train_time": 1.0},
        {"epoch": 2, "global_step": 10, "train_time": 3.0, "clips_per_s": 7.5},
        {"epoch": 3},
    ]
    assert epoch_throughput(history, batch_size=8) == [40.0, 7.5, None]
    assert epoch_throughput(history, batch_size=None) == [None, 7.5, None]


def test_no_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no training run found"):
        find_runs(tmp_path / "empty")
    parser = argparse.ArgumentParser(prog="atmvideo")
    report_command.register(parser.add_subparsers())
    args = parser.parse_args(["report", str(tmp_path / "empty")])
    assert args.func(args) == 1
    assert "no training run found" in capsys.readouterr().err


def test_command_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run", plots=False)
    parser = argparse.ArgumentParser(prog="atmvideo")
    report_command.register(parser.add_subparsers())
    args = parser.parse_args(["report", str(run), "--no-cost"])
    assert args.func(args) == 0
    assert f"wrote {run / 'report.md'}" in capsys.readouterr().out
    text = (run / "report.md").read_text()
    assert "curves.png" not in text and "| - | - | 20.0 clips/s |" in text


def test_commands_are_registered() -> None:
    from atmvideo import cli

    for name in ("visualize", "export", "report"):
        assert f"atmvideo.commands.{name}" in cli.COMMAND_MODULES
