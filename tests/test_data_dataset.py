"""Datasets and loaders: item shapes, sampled frames, bad-sample policy, skip counts, samplers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from videos import frame_index, index_frames, write_frame_folder, write_video

from atmvideo.data import DataConfig, VideoReadError, build_dataset, build_loader
from atmvideo.data.samplers import EvalShardSampler, RepeatAugSampler, TrainSampler
from atmvideo.data.sampling import segment_indices
from atmvideo.data.transforms import IMAGENET_MEAN, IMAGENET_STD

TEMPLATES = [
    "Pushing [something] from left to right",
    "Pushing [something] from right to left",
    "Lifting [something]",
]


def _unnormalize(clip: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) normalised -> uint8-range frames (..., H, W, 3) for ``frame_index``."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((clip * std + mean) * 255).movedim(-3, -1).numpy()


@pytest.fixture(scope="module")
def sth(tmp_path_factory) -> Path:
    """A Something-Something-V2-style folder: 6 good videos (20 frames) plus the damaged kinds."""
    root = tmp_path_factory.mktemp("sth")
    videos = root / "videos"
    videos.mkdir()
    frames = index_frames(20)
    entries = []
    for i in range(6):
        write_video(videos / f"{i}.mp4", frames, gop=5)
        entries.append({"id": str(i), "template": TEMPLATES[i % 3], "label": "x", "placeholders": ["x"]})
    (videos / "empty.webm").write_bytes(b"")
    data = (videos / "0.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (videos / "text.webm").write_text("not a video at all\n" * 30)
    write_video(videos / "short.mp4", index_frames(5))
    faststart = write_video(root / "fs.mp4", frames, gop=4, faststart=True).read_bytes()
    (videos / "liar.mp4").write_bytes(faststart[: int(len(faststart) * 0.95)])  # header says 20
    for name in ("empty", "truncated", "text", "missing", "short", "liar"):
        entries.append({"id": name, "template": TEMPLATES[0], "label": "x", "placeholders": ["x"]})
    labels = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(TEMPLATES)}
    (root / "labels.json").write_text(json.dumps(labels))
    (root / "good.json").write_text(json.dumps(entries[:6]))
    for entry in entries[6:]:
        (root / f"{entry['id']}.json").write_text(json.dumps(entries[:2] + [entry]))
    return root


def _cfg(root: Path, ann: str = "good.json", **kw) -> DataConfig:
    base = dict(
        format="sthv2",
        root=str(root / "videos"),
        train=str(root / ann),
        val=str(root / ann),
        labels=str(root / "labels.json"),
        input_size=24,
        short_side=32,
        num_workers=0,
    )
    base.update(kw)
    return DataConfig(**base)


def test_train_items(sth):
    ds = build_dataset(_cfg(sth), "train", num_frames=8, train=True)
    assert len(ds) == 6 and ds.num_classes == 3 and not ds.multi_label
    assert ds.class_names[0] == "Pushing something from left to right"
    assert [r.labels for r in ds.samples] == [(0,), (1,), (2,)] * 2
    clip, target, index = ds[4]
    assert clip.shape == (8, 3, 24, 24) and clip.dtype == torch.float32
    assert target == 1 and index == 4  # flipping needs a label map to change a class
    picked = [frame_index(f) for f in _unnormalize(clip)]
    bounds = [(20 * k) // 8 for k in range(9)]  # segments of 2.5 frames
    assert all(bounds[k] <= p < bounds[k + 1] for k, p in enumerate(picked))


def test_eval_items_have_views_clip_major(sth):
    ds = build_dataset(_cfg(sth), "val", num_frames=8, train=False, views=(3, 2))
    clip, target, index = ds[2]
    assert clip.shape == (6, 8, 3, 24, 24) and target == 2 and index == 2
    frames = _unnormalize(clip)
    for view in range(6):
        temporal = view // 3
        want = segment_indices(20, 8, train=False, clip=temporal, num_clips=2).tolist()
        assert [frame_index(f) for f in frames[view]] == want
    single, _, _ = build_dataset(_cfg(sth), "val", num_frames=8, train=False)[0]
    assert single.shape == (1, 8, 3, 24, 24)


BAD = {
    "empty": "file is empty",
    "truncated": "cannot open",
    "text": "cannot open",
    "missing": "file not found",
    "short": "has 5 frames, fewer than the 8",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_sample_error_policy_names_the_file(sth, kind):
    ds = build_dataset(_cfg(sth, f"{kind}.json"), "train", num_frames=8, train=True)
    assert ds[0][2] == 0 and ds[1][2] == 1
    with pytest.raises(VideoReadError, match=BAD[kind]) as err:
        ds[2]
    assert kind in err.value.path and err.value.path in str(err.value)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_sample_skip_policy_substitutes_logs_and_counts(sth, kind, caplog):
    ds = build_dataset(_cfg(sth, f"{kind}.json", on_bad_sample="skip"), "train", num_frames=8, train=True)
    with caplog.at_level(logging.WARNING, logger="atmvideo.data"):
        clip, target, index = ds[2]
    assert index == -1 and clip.shape == (8, 3, 24, 24) and target in (0, 1)  # a good sample's
    assert ds.skipped == 1
    assert any(kind in r.getMessage() and BAD[kind].split(",")[0] in r.getMessage() for r in caplog.records)
    assert all(r.name == "atmvideo.data" for r in caplog.records)
    ds.reset_skipped()
    assert ds.skipped == 0


def test_bad_sample_in_evaluation_is_a_flagged_zero_clip(sth):
    ds = build_dataset(
        _cfg(sth, "text.json", on_bad_sample="skip"), "val", num_frames=8, train=False, views=(1, 2)
    )
    clip, target, index = ds[2]
    assert index == -1 and target == 0 and clip.shape == (2, 8, 3, 24, 24) and not clip.any()
    assert ds.skipped == 1


def test_short_video_repeat_policy(sth):
    ds = build_dataset(
        _cfg(sth, "short.json", short_video="repeat", flip=False), "train", num_frames=8, train=True
    )
    clip, _, index = ds[2]
    assert index == 2
    picked = [frame_index(f) for f in _unnormalize(clip)]
    assert sorted(picked) == picked and set(picked) == set(range(5))


def test_header_that_lies_is_corrected_from_decoding(sth):
    ds = build_dataset(_cfg(sth, "liar.json", flip=False), "val", num_frames=8, train=False)
    clip, _, index = ds[2]
    held = ds._frame_counts[ds.samples[2].path]
    assert index == 2 and 8 <= held < 20
    picked = [frame_index(f) for f in _unnormalize(clip[0])]
    assert picked == segment_indices(held, 8, train=False).tolist()  # resampled over what is there
    strict = build_dataset(_cfg(sth, "liar.json"), "val", num_frames=16, train=False)
    with pytest.raises(VideoReadError, match=r"holds only \d+ decodable frames \(its header says 20\)"):
        strict[2]


def test_skips_are_counted_across_loader_workers(sth, tmp_path):
    entries = json.loads((sth / "good.json").read_text())
    bad = [{"id": k, "template": TEMPLATES[0]} for k in ("empty", "text", "missing")]
    (tmp_path / "mixed.json").write_text(json.dumps(entries + bad * 2))
    cfg = _cfg(sth, on_bad_sample="skip", train=str(tmp_path / "mixed.json"))
    ds = build_dataset(cfg, "train", num_frames=4, train=True)
    loader = build_loader(ds, batch_size=4, train=True, num_workers=2, drop_last=False)
    flagged = 0
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        for clips, targets, index in loader:
            assert clips.shape[1:] == (4, 3, 24, 24) and targets.dtype == torch.int64
            flagged += int((index == -1).sum())
    assert flagged == 12 and ds.skipped == 12  # 6 bad samples a pass, counted in the worker processes


def test_frames_backend_and_multi_label_list(tmp_path):
    frames = index_frames(12)
    write_frame_folder(tmp_path / "a", frames)
    write_frame_folder(tmp_path / "b", frames, "{:06d}.jpg")
    (tmp_path / "train.txt").write_text("a 12 0,2\nb 1\n")
    (tmp_path / "val.txt").write_text("b 3\n")
    cfg = DataConfig(
        format="list",
        root=str(tmp_path),
        train=str(tmp_path / "train.txt"),
        val=str(tmp_path / "val.txt"),
        backend="frames",
        input_size=24,
        short_side=32,
    )
    train = build_dataset(cfg, "train", num_frames=4, train=True)
    val = build_dataset(cfg, "val", num_frames=4, train=False)
    assert train.multi_label and val.multi_label and train.num_classes == val.num_classes == 4
    clip, target, _ = train[0]
    assert clip.shape == (4, 3, 24, 24) and target.dtype == torch.float32
    assert target.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert val[0][1].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_activitynet_training_samples_inside_an_annotated_segment(tmp_path):
    write_video(tmp_path / "v_x.mp4", index_frames(20), fps=10, gop=4)
    segment = {"label": "Zumba", "segment": [0.5, 1.0]}  # frames 5..9 at 10 fps
    database = {"x": {"subset": "training", "duration": 2.0, "annotations": [segment]}}
    ann = tmp_path / "anet.json"
    ann.write_text(json.dumps({"database": database}))
    cfg = DataConfig(
        format="activitynet",
        root=str(tmp_path),
        train=str(ann),
        val=str(ann),
        input_size=24,
        short_side=32,
        flip=False,
    )
    ds = build_dataset(cfg, "train", num_frames=4, train=True)
    assert ds.class_names == ["Zumba"]
    for _ in range(5):
        clip, target, _ = ds[0]
        assert target == 0
        assert all(5 <= frame_index(f) < 10 for f in _unnormalize(clip))


def test_build_dataset_rejects_bad_arguments(sth):
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        build_dataset(_cfg(sth), "test", num_frames=8, train=False)
    with pytest.raises(ValueError, match="on_bad_sample must be"):
        build_dataset(_cfg(sth, on_bad_sample="ignore"), "train", num_frames=8, train=True)
    with pytest.raises(ValueError, match="views other than"):
        build_dataset(_cfg(sth), "train", num_frames=8, train=True, views=(3, 1))


# ------------------------------------------------------------------------------------ samplers


def test_eval_shards_are_disjoint_and_complete():
    shards = [list(EvalShardSampler(10, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]  # no padding: every sample exactly once


def test_train_sampler_epochs_and_ranks():
    ranks = [TrainSampler(10, num_replicas=2, rank=r, seed=5) for r in range(2)]
    first = [list(s) for s in ranks]
    assert sorted(first[0] + first[1]) == list(range(10))
    for s in ranks:
        s.set_epoch(1)
    second = [list(s) for s in ranks]
    assert second != first and sorted(second[0] + second[1]) == list(range(10))
    assert len(TrainSampler(11, num_replicas=4, rank=3)) == 3


def test_repeat_aug_sampler_spreads_copies_over_ranks():
    ranks = [RepeatAugSampler(8, num_repeats=2, num_replicas=2, rank=r, seed=1) for r in range(2)]
    shards = [list(s) for s in ranks]
    assert all(len(s) == 8 for s in shards)
    assert sorted(shards[0]) == sorted(shards[1]) == list(range(8))  # each video once on each rank
    single = list(RepeatAugSampler(5, num_repeats=3))
    assert len(single) == 15 and all(single.count(i) == 3 for i in range(5))


def test_loader_defaults(sth):
    ds = build_dataset(_cfg(sth), "train", num_frames=4, train=True)
    train = build_loader(ds, batch_size=4, train=True, repeated_aug=2)
    assert isinstance(train.sampler, RepeatAugSampler) and train.drop_last and len(train) == 3
    val = build_loader(ds, batch_size=4, train=False, distributed=False)
    assert isinstance(val.sampler, EvalShardSampler) and not val.drop_last
    clips, targets, index = next(iter(val))
    assert index.tolist() == [0, 1, 2, 3] and targets.tolist() == [0, 1, 2, 0]
