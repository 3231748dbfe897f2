"""The Arithmetic Temporal Module (ATM) and its parts: reduce, operate, extract, transform, residual."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atmvideo import ops as atm_ops
from atmvideo.models._base import TemporalModule

EXTRACTORS: tuple[str, ...] = ("conv", "fc", "mlp")
STYLES: tuple[str, ...] = ("atm", "parallel", "cascade")
RESIDUAL_ACTS: tuple[str, ...] = ("relu", "identity")


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int | None = None
) -> nn.Sequential:
    """A bias-free convolution followed by BatchNorm and ReLU."""
    if padding is None:
        padding = kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def parse_ops(ops: str | Sequence[str]) -> tuple[str, ...]:
    """Turn ``"mul,sub"`` or ``["mul", "sub"]`` into a validated tuple of operation names."""
    names = tuple(name.strip() for name in (ops.split(",") if isinstance(ops, str) else ops) if name.strip())
    if not names:
        raise ValueError("ATM needs at least one operation")
    unknown = [name for name in names if name not in atm_ops.OPERATIONS]
    if unknown:
        raise ValueError(f"unknown ATM operation(s) {unknown}; choose from {', '.join(atm_ops.OPERATIONS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"ATM operations must not repeat: {names}")
    return names


class CorrelationEncoder(nn.Module):
    """Turns each ``P x P`` displacement plane into a ``hidden``-channel vector (SPEC §1.4).

    Independently at every (pair, frame, y, x): 3x3 convs ``1 -> 4`` (stride 1), ``4 -> 16`` (stride 2),
    ``16 -> 64`` (stride 2), then a convolution as large as what is left (3x3 for P = 9), no padding,
    ``64 -> hidden``; each with BN + ReLU.
    """

    def __init__(self, patch_size: int, hidden: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        remaining = math.ceil(math.ceil(patch_size / 2) / 2)  # what two stride-2 convs leave of P x P
        self.layers = nn.Sequential(
            conv_bn_relu(1, 4, 3, stride=1),
            conv_bn_relu(4, 16, 3, stride=2),
            conv_bn_relu(16, 64, 3, stride=2),
            conv_bn_relu(64, hidden, remaining, padding=0),
        )

    def forward(self, correlation: torch.Tensor) -> torch.Tensor:
        """``(N, P, P, H, W) -> (N, hidden, H, W)``."""
        n, p, _, height, width = correlation.shape
        planes = correlation.permute(0, 3, 4, 1, 2).reshape(n * height * width, 1, p, p)
        encoded = self.layers(planes)  # (N*H*W, hidden, 1, 1)
        return encoded.view(n, height, width, -1).permute(0, 3, 1, 2)


def build_extractor(kind: str, hidden: int) -> nn.Sequential:
    """Feature extractor over each pair's cue map (Table 1e): conv stack, one FC, or a 3-layer MLP."""
    if kind == "conv":
        return nn.Sequential(conv_bn_relu(hidden, hidden, 3), conv_bn_relu(hidden, hidden, 3))
    if kind == "fc":
        return nn.Sequential(conv_bn_relu(hidden, hidden, 1))
    if kind == "mlp":
        return nn.Sequential(*(conv_bn_relu(hidden, hidden, 1) for _ in range(3)))
    raise ValueError(f"unknown ATM extractor {kind!r}; choose from {', '.join(EXTRACTORS)}")


class OperationBranch(nn.Module):
    """One operation from reduced frame features to fused per-frame cue features.

    ``(B*T, hidden, h, w) -> (B*T, hidden, h, w)``: span the context, apply the operation to every
    (anchor, context) pair, encode correlations into channels (``mul``), extract features per pair with
    shared weights, then regroup the pair axis into channels and fuse it with a 3x3 conv (the first
    half of the paper's domain transformation).
    """

    def __init__(
        self,
        op: str,
        *,
        hidden: int,
        offsets: Sequence[int],
        extractor: str,
        patch_size: int,
    ) -> None:
        super().__init__()
        self.op = op
        self.offsets = list(offsets)
        self.patch_size = patch_size
        self.encoder = CorrelationEncoder(patch_size, hidden) if op == "mul" else None
        self.extractor = build_extractor(extractor, hidden)
        self.fuse = conv_bn_relu(len(self.offsets) * hidden, hidden, 3)

    def forward(self, reduced: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Fused cue features of every frame, same shape as ``reduced``."""
        n, hidden, height, width = reduced.shape
        clip = reduced.view(n // num_frames, num_frames, hidden, height, width)
        context = atm_ops.span_context(clip, self.offsets)  # (B, T, Z', D, h, w)
        cue = atm_ops.arithmetic(self.op, clip.unsqueeze(2), context, self.patch_size)
        cue = cue.flatten(0, 2)  # (B*T*Z', D, h, w), or (B*T*Z', P, P, h, w) for mul
        if self.encoder is not None:
            cue = self.encoder(cue)
        cue = self.extractor(cue)
        return self.fuse(cue.reshape(n, len(self.offsets) * hidden, height, width))


class ATM(TemporalModule):
    """Arithmetic Temporal Module: temporal cues from +, -, x, / between frame features, added back.

    Input and output ``(B*T, C, H, W)``. Each operation has its own reduce (3x3 conv ``C -> hidden``,
    stride 2 when ``downsample``), operation branch and projection back to ``C`` (1x1 conv, zero
    initialised so a new ATM starts as the identity on pretrained features). ``style`` combines
    several operations as in the paper's Figure A.1:

    - ``atm``: operation blocks one after the other, each with its own residual (the paper's choice);
    - ``parallel``: every block reads the same input, branches summed before one residual;
    - ``cascade``: one reduce; each operation works on the previous one's fused cue features; one
      projection and residual at the end.
    """

    def __init__(
        self,
        channels: int,
        *,
        num_frames: int,
        ops: str | Sequence[str] = ("mul", "sub"),
        context: int = 4,
        include_self: bool | None = None,
        extractor: str = "conv",
        style: str = "atm",
        downsample: bool = False,
        hidden: int = 64,
        patch_size: int = 9,
        residual_act: str = "relu",
    ) -> None:
        super().__init__(num_frames)
        if style not in STYLES:
            raise ValueError(f"unknown ATM style {style!r}; choose from {', '.join(STYLES)}")
        if residual_act not in RESIDUAL_ACTS:
            raise ValueError(f"unknown residual_act {residual_act!r}; choose from {', '.join(RESIDUAL_ACTS)}")
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be a positive odd number, got {patch_size}")
        self.ops = parse_ops(ops)
        self.offsets = atm_ops.context_offsets(context, include_self)
        self.style = style
        self.downsample = downsample
        self.residual_act = residual_act
        num_reduce = 1 if style == "cascade" else len(self.ops)
        num_project = 1 if style == "cascade" else len(self.ops)
        stride = 2 if downsample else 1
        self.reduce = nn.ModuleList(
            conv_bn_relu(channels, hidden, 3, stride=stride) for _ in range(num_reduce)
        )
        self.branches = nn.ModuleList(
            OperationBranch(
                op, hidden=hidden, offsets=self.offsets, extractor=extractor, patch_size=patch_size
            )
            for op in self.ops
        )
        self.project = nn.ModuleList(nn.Conv2d(hidden, channels, 1, bias=False) for _ in range(num_project))
        for projection in self.project:
            nn.init.zeros_(projection.weight)

    def _to_input(self, branch: torch.Tensor, projection: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
        """Project fused cues back to the input channels and, after a downsampling reduce, its size."""
        branch = projection(branch)
        if branch.shape[-2:] != size:
            branch = F.interpolate(branch, size=size, mode="bilinear", align_corners=False)
        return branch

    def _residual(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        out = x + branch
        return F.relu(out) if self.residual_act == "relu" else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the temporal cues of every frame to its features: ``(B*T, C, H, W) -> (B*T, C, H, W)``."""
        self.batch_and_frames(x)
        frames, size = self.num_frames, x.shape[-2:]
        if self.style == "atm":
            for reduce, branch, projection in zip(self.reduce, self.branches, self.project, strict=True):
                x = self._residual(x, self._to_input(branch(reduce(x), frames), projection, size))
            return x
        if self.style == "parallel":
            total = sum(
                self._to_input(branch(reduce(x), frames), projection, size)
                for reduce, branch, projection in zip(self.reduce, self.branches, self.project, strict=True)
            )
            return self._residual(x, total)
        cues = self.reduce[0](x)
        for branch in self.branches:
            cues = branch(cues, frames)
        return self._residual(x, self._to_input(cues, self.project[0], size))
