"""Optimisers, parameter groups (weight decay, layer-wise LR decay), per-iteration LR schedules, EMA.

Every parameter group carries ``"lr_scale"``: its learning rate is always ``lr_scale`` times the
schedule's value, so layer-wise LR decay and the warm-up / cosine / multi-step schedule compose
(the same contract as timm's optimiser factory and schedulers).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "ModelEma",
    "build_optimizer",
    "build_scheduler",
    "clip_gradients",
    "layer_ids",
    "lr_at_step",
    "param_groups",
    "unwrap_model",
]

# parameter names (last component) that never get weight decay, for models that do not list them
# in no_weight_decay(): timm ViT / OpenAI CLIP / EVA / Swin embeddings and tokens
DEFAULT_NO_DECAY_NAMES = frozenset(
    {
        "pos_embed",
        "cls_token",
        "dist_token",
        "reg_token",
        "positional_embedding",
        "class_embedding",
        "absolute_pos_embed",
        "relative_position_bias_table",
    }
)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _matches(name: str, patterns: Collection[str]) -> bool:
    # a bare entry also matches as the last name components, so "pos_embed" of a wrapped timm
    # model ("backbone.pos_embed") is found without every wrapper re-prefixing its names
    for p in patterns:
        if name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p):
            return True
    return False


def _no_decay(name: str, param: torch.Tensor, patterns: Collection[str]) -> bool:
    # 1-D covers norm weights / biases / layer scales; biases are named in case they are not 1-D
    return param.ndim <= 1 or name.endswith(".bias") or name == "bias" or _matches(name, patterns)


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Layer index of every parameter from ``model.group_matcher(coarse=False)`` (0 = stem, max = head)."""
    from timm.models import group_parameters

    model = unwrap_model(model)
    if not hasattr(model, "group_matcher"):
        raise ValueError(
            f"layer-wise LR decay needs model.group_matcher(); {type(model).__name__} does not define one"
        )
    return group_parameters(model, model.group_matcher(coarse=False), reverse=True)


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    layer_decay: float | None = None,
    no_decay_names: Collection[str] = frozenset(),
    lr_scale_one: Callable[[str], bool] | None = None,
) -> list[dict]:
    """Optimizer parameter groups with ``weight_decay`` and ``lr_scale`` set per group.

    No weight decay for 1-D parameters (norms, biases), ``.bias``, names from
    ``model.no_weight_decay()``, ``no_decay_names`` and :data:`DEFAULT_NO_DECAY_NAMES` (exact name,
    name suffix after a ``.``, or glob). With ``layer_decay`` the layer index ``i`` of each parameter
    comes from the model's ``group_matcher`` (as in timm's ``param_groups_layer_decay``) and its
    scale is ``layer_decay ** (L - i)`` where ``L`` is the largest index (the head, scale 1).
    Parameters for which ``lr_scale_one(name)`` holds keep scale 1 at any depth; by default these
    are ``model.temporal_parameter_names()`` (the new ATM / T-Conv weights) when the model has it.
    Groups hold ``(name, param)`` pairs, so the optimizer records ``param_names``.
    """
    model = unwrap_model(model)
    patterns = set(no_decay_names) | DEFAULT_NO_DECAY_NAMES
    if hasattr(model, "no_weight_decay"):
        patterns |= set(model.no_weight_decay())
    if lr_scale_one is None and hasattr(model, "temporal_parameter_names"):
        temporal = set(model.temporal_parameter_names())
        lr_scale_one = temporal.__contains__

    use_layer_decay = layer_decay is not None and layer_decay != 1.0
    if use_layer_decay:
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        ids = layer_ids(model)
        last = max(ids.values())
    groups: dict[tuple[Any, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = weight_decay > 0 and not _no_decay(name, param, patterns)
        if lr_scale_one is not None and lr_scale_one(name):
            layer, scale = "scale1", 1.0
        elif use_layer_decay:
            # names the matcher did not see (none, normally) are treated as head parameters
            layer = ids.get(name, last)
            scale = layer_decay ** (last - layer)
        else:
            layer, scale = "all", 1.0
        key = (layer, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": scale,
                "group_name": f"layer_{layer}_{'decay' if decay else 'no_decay'}",
            }
        groups[key]["params"].append((name, param))
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    layer_decay: float | None = None,
    eps: float = 1e-8,
    nesterov: bool = False,
    no_decay_names: Collection[str] = frozenset(),
    lr_scale_one: Callable[[str], bool] | None = None,
) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over :func:`param_groups`; each group starts at ``lr * lr_scale``."""
    groups = param_groups(
        model,
        weight_decay=weight_decay,
        layer_decay=layer_decay,
        no_decay_names=no_decay_names,
        lr_scale_one=lr_scale_one,
    )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    key = name.lower()
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if key == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd' or 'adamw'")


def lr_at_step(
    step: int,
    *,
    name: str,
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    milestone_steps: Sequence[int] = (),
    gamma: float = 0.1,
    min_lr: float = 0.0,
    warmup_lr: float = 0.0,
) -> float:
    """Learning rate (before lr_scale) of the optimizer step with 0-based index ``step``.

    Warm-up rises linearly from ``warmup_lr`` at step 0 to ``base_lr`` at ``warmup_steps``. Cosine
    then falls from ``base_lr`` to ``min_lr`` at ``total_steps`` (and stays there); multi-step
    multiplies by ``gamma`` at each milestone reached, floored at ``min_lr``.
    """
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    if name == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if name == "multistep":
        drops = sum(1 for m in milestone_steps if step >= m)
        return max(min_lr, base_lr * gamma**drops)
    raise ValueError(f"unknown scheduler {name!r}; expected 'multistep' or 'cosine'")


class _ScheduleLR(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR whose ``load_state_dict`` also puts the restored step's LR into the optimizer."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step counter and set every group's LR to its value at that step."""
        super().load_state_dict(state_dict)
        # LambdaLR only restores its counter; without this the first step after a resume would use
        # whatever LR the optimizer happened to hold (step 0's, if its state was loaded first)
        for group, base, fn in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas, strict=True):
            group["lr"] = base * fn(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    min_lr: float = 0.0,
    warmup_lr: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LR schedule (call ``step()`` after every optimizer step); milestones in epochs.

    Group ``g`` follows ``lr_scale_g * lr_at_step(t)`` (see :func:`lr_at_step`), where the base LR
    is the group's initial ``lr / lr_scale``; ``min_lr`` and ``warmup_lr`` are scaled the same way.
    The state dict holds only the step counter and base LRs: a resumed run rebuilds the scheduler
    from the same arguments, loads the state, and continues exactly where it stopped.
    """
    key = name.lower()
    if key not in ("cosine", "multistep"):
        raise ValueError(f"unknown scheduler {name!r}; expected 'multistep' or 'cosine'")
    if steps_per_epoch < 1 or epochs < 0:
        raise ValueError(f"need steps_per_epoch >= 1 and epochs >= 0, got {steps_per_epoch}, {epochs}")
    total = int(epochs * steps_per_epoch)
    warmup = int(round(warmup_epochs * steps_per_epoch))
    milestone_steps = sorted(int(round(m * steps_per_epoch)) for m in milestones)

    def factor_for(group: dict) -> Callable[[int], float]:
        scale = float(group.get("lr_scale", 1.0))
        # initial_lr is there when the optimizer state was loaded before this scheduler was built
        lr = float(group.get("initial_lr", group["lr"]))
        base = lr / scale if scale > 0 else lr

        def factor(step: int) -> float:
            if base == 0:
                return 0.0
            value = lr_at_step(
                step,
                name=key,
                base_lr=base,
                total_steps=total,
                warmup_steps=warmup,
                milestone_steps=milestone_steps,
                gamma=gamma,
                min_lr=min_lr,
                warmup_lr=warmup_lr,
            )
            return value / base

        return factor

    # plain closures (not callable objects) keep the lambdas out of state_dict(): the schedule's
    # shape comes from the arguments, the state only says how far along it is
    return _ScheduleLR(optimizer, [factor_for(g) for g in optimizer.param_groups])


class ModelEma:
    """Exponential moving average of a model's weights and buffers (timm ``ModelEmaV3`` inside).

    ``update(model, step)`` accepts DDP / compiled wrappers; ``module`` is the averaged model for
    evaluation; the state dict is the plain model state dict, loadable into an unwrapped model.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9998,
        *,
        warmup: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        from timm.utils import ModelEmaV3

        self._ema = ModelEmaV3(unwrap_model(model), decay=decay, use_warmup=warmup, device=device)
        for p in self._ema.module.parameters():
            p.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (in eval mode)."""
        return self._ema.module

    @property
    def decay(self) -> float:
        """Target decay per update."""
        return self._ema.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Blend the current weights in; with ``step`` timm's schedule copies them on the first step."""
        self._ema.update(unwrap_model(model), step=step)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """State dict of the averaged model."""
        return self._ema.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> Any:
        """Load averaged weights saved by :meth:`state_dict`."""
        return self._ema.module.load_state_dict(state_dict, strict=strict)


def clip_gradients(
    parameters: Iterable[torch.Tensor] | nn.Module,
    max_norm: float | None,
    *,
    mode: str = "norm",
    norm_type: float = 2.0,
) -> torch.Tensor | None:
    """Clip gradients in place by global norm (returns the norm before clipping) or by value."""
    params = list(parameters.parameters() if isinstance(parameters, nn.Module) else parameters)
    params = [p for p in params if p.grad is not None]
    if max_norm is None or max_norm <= 0 or not params:
        return None
    if mode == "norm":
        return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    if mode == "value":
        torch.nn.utils.clip_grad_value_(params, max_norm)
        return None
    raise ValueError(f"unknown clip mode {mode!r}; expected 'norm' or 'value'")
