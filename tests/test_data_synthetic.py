"""The synthetic dataset: deterministic, SSv2 layout, and twin classes that are exact time reversals."""

from __future__ import annotations

import dataclasses
import json

import av
import numpy as np
import pytest

from atmvideo.cli import main
from atmvideo.data import DataConfig, build_dataset, count_frames, make_synthetic, read_frames
from atmvideo.data.synthetic import CLASSES, FRAME_SIZE, render, sample_spec


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", seed=3, videos=20)


def test_layout_and_counts(synthetic):
    train = json.loads((synthetic / "train.json").read_text())
    val = json.loads((synthetic / "validation.json").read_text())
    labels = json.loads((synthetic / "labels.json").read_text())
    assert len(labels) == 10 and sorted(int(v) for v in labels.values()) == list(range(10))
    assert len(train) == 20 and len(val) == 10
    ids = [e["id"] for e in train + val]
    assert len(set(ids)) == 30
    for entry in train + val:
        assert set(entry) == {"id", "label", "template", "placeholders"}
        assert entry["template"].replace("[", "").replace("]", "") in labels
        assert (synthetic / "videos" / f"{entry['id']}.mp4").is_file()
    per_class = [
        sum(labels[e["template"].replace("[", "").replace("]", "")] == str(c) for e in train)
        for c in range(10)
    ]
    assert per_class == [2] * 10


def test_videos_are_small_h264_clips(synthetic):
    entry = json.loads((synthetic / "train.json").read_text())[0]
    path = synthetic / "videos" / f"{entry['id']}.mp4"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("h264", "mpeg4")
        assert (stream.width, stream.height) == (FRAME_SIZE, FRAME_SIZE)
    n = count_frames(path)
    assert 16 <= n <= 24
    assert read_frames(path, [0, n - 1]).shape == (2, FRAME_SIZE, FRAME_SIZE, 3)


def test_same_seed_same_dataset(synthetic, tmp_path):
    again = make_synthetic(tmp_path / "again", seed=3, videos=20)
    for name in ("train.json", "validation.json", "labels.json"):
        assert (again / name).read_text() == (synthetic / name).read_text()
    for video in sorted((synthetic / "videos").glob("*.mp4"))[:5]:
        assert (again / "videos" / video.name).read_bytes() == video.read_bytes()
    other = make_synthetic(tmp_path / "other", seed=4, videos=10)
    assert (other / "train.json").read_text() != (synthetic / "train.json").read_text()


@pytest.mark.parametrize("pair", range(5))
def test_twin_class_is_the_exact_time_reversal(pair):
    first, second = 2 * pair, 2 * pair + 1
    assert CLASSES[first][1] == CLASSES[second][1] and CLASSES[second][2] and not CLASSES[first][2]
    for seed in range(3):
        a = sample_spec(first, np.random.default_rng(seed))
        b = sample_spec(second, np.random.default_rng(seed))
        # Same draws for both classes: identical start/end, size, colour and shape distributions.
        assert dataclasses.replace(a, label=second) == b
        forward, backward = render(a), render(b)
        assert np.array_equal(backward, forward[::-1])
        assert not np.array_equal(forward, forward[::-1])  # there is motion to reverse


def _mask(frame: np.ndarray) -> np.ndarray:
    """Pixels that differ from the background (the corner pixel): the object."""
    return np.abs(frame.astype(int) - frame[0, 0].astype(int)).sum(-1) > 60


def _centroid(frame: np.ndarray) -> tuple[float, float, float]:
    """Centre x, y and area of the object."""
    ys, xs = np.nonzero(_mask(frame))
    return (float(xs.mean()), float(ys.mean()), float(len(xs))) if len(xs) else (np.nan, np.nan, 0.0)


def _aspect(frame: np.ndarray) -> float:
    """Width / height of the object's bounding box."""
    ys, xs = np.nonzero(_mask(frame))
    return (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)


def test_motion_goes_the_way_the_class_says():
    rng = np.random.default_rng(0)
    for label, axis, sign in ((0, 0, 1), (1, 0, -1), (2, 1, 1), (3, 1, -1), (4, 2, 1), (5, 2, -1)):
        frames = render(sample_spec(label, rng))
        first, last = _centroid(frames[0]), _centroid(frames[-1])
        assert sign * (last[axis] - first[axis]) > (15 if axis < 2 else 100), CLASSES[label][0]
    for label, sign in ((6, 1), (7, -1)):  # stretching sideways / upwards
        frames = render(sample_spec(label, rng))
        assert sign * (np.log(_aspect(frames[-1])) - np.log(_aspect(frames[0]))) > 0.5
    appearing = render(sample_spec(8, rng))
    areas = [_centroid(f)[2] for f in appearing]
    assert areas[0] == 0 and areas[-1] > 200 and sorted(areas) == areas


def test_readable_as_sthv2_dataset(synthetic):
    cfg = DataConfig(
        format="sthv2",
        root=str(synthetic / "videos"),
        train=str(synthetic / "train.json"),
        val=str(synthetic / "validation.json"),
        labels=str(synthetic / "labels.json"),
        input_size=64,
        short_side=72,
        flip_label_map="0-1",
    )
    ds = build_dataset(cfg, "train", num_frames=8, train=True)
    assert ds.num_classes == 10 and len(ds) == 20
    clip, target, index = ds[0]
    assert clip.shape == (8, 3, 64, 64) and 0 <= target < 10 and index == 0


def test_cli_writes_the_dataset(tmp_path, capsys):
    assert main(["make-synthetic", "--out", str(tmp_path / "d"), "--seed", "1", "--videos", "10"]) == 0
    assert len(json.loads((tmp_path / "d" / "train.json").read_text())) == 10
    assert len(list((tmp_path / "d" / "videos").glob("*.mp4"))) == 20
    assert "data.format=sthv2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="at least the number of classes"):
        make_synthetic(tmp_path / "e", videos=5)
