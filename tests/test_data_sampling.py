"""Clip sampling: TSN segments, dense clips, multi-clip tests, untrimmed windows, short videos."""

from __future__ import annotations

import numpy as np
import pytest

from atmvideo.data.sampling import clip_indices, dense_indices, segment_indices, segment_window


def test_segment_test_takes_segment_middles():
    assert segment_indices(80, 8, train=False).tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    assert segment_indices(16, 8, train=False).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]


def test_segment_train_draws_one_frame_inside_each_segment():
    rng = np.random.default_rng(0)
    draws = np.stack([segment_indices(80, 8, train=True, rng=rng) for _ in range(2000)])
    for k in range(8):
        assert draws[:, k].min() == 10 * k and draws[:, k].max() == 10 * k + 9  # every frame reachable
    assert (np.diff(draws, axis=1) > 0).all()


def test_segment_multi_clip_test_interleaves():
    first = segment_indices(80, 8, train=False, clip=0, num_clips=2)
    second = segment_indices(80, 8, train=False, clip=1, num_clips=2)
    assert first.tolist() == [2, 12, 22, 32, 42, 52, 62, 72]
    assert second.tolist() == [7, 17, 27, 37, 47, 57, 67, 77]


@pytest.mark.parametrize("train", [True, False])
def test_short_video_repeats_frames_in_order(train):
    rng = np.random.default_rng(1)
    got = segment_indices(3, 8, train=train, rng=rng)
    assert len(got) == 8 and set(got.tolist()) == {0, 1, 2}
    assert (np.diff(got) >= 0).all()  # order, hence motion direction, is kept
    dense = dense_indices(5, 8, 4, train=train, rng=rng)
    assert set(dense.tolist()) == set(range(5)) and (np.diff(dense) >= 0).all()


def test_dense_clip_stride_and_test_positions():
    assert dense_indices(100, 8, 4, train=False).tolist() == list(range(34, 66, 4))
    clips = [dense_indices(100, 8, 4, train=False, clip=c, num_clips=4).tolist()[0] for c in range(4)]
    assert clips == [8, 25, 42, 59]  # evenly spread over the free range 0..68
    rng = np.random.default_rng(0)
    starts = {dense_indices(100, 8, 4, train=True, rng=rng)[0] for _ in range(3000)}
    assert starts == set(range(69))  # every start that keeps the clip inside the video


def test_dense_clip_longer_than_video_shrinks_the_step():
    got = dense_indices(20, 8, 4, train=False)
    assert got.tolist() == [0, 2, 5, 7, 10, 12, 15, 17]


def test_segment_window_follows_annotated_seconds():
    rng = np.random.default_rng(0)
    segments = [(10.0, 20.0, 3), (50.0, 60.0, 3)]
    windows = {segment_window(300, 100.0, segments, rng) for _ in range(50)}
    assert windows == {(30, 60), (150, 180)}  # 3 frames per second
    assert segment_window(300, None, segments, rng) == (0, 300)
    assert segment_window(300, 100.0, [], rng) == (0, 300)


def test_clip_indices_inside_window():
    rng = np.random.default_rng(0)
    for _ in range(100):
        got = clip_indices(300, 8, mode="segment", train=True, rng=rng, window=(150, 180))
        assert got.min() >= 150 and got.max() < 180
    assert clip_indices(300, 4, mode="dense", train=False, stride=2, window=(100, 200)).tolist() == [
        146,
        148,
        150,
        152,
    ]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        segment_indices(0, 8, train=False)
    with pytest.raises(ValueError, match="needs rng"):
        segment_indices(10, 8, train=True)
    with pytest.raises(ValueError, match="unknown sampling 'uniform'"):
        clip_indices(10, 4, mode="uniform", train=False)
