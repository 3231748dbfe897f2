"""Tests for atmvideo.engine.outputs: atomic files, run logger, history, plots, tables."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch

from atmvideo.engine.outputs import (
    RunLogger,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    format_table,
    plot_confusion_matrix,
    plot_curves,
    read_history,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which directly follows the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_atomic_write_text_and_json_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"top1": torch.tensor(51.5), "path": tmp_path, "ks": {2, 1}})
    assert json.loads(target.read_text()) == {"top1": 51.5, "path": str(tmp_path), "ks": [1, 2]}
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert os.listdir(target.parent) == ["a.json"]


def test_failed_replace_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def boom(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_unserialisable_json_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_torch_save_crash_mid_write_keeps_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, target)
    real_save = torch.save

    def half_save(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")  # type: ignore[attr-defined]
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(RuntimeError, match="mid-write"):
        atomic_torch_save({"epoch": 2}, target)
    monkeypatch.setattr(torch, "save", real_save)
    loaded = torch.load(target)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]


def test_history_append_and_torn_last_line(tmp_path: Path) -> None:
    log = RunLogger(tmp_path, tensorboard=False)
    log.append_history({"epoch": 0, "train_loss": 2.0})
    log.append_history({"epoch": 1, "train_loss": 1.5, "val_top1": torch.tensor(40.0)})
    # a crash in the middle of the next append leaves half a line without newline
    with open(log.history_path, "ab") as f:
        f.write(b'{"epoch": 2, "train_lo')
    assert read_history(log.history_path) == [
        {"epoch": 0, "train_loss": 2.0},
        {"epoch": 1, "train_loss": 1.5, "val_top1": 40.0},
    ]
    # the resumed run's next record starts on a fresh line and stays readable
    log.append_history({"epoch": 2, "train_loss": 1.0})
    records = RunLogger.read_history(log.history_path)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert read_history(tmp_path / "missing.jsonl") == []


def test_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "rank1"
    log = RunLogger(out, enabled=False)
    log.log_scalars("train", {"loss": 1.0}, step=0)
    log.append_history({"epoch": 0})
    log.write_metrics({"top1": 1.0})
    log.close()
    assert not out.exists()


def test_metrics_json_and_tensorboard_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(tmp_path) as log:
        log.log_scalars("val", {"top1": 12.5, "top5": torch.tensor(30.0), "name": "skip-me"}, step=3)
        log.log_scalars("val", {"top1": 20.0}, step=4)
        log.write_metrics({"top1": 20.0, "num_samples": 8})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"top1": 20.0, "num_samples": 8}
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["val/top1", "val/top5"]
    assert [(e.step, e.value) for e in acc.Scalars("val/top1")] == [(3, 12.5), (4, 20.0)]


def test_plot_curves_png(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    log = RunLogger(tmp_path, tensorboard=False)
    for epoch in range(4):
        rec = {"epoch": epoch, "train_loss": 2.0 - 0.3 * epoch}
        if epoch % 2 == 1:  # eval every other epoch
            rec.update(val_top1=10.0 * epoch, val_top5=20.0 * epoch)
        log.append_history(rec)
    out = plot_curves(history, tmp_path / "curves.png")
    assert png_size(out) == (1000, 400)
    ml = [{"epoch": e, "train_loss": 1.0, "val_mAP": 5.0 * e} for e in range(3)]
    assert png_size(plot_curves(ml, tmp_path / "ml.png", figsize=(6, 3), dpi=50)) == (300, 150)
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "history.jsonl", "ml.png"]


def test_plot_confusion_matrix_png(tmp_path: Path) -> None:
    cm = torch.tensor([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    out = plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png")
    assert png_size(out) == (800, 800)
    big = torch.randint(0, 5, (60, 60))
    out = plot_confusion_matrix(big, None, tmp_path / "big.png", normalize=False, figsize=(5, 4))
    assert png_size(out) == (500, 400)
    with pytest.raises(ValueError):
        plot_confusion_matrix(cm, ["a"], tmp_path / "bad.png")


def test_format_table() -> None:
    rows = [
        {"model": "tsn_r18", "frames": 8, "top1": 16.5},
        {"model": "atm_r18", "frames": 8, "top1": 48.666, "note": "best"},
        {"model": "atm_vit_b16", "frames": 16, "top1": None},
    ]
    text = format_table(rows, ["model", "frames", "top1", "note"])
    assert text.splitlines() == [
        "model        frames   top1  note",
        "-----------  ------  -----  ----",
        "tsn_r18           8  16.50  -",
        "atm_r18           8  48.67  best",
        "atm_vit_b16      16      -  -",
    ]
    assert format_table([], ["a"]).splitlines() == ["a", "-"]
