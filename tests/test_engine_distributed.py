"""torchrun (gloo, 2 CPU processes) against a single process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from engine_utils import REPO, free_port, make_ramp_dataset, run_atmvideo, subprocess_env, tiny_overrides

from atmvideo.engine.checkpoint import load_checkpoint

RECIPE = "tsn_r18_in1k_8x1x1_60e_sthv1"
TRAIN, VAL = 8, 5  # 5 is odd: the two evaluation shards get 3 and 2 videos


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node N -m atmvideo ARGS`` on this machine."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
        "--master_port", str(free_port()), "-m", "atmvideo", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600, cwd=REPO)


def test_two_process_training_and_eval_match_one_process(tmp_path):
    """Same global batch of 4 (2 + 2 per process vs 4): the runs must agree up to float rounding.

    Why they can agree exactly in principle: the sampler deals the global shuffle round-robin, so
    each step's two per-process batches together are the single process's batch; GroupNorm
    normalises each sample on its own (BatchNorm statistics would depend on the split); DDP
    averages the two mean-loss gradients, which is the mean over the whole batch; the flat-colour
    videos make every random crop and flip a no-op, and the clips have exactly as many frames as
    the model reads. What is left is the order of float32 additions (an all-reduce of two partial
    sums vs one sum), about 1e-7 relative per step: weights must agree to 1e-5 after 4 SGD steps
    and probabilities to 1e-4, and with 5 videos no top-1 decision is that close to a tie.
    """
    data = make_ramp_dataset(tmp_path / "data", train=TRAIN, val=VAL)
    overrides = tiny_overrides(
        data,
        **{
            "model.kwargs": "{norm_layer: groupnorm}",
            "train.epochs": 2,
            "train.batch_size": 4,
            "data.flip": "true",
        },
    )
    one, two = tmp_path / "one", tmp_path / "two"
    single = run_atmvideo("train", "--config", RECIPE, "--output", str(one), "--set", *overrides)
    assert single.returncode == 0, single.stderr
    multi = torchrun("train", "--config", RECIPE, "--output", str(two), "--set", *overrides)
    assert multi.returncode == 0, multi.stderr[-4000:]
    assert "2 process(es) on cpu" in multi.stderr

    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["num_samples"] == m2["num_samples"] == VAL  # every video once, none padded in
    p1, p2 = (torch.load(d / "predictions.pt", weights_only=True) for d in (one, two))
    assert p2["indices"].tolist() == list(range(VAL))
    assert torch.equal(p1["targets"], p2["targets"])
    assert torch.allclose(p1["scores"], p2["scores"], atol=1e-4)
    assert m1["top1"] == m2["top1"] and m1["top5"] == m2["top5"]

    w1, w2 = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    assert w1["state"]["global_step"] == w2["state"]["global_step"] == 4
    assert len(w2["rng"]) == 2  # one RNG state per process, for an exact resume
    for key, value in w1["model"].items():
        assert torch.allclose(value, w2["model"][key], atol=1e-5), key

    # evaluation alone, sharded over 2 processes with 3 crops x 2 clips: still every video exactly once
    ev = tmp_path / "eval"
    res = torchrun("eval", "--checkpoint", str(two / "last.pt"), "--views", "3x2", "--output", str(ev))
    assert res.returncode == 0, res.stderr[-4000:]
    assert json.loads((ev / "metrics.json").read_text())["num_samples"] == VAL
    assert torch.load(ev / "predictions.pt", weights_only=True)["indices"].tolist() == list(range(VAL))
