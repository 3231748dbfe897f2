"""Tests for atmvideo.engine.metrics: every expected number is computed by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from atmvideo.engine.metrics import (
    average_precision,
    compute_metrics,
    confusion_matrix,
    ensemble,
    format_per_class_report,
    fuse_views,
    mean_average_precision,
    mean_class_accuracy,
    per_class_report,
    topk_accuracy,
)

# Single-label example, 4 samples x 3 classes.
#   sample  scores            target  rank of target (ties: lower class index first)
#   0       [0.1, 0.7, 0.2]   1       0  (best)
#   1       [0.5, 0.3, 0.2]   1       1  (0.5 above)
#   2       [0.2, 0.3, 0.5]   0       2  (0.5 and 0.3 above)
#   3       [0.3, 0.3, 0.4]   1       2  (0.4 above, class 0 ties at 0.3 and has the lower index)
# top1 = 1/4, top2 = 2/4, top3 (= top5 clamped to K=3) = 4/4.
# argmax predictions: 1, 0, 2, 2.
SL_SCORES = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])
SL_TARGETS = torch.tensor([1, 1, 0, 1])

# Multi-label example, 4 samples x 3 classes (plus, in one test, a 4th class with no positive).
#   sample  scores            labels
#   0       [0.9, 0.1, 0.3]   {0}
#   1       [0.8, 0.7, 0.2]   {1, 2}
#   2       [0.3, 0.6, 0.9]   {0, 1}
#   3       [0.1, 0.4, 0.8]   {}
# class 0: ranking s0(+) s1(-) s2(+) s3(-): precision at positives 1/1, 2/3 -> AP = 5/6
# class 1: ranking s1(+) s2(+) s3(-) s0(-): precision 1/1, 2/2          -> AP = 1
# class 2: ranking s2(-) s3(-) s0(-) s1(+): precision 1/4               -> AP = 1/4
# mAP = (5/6 + 1 + 1/4) / 3 = 25/36
ML_SCORES = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.3, 0.6, 0.9], [0.1, 0.4, 0.8]])
ML_TARGETS = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 0]])


def brute_force_ap(scores: list[float], labels: list[int]) -> float:
    """AP as the mean over positives of precision at the positive's score threshold (ties included)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    precisions = []
    for sp in pos:
        retrieved = [y for s, y in zip(scores, labels, strict=True) if s >= sp]
        precisions.append(sum(retrieved) / len(retrieved))
    return sum(precisions) / len(precisions)


def test_topk_accuracy_hand_example_and_clamping() -> None:
    acc = topk_accuracy(SL_SCORES, SL_TARGETS, ks=(1, 2, 5))
    assert acc == pytest.approx({1: 25.0, 2: 50.0, 5: 100.0})
    assert set(acc) == {1, 2, 5}  # the requested k stays the key even when clamped to K


def test_topk_ties_do_not_favour_the_target() -> None:
    # all scores equal: class 0 ranks first, so only targets of class 0 count as top-1 hits
    scores = torch.zeros(3, 4)
    acc = topk_accuracy(scores, torch.tensor([0, 1, 3]), ks=(1, 2))
    assert acc[1] == pytest.approx(100 / 3)
    assert acc[2] == pytest.approx(200 / 3)


def test_mean_class_accuracy_hand_example() -> None:
    # class 0: sample 2 predicted 2 -> 0/1; class 1: samples 0,1,3 predicted 1,0,2 -> 1/3;
    # class 2 has no sample and is skipped: (0 + 1/3) / 2 = 1/6
    assert mean_class_accuracy(SL_SCORES, SL_TARGETS) == pytest.approx(100 / 6)
    assert mean_class_accuracy(SL_SCORES, SL_TARGETS, num_classes=3) == pytest.approx(100 / 6)


def test_confusion_matrix_hand_example() -> None:
    preds = SL_SCORES.argmax(1)  # 1, 0, 2, 2
    cm = confusion_matrix(preds, SL_TARGETS, 3)
    # rows = true class: true 0 -> predicted 2; true 1 -> predicted 1, 0, 2; no true 2
    expected = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 0, 0]])
    assert cm.dtype == torch.int64
    assert torch.equal(cm, expected)
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)


def test_mean_average_precision_hand_example() -> None:
    aps = average_precision(ML_SCORES, ML_TARGETS)
    assert aps == pytest.approx([100 * 5 / 6, 100.0, 100 / 4])
    assert mean_average_precision(ML_SCORES, ML_TARGETS) == pytest.approx(100 * 25 / 36)
    # a 4th class without positives has no AP and leaves the mean unchanged
    scores4 = torch.cat([ML_SCORES, torch.rand(4, 1)], dim=1)
    targets4 = torch.cat([ML_TARGETS, torch.zeros(4, 1, dtype=torch.long)], dim=1)
    assert average_precision(scores4, targets4)[3] is None
    assert mean_average_precision(scores4, targets4) == pytest.approx(100 * 25 / 36)
    # bool and float multi-hot targets are the same thing
    assert mean_average_precision(ML_SCORES, ML_TARGETS.bool()) == pytest.approx(100 * 25 / 36)
    assert mean_average_precision(ML_SCORES, ML_TARGETS.float()) == pytest.approx(100 * 25 / 36)


def test_average_precision_ties_are_order_independent() -> None:
    # scores 0.5 (+), 0.5 (-), 0.2 (+): the two 0.5s form one threshold.
    # threshold 0.5: tp=1 of 2 retrieved -> precision 1/2, recall gain 1/2
    # threshold 0.2: tp=2 of 3 retrieved -> precision 2/3, recall gain 1/2
    # AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12, whichever 0.5 is stored first
    for labels in ([1, 0, 1], [0, 1, 1]):
        scores = torch.tensor([[0.5], [0.5], [0.2]])
        assert average_precision(scores, torch.tensor(labels)[:, None])[0] == pytest.approx(100 * 7 / 12)


def test_single_label_map_is_one_hot_map() -> None:
    onehot = torch.nn.functional.one_hot(SL_TARGETS, 3)
    assert mean_average_precision(SL_SCORES, SL_TARGETS) == pytest.approx(
        mean_average_precision(SL_SCORES, onehot)
    )
    # class 0: ranking by score s1(.5) s3(.3) s2(.2,+) s0(.1) -> AP 1/3
    # class 1: s0(.7,+) s1(.3,+) s3(.3,+) s2(.3) -> tie block at .3 holds 2 of 3 positives:
    #          threshold .7: P=1, gain 1/3; threshold .3: P=3/4, gain 2/3 -> AP = 1/3 + 1/2 = 5/6
    # class 2 has no positive -> skipped. mAP = (1/3 + 5/6) / 2 = 7/12
    assert mean_average_precision(SL_SCORES, SL_TARGETS) == pytest.approx(100 * 7 / 12)


@pytest.mark.parametrize("tied", [False, True])
def test_map_matches_brute_force_on_random_data(tied: bool) -> None:
    g = torch.Generator().manual_seed(0 if tied else 1)
    n, k = 60, 7
    scores = torch.randint(0, 5, (n, k), generator=g).float() if tied else torch.randn(n, k, generator=g)
    targets = (torch.rand(n, k, generator=g) < 0.3).long()
    targets[:, -1] = 0  # one class without positives
    aps = average_precision(scores, targets)
    expected = [
        100 * brute_force_ap(scores[:, c].tolist(), targets[:, c].tolist()) if targets[:, c].any() else None
        for c in range(k)
    ]
    assert aps[-1] is None
    assert aps[:-1] == pytest.approx(expected[:-1], abs=1e-9)
    assert mean_average_precision(scores, targets) == pytest.approx(sum(expected[:-1]) / (k - 1))


def test_fuse_views_hand_example() -> None:
    # one sample, two views, two classes: view logits [0, 0] and [ln 3, 0]
    # softmax: [1/2, 1/2] and [3/4, 1/4] -> mean [5/8, 3/8]
    # mean logits: [ln3 / 2, 0]
    # sigmoid: [1/2, 1/2] and [3/4, 1/2] -> mean [5/8, 1/2]
    views = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    assert fuse_views(views).tolist()[0] == pytest.approx([5 / 8, 3 / 8])
    assert fuse_views(views, "mean").tolist()[0] == pytest.approx([math.log(3.0) / 2, 0.0])
    assert fuse_views(views, "sigmoid").tolist()[0] == pytest.approx([5 / 8, 1 / 2])
    # averaging probabilities is not softmax of averaged logits (which would give sqrt3/(1+sqrt3))
    assert fuse_views(views)[0, 0].item() != pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)), abs=1e-3)
    assert fuse_views(torch.zeros(5, 3, 4, dtype=torch.float16)).shape == (5, 4)
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse_views(views, "max")


def test_ensemble_weighted_mean() -> None:
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    assert ensemble([a, b]).tolist() == [[0.5, 0.5]]
    # weights 3:1 -> 3/4 of a + 1/4 of b
    assert ensemble([a, b], weights=[3, 1]).tolist() == [[0.75, 0.25]]
    with pytest.raises(ValueError):
        ensemble([a, torch.zeros(2, 2)])
    with pytest.raises(ValueError):
        ensemble([])


def test_compute_metrics_single_label() -> None:
    m = compute_metrics(SL_SCORES, SL_TARGETS, multi_label=False)
    assert list(m) == ["top1", "top5", "mean_class_acc", "num_samples"]
    assert m["top1"] == pytest.approx(25.0)
    assert m["top5"] == pytest.approx(100.0)
    assert m["mean_class_acc"] == pytest.approx(100 / 6)
    assert m["num_samples"] == 4 and isinstance(m["num_samples"], int)
    assert all(isinstance(m[k], float) for k in ("top1", "top5", "mean_class_acc"))
    with_map = compute_metrics(SL_SCORES, SL_TARGETS, multi_label=False, with_map=True)
    assert with_map["mAP"] == pytest.approx(100 * 7 / 12)


def test_compute_metrics_multi_label() -> None:
    m = compute_metrics(ML_SCORES, ML_TARGETS, multi_label=True)
    assert m["mAP"] == pytest.approx(100 * 25 / 36)
    # hit@1: best classes 0, 0, 2, 2; only sample 0 has its best class among its labels
    assert m["top1"] == pytest.approx(25.0)
    assert m["num_samples"] == 4


def test_metric_input_errors() -> None:
    with pytest.raises(ValueError, match="zero samples"):
        compute_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), multi_label=False)
    with pytest.raises(ValueError):
        topk_accuracy(SL_SCORES, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError):
        topk_accuracy(SL_SCORES, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(ML_SCORES, torch.zeros(4, 3))


def test_per_class_report_and_format() -> None:
    rows = per_class_report(SL_SCORES, SL_TARGETS, ["push", "pull", "drop"])
    assert rows == [
        {"index": 0, "name": "push", "support": 1, "top1": 0.0},
        {"index": 1, "name": "pull", "support": 3, "top1": pytest.approx(100 / 3)},
        {"index": 2, "name": "drop", "support": 0, "top1": None},
    ]
    text = format_per_class_report(rows, sort_by="top1")
    lines = text.splitlines()
    assert lines[0].split() == ["index", "name", "support", "top1"]
    assert [ln.split()[1] for ln in lines[2:]] == ["pull", "push", "drop"]
    assert lines[-1].split()[-1] == "-"

    ml_rows = per_class_report(ML_SCORES, ML_TARGETS, ["a", "b", "c"])
    assert [r["support"] for r in ml_rows] == [2, 2, 1]
    assert [r["ap"] for r in ml_rows] == pytest.approx([100 * 5 / 6, 100.0, 25.0])
