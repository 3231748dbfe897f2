"""Temporal convolution ("T-Conv"): a depthwise convolution over time initialised as a temporal shift."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from atmvideo.models._base import TemporalModule


class TemporalConv(TemporalModule):
    """Depthwise ``Conv1d(C, C, 3, padding=1, groups=C, bias=False)`` over the frames of a clip.

    Initialised as a shift (SPEC §2): the first ``C/4`` channels copy frame ``t+1``, the next ``C/4``
    copy frame ``t-1``, the rest keep frame ``t``. Works on ``(B*T, C)`` tokens or ``(B*T, C, H, W)``
    maps (either memory format); frames outside the clip are zeros.

    It runs as three multiply-adds of whole frames (``temporal_mix``) rather than ``conv1d``: a
    ``conv1d`` needs time as the last axis, that is two full permuted copies of the map, and a
    length-8 kernel call per (position, channel). The shift-and-add form reads the map in place.
    """

    def __init__(self, channels: int, *, num_frames: int) -> None:
        super().__init__(num_frames)
        self.channels = channels
        self.weight = nn.Parameter(torch.zeros(channels, 1, 3))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise the kernel as the temporal shift."""
        quarter = self.channels // 4
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:quarter, 0, 2] = 1.0  # out[t] = in[t + 1]
            self.weight[quarter : 2 * quarter, 0, 0] = 1.0  # out[t] = in[t - 1]
            self.weight[2 * quarter :, 0, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix every channel with its values in the previous and next frame."""
        batch, frames = self.batch_and_frames(x)
        clip = x.view(batch, frames, *x.shape[1:])
        taps = self.weight.view(self.channels, 3)
        if torch.is_grad_enabled() and (clip.requires_grad or taps.requires_grad):
            out = _TemporalMix.apply(clip, taps)
        else:
            out = temporal_mix(clip, taps)
        return out.view(x.shape)

    def extra_repr(self) -> str:
        """Channels and clip length in the module's printout."""
        return f"{self.channels}, num_frames={self.num_frames}"


def temporal_mix(clip: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """``out[:, t] = w0 * clip[:, t - 1] + w1 * clip[:, t] + w2 * clip[:, t + 1]`` for every channel.

    ``clip`` is ``(B, T, C, ...)``, ``taps`` ``(C, 3)``; frames beyond either end count as zeros. This
    is ``conv1d(padding=1, groups=C)`` over ``T`` (cross-correlation: tap 0 reads the previous frame).
    """
    taps = taps.to(clip.dtype).view(taps.shape[0], 3, *([1] * (clip.ndim - 3)))
    out = clip * taps[:, 1]
    out[:, 1:].addcmul_(clip[:, :-1], taps[:, 0])
    out[:, :-1].addcmul_(clip[:, 1:], taps[:, 2])
    return out


class _TemporalMix(torch.autograd.Function):
    """``temporal_mix`` with a backward pass of the same form (autograd's own would copy every slice)."""

    @staticmethod
    def forward(ctx: Any, clip: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        """``(B, T, C, ...)`` clip and ``(C, 3)`` taps -> mixed clip."""
        ctx.save_for_backward(clip, taps)
        return temporal_mix(clip, taps)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The clip's gradient is the mix with the kernel reversed; each tap's, a sum of products."""
        clip, taps = ctx.saved_tensors
        grad_clip = grad_taps = None
        if ctx.needs_input_grad[0]:
            grad_clip = temporal_mix(grad, taps.flip(1))
        if ctx.needs_input_grad[1]:
            all_but_channels = [0, 1, *range(3, clip.ndim)]
            total = torch.promote_types(clip.dtype, torch.float32)  # bf16 sums would lose the small terms
            per_tap = (
                (grad[:, 1:] * clip[:, :-1]).sum(all_but_channels, dtype=total),
                (grad * clip).sum(all_but_channels, dtype=total),
                (grad[:, :-1] * clip[:, 1:]).sum(all_but_channels, dtype=total),
            )
            grad_taps = torch.stack(per_tap, 1).to(taps.dtype)
        return grad_clip, grad_taps
