"""Which frames of a video make a clip: TSN segments, dense clips, multi-clip tests, untrimmed videos.

Every function returns sorted frame indices (``int64``, ``0 <= i < num_frames``) and takes the
randomness it needs from a ``numpy.random.Generator``, so a clip is reproducible from a seed.

Short videos: when a video has fewer frames than the clip needs, indices *repeat* in order
(``0, 0, 1, 1, 2, ...``) rather than loop back to the start, so frame order, and thus the
direction of motion, is kept. Whether such a video is used at all is the dataset's choice
(``DataConfig.short_video``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["dense_indices", "segment_indices", "segment_window", "clip_indices"]


def segment_indices(
    num_frames: int,
    num_segments: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """TSN sampling: split the video into equal segments, one frame each (random in training, else middle).

    At test time clip ``c`` of ``num_clips`` takes the point ``(c + 0.5) / num_clips`` of the
    way through each segment, so ``num_clips=1`` is the middle and ``num_clips=2`` gives the
    two interleaved clips of the TSM "twice" test.
    """
    _check(num_frames, num_segments)
    k = np.arange(num_segments)
    if train:
        if rng is None:
            raise ValueError("training sampling needs rng")
        start = (k * num_frames) // num_segments
        end = np.maximum(((k + 1) * num_frames) // num_segments, start + 1)
        indices = rng.integers(start, end)
    else:
        if not 0 <= clip < num_clips:
            raise ValueError(f"clip {clip} is not in [0, {num_clips})")
        indices = np.floor((k + (clip + 0.5) / num_clips) * num_frames / num_segments).astype(np.int64)
    return np.minimum(indices, num_frames - 1).astype(np.int64)


def dense_indices(
    num_frames: int,
    clip_len: int,
    stride: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """Dense sampling: ``clip_len`` frames ``stride`` apart, from a random (train) or spread (test) start.

    Test clips start evenly through the video (clip ``c`` at ``(c + 0.5) / num_clips`` of the
    free range). A video shorter than ``clip_len * stride`` gets a smaller, fractional step so
    the clip still spans it in order.
    """
    _check(num_frames, clip_len)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    step = min(float(stride), num_frames / clip_len)
    free = num_frames - step * clip_len  # >= 0 by the choice of step
    if train:
        if rng is None:
            raise ValueError("training sampling needs rng")
        start = int(rng.integers(0, math.floor(free) + 1))
    else:
        if not 0 <= clip < num_clips:
            raise ValueError(f"clip {clip} is not in [0, {num_clips})")
        start = math.floor(free * (clip + 0.5) / num_clips)
    indices = start + np.floor(np.arange(clip_len) * step).astype(np.int64)
    return np.minimum(indices, num_frames - 1).astype(np.int64)


def segment_window(
    num_frames: int,
    duration: float | None,
    segments: Sequence[tuple[float, float, int]],
    rng: np.random.Generator,
) -> tuple[int, int]:
    """Frame range ``[start, end)`` of one annotated segment chosen at random (untrimmed training).

    Seconds become frames through ``num_frames / duration``; with no segment or no duration
    the whole video is the window.
    """
    if not segments or not duration or duration <= 0:
        return 0, num_frames
    start_s, end_s, _ = segments[int(rng.integers(len(segments)))]
    fps = num_frames / duration
    start = min(max(int(math.floor(start_s * fps)), 0), num_frames - 1)
    end = min(max(int(math.ceil(end_s * fps)), start + 1), num_frames)
    return start, end


def clip_indices(
    num_frames: int,
    length: int,
    *,
    mode: str,
    train: bool,
    rng: np.random.Generator | None = None,
    stride: int = 4,
    clip: int = 0,
    num_clips: int = 1,
    window: tuple[int, int] | None = None,
) -> np.ndarray:
    """Indices of one clip by ``mode`` (``segment`` or ``dense``), optionally inside a frame ``window``."""
    offset, end = window if window is not None else (0, num_frames)
    span = end - offset
    if mode == "segment":
        indices = segment_indices(span, length, train=train, rng=rng, clip=clip, num_clips=num_clips)
    elif mode == "dense":
        indices = dense_indices(span, length, stride, train=train, rng=rng, clip=clip, num_clips=num_clips)
    else:
        raise ValueError(f"unknown sampling {mode!r}; expected 'segment' or 'dense'")
    return indices + offset


def _check(num_frames: int, length: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if length < 1:
        raise ValueError(f"clip length must be >= 1, got {length}")
