"""Mixup / CutMix / label smoothing for batches of clips ``(B, T, 3, H, W)``.

timm's ``Mixup`` cuts its CutMix box out of the last two axes of a 4-D image batch; given a 5-D
clip batch it would not mix the same region of every frame. Here the box always lies in
``H x W`` and covers every frame and channel of the clip, as in the video recipes of the paper.
Pairs are formed as in timm's batch mode: sample ``b`` is mixed with sample ``B - 1 - b``
using one ``lambda`` for the whole batch. Randomness comes from torch's global generator.
"""

from __future__ import annotations

import math

import torch

__all__ = ["VideoMixup", "build_mixup", "smooth_targets"]


def smooth_targets(targets: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Soft ``(B, K)`` targets from class indices ``(B,)`` or multi-hot ``(B, K)``, with label smoothing."""
    if targets.dim() == 1:
        hot = torch.zeros(targets.shape[0], num_classes, dtype=torch.float32, device=targets.device)
        hot.scatter_(1, targets.long().view(-1, 1), 1.0)
    elif targets.dim() == 2 and targets.shape[1] == num_classes:
        hot = targets.float()
    else:
        raise ValueError(f"targets must be (B,) or (B, {num_classes}), got {tuple(targets.shape)}")
    if smoothing:
        # Same on/off values as timm: 1 - s + s/K for a true class, s/K for the rest.
        hot = hot * (1.0 - smoothing) + smoothing / num_classes
    return hot


class VideoMixup:
    """Callable ``(clips, targets) -> (mixed clips, soft targets)``; see ``build_mixup``."""

    def __init__(
        self,
        *,
        mixup_alpha: float,
        cutmix_alpha: float,
        label_smoothing: float,
        num_classes: int,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0")
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.prob, self.switch_prob = prob, switch_prob
        self.last_box: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1) of the last CutMix
        self.last_lam: float = 1.0

    @staticmethod
    def _beta(alpha: float) -> float:
        return float(torch.distributions.Beta(alpha, alpha).sample())

    def _box(self, h: int, w: int, lam: float) -> tuple[int, int, int, int]:
        """timm's ``rand_bbox``: area ``(1 - lam) * H * W`` around a uniform centre, clipped to the frame."""
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        return max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)

    def __call__(self, clips: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch of clips ``(B, T, 3, H, W)`` (or images ``(B, 3, H, W)``) and return soft targets."""
        soft = smooth_targets(targets, self.num_classes, self.label_smoothing)
        self.last_box, self.last_lam = None, 1.0
        active = self.mixup_alpha > 0 or self.cutmix_alpha > 0
        if not active or float(torch.rand(())) >= self.prob:
            return clips, soft
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cutmix = float(torch.rand(())) < self.switch_prob
        else:
            cutmix = self.cutmix_alpha > 0
        partner = clips.flip(0)
        if cutmix:
            lam = self._beta(self.cutmix_alpha)
            h, w = clips.shape[-2:]
            y0, y1, x0, x1 = self.last_box = self._box(h, w, lam)
            mixed = clips.clone()
            mixed[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the box was clipped: use its real area
        else:
            lam = self._beta(self.mixup_alpha)
            mixed = clips * lam + partner * (1.0 - lam)
        self.last_lam = lam
        return mixed, soft * lam + soft.flip(0) * (1.0 - lam)


def build_mixup(
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    label_smoothing: float,
    num_classes: int,
    prob: float = 1.0,
    switch_prob: float = 0.5,
) -> VideoMixup:
    """Build the batch mixer used in training: Mixup and/or CutMix (boxes in H x W) plus label smoothing."""
    return VideoMixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
        prob=prob,
        switch_prob=switch_prob,
    )
