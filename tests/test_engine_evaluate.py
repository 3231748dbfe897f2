"""Scoring an evaluation set: view fusion, dataset order, exactly-once checks, evaluation files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from atmvideo.engine.distributed import DistInfo
from atmvideo.engine.evaluate import Predictions, score_dataset, summarize, write_evaluation_files


class MeanOfClip(nn.Module):
    """Logits that are a fixed function of the clip: class k scores mean(clip) * (k + 1)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.scale = torch.arange(1.0, num_classes + 1)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return clips.flatten(1).mean(1, keepdim=True) * self.scale


class FakeSet(torch.utils.data.Dataset):
    """Items ``(clip (V, T, 3, 2, 2), target, index)`` like an evaluation VideoDataset."""

    multi_label = False

    def __init__(self, values: torch.Tensor, targets: list[int], indices: list[int] | None = None) -> None:
        self.values, self.targets = values, targets  # values: (N, V) one number per view
        self.indices = indices or list(range(len(targets)))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        clip = self.values[i][:, None, None, None, None].expand(-1, 2, 3, 2, 2).clone()
        return clip, self.targets[i], self.indices[i]


def _loader(dataset, order=None, batch_size=2):
    sampler = order if order is not None else range(len(dataset))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=list(sampler))


def test_views_are_fused_by_softmax_averaging_and_samples_come_back_in_order():
    values = torch.tensor([[0.0, 2.0], [1.0, 1.0], [-1.0, 3.0]])  # 3 videos x 2 views
    dataset = FakeSet(values, [2, 0, 1])
    pred = score_dataset(MeanOfClip(), _loader(dataset, order=[2, 0, 1]), DistInfo(), progress=False)
    assert pred.indices.tolist() == [0, 1, 2] and pred.targets.tolist() == [2, 0, 1]
    scale = torch.arange(1.0, 4.0)
    expected = torch.stack([(v[:, None] * scale).softmax(-1).mean(0) for v in values])
    assert torch.allclose(pred.scores, expected, atol=1e-6)
    # video 0: views [0, 2] -> softmax([0,0,0]) and softmax([2,4,6]) averaged: class 2 wins
    metrics = summarize(pred)
    assert metrics["num_samples"] == 3
    assert metrics["top1"] == pytest.approx(100 / 3)  # only video 0 (target 2) is right


def test_substitutes_of_unreadable_videos_are_dropped_not_double_counted():
    values = torch.zeros(3, 1)
    dataset = FakeSet(values, [0, 1, 0], indices=[0, -1, 2])  # video 1 was replaced by another one
    pred = score_dataset(MeanOfClip(), _loader(dataset), DistInfo(), progress=False)
    assert pred.indices.tolist() == [0, 2] and pred.num_samples == 2


def test_a_padded_sampler_is_caught():
    dataset = FakeSet(torch.zeros(3, 1), [0, 1, 0])
    with pytest.raises(RuntimeError, match="1 sample\\(s\\) more than once"):
        score_dataset(MeanOfClip(), _loader(dataset, order=[0, 1, 2, 0]), DistInfo(), progress=False)
    with pytest.raises(RuntimeError, match="scored 2 of 3 samples"):
        score_dataset(MeanOfClip(), _loader(dataset, order=[0, 1]), DistInfo(), progress=False)


def test_evaluation_files(tmp_path):
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    pred = Predictions(torch.arange(4), scores, torch.tensor([0, 1, 1, 2]), multi_label=False)
    metrics = summarize(pred)
    assert metrics["top1"] == 50.0 and metrics["mean_class_acc"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    write_evaluation_files(pred, metrics, tmp_path, ["a", "b", "c"])
    rows = json.loads((tmp_path / "per_class.json").read_text())
    assert [(r["name"], r["support"], r["top1"]) for r in rows] == [
        ("a", 1, 100.0),
        ("b", 2, 50.0),
        ("c", 1, 0.0),
    ]
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("index,video,target,pred1,score1") and lines[3].startswith("2,2,b,c,0.5")
    saved = torch.load(tmp_path / "predictions.pt", weights_only=True)
    assert torch.equal(saved["scores"], scores) and saved["class_names"] == ["a", "b", "c"]
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
