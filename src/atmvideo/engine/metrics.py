"""Evaluation metrics for video classification: top-k, mean class accuracy, mAP, view fusion.

Every metric works on plain score tensors gathered from the whole evaluation set (the caller
gathers across ranks first) and returns Python floats in percent.

Ties are resolved deterministically everywhere, so a metric never depends on the order in which
tied classes or samples happen to be stored:

* ranking classes for one sample (top-k, top-1 predictions): a tied class with a *lower index*
  ranks first, as a stable descending sort would; ``torch.argmax`` follows the same rule;
* average precision: samples with equal scores for a class form one threshold and are counted
  together (the convention of ``sklearn.metrics.average_precision_score``), so AP does not
  depend on their order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from atmvideo.engine.outputs import format_table

__all__ = [
    "average_precision",
    "compute_metrics",
    "confusion_matrix",
    "ensemble",
    "format_per_class_report",
    "fuse_views",
    "mean_average_precision",
    "mean_class_accuracy",
    "per_class_report",
    "topk_accuracy",
]

FUSION_METHODS = ("softmax", "mean", "sigmoid")


def _check_scores(scores: Tensor) -> Tensor:
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, K), got shape {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("cannot compute a metric over zero samples")
    # float64 keeps AP sums and tie detection exact for fp16/bf16 inputs too
    return scores.detach().to("cpu", torch.float64)


def _check_single_label(targets: Tensor, num_samples: int, num_classes: int) -> Tensor:
    targets = targets.detach().to("cpu").long().reshape(-1)
    if targets.numel() != num_samples:
        raise ValueError(f"expected {num_samples} targets, got {targets.numel()}")
    if num_samples and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got [{targets.min()}, {targets.max()}]")
    return targets


def _to_multi_hot(targets: Tensor, num_samples: int, num_classes: int) -> Tensor:
    """(N,) class indices or (N, K) multi-hot -> (N, K) bool."""
    if targets.ndim == 1:
        idx = _check_single_label(targets, num_samples, num_classes)
        return torch.nn.functional.one_hot(idx, num_classes).bool()
    if tuple(targets.shape) != (num_samples, num_classes):
        raise ValueError(
            f"multi-hot targets must be ({num_samples}, {num_classes}), got {tuple(targets.shape)}"
        )
    return targets.detach().to("cpu") > 0.5


def _target_rank(scores: Tensor, targets: Tensor) -> Tensor:
    """0-based rank of each sample's true class; ties go to the lower class index."""
    target_scores = scores.gather(1, targets[:, None])
    index = torch.arange(scores.shape[1])[None, :]
    above = (scores > target_scores) | ((scores == target_scores) & (index < targets[:, None]))
    return above.sum(dim=1)


def topk_accuracy(scores: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Percent of samples whose true class is among the k best scores, for each k (k clamped to K)."""
    s = _check_scores(scores)
    n, k_max = s.shape
    t = _check_single_label(targets, n, k_max)
    rank = _target_rank(s, t)
    out: dict[int, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        out[int(k)] = 100.0 * (rank < min(int(k), k_max)).double().mean().item()
    return out


def mean_class_accuracy(scores: Tensor, targets: Tensor, num_classes: int | None = None) -> float:
    """Top-1 accuracy of each class, averaged over the classes that have samples, in percent."""
    s = _check_scores(scores)
    k = s.shape[1] if num_classes is None else int(num_classes)
    t = _check_single_label(targets, s.shape[0], k)
    correct = (s.argmax(dim=1) == t).double()
    support = torch.bincount(t, minlength=k).double()
    hits = torch.zeros(k, dtype=torch.float64).index_add_(0, t, correct)
    present = support > 0
    return 100.0 * (hits[present] / support[present]).mean().item()


def _average_precision_column(scores: Tensor, positive: Tensor) -> float:
    """AP of one class: sum over score thresholds of (recall gain) x (precision at the threshold)."""
    order = torch.argsort(scores, descending=True, stable=True)
    s = scores[order]
    y = positive[order].double()
    tp = torch.cumsum(y, 0)
    # the last sample of every run of equal scores is where a threshold cuts the ranking
    block_end = torch.ones_like(s, dtype=torch.bool)
    block_end[:-1] = s[1:] != s[:-1]
    ends = torch.nonzero(block_end).squeeze(1)
    tp_end = tp[ends]
    precision = tp_end / (ends + 1).double()
    recall_gain = torch.diff(tp_end, prepend=tp_end.new_zeros(1))
    return (recall_gain * precision).sum().item() / tp[-1].item()


def average_precision(scores: Tensor, targets: Tensor) -> list[float | None]:
    """Per-class AP in percent; None for a class without positive samples (it has no AP)."""
    s = _check_scores(scores)
    y = _to_multi_hot(targets, *s.shape)
    out: list[float | None] = []
    for c in range(s.shape[1]):
        pos = y[:, c]
        out.append(100.0 * _average_precision_column(s[:, c], pos) if bool(pos.any()) else None)
    return out


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Mean over classes (with at least one positive) of the exact average precision, in percent.

    ``targets`` is (N, K) multi-hot, or (N,) class indices turned into one-hot (ActivityNet-style
    mAP). Tied scores count as one threshold, as in sklearn's ``average_precision_score``; without
    ties AP is the mean, over the positives, of the precision at each positive's rank.
    """
    aps = [ap for ap in average_precision(scores, targets) if ap is not None]
    if not aps:
        raise ValueError("mAP is undefined: no class has a positive sample")
    return sum(aps) / len(aps)


def fuse_views(scores: Tensor, method: str = "softmax") -> Tensor:
    """Fuse (N, V, K) per-view scores into (N, K): mean softmax, mean logit, or mean sigmoid.

    ``softmax`` (mean of per-view probabilities) is the paper's multi-view test protocol; an (N, K)
    input is taken as a single view. The result is float32.
    """
    if scores.ndim == 2:
        scores = scores[:, None]
    if scores.ndim != 3:
        raise ValueError(f"scores must be (N, V, K), got shape {tuple(scores.shape)}")
    # half-precision logits lose too much in softmax / averaging
    x = scores.float()
    if method == "softmax":
        return x.softmax(dim=-1).mean(dim=1)
    if method == "mean":
        return x.mean(dim=1)
    if method == "sigmoid":
        return x.sigmoid().mean(dim=1)
    raise ValueError(f"unknown fusion method {method!r}; expected one of {FUSION_METHODS}")


def ensemble(prob_list: Sequence[Tensor], weights: Sequence[float] | None = None) -> Tensor:
    """Weighted mean of the (N, K) probabilities of several models (weights normalised to sum 1)."""
    if len(prob_list) == 0:
        raise ValueError("ensemble needs at least one score tensor")
    shape = prob_list[0].shape
    for p in prob_list:
        if p.shape != shape:
            raise ValueError(
                f"all score tensors must have the same shape, got {tuple(p.shape)} vs {tuple(shape)}"
            )
    w = [1.0] * len(prob_list) if weights is None else [float(x) for x in weights]
    if len(w) != len(prob_list):
        raise ValueError(f"got {len(w)} weights for {len(prob_list)} score tensors")
    total = sum(w)
    if total <= 0:
        raise ValueError("ensemble weights must sum to a positive number")
    out = torch.zeros(shape, dtype=torch.float32, device=prob_list[0].device)
    for p, wi in zip(prob_list, w, strict=True):
        out += p.float() * (wi / total)
    return out


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """(K, K) int64 counts; row = true class, column = predicted class."""
    p = preds.detach().to("cpu").long().reshape(-1)
    t = targets.detach().to("cpu").long().reshape(-1)
    if p.numel() != t.numel():
        raise ValueError(f"{p.numel()} predictions for {t.numel()} targets")
    for name, x in (("preds", p), ("targets", t)):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _hit_at_1(scores: Tensor, multi_hot: Tensor) -> float:
    top = scores.argmax(dim=1)
    return 100.0 * multi_hot.gather(1, top[:, None]).double().mean().item()


def compute_metrics(
    scores: Tensor, targets: Tensor, *, multi_label: bool, with_map: bool = False
) -> dict[str, float]:
    """The evaluation summary: top1/top5/mean_class_acc (single label) or mAP/top1 (multi-label).

    Multi-label ``top1`` is hit@1: the best-scored class is one of the true labels. ``with_map``
    adds ``mAP`` for single-label data (ActivityNet reports mAP over one-hot targets).
    ``num_samples`` is an int; everything else is a float in percent.
    """
    s = _check_scores(scores)
    n, k = s.shape
    if multi_label:
        y = _to_multi_hot(targets, n, k)
        return {"mAP": mean_average_precision(s, y), "top1": _hit_at_1(s, y), "num_samples": n}
    acc = topk_accuracy(s, targets, ks=(1, 5))
    out: dict[str, float] = {
        "top1": acc[1],
        "top5": acc[5],
        "mean_class_acc": mean_class_accuracy(s, targets, k),
    }
    if with_map:
        out["mAP"] = mean_average_precision(s, targets)
    out["num_samples"] = n
    return out


def per_class_report(scores: Tensor, targets: Tensor, class_names: Sequence[str]) -> list[dict]:
    """One row per class: index, name, support and top1 (single label) or ap (multi-label targets).

    Single label when ``targets`` is (N,), multi-label when it is (N, K). A class without samples
    (or positives) has ``None`` as its accuracy / AP.
    """
    s = _check_scores(scores)
    n, k = s.shape
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} classes")
    rows: list[dict] = []
    if targets.ndim == 2:
        y = _to_multi_hot(targets, n, k)
        support = y.sum(dim=0)
        for c, ap in enumerate(average_precision(s, y)):
            rows.append({"index": c, "name": str(class_names[c]), "support": int(support[c]), "ap": ap})
        return rows
    t = _check_single_label(targets, n, k)
    correct = (s.argmax(dim=1) == t).double()
    support = torch.bincount(t, minlength=k)
    hits = torch.zeros(k, dtype=torch.float64).index_add_(0, t, correct)
    for c in range(k):
        sup = int(support[c])
        top1 = 100.0 * hits[c].item() / sup if sup else None
        rows.append({"index": c, "name": str(class_names[c]), "support": sup, "top1": top1})
    return rows


def format_per_class_report(rows: Sequence[dict], sort_by: str | None = None, descending: bool = True) -> str:
    """Text table of :func:`per_class_report` rows, optionally sorted by a column (None rows last)."""
    rows = list(rows)
    if not rows:
        return ""
    metric = "ap" if "ap" in rows[0] else "top1"
    if sort_by is not None:
        present = [r for r in rows if r.get(sort_by) is not None]
        missing = [r for r in rows if r.get(sort_by) is None]
        rows = sorted(present, key=lambda r: r[sort_by], reverse=descending) + missing
    return format_table(rows, ["index", "name", "support", metric])
