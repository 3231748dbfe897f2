"""Temporal convolution ("T-Conv"): a depthwise convolution over time initialised as a temporal shift."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from atmvideo.models._base import TemporalModule


class TemporalConv(TemporalModule):
    """Depthwise ``Conv1d(C, C, 3, padding=1, groups=C, bias=False)`` over the frames of a clip.

    Initialised as a shift (SPEC §2): the first ``C/4`` channels copy frame ``t+1``, the next ``C/4``
    copy frame ``t-1``, the rest keep frame ``t``. Works on ``(B*T, C)`` tokens or ``(B*T, C, H, W)``
    maps; frames outside the clip are zeros.
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
        spatial = x.shape[2:]
        # (B, T, C, S) -> (B*S, C, T): time last for conv1d, every position its own sequence.
        seq = (
            x.reshape(batch, frames, self.channels, -1).permute(0, 3, 2, 1).reshape(-1, self.channels, frames)
        )
        seq = F.conv1d(seq, self.weight, padding=1, groups=self.channels)
        out = seq.reshape(batch, -1, self.channels, frames).permute(0, 3, 2, 1)
        return out.reshape(batch * frames, self.channels, *spatial)

    def extra_repr(self) -> str:
        """Channels and clip length in the module's printout."""
        return f"{self.channels}, num_frames={self.num_frames}"
