"""Evaluation: score every sample once (all processes together), fuse views, gather, compute metrics.

``score_dataset`` runs one model over an evaluation loader whose clips are ``(B, V, T, 3, S, S)``
(V = crops x clips views), fuses the V views of each video per batch (softmax averaging by
default) and gathers ``(index, scores, target)`` of every process to rank 0, where each dataset
index must appear exactly once. ``summarize`` turns the gathered scores into the metrics dict and
the files of an evaluation (metrics.json, per-class report, predictions, confusion matrix).
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from atmvideo.engine import metrics as M
from atmvideo.engine.distributed import DistInfo, broadcast_object, gather_objects
from atmvideo.engine.outputs import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    plot_confusion_matrix,
)
from atmvideo.engine.precision import autocast

__all__ = [
    "Predictions",
    "progress_interval",
    "score_dataset",
    "share_metrics",
    "summarize",
    "write_evaluation_files",
]

_logger = logging.getLogger(__name__)


def progress_interval() -> float:
    """Seconds between progress-bar refreshes: live on a terminal, sparse in a log file."""
    return 0.5 if sys.stderr.isatty() else 30.0


@dataclass
class Predictions:
    """Fused scores of a whole evaluation set, in dataset order (rank 0 only)."""

    indices: torch.Tensor  # (N,) dataset indices, sorted
    scores: torch.Tensor  # (N, K) fused probabilities (or mean logits for fusion="mean")
    targets: torch.Tensor  # (N,) class indices or (N, K) multi-hot
    multi_label: bool

    @property
    def num_samples(self) -> int:
        """Number of evaluated videos."""
        return int(self.indices.numel())


def _collate_targets(targets: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(t.shape[0], -1) if t.ndim > 1 else t.reshape(-1) for t in targets])


@torch.no_grad()
def score_dataset(
    model: nn.Module,
    loader: Any,
    dist: DistInfo,
    *,
    fusion: str = "softmax",
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> Predictions | None:
    """Fused scores of every sample of ``loader.dataset``; the result lives on rank 0 (None elsewhere).

    Each process scores its disjoint share; rank 0 checks that the gathered indices are exactly
    ``0 .. len(dataset) - 1`` minus the samples the dataset skipped, each once.
    """
    model.eval()
    local_idx: list[torch.Tensor] = []
    local_scores: list[torch.Tensor] = []
    local_targets: list[torch.Tensor] = []
    start = time.perf_counter()
    seen = 0
    bar = tqdm(
        total=len(loader),
        desc=desc,
        disable=not (progress and dist.is_main),
        dynamic_ncols=True,
        leave=False,
        mininterval=progress_interval(),
    )
    for clips, targets, index in loader:
        if clips.ndim == 5:  # a loader without the view axis: one view
            clips = clips.unsqueeze(1)
        batch, views = clips.shape[:2]
        clips = clips.to(dist.device, non_blocking=True).flatten(0, 1)
        with autocast(dist.device, amp_dtype):
            logits = model(clips)
        logits = logits.float().view(batch, views, -1)
        local_scores.append(M.fuse_views(logits, fusion).cpu())
        local_targets.append(torch.as_tensor(targets))
        local_idx.append(torch.as_tensor(index).long().reshape(-1))
        seen += batch
        bar.update(1)
        bar.set_postfix(videos_per_s=f"{seen * dist.world_size / max(time.perf_counter() - start, 1e-9):.1f}")
    bar.close()
    part = None  # stays None when there are more processes than batches
    if local_idx:
        idx, scores, targets = torch.cat(local_idx), torch.cat(local_scores), _collate_targets(local_targets)
        # index -1 marks a substitute for an unreadable video (on_bad_sample=skip): not a sample of its own
        keep = idx >= 0
        part = (idx[keep], scores[keep], targets[keep], int((~keep).sum()))
    parts = gather_objects(part)
    pred, error = None, None
    if parts is not None:
        try:
            pred = _assemble([p for p in parts if p is not None], loader.dataset)
        except RuntimeError as err:
            error = str(err)
    # every process learns about a failed check, instead of waiting for rank 0 in the next collective
    error = broadcast_object(error)
    if error:
        raise RuntimeError(error)
    return pred


def _assemble(parts: list[tuple], dataset: Any) -> Predictions:
    """Gathered per-process parts -> predictions in dataset order, each index checked to appear once."""
    if not parts:
        raise RuntimeError("the evaluation set is empty")
    indices = torch.cat([p[0] for p in parts])
    order = torch.argsort(indices)
    indices = indices[order]
    scores = torch.cat([p[1] for p in parts])[order]
    targets = torch.cat([p[2] for p in parts])[order]
    _check_exactly_once(indices, len(dataset), sum(p[3] for p in parts))
    multi_label = bool(getattr(dataset, "multi_label", targets.ndim == 2))
    return Predictions(indices=indices, scores=scores, targets=targets, multi_label=multi_label)


def _check_exactly_once(indices: torch.Tensor, expected: int, skipped: int) -> None:
    """Every dataset index once: duplicates (padded samplers) or gaps would bias the metrics."""
    unique = torch.unique(indices)
    if unique.numel() != indices.numel():
        raise RuntimeError(
            f"evaluation scored {indices.numel() - unique.numel()} sample(s) more than once: "
            "the evaluation sampler must not pad"
        )
    if indices.numel() + skipped != expected:
        raise RuntimeError(
            f"evaluation scored {indices.numel()} of {expected} samples ({skipped} unreadable)"
        )
    if skipped:
        _logger.warning("evaluation skipped %d unreadable sample(s) of %d", skipped, expected)


def summarize(pred: Predictions, *, with_map: bool = False) -> dict[str, Any]:
    """Metrics of gathered predictions: top1/top5/mean_class_acc (+mAP) or mAP/top1, and num_samples."""
    out = M.compute_metrics(pred.scores, pred.targets, multi_label=pred.multi_label, with_map=with_map)
    out["num_samples"] = pred.num_samples
    return out


def share_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Rank 0's metrics on every process (so all ranks take the same decisions)."""
    return broadcast_object(metrics)


def _video_names(dataset: Any, indices: torch.Tensor) -> list[str]:
    """A printable id of each sample, from whatever the dataset exposes."""
    for attr in ("video_ids", "videos", "paths"):
        names = getattr(dataset, attr, None)
        if names is not None:
            return [str(names[int(i)]) for i in indices]
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        out = []
        for i in indices:
            s = samples[int(i)]
            out.append(str(getattr(s, "path", None) or getattr(s, "video_id", None) or s))
        return out
    return [str(int(i)) for i in indices]


def write_evaluation_files(
    pred: Predictions,
    metrics: dict[str, Any],
    out_dir: str | Path,
    class_names: Sequence[str],
    *,
    dataset: Any = None,
    save_predictions: bool = True,
    confusion_png: bool = True,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write per_class.json, predictions.pt/.csv and confusion_matrix.png for one evaluation."""
    out = Path(out_dir)
    rows = M.per_class_report(pred.scores, pred.targets, class_names)
    atomic_write_json(out / "per_class.json", rows)
    atomic_write_bytes(out / "per_class.txt", (M.format_per_class_report(rows) + "\n").encode("utf-8"))
    if save_predictions:
        names = (
            _video_names(dataset, pred.indices)
            if dataset is not None
            else [str(int(i)) for i in pred.indices]
        )
        atomic_torch_save(
            {
                "indices": pred.indices,
                "scores": pred.scores,
                "targets": pred.targets,
                "videos": names,
                "class_names": list(class_names),
                "metrics": dict(metrics),
                **(extra or {}),
            },
            out / "predictions.pt",
        )
        atomic_write_bytes(
            out / "predictions.csv", _predictions_csv(pred, names, class_names).encode("utf-8")
        )
    if confusion_png and not pred.multi_label:
        matrix = M.confusion_matrix(pred.scores.argmax(dim=1), pred.targets, len(class_names))
        plot_confusion_matrix(matrix, class_names, out / "confusion_matrix.png")


def _predictions_csv(
    pred: Predictions, names: Sequence[str], class_names: Sequence[str], topk: int = 5
) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    k = min(topk, pred.scores.shape[1])
    writer.writerow(
        ["index", "video", "target"] + [f"{kind}{i + 1}" for i in range(k) for kind in ("pred", "score")]
    )
    values, labels = pred.scores.topk(k, dim=1)
    for row, (idx, name) in enumerate(zip(pred.indices.tolist(), names, strict=True)):
        target = pred.targets[row]
        if pred.multi_label:
            truth = ";".join(class_names[c] for c in torch.nonzero(target > 0.5).flatten().tolist())
        else:
            truth = class_names[int(target)]
        cells: list[Any] = [idx, name, truth]
        for c, v in zip(labels[row].tolist(), values[row].tolist(), strict=True):
            cells += [class_names[c], f"{v:.6f}"]
        writer.writerow(cells)
    return buf.getvalue()
