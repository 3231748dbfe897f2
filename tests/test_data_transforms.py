"""Clip transforms hit every frame alike; Mixup/CutMix mix whole clips with boxes in H x W."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atmvideo.data import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, build_mixup
from atmvideo.data.transforms import (
    ClipRandAugment,
    EvalTransform,
    TrainTransform,
    multiscale_crop_box,
    parse_flip_label_map,
    three_crop_boxes,
)

NO_NORM = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def coordinate_clip(t: int = 6, h: int = 60, w: int = 90) -> torch.Tensor:
    """uint8 (T, H, W, 3): red grows with x, green with y, blue is the frame number (differs per frame)."""
    x = torch.linspace(0, 255, w).round().to(torch.uint8)
    y = torch.linspace(0, 255, h).round().to(torch.uint8)
    clip = torch.zeros(t, h, w, 3, dtype=torch.uint8)
    clip[..., 0] = x.view(1, 1, w)
    clip[..., 1] = y.view(1, h, 1)
    clip[..., 2] = (torch.arange(t) * 40).view(t, 1, 1).to(torch.uint8)
    return clip


@pytest.mark.parametrize("crop", ["multiscale", "rrc"])
def test_train_crop_and_flip_are_the_same_for_every_frame(crop):
    transform = TrainTransform(size=32, short_side=40, crop=crop, flip=True, **NO_NORM)
    clip = coordinate_clip()
    flips = set()
    for seed in range(40):
        out, _ = transform(clip, (0,), np.random.default_rng(seed))
        assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
        # Same geometry in every frame: identical red/green planes; blue still tells frames apart.
        assert torch.equal(out[:, :2], out[:1, :2].expand(6, -1, -1, -1))
        assert torch.allclose(out[:, 2, 0, 0], torch.arange(6) * 40 / 255, atol=1e-6)
        flips.add(bool(out[0, 0, 0, 0] > out[0, 0, 0, -1]))  # red decreasing along x = flipped
    assert flips == {True, False}


def test_flip_swaps_labels_through_the_map():
    transform = TrainTransform(
        size=32, short_side=40, flip=True, flip_label_map=parse_flip_label_map("sthv2"), **NO_NORM
    )
    clip = coordinate_clip()
    seen = set()
    for seed in range(30):
        out, labels = transform(clip, (86, 5), np.random.default_rng(seed))
        flipped = bool(out[0, 0, 0, 0] > out[0, 0, 0, -1])
        assert labels == ((87, 5) if flipped else (86, 5))
        seen.add(flipped)
    assert seen == {True, False}


def test_flip_label_map_parsing():
    assert parse_flip_label_map("sthv2") == {86: 87, 87: 86, 93: 94, 94: 93, 166: 167, 167: 166}
    assert parse_flip_label_map("0:1, 6:7") == {0: 1, 1: 0, 6: 7, 7: 6}
    assert parse_flip_label_map("6-7") == {6: 7, 7: 6}  # YAML would read a lone 6:7 as 367
    assert parse_flip_label_map("") == {}
    with pytest.raises(ValueError, match="appears twice"):
        parse_flip_label_map("0:1,1:2")


def test_multiscale_crop_sizes_and_fixed_positions():
    rng = np.random.default_rng(0)
    sides = {256, 224, 192, 168}  # 256 x (1, .875, .75, .66)
    seen_sizes = set()
    for _ in range(500):
        top, left, h, w = multiscale_crop_box(256, 340, size=224, short_side=256, rng=rng)
        assert h in sides and w in sides
        order = sorted(sides, reverse=True)
        assert abs(order.index(h) - order.index(w)) <= 1  # aspect distortion of at most one step
        # On TSN's grid: offsets are whole quarters of the free space.
        assert (left * 4) % (340 - w) == 0
        assert top == 0 if h == 256 else (top * 4) % (256 - h) == 0
        seen_sizes.add((h, w))
    assert len(seen_sizes) == 10  # 4 squares + 6 neighbouring-scale rectangles


def test_multiscale_box_maps_back_to_decoded_resolution():
    # A 128-pixel-high frame with short_side 256: every box is half the size of the 256 version.
    rng = np.random.default_rng(1)
    for _ in range(100):
        top, left, h, w = multiscale_crop_box(128, 170, size=224, short_side=256, rng=rng)
        assert h in {128, 112, 96, 84} and w in {128, 112, 96, 84}
        assert top + h <= 128 and left + w <= 170


def test_three_crops_span_the_long_side_and_eval_shapes():
    assert three_crop_boxes(60, 90, size=30, short_side=30) == [
        (0, 0, 60, 60),
        (0, 15, 60, 60),
        (0, 30, 60, 60),
    ]
    clip = coordinate_clip()
    out = EvalTransform(size=30, short_side=30, crops=3, **NO_NORM)(clip)
    assert out.shape == (3, 6, 3, 30, 30)
    red_left = out[:, 0, 0, 15, 0]  # red at the left edge of each crop grows left -> right
    assert red_left[0] < red_left[1] < red_left[2]
    center = EvalTransform(size=30, short_side=30, crops=1, **NO_NORM)(clip)
    assert center.shape == (1, 6, 3, 30, 30) and torch.allclose(center[0], out[1])


def test_normalisation_constants():
    white = torch.full((2, 40, 40, 3), 255, dtype=torch.uint8)
    for mean, std in ((IMAGENET_MEAN, IMAGENET_STD), (CLIP_MEAN, CLIP_STD)):
        out = EvalTransform(size=32, short_side=40, mean=mean, std=std)(white)
        expected = (1 - torch.tensor(mean)) / torch.tensor(std)
        assert torch.allclose(out[0, 0, :, 5, 5], expected, atol=1e-5)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_grayscale_makes_channels_equal():
    transform = TrainTransform(size=32, short_side=40, flip=False, grayscale=1.0, **NO_NORM)
    out, _ = transform(coordinate_clip(), (0,), np.random.default_rng(0))
    assert torch.allclose(out[:, 0], out[:, 1], atol=1 / 255) and torch.allclose(
        out[:, 1], out[:, 2], atol=1 / 255
    )


def test_randaugment_applies_the_same_ops_with_the_same_magnitudes_to_every_frame():
    augment = ClipRandAugment("rand-m7-n4-mstd0.5-inc1", size=32, mean=IMAGENET_MEAN)
    calls: list[list[tuple]] = []

    class Recorder:
        def __call__(self, image):
            calls.append([])
            return inner(image)

    inner = augment.augment
    for op in inner.ops:
        op.aug_fn = _recording(op.name, op.aug_fn, calls)
    augment.augment = Recorder()
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8))
    changed = 0
    for seed in range(20):
        calls.clear()
        out = augment(frames, seed)
        assert out.shape == frames.shape and out.dtype == torch.uint8
        assert len(calls) == 5
        assert all(c == calls[0] for c in calls)  # same ops, same order, same magnitudes and signs
        changed += bool(calls[0])
    assert changed >= 15  # the ops really ran


def _recording(name, fn, calls):
    def wrapped(img, *args, **kwargs):
        calls[-1].append(
            (name, tuple(np.round(a, 6) if isinstance(a, float) else a for a in args), kwargs.get("resample"))
        )
        return fn(img, *args, **kwargs)

    return wrapped


def test_randaugment_identical_frames_stay_identical_and_global_rng_is_restored():
    transform = TrainTransform(
        size=32, short_side=40, flip=False, randaugment="rand-m7-n4-mstd0.5-inc1", **NO_NORM
    )
    frame = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (1, 48, 48, 3), dtype=np.uint8))
    clip = frame.expand(6, -1, -1, -1).contiguous()
    import random

    random.seed(123)
    np.random.seed(123)
    before = random.random(), np.random.rand()
    differs = 0
    for seed in range(15):
        out, _ = transform(clip, (0,), np.random.default_rng(seed))
        assert torch.equal(out, out[:1].expand_as(out))
        plain, _ = TrainTransform(size=32, short_side=40, flip=False, **NO_NORM)(
            clip, (0,), np.random.default_rng(seed)
        )
        differs += not torch.allclose(out, plain)
    assert differs >= 10
    random.seed(123)
    np.random.seed(123)
    assert (random.random(), np.random.rand()) == before


# ------------------------------------------------------------------------------------ mixup


def _label_clips(b: int = 6, t: int = 4, h: int = 16, w: int = 20) -> torch.Tensor:
    """Clip b is filled with the value b, so a mixed pixel tells where it came from."""
    return torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1, 1).expand(b, t, 3, h, w).contiguous()


def test_cutmix_box_is_the_same_region_of_every_frame():
    torch.manual_seed(0)
    mix = build_mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=6)
    clips = _label_clips()
    targets = torch.arange(6)
    boxes = 0
    for _ in range(20):
        out, soft = mix(clips, targets)
        changed = out != clips  # (B, T, 3, H, W)
        y0, y1, x0, x1 = mix.last_box
        expected = torch.zeros(16, 20, dtype=torch.bool)
        expected[y0:y1, x0:x1] = True
        for b in range(6):
            assert torch.equal(changed[b], expected.expand(4, 3, -1, -1))  # every frame, every channel
            assert torch.all(out[b][:, :, expected] == 5 - b)
        lam = 1 - (y1 - y0) * (x1 - x0) / (16 * 20)
        assert mix.last_lam == pytest.approx(lam)
        assert torch.allclose(soft[0], torch.tensor([lam, 0, 0, 0, 0, 1 - lam]))
        boxes += (y1 - y0) * (x1 - x0) > 0
    assert boxes >= 15


def test_mixup_blends_whole_clips_and_targets():
    torch.manual_seed(1)
    mix = build_mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=6)
    out, soft = mix(_label_clips(), torch.arange(6))
    lam = mix.last_lam
    assert mix.last_box is None and 0 <= lam <= 1
    for b in range(6):
        assert torch.allclose(out[b], torch.full_like(out[b], lam * b + (1 - lam) * (5 - b)))
    assert torch.allclose(soft.sum(1), torch.ones(6))
    assert soft[1, 1] == pytest.approx(lam) and soft[1, 4] == pytest.approx(1 - lam)


def test_label_smoothing_alone_and_multi_hot_targets():
    mix = build_mixup(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=10)
    clips = _label_clips(2)
    out, soft = mix(clips, torch.tensor([3, 7]))
    assert out is clips
    assert soft[0, 3] == pytest.approx(0.91) and soft[0, 0] == pytest.approx(0.01)
    multi = torch.zeros(2, 10)
    multi[0, [1, 2]] = 1
    _, soft = mix(clips, multi)
    assert (
        soft[0, 1] == pytest.approx(0.91)
        and soft[0, 2] == pytest.approx(0.91)
        and soft[1, 1] == pytest.approx(0.01)
    )


def test_switching_between_mixup_and_cutmix():
    torch.manual_seed(2)
    mix = build_mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=6, switch_prob=0.5)
    kinds = set()
    for _ in range(30):
        mix(_label_clips(), torch.arange(6))
        kinds.add(mix.last_box is not None)
    assert kinds == {True, False}
