"""From a :class:`RunConfig` to the objects a run needs: model, datasets, loaders, loss, mixup.

This is the only place that turns configuration fields into keyword arguments; models and data
modules take plain typed arguments and never see the config object.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from atmvideo.engine.config import ConfigError, ModelConfig, RunConfig, parse_views
from atmvideo.engine.distributed import DistInfo

if TYPE_CHECKING:
    from atmvideo.data import VideoDataset

__all__ = [
    "build_criterion",
    "build_dataset_for",
    "build_eval_loader",
    "build_model",
    "build_train_loader",
    "model_kwargs",
    "per_device_batch_size",
    "resolve_num_classes",
    "train_mixup",
]

_logger = logging.getLogger(__name__)

# ModelConfig fields passed to the model entry point only when set (None = the model's default)
_OPTIONAL_MODEL_FIELDS = (
    "atm_ops",
    "atm_context",
    "atm_stage",
    "atm_block",
    "atm_style",
    "atm_extractor",
    "tconv",
)


def model_kwargs(cfg: ModelConfig, num_classes: int, *, pretrained: bool = True) -> dict[str, Any]:
    """Keyword arguments of ``create_model(cfg.name, ...)``; ``pretrained=False`` skips weight loading."""
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "num_frames": cfg.num_frames,
        "drop_rate": cfg.drop_rate,
        "pretrained": (cfg.pretrained or False) if pretrained else False,
    }
    for name in _OPTIONAL_MODEL_FIELDS:
        value = getattr(cfg, name)
        if value is not None:
            kwargs[name] = value
    kwargs.update(cfg.kwargs)
    return kwargs


def build_model(cfg: ModelConfig, num_classes: int, *, pretrained: bool = True) -> nn.Module:
    """The network of ``cfg`` with a ``num_classes``-way classifier (random init or pretrained weights)."""
    from atmvideo.models import create_model, list_models

    if cfg.name not in list_models():
        raise ConfigError(
            f"model.name={cfg.name!r} is not a registered model; choose from {', '.join(list_models())}"
        )
    kwargs = model_kwargs(cfg, num_classes, pretrained=pretrained)
    try:
        return create_model(cfg.name, **kwargs)
    except TypeError as err:
        # a keyword the model family does not take (e.g. atm_ops on a tsn_* model)
        given = [f"model.{name}=null" for name in _OPTIONAL_MODEL_FIELDS if getattr(cfg, name) is not None]
        hint = f" (to fall back to the model's defaults: --set {' '.join(given)})" if given else ""
        raise ConfigError(f"model {cfg.name!r} rejects its configuration: {err}{hint}") from err


def build_dataset_for(
    cfg: RunConfig, split: str, *, train: bool, views: str = "1x1", num_frames: int | None = None
) -> VideoDataset:
    """``atmvideo.data.build_dataset`` for one split with the run's clip length and test views.

    A recipe names the decoder of its dataset (JPEG frames for SSv1, videos elsewhere); when the
    data actually given (``--set data.format=list data.root=...``) is of the other kind, the
    matching backend is used instead, so any recipe runs on any list-format dataset.
    """
    from atmvideo.data import build_dataset

    frames = cfg.model.num_frames if num_frames is None else num_frames
    data = cfg.data
    if data.format == "list" and data.num_classes == 0 and cfg.model.num_classes > 0:
        # a list file only knows its largest label; the model's class count fixes the target width
        data = dataclasses.replace(data, num_classes=cfg.model.num_classes)
    dataset = build_dataset(data, split, num_frames=frames, train=train, views=parse_views(views))
    if len(dataset) and os.path.exists(first := dataset.samples[0].path):
        backend = data.backend
        if backend == "frames" and os.path.isfile(first):
            backend = "pyav"
        elif backend != "frames" and os.path.isdir(first):
            backend = "frames"
        if backend != data.backend:
            _logger.warning(
                "%s is a %s: reading with data.backend=%s",
                first,
                "folder" if backend == "frames" else "file",
                backend,
            )
            data = dataclasses.replace(data, backend=backend)
            dataset = build_dataset(data, split, num_frames=frames, train=train, views=parse_views(views))
    return dataset


def resolve_num_classes(cfg: RunConfig, dataset: Any) -> int:
    """``model.num_classes``, or the dataset's class count when it is 0; a clear error when they clash."""
    data_classes = int(getattr(dataset, "num_classes", 0) or 0)
    if cfg.model.num_classes == 0:
        if data_classes == 0:
            raise ConfigError("model.num_classes=0 but the dataset does not know its class count; set it")
        return data_classes
    if data_classes > cfg.model.num_classes:
        raise ConfigError(
            f"the dataset has {data_classes} classes but model.num_classes={cfg.model.num_classes}; "
            f"set --set model.num_classes={data_classes} (or 0 to take it from the data)"
        )
    return cfg.model.num_classes


def per_device_batch_size(cfg: RunConfig, world_size: int) -> int:
    """Clips per process per forward pass: global batch / (processes x accumulation steps)."""
    total, accum = cfg.train.batch_size, cfg.train.accum_steps
    if total % (world_size * accum):
        raise ConfigError(
            f"train.batch_size={total} is not divisible by {world_size} process(es) x "
            f"train.accum_steps={accum}; "
            "train.batch_size is the global batch per optimiser step"
        )
    return total // (world_size * accum)


def _num_workers(cfg: RunConfig) -> int:
    """Loader workers per process, at most this process's share of the CPUs (more never helps)."""
    wanted = cfg.data.num_workers if cfg.train.num_workers < 0 else cfg.train.num_workers
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return min(wanted, max(1, (os.cpu_count() or 1) // local_processes))


def build_train_loader(cfg: RunConfig, dataset: VideoDataset, dist: DistInfo) -> DataLoader:
    """Shuffled, seeded training loader of per-process batches (the sampler reshuffles every epoch)."""
    from atmvideo.data import build_loader

    per_device = per_device_batch_size(cfg, dist.world_size)
    accum = cfg.train.accum_steps
    # a small dataset must still give one optimiser step per epoch: shrink the batch to what there is
    fits = math.ceil(len(dataset) * max(1, cfg.data.repeated_aug) / dist.world_size) // accum
    if fits < 1:
        raise ConfigError(
            f"the training split has {len(dataset)} clips, too few for {dist.world_size} process(es) x "
            f"train.accum_steps={accum}"
        )
    if per_device > fits:
        _logger.warning(
            "train.batch_size=%d is larger than the training split (%d clips): using a global batch of %d "
            "(the learning rate is not rescaled)",
            cfg.train.batch_size,
            len(dataset),
            fits * dist.world_size * accum,
        )
        per_device = fits
    return build_loader(
        dataset,
        batch_size=per_device,
        train=True,
        distributed=dist.distributed,
        seed=cfg.train.seed,
        num_workers=_num_workers(cfg),
        repeated_aug=cfg.data.repeated_aug,
        drop_last=True,
    )


def eval_videos_per_batch(cfg: RunConfig, views: str, world_size: int) -> int:
    """Videos per evaluation batch: ``eval.batch_size`` clips per forward pass, divided among the views."""
    clips = cfg.eval.batch_size or max(1, cfg.train.batch_size // (world_size * cfg.train.accum_steps))
    crops, n_clips = parse_views(views)
    return max(1, clips // (crops * n_clips))


def build_eval_loader(cfg: RunConfig, dataset: VideoDataset, dist: DistInfo, views: str) -> DataLoader:
    """Evaluation loader: every sample exactly once over all processes (no padding), in order."""
    from atmvideo.data import build_loader

    return build_loader(
        dataset,
        batch_size=eval_videos_per_batch(cfg, views, dist.world_size),
        train=False,
        distributed=dist.distributed,
        seed=cfg.train.seed,
        num_workers=_num_workers(cfg),
        drop_last=False,
    )


def train_mixup(cfg: RunConfig, num_classes: int) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """The Mixup/CutMix callable of the training recipe, or None when both are off."""
    t = cfg.train
    if t.mixup_alpha <= 0 and t.cutmix_alpha <= 0:
        return None
    from atmvideo.data import build_mixup

    return build_mixup(
        mixup_alpha=t.mixup_alpha,
        cutmix_alpha=t.cutmix_alpha,
        label_smoothing=t.label_smoothing,
        num_classes=num_classes,
        prob=t.mixup_prob,
        switch_prob=t.mixup_switch_prob,
    )


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against a probability vector per sample (Mixup / CutMix targets)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``-sum(target * log_softmax(logits))``."""
        return torch.sum(-target * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class SmoothedBCEWithLogits(nn.Module):
    """Binary cross-entropy for multi-hot targets, with optional label smoothing towards 0.5."""

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy over samples and classes."""
        target = target.float()
        if self.smoothing:
            target = target * (1 - self.smoothing) + 0.5 * self.smoothing
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), target)


def build_criterion(cfg: RunConfig, *, multi_label: bool, mixup: bool) -> nn.Module:
    """Training loss: BCE (multi-label), soft-target CE (mixup; smoothing is in the targets) or CE."""
    if multi_label:
        # with mixup the smoothing is already in the soft targets
        return SmoothedBCEWithLogits(0.0 if mixup else cfg.train.label_smoothing)
    if mixup:
        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
