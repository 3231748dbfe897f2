"""Tests for atmvideo.engine.optim: parameter groups, layer decay, schedules, resume, EMA."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from atmvideo.engine.optim import (
    ModelEma,
    build_optimizer,
    build_scheduler,
    clip_gradients,
    lr_at_step,
    param_groups,
    unwrap_model,
)


def tiny_vit() -> nn.Module:
    """timm ViT with 2 blocks: layer ids stem=0, blocks.0=1, blocks.1(+final norm)=2, head=3."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", depth=2, img_size=32, num_classes=3)


class ToyVideoModel(nn.Module):
    """A stem, two blocks (the first holding a new temporal conv) and a head, like the ATM models."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.pos_embed = nn.Parameter(torch.zeros(1, 2, 8))
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(2)])
        self.blocks[0].add_module("tconv", nn.Conv1d(8, 8, 3, padding=1, groups=8, bias=False))
        self.head = nn.Linear(8, 3)

    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^stem|pos_embed", "blocks": [(r"^blocks\.(\d+)", None)]}

    def temporal_parameter_names(self) -> set[str]:
        return {"blocks.0.tconv.weight"}


def scales_and_decay(groups: list[dict]) -> dict[str, tuple[float, float]]:
    return {name: (g["lr_scale"], g["weight_decay"]) for g in groups for name, _ in g["params"]}


def test_layer_decay_on_timm_vit() -> None:
    model = tiny_vit()
    d = 0.7
    info = scales_and_decay(param_groups(model, weight_decay=0.05, layer_decay=d))
    assert set(info) == {n for n, _ in model.named_parameters()}
    # L = 3 (head): scale = d ** (3 - id)
    assert info["patch_embed.proj.weight"] == (pytest.approx(d**3), 0.05)
    assert info["cls_token"] == (pytest.approx(d**3), 0.0)
    assert info["pos_embed"] == (pytest.approx(d**3), 0.0)
    assert info["blocks.0.attn.qkv.weight"] == (pytest.approx(d**2), 0.05)
    assert info["blocks.1.mlp.fc1.weight"] == (pytest.approx(d**1), 0.05)
    assert info["head.weight"] == (1.0, 0.05)
    # norms and biases never decay
    for name in (
        "blocks.0.norm1.weight",
        "blocks.0.norm1.bias",
        "blocks.1.attn.qkv.bias",
        "norm.weight",
        "head.bias",
    ):
        assert info[name][1] == 0.0, name


def test_lr_scale_one_overrides_depth() -> None:
    model = tiny_vit()
    info = scales_and_decay(
        param_groups(
            model, weight_decay=0.05, layer_decay=0.5, lr_scale_one=lambda n: n.startswith("blocks.0.")
        )
    )
    assert info["blocks.0.attn.qkv.weight"] == (1.0, 0.05)
    assert info["blocks.0.norm1.bias"] == (1.0, 0.0)
    assert info["blocks.1.attn.qkv.weight"][0] == pytest.approx(0.5)


def test_temporal_parameter_names_get_scale_one_by_default() -> None:
    model = ToyVideoModel()
    info = scales_and_decay(
        param_groups(model, weight_decay=1e-4, layer_decay=0.5, no_decay_names={"stem.*"})
    )
    # ids: stem/pos_embed 0, blocks.0 1, blocks.1 2, head 3
    assert info["blocks.0.tconv.weight"] == (1.0, 1e-4)
    assert info["blocks.0.1.weight"] == (pytest.approx(0.25), 1e-4)
    assert info["blocks.1.1.weight"] == (pytest.approx(0.5), 1e-4)
    assert info["pos_embed"] == (pytest.approx(0.125), 0.0)  # default no-decay name, not 1-D
    assert info["stem.weight"] == (pytest.approx(0.125), 0.0)  # glob from no_decay_names
    assert info["head.weight"] == (1.0, 1e-4)


def test_no_layer_decay_and_wrappers() -> None:
    model = ToyVideoModel()
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    groups = param_groups(wrapped, weight_decay=0.01)
    info = scales_and_decay(groups)
    assert not any(n.startswith("module.") for n in info)
    assert {s for s, _ in info.values()} == {1.0}
    with pytest.raises(ValueError, match="group_matcher"):
        param_groups(nn.Linear(2, 2), weight_decay=0.0, layer_decay=0.5)


def test_frozen_parameters_are_left_out() -> None:
    model = ToyVideoModel()
    model.stem.requires_grad_(False)
    names = {n for g in param_groups(model, weight_decay=0.0) for n, _ in g["params"]}
    assert "stem.weight" not in names and "head.weight" in names


def test_build_optimizer_groups_and_hyperparameters() -> None:
    model = tiny_vit()
    opt = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.05, betas=(0.9, 0.98), layer_decay=0.5)
    assert isinstance(opt, torch.optim.AdamW)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
        assert g["betas"] == (0.9, 0.98)
        assert len(g["param_names"]) == len(g["params"])
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))

    sgd = build_optimizer(ToyVideoModel(), name="SGD", lr=0.01, weight_decay=5e-4, momentum=0.9)
    assert isinstance(sgd, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 and g["lr"] == 0.01 for g in sgd.param_groups)
    assert sorted({g["weight_decay"] for g in sgd.param_groups}) == [0.0, 5e-4]
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, name="lamb", lr=1.0, weight_decay=0.0)


def run_steps(
    opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, n: int
) -> list[list[float]]:
    """LRs used by n optimizer steps (the LR in the groups when optimizer.step() would run)."""
    used = []
    for _ in range(n):
        used.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return used


def test_warmup_cosine_matches_closed_form() -> None:
    model = ToyVideoModel()
    lr, warmup_lr, min_lr = 1.0, 0.1, 0.01
    opt = build_optimizer(model, name="adamw", lr=lr, weight_decay=0.0, layer_decay=0.5)
    sched = build_scheduler(
        opt, name="cosine", epochs=10, steps_per_epoch=5, warmup_epochs=2, warmup_lr=warmup_lr, min_lr=min_lr
    )
    used = run_steps(opt, sched, 55)
    for t in (0, 1, 5, 9, 10, 11, 30, 49, 50, 54):
        if t < 10:  # 2 epochs x 5 steps of linear warm-up
            expected = warmup_lr + (lr - warmup_lr) * t / 10
        else:  # cosine over the remaining 40 steps, then held at min_lr
            p = min(1.0, (t - 10) / 40)
            expected = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))
        for g, value in zip(opt.param_groups, used[t], strict=True):
            assert value == pytest.approx(expected * g["lr_scale"], rel=1e-9), (t, g["lr_scale"])
    assert used[10][-1] == pytest.approx(lr * opt.param_groups[-1]["lr_scale"])


def test_multistep_drops_at_milestone_epochs() -> None:
    opt = build_optimizer(ToyVideoModel(), name="sgd", lr=0.01, weight_decay=5e-4)
    sched = build_scheduler(opt, name="multistep", epochs=6, steps_per_epoch=3, milestones=(2, 4), gamma=0.1)
    used = [lrs[0] for lrs in run_steps(opt, sched, 18)]
    # steps 0-5 = epochs 0-1 at 0.01, steps 6-11 at 0.001, steps 12-17 at 0.0001
    assert used == pytest.approx([0.01] * 6 + [0.001] * 6 + [0.0001] * 6)


def test_multistep_with_warmup_and_lr_at_step() -> None:
    # warm-up wins over the schedule until it ends; then the milestone count applies
    kw = {"name": "multistep", "base_lr": 1.0, "total_steps": 20, "warmup_steps": 4, "milestone_steps": [8]}
    assert [lr_at_step(t, **kw) for t in (0, 2, 4, 7, 8, 19)] == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.1, 0.1])
    with pytest.raises(ValueError):
        build_scheduler(
            torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0), name="step", epochs=1, steps_per_epoch=1
        )


@pytest.mark.parametrize("load_optimizer_first", [False, True])
def test_scheduler_resume_gives_the_same_next_lr(load_optimizer_first: bool) -> None:
    def make() -> tuple[nn.Module, torch.optim.Optimizer]:
        model = tiny_vit()
        return model, build_optimizer(model, name="adamw", lr=2e-3, weight_decay=0.05, layer_decay=0.7)

    kw = {"name": "cosine", "epochs": 4, "steps_per_epoch": 5, "warmup_epochs": 1, "min_lr": 1e-5}
    _, opt = make()
    sched = build_scheduler(opt, **kw)
    run_steps(opt, sched, 7)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    reference = run_steps(opt, sched, 3)

    _, opt2 = make()
    if load_optimizer_first:
        opt2.load_state_dict(saved_opt)
        sched2 = build_scheduler(opt2, **kw)
    else:
        sched2 = build_scheduler(opt2, **kw)
        opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert sched2.last_epoch == 7
    resumed = run_steps(opt2, sched2, 3)
    assert sum(resumed, []) == pytest.approx(sum(reference, []), rel=1e-12)


def test_model_ema_update_and_state_dict() -> None:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEma(nn.DataParallel(model), decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(nn.DataParallel(model))  # 0.5 * 1 + 0.5 * 3 = 2
    assert ema.module.weight.tolist() == [[2.0, 2.0]]
    assert not ema.module.weight.requires_grad
    ema.update(model, step=1)  # timm's step schedule: the first step copies the weights
    assert ema.module.weight.tolist() == [[3.0, 3.0]]

    state = ema.state_dict()
    assert list(state) == ["weight"]
    other = ModelEma(nn.Linear(2, 1, bias=False), decay=0.5)
    other.load_state_dict(state)
    assert torch.equal(other.module.weight, ema.module.weight)


def test_clip_gradients() -> None:
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    norm = clip_gradients([p], 1.0)
    assert norm.item() == pytest.approx(5.0)
    assert p.grad.tolist() == pytest.approx([0.6, 0.8], rel=1e-5)
    p.grad = torch.tensor([3.0, -4.0])
    assert clip_gradients([p], 2.0, mode="value") is None
    assert p.grad.tolist() == [2.0, -2.0]
    assert clip_gradients([p], None) is None
