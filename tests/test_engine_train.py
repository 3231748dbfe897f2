"""End-to-end training, evaluation and prediction on tiny generated videos (CPU)."""

from __future__ import annotations

import json
import logging
import math
import signal
import subprocess
import time

import pytest
import torch
import yaml
from engine_utils import (
    atmvideo_cmd,
    make_list_dataset,
    run_atmvideo,
    single_thread,
    subprocess_env,
    tiny_overrides,
)

from atmvideo.cli import main
from atmvideo.engine.checkpoint import load_checkpoint, state_dict_is_finite
from atmvideo.engine.config import config_from_dict, resolve_config
from atmvideo.engine.outputs import read_history

RECIPE = "tsn_r18_in1k_8x1x1_60e_sthv1"
TRAIN, VAL = 8, 5  # 5 validation videos: an odd count, so uneven shards would show


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_list_dataset(tmp_path_factory.mktemp("listdata"), train=TRAIN, val=VAL)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A 2-epoch run of the SSv1 TSN recipe pointed at the list-format data."""
    out = tmp_path_factory.mktemp("run")
    overrides = tiny_overrides(data, **{"train.epochs": 2, "train.tensorboard": "true"})
    assert main(["train", "--config", RECIPE, "--output", str(out), "--set", *overrides]) == 0
    return out, overrides


def test_training_writes_metrics_history_checkpoints_and_plots(trained):
    out, overrides = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == VAL
    assert 0.0 <= metrics["top1"] <= 100.0 and metrics["top5"] == 100.0  # 2 classes: top-5 holds every class
    assert metrics["epoch"] == 2 and metrics["best_epoch"] in (1, 2)
    assert metrics["top1"] in {100.0 * k / VAL for k in range(VAL + 1)}

    history = read_history(out / "history.jsonl")
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) and r["val_num_samples"] == VAL for r in history)
    assert history[-1]["val_top1"] == metrics["top1"] and history[-1]["global_step"] == 4  # 8 clips / batch 4

    saved = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()), strict=True)
    assert saved == resolve_config(RECIPE, overrides)

    last = load_checkpoint(out / "last.pt")
    assert (
        last["state"]["epoch"] == 2
        and last["state"]["step_in_epoch"] == 0
        and last["state"]["global_step"] == 4
    )
    assert last["class_names"] == ["0", "1"] and last["config"]["data"]["format"] == "list"
    assert {"optimizer", "scheduler", "rng"} <= last.keys()
    best = load_checkpoint(out / "best.pt")
    assert "optimizer" not in best and best["metrics"]["top1"] == metrics["best_top1"]

    pred = torch.load(out / "predictions.pt", weights_only=True)
    assert pred["indices"].tolist() == list(range(VAL))
    assert pred["scores"].shape == (VAL, 2) and torch.allclose(pred["scores"].sum(1), torch.ones(VAL))
    assert (out / "predictions.csv").read_text().count("\n") == VAL + 1
    assert len(json.loads((out / "per_class.json").read_text())) == 2
    for png in ("curves.png", "confusion_matrix.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_eval_multiview_and_ensemble(trained, tmp_path, capsys):
    out, _ = trained
    probs = []
    for name in ("best.pt", "last.pt"):
        folder = tmp_path / name
        assert main(["eval", "--checkpoint", str(out / name), "--views", "3x2", "--output", str(folder)]) == 0
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["num_samples"] == VAL and metrics["views"] == "3x2"
        probs.append(torch.load(folder / "predictions.pt", weights_only=True)["scores"])
    ens = tmp_path / "ensemble"
    args = ["eval", "--checkpoint", str(out / "best.pt"), "--checkpoint", str(out / "last.pt")]
    capsys.readouterr()
    assert main([*args, "--views", "3x2", "--output", str(ens)]) == 0
    metrics = json.loads((ens / "metrics.json").read_text())
    assert metrics["num_samples"] == VAL and len(metrics["members"]) == 2
    assert json.loads(capsys.readouterr().out)["top1"] == metrics["top1"]  # printed as JSON too
    ensemble = torch.load(ens / "predictions.pt", weights_only=True)["scores"]
    assert torch.allclose(ensemble, (probs[0] + probs[1]) / 2, atol=1e-6)


def test_predict_matches_the_evaluation_scores(trained, data, capsys):
    out, _ = trained
    video = f"{data['data.root']}/val_000.mp4"
    capsys.readouterr()
    assert main(["predict", video, "--checkpoint", str(out / "last.pt"), "--topk", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    labels = [p["label"] for p in result["predictions"]]
    probs = [p["prob"] for p in result["predictions"]]
    assert sorted(labels) == ["0", "1"] and probs == sorted(probs, reverse=True)
    # the last epoch's evaluation scored the same clip (centre crop, middle frames) with the same weights
    scores = torch.load(out / "predictions.pt", weights_only=True)["scores"][0]
    assert probs[0] == pytest.approx(scores.max().item(), abs=1e-5)


def test_accumulation_ema_checkpointing_and_mixup(data, tmp_path):
    out = tmp_path / "ema"
    overrides = tiny_overrides(
        data,
        **{
            "train.epochs": 2,
            "train.accum_steps": 2,  # global batch 4 = 2 micro-batches of 2
            "train.ema": "true",
            "train.ema_decay": 0.5,
            "train.grad_checkpointing": "true",
            "train.mixup_alpha": 0.8,
            "train.cutmix_alpha": 1.0,
            "train.label_smoothing": 0.1,
            "optim.name": "adamw",
            "optim.layer_decay": 0.8,
            "optim.warmup_epochs": 0.5,
        },
    )
    assert main(["train", "--config", RECIPE, "--output", str(out), "--set", *overrides]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"top1", "ema_top1", "ema_top5"} <= metrics.keys() and metrics["num_samples"] == VAL
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["state"]["global_step"] == 4  # 2 epochs x 8 clips / global batch 4
    assert ckpt["ema"] is not None and ckpt["ema"].keys() == ckpt["model"].keys()
    # timm's EMA copies the weights on its first two updates, then averages
    assert not torch.equal(ckpt["ema"]["head.weight"], ckpt["model"]["head.weight"])
    lr_scales = sorted({g["lr_scale"] for g in ckpt["optimizer"]["param_groups"]})
    assert lr_scales[0] < 0.5 and lr_scales[-1] == 1.0  # layer decay reached the stem
    # a second run into the same folder must not silently overwrite it
    assert main(["train", "--config", RECIPE, "--output", str(out), "--set", *overrides]) == 2


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, caplog):
    out = tmp_path / "nan"
    overrides = tiny_overrides(data, **{"optim.lr": 1e30, "train.epochs": 3, "train.save_every_steps": 1})
    with caplog.at_level(logging.ERROR):
        status = main(["train", "--config", RECIPE, "--output", str(out), "--set", *overrides])
    assert status == 1
    assert "non-finite training loss" in caplog.text and "training stopped before applying it" in caplog.text
    # step 1 blew the weights up to ~1e30 (still finite), step 2's loss was NaN: step 1's checkpoint stays
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["state"]["global_step"] == 1 and state_dict_is_finite(ckpt["model"])
    assert f"last good checkpoint is {out / 'last.pt'}" in caplog.text
    assert read_history(out / "history.jsonl")[-1]["event"] == "nonfinite_loss"
    assert not (out / "metrics.json").exists()


def test_bad_config_exits_with_status_2(data, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        status = main(["train", "--config", RECIPE, "--output", str(tmp_path), "--set", "train.epoch=3"])
    assert status == 2 and "did you mean 'train.epochs'" in caplog.text


def _wait_for_mid_epoch_checkpoint(path, proc, min_step: int, timeout: float = 120.0) -> dict:
    """Poll last.pt until it was saved inside an epoch at or after ``min_step``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before it could be killed:\n{proc.stderr.read()}")
        if path.is_file():
            state = load_checkpoint(path)["state"]  # renamed into place atomically: never half-written
            if state["global_step"] >= min_step and state["step_in_epoch"] > 0:
                return state
        time.sleep(0.02)
    raise AssertionError("no mid-epoch checkpoint appeared")


def test_sigkill_mid_epoch_then_resume_auto_ends_with_identical_weights(data, tmp_path):
    overrides = tiny_overrides(
        data,
        **{
            "train.epochs": 2,
            "train.batch_size": 2,  # 4 steps per epoch
            "train.deterministic": "true",
            "train.save_every_steps": 1,
            "train.mixup_alpha": 0.2,  # every random stream is in play: crops, flips, dropout, mixup
            "data.flip": "true",
            "model.drop_rate": 0.5,
        },
    )
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    done = run_atmvideo("train", "--config", RECIPE, "--output", str(reference), "--set", *overrides)
    assert done.returncode == 0, done.stderr

    cmd = atmvideo_cmd("train", "--config", RECIPE, "--output", str(resumed), "--set", *overrides)
    proc = subprocess.Popen(
        cmd, env=subprocess_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        state = _wait_for_mid_epoch_checkpoint(resumed / "last.pt", proc, min_step=5)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(resumed / "last.pt")["state"]
    assert killed_at["global_step"] >= state["global_step"] and killed_at["global_step"] < 8
    assert len(read_history(resumed / "history.jsonl")) < 2  # the run had not finished

    again = run_atmvideo(
        "train", "--config", RECIPE, "--output", str(resumed), "--resume", "auto", "--set", *overrides
    )
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr

    ref, res = load_checkpoint(reference / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert ref["state"]["global_step"] == res["state"]["global_step"] == 8
    assert ref["model"].keys() == res["model"].keys()
    for key, value in ref["model"].items():
        assert torch.equal(value, res["model"][key]), key
    for key, value in ref["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], res["optimizer"]["state"][key]["momentum_buffer"])
    assert (
        json.loads((reference / "metrics.json").read_text())["top1"]
        == json.loads((resumed / "metrics.json").read_text())["top1"]
    )


@pytest.mark.slow
def test_atm_solves_a_direction_task_that_tsn_cannot(tmp_path):
    """The shipped SSv1 recipes on list-format data: a square crossing left-to-right or right-to-left.

    Both classes show the same frames in opposite orders, so TSN (mean over frames) is at chance
    (50%; with 20 videos above 75% by luck has probability 0.6%) while ATM learns the direction.
    """
    data = make_list_dataset(tmp_path / "data", train=40, val=20, num_frames=8, size=32)
    results = {}
    for family in ("atm", "tsn"):
        out = tmp_path / family
        overrides = [f"{k}={v}" for k, v in data.items()] + [
            "train.epochs=8",
            "optim.schedule=cosine",  # a decaying LR settles the tiny-batch BatchNorm statistics
            "train.batch_size=8",
            "data.input_size=32",
            "data.short_side=32",
            "data.num_workers=0",
            "train.progress=false",
            "train.tensorboard=false",
        ]
        recipe = f"{family}_r18_in1k_8x1x1_60e_sthv1"
        assert main(["train", "--config", recipe, "--output", str(out), "--set", *overrides]) == 0
        results[family] = json.loads((out / "metrics.json").read_text())
    assert results["atm"]["top1"] >= 90.0
    assert results["tsn"]["top1"] <= 75.0
