"""Using trained checkpoints: rebuild a model, evaluate one or several (an ensemble), predict one video.

A checkpoint carries its resolved config and class names, so nothing else is needed to rebuild
the model. ``evaluate_checkpoints`` scores the evaluation split with each checkpoint (each at its
own clip length: an 8- and a 16-frame model make the classic (8+16) ensemble), fuses the views,
averages the models' probabilities and writes metrics, per-class report, predictions and
confusion matrix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atmvideo.engine import builders
from atmvideo.engine import metrics as M
from atmvideo.engine.checkpoint import load_checkpoint
from atmvideo.engine.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    parse_views,
    resolve_config,
)
from atmvideo.engine.distributed import DistInfo
from atmvideo.engine.evaluate import Predictions, score_dataset, summarize, write_evaluation_files
from atmvideo.engine.outputs import RunLogger, atomic_write_text
from atmvideo.engine.precision import amp_dtype

__all__ = ["LoadedModel", "evaluate_checkpoints", "load_model", "predict_video", "resolved_eval_config"]

_logger = logging.getLogger(__name__)


class LoadedModel:
    """A model rebuilt from a checkpoint, with the config and class names it was trained with."""

    def __init__(
        self, model: nn.Module, cfg: RunConfig, class_names: list[str], multi_label: bool, path: Path
    ):
        self.model = model
        self.cfg = cfg
        self.class_names = class_names
        self.multi_label = multi_label
        self.path = path


def load_model(path: str | Path, device: torch.device | str = "cpu", *, use_ema: bool = True) -> LoadedModel:
    """Rebuild the network of a checkpoint and load its weights (the EMA weights when present)."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    if "config" not in ckpt:
        raise ValueError(f"{path}: the checkpoint has no config; it was not written by atmvideo train")
    cfg = config_from_dict(ckpt["config"], source=str(path))
    num_classes = int(ckpt.get("num_classes") or cfg.model.num_classes)
    model = builders.build_model(cfg.model, num_classes, pretrained=False)
    weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(weights)
    model.to(device).eval()
    names = list(ckpt.get("class_names") or [str(i) for i in range(num_classes)])
    return LoadedModel(model, cfg, names, bool(ckpt.get("multi_label", False)), path)


def evaluate_checkpoints(
    cfg: RunConfig,
    checkpoints: Sequence[str | Path],
    out_dir: str | Path,
    dist: DistInfo,
    *,
    views: str | None = None,
) -> dict[str, Any] | None:
    """Evaluate one checkpoint or an ensemble on ``cfg.data``'s val split; rank 0 returns the metrics.

    ``cfg`` supplies the data and the test protocol (``eval.*``); each checkpoint supplies its own
    model and clip length. Ensemble members' fused probabilities are averaged with equal weights.
    """
    if not checkpoints:
        raise ValueError("give at least one --checkpoint")
    views = views or cfg.eval.views
    parse_views(views)
    out = Path(out_dir)
    logger = RunLogger(out, enabled=dist.is_main, tensorboard=False)
    members: list[Predictions] = []
    per_model: list[dict[str, Any]] = []
    class_names: list[str] = []
    dataset: Any = None
    start = time.perf_counter()
    for i, path in enumerate(checkpoints):
        loaded = load_model(path, dist.device, use_ema=cfg.eval.use_ema)
        frames = loaded.cfg.model.num_frames
        member_cfg = replace(cfg, model=loaded.cfg.model)
        dataset = builders.build_dataset_for(member_cfg, "val", train=False, views=views, num_frames=frames)
        if dataset.num_classes > len(loaded.class_names):
            raise ValueError(
                f"{path} predicts {len(loaded.class_names)} classes but the evaluation data has "
                f"{dataset.num_classes}"
            )
        loader = builders.build_eval_loader(member_cfg, dataset, dist, views)
        pred = score_dataset(
            loaded.model,
            loader,
            dist,
            fusion=cfg.eval.fusion,
            amp_dtype=amp_dtype(cfg.train.amp, dist.device),
            progress=cfg.train.progress,
            desc=f"eval {i + 1}/{len(checkpoints)}",
        )
        class_names = loaded.class_names
        if pred is not None:
            metrics = summarize(pred, with_map=cfg.eval.with_map)
            per_model.append({"checkpoint": str(path), "num_frames": frames, **metrics})
            if members and not torch.equal(members[0].targets, pred.targets):
                raise ValueError(f"{path} was evaluated on different samples than {checkpoints[0]}")
            members.append(pred)
        del loaded
    if not dist.is_main:
        return None
    pred = members[0]
    if len(members) > 1:
        pred = replace(pred, scores=M.ensemble([m.scores for m in members]))
    metrics = summarize(pred, with_map=cfg.eval.with_map)
    metrics.update(views=views, eval_time=time.perf_counter() - start)
    if len(members) > 1:
        metrics["members"] = per_model
    logger.write_metrics(metrics)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    write_evaluation_files(
        pred,
        metrics,
        out,
        class_names,
        dataset=dataset,
        save_predictions=cfg.eval.save_predictions,
        extra={"checkpoints": [str(p) for p in checkpoints], "views": views},
    )
    logger.close()
    return metrics


def _clip_dataset(loaded: LoadedModel, video: str | Path, views: tuple[int, int]) -> Any:
    """A one-video evaluation dataset with the checkpoint's test transform."""
    from atmvideo.data import VideoDataset, VideoRecord
    from atmvideo.data.transforms import EvalTransform, normalize_stats

    data = loaded.cfg.data
    video = Path(video)
    backend = "frames" if video.is_dir() else (data.backend if data.backend != "frames" else "pyav")
    mean, std = normalize_stats(data.normalize)
    transform = EvalTransform(
        size=data.input_size, short_side=data.short_side, crops=views[0], mean=mean, std=std
    )
    return VideoDataset(
        [VideoRecord(str(video), ())],
        class_names=loaded.class_names,
        multi_label=loaded.multi_label,
        num_frames=loaded.cfg.model.num_frames,
        train=False,
        transform=transform,
        views=views,
        sampling=data.sampling,
        dense_stride=data.dense_stride,
        backend=backend,
        frame_template=(data.frame_template or None) if backend == "frames" else None,
        short_video="repeat",  # any decodable video gets a prediction, however short
    )


@torch.no_grad()
def predict_video(
    checkpoint: str | Path,
    video: str | Path,
    *,
    topk: int = 5,
    views: str = "1x1",
    device: torch.device | str = "cpu",
) -> list[tuple[str, float]]:
    """The ``topk`` (class name, probability) pairs of one video (a file, or a folder of frames)."""
    device = torch.device(device)
    loaded = load_model(checkpoint, device)
    dataset = _clip_dataset(loaded, video, parse_views(views))
    clip, _, _ = dataset[0]
    logits = loaded.model(clip.to(device)).float()  # (V, K): the views are the batch
    fusion = "sigmoid" if loaded.multi_label else "softmax"
    probs = M.fuse_views(logits.unsqueeze(0), fusion)[0]
    k = min(topk, probs.numel())
    values, labels = probs.topk(k)
    return [(loaded.class_names[int(c)], float(v)) for c, v in zip(labels, values, strict=True)]


def resolved_eval_config(config: str | None, overrides: Sequence[str], checkpoint: str | Path) -> RunConfig:
    """``--config`` + ``--set``, or (without ``--config``) the first checkpoint's own config + ``--set``."""
    if config:
        return resolve_config(config, overrides)
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt.get("config") or {}, source=str(checkpoint))
    return apply_overrides(cfg, overrides)
