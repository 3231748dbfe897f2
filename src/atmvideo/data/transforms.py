"""Clip transforms: every random choice is drawn once per clip and applied to all of its frames.

A clip enters as the decoder's uint8 ``(T, H, W, 3)`` tensor and leaves as a normalised float32
``(T, 3, S, S)`` (training) or ``(crops, T, 3, S, S)`` (evaluation). Geometry runs through
``torchvision.transforms.v2.functional`` on the whole ``(T, 3, H, W)`` stack at once, which is
what makes a crop or flip identical for every frame; each crop is one ``resized_crop`` from the
decoded frame (resize to the short side and crop in one resampling). RandAugment (timm) works on
single PIL images, so the random state is replayed for every frame: the same ops, magnitudes and
signs hit each one.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MULTISCALE_SCALES",
    "STHV2_FLIP_PAIRS",
    "ClipRandAugment",
    "EvalTransform",
    "TrainTransform",
    "center_crop_box",
    "multiscale_crop_box",
    "normalize_stats",
    "parse_flip_label_map",
    "random_resized_crop_box",
    "three_crop_boxes",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

MULTISCALE_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
# Something-Something V2 classes that swap meaning under a horizontal flip
# ("Pushing something from left to right" <-> "... right to left", and two more pairs).
STHV2_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((86, 87), (93, 94), (166, 167))

Box = tuple[int, int, int, int]  # top, left, height, width in the decoded frame


def normalize_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of ``imagenet`` or ``clip`` normalisation."""
    if name == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if name == "clip":
        return CLIP_MEAN, CLIP_STD
    raise ValueError(f"unknown normalize {name!r}; expected 'imagenet' or 'clip'")


def parse_flip_label_map(spec: str) -> dict[int, int]:
    """Turn ``""``, ``"sthv2"`` or ``"a:b,c:d"`` (or ``"a-b,c-d"``) into a symmetric class swap for flips.

    ``a-b`` exists because YAML (``--set data.flip_label_map=6:7``) reads a lone ``6:7`` as the
    base-60 number 367.
    """
    spec = spec.strip()
    if not spec:
        return {}
    if spec == "sthv2":
        pairs = list(STHV2_FLIP_PAIRS)
    else:
        pairs = []
        for item in spec.split(","):
            try:
                a, b = (int(x) for x in re.split(r"[:-]", item.strip()))
            except ValueError:
                raise ValueError(f"flip_label_map item {item!r} is not 'a:b' (or 'a-b')") from None
            pairs.append((a, b))
    mapping: dict[int, int] = {}
    for a, b in pairs:
        if a in mapping or b in mapping:
            raise ValueError(f"class {a if a in mapping else b} appears twice in flip_label_map {spec!r}")
        mapping[a], mapping[b] = b, a
    return mapping


# --------------------------------------------------------------------------------- crop boxes


def _scaled(h: int, w: int, short_side: int) -> tuple[float, float]:
    """Size of a frame after resizing its shorter side to ``short_side`` (kept as floats)."""
    factor = short_side / min(h, w)
    return h * factor, w * factor


def _to_frame(box: tuple[float, float, float, float], h: int, w: int, short_side: int) -> Box:
    """Map a box on the short-side-resized frame back onto the decoded frame."""
    factor = min(h, w) / short_side
    top, left, bh, bw = (v * factor for v in box)
    bh, bw = max(1, min(h, round(bh))), max(1, min(w, round(bw)))
    top = min(max(0, round(top)), h - bh)
    left = min(max(0, round(left)), w - bw)
    return top, left, bh, bw


def multiscale_crop_box(
    h: int,
    w: int,
    *,
    size: int,
    short_side: int,
    rng: np.random.Generator,
    scales: Sequence[float] = MULTISCALE_SCALES,
    max_distort: int = 1,
) -> Box:
    """TSN's MultiScaleCrop box: sides from ``scales`` x short side, at one of 13 fixed spots.

    Height and width are drawn at most ``max_distort`` scale steps apart.
    """
    img_h, img_w = _scaled(h, w, short_side)
    base = min(img_h, img_w)
    sizes = [int(base * s) for s in scales]
    # TSN snaps a side within 3 px of the input size to exactly that size.
    sizes = [size if abs(s - size) < 3 else s for s in sizes]
    pairs = [
        (ch, cw) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes) if abs(i - j) <= max_distort
    ]
    ch, cw = pairs[int(rng.integers(len(pairs)))]
    ch, cw = min(ch, img_h), min(cw, img_w)
    hs, ws = (img_h - ch) / 4, (img_w - cw) / 4
    spots = [
        (0, 0), (0, 4), (4, 0), (4, 4), (2, 2),  # corners and centre
        (2, 0), (2, 4), (4, 2), (0, 2),  # edge midpoints
        (1, 1), (1, 3), (3, 1), (3, 3),  # quarter points
    ]  # fmt: skip
    y, x = spots[int(rng.integers(len(spots)))]
    return _to_frame((y * hs, x * ws, ch, cw), h, w, short_side)


def random_resized_crop_box(
    h: int,
    w: int,
    *,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """Inception-style random crop: area fraction in ``scale``, aspect ratio in ``ratio`` (log-uniform)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    # Fallback, as torchvision: the central crop of the nearest allowed aspect ratio.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def center_crop_box(h: int, w: int, *, size: int, short_side: int) -> Box:
    """The centre ``size`` square of the frame resized to ``short_side``."""
    img_h, img_w = _scaled(h, w, short_side)
    side = min(size, img_h, img_w)
    return _to_frame(((img_h - side) / 2, (img_w - side) / 2, side, side), h, w, short_side)


def three_crop_boxes(h: int, w: int, *, size: int, short_side: int) -> list[Box]:
    """Three ``size`` squares along the longer side (start, centre, end) after resizing to ``short_side``."""
    img_h, img_w = _scaled(h, w, short_side)
    side = min(size, img_h, img_w)
    boxes = []
    for pos in (0.0, 0.5, 1.0):
        if img_w >= img_h:
            box = ((img_h - side) / 2, (img_w - side) * pos, side, side)
        else:
            box = ((img_h - side) * pos, (img_w - side) / 2, side, side)
        boxes.append(_to_frame(box, h, w, short_side))
    return boxes


def _crop(frames: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """Crop ``(T, 3, H, W)`` uint8 frames to ``box`` and resize to ``size`` x ``size``, all frames alike."""
    top, left, bh, bw = box
    if (bh, bw) == (size, size):
        return frames[..., top : top + bh, left : left + bw]
    return F.resized_crop(
        frames, top, left, bh, bw, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True
    )


# ---------------------------------------------------------------------------------- RandAugment


class ClipRandAugment:
    """timm's RandAugment (e.g. ``rand-m7-n4-mstd0.5-inc1``) with one draw of ops per clip."""

    def __init__(self, config: str, *, size: int, mean: Sequence[float]) -> None:
        from timm.data.auto_augment import rand_augment_transform

        hparams = {
            "translate_const": int(size * 0.45),
            "img_mean": tuple(min(255, round(255 * m)) for m in mean),
            "interpolation": _pil_bicubic(),
        }
        self.config = config
        self.augment = rand_augment_transform(config, hparams)

    def __call__(self, frames: torch.Tensor, seed: int) -> torch.Tensor:
        """Augment ``(T, 3, H, W)`` uint8 frames, replaying the random state seeded by ``seed`` per frame."""
        from PIL import Image

        # timm draws from the global ``random`` and ``numpy.random``: seed both for this clip, rewind
        # them before every frame, and put the caller's state back afterwards.
        saved = random.getstate(), np.random.get_state()
        try:
            out = []
            for frame in frames.permute(0, 2, 3, 1).numpy():
                random.seed(seed)
                np.random.seed(seed % 2**32)
                out.append(np.asarray(self.augment(Image.fromarray(frame))))
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _pil_bicubic():
    from PIL import Image

    return Image.Resampling.BICUBIC


# ------------------------------------------------------------------------------------ pipelines


def _normalize(frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (frames.float().div_(255) - mean).div_(std)


class TrainTransform:
    """Training augmentation of a clip: crop, flip (with label swap), RandAugment, grayscale, normalise."""

    def __init__(
        self,
        *,
        size: int,
        short_side: int,
        crop: str = "multiscale",
        rrc_scale: tuple[float, float] = (0.08, 1.0),
        flip: bool = True,
        flip_label_map: dict[int, int] | None = None,
        randaugment: str = "",
        grayscale: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if crop not in ("multiscale", "rrc"):
            raise ValueError(f"unknown train_crop {crop!r}; expected 'multiscale' or 'rrc'")
        self.size, self.short_side, self.crop = size, short_side, crop
        self.rrc_scale = rrc_scale
        self.flip = flip
        self.flip_label_map = dict(flip_label_map or {})
        self.randaugment = ClipRandAugment(randaugment, size=size, mean=mean) if randaugment else None
        self.grayscale = grayscale
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def box(self, h: int, w: int, rng: np.random.Generator) -> Box:
        """Draw the crop box of one clip."""
        if self.crop == "multiscale":
            return multiscale_crop_box(h, w, size=self.size, short_side=self.short_side, rng=rng)
        return random_resized_crop_box(h, w, rng=rng, scale=self.rrc_scale)

    def __call__(
        self, clip: torch.Tensor, labels: tuple[int, ...], rng: np.random.Generator
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Augment a uint8 ``(T, H, W, 3)`` clip into float ``(T, 3, S, S)``; return it and its labels."""
        frames = clip.permute(0, 3, 1, 2)
        frames = _crop(frames, self.box(frames.shape[-2], frames.shape[-1], rng), self.size)
        if self.flip and rng.random() < 0.5:
            frames = frames.flip(-1)
            labels = tuple(self.flip_label_map.get(label, label) for label in labels)
        if self.randaugment is not None:
            frames = self.randaugment(frames.contiguous(), int(rng.integers(2**62)))
        if self.grayscale > 0 and rng.random() < self.grayscale:
            frames = F.rgb_to_grayscale(frames, num_output_channels=3)
        return _normalize(frames, self.mean, self.std).contiguous(), labels


class EvalTransform:
    """Test-time view of a clip: resize the short side, take the centre crop or three crops, normalise."""

    def __init__(
        self,
        *,
        size: int,
        short_side: int,
        crops: int = 1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if crops not in (1, 3):
            raise ValueError(f"crops must be 1 or 3, got {crops}")
        self.size, self.short_side, self.crops = size, short_side, crops
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def boxes(self, h: int, w: int) -> list[Box]:
        """Crop boxes of the views of one clip."""
        if self.crops == 1:
            return [center_crop_box(h, w, size=self.size, short_side=self.short_side)]
        return three_crop_boxes(h, w, size=self.size, short_side=self.short_side)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        """Turn a uint8 ``(T, H, W, 3)`` clip into float ``(crops, T, 3, S, S)``."""
        frames = clip.permute(0, 3, 1, 2)
        views = [_crop(frames, box, self.size) for box in self.boxes(frames.shape[-2], frames.shape[-1])]
        return torch.stack([_normalize(v, self.mean, self.std) for v in views])
