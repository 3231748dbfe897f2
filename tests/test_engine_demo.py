"""The demo: class bookkeeping and a miniature end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_utils import single_thread

from atmvideo.data.synthetic import CLASSES, SYNTHETIC_FLIP_LABEL_MAP
from atmvideo.engine.config import resolve_config
from atmvideo.engine.demo import (
    COLUMNS,
    DEMO_MODELS,
    data_overrides,
    motion_defined_classes,
    run_demo,
    twin_of,
)


def test_every_synthetic_class_has_its_time_reversed_twin():
    twins = twin_of()
    assert twins == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]
    for i, j in enumerate(twins):
        assert CLASSES[i][1] == CLASSES[j][1] and CLASSES[i][2] != CLASSES[j][2]  # same motion, reversed
    assert motion_defined_classes() == list(range(10))


def test_demo_recipes_swap_exactly_the_classes_a_flip_mirrors():
    for _, recipe in DEMO_MODELS:
        assert resolve_config(recipe).data.flip_label_map == SYNTHETIC_FLIP_LABEL_MAP
        assert f"data.flip_label_map={SYNTHETIC_FLIP_LABEL_MAP}" in data_overrides(Path("d"))


@pytest.mark.slow
def test_miniature_demo_prints_and_saves_the_table(tmp_path, capsys):
    tiny = [
        "train.epochs=1",
        "train.batch_size=5",
        "model.num_frames=4",
        "data.input_size=32",
        "data.short_side=32",
        "data.num_workers=0",
        "train.progress=false",
    ]
    with single_thread():
        rows = run_demo(tmp_path, videos=20, overrides=tiny)
    assert [r["model"] for r in rows] == [label for label, _ in DEMO_MODELS]
    for row in rows:
        assert set(COLUMNS) <= row.keys()
        assert row["num_samples"] == 10  # one validation video per class
        assert 0 <= row["top1"] <= row["top1_pair"] <= 100
        assert row["top1_motion"] == row["top1"]  # every synthetic class is motion-defined
        assert row["gflops"] > 0 and row["params_m"] > 1 and row["train_min"] > 0
    assert rows[0]["gflops"] > rows[1]["gflops"]  # the ATM costs something on top of TSN
    printed = capsys.readouterr().out
    assert "ATM-ResNet-18" in printed and "TSN-ResNet-18" in printed and "total demo time" in printed
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert [r["model"] for r in saved["rows"]] == [r["model"] for r in rows]
    assert (tmp_path / "data" / "labels.json").is_file() and (
        tmp_path / "atm_r18_synthetic" / "best.pt"
    ).is_file()
    # a second call reuses the data and the finished runs
    with single_thread():
        again = run_demo(tmp_path, videos=20, overrides=tiny)
    assert [r["top1"] for r in again] == [r["top1"] for r in rows]
