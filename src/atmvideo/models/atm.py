"""The Arithmetic Temporal Module (ATM) and its parts: reduce, operate, extract, transform, residual."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atmvideo import ops as atm_ops
from atmvideo.models import _encoder_training
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

    The planes are tiny (9 x 9) and there are millions of them, where convolution kernels are slow. So
    by default (``fast = True``) the first convolution runs as a matrix product built from its weight
    on every call (so gradients reach it), and then:

    - training on CPU (float32/64, no autocast, P = 9, 5 or 1): ``_encoder_training`` runs the four
      layers by hand, chunk by chunk: the first as one product per output row (``(M * P, 3 * P) @
      (3 * P, 4 * P)``: the three input rows around it), the others on planes laid side by side in a few
      wide images (each stride-2 layer becomes one large convolution), with BatchNorm statistics
      merged per chunk;
    - otherwise the first convolution is the dense linear map it is on a flattened plane (``(M, 81) @
      (81, 4 * 81)``) and the last a dense product too (``(M, 576) @ (576, hidden)``), the middle
      two are channels-last convolutions, eval-mode BatchNorm is folded into the product before it (on
      CPU a chunk of planes at a time), and training-mode BatchNorm runs ``F.batch_norm`` with the
      module's own parameters and buffers on a ``(M, c, h * w)`` or ``(M * h * w, c)`` view.

    Either way statistics, running averages and ``num_batches_tracked`` are those of the plain path;
    same parameters and state-dict keys, same results (to rounding; ``tests/test_fast_paths.py``). The
    plain conv path stays for ``fast = False`` and for FLOP counting (``ops.architectural_cost``), which
    must see the architecture's convolutions.
    """

    def __init__(self, patch_size: int, hidden: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.fast = True
        remaining = math.ceil(math.ceil(patch_size / 2) / 2)  # what two stride-2 convs leave of P x P
        self.layers = nn.Sequential(
            conv_bn_relu(1, 4, 3, stride=1),
            conv_bn_relu(4, 16, 3, stride=2),
            conv_bn_relu(16, 64, 3, stride=2),
            conv_bn_relu(64, hidden, remaining, padding=0),
        )
        # Where each weight of the first conv goes in its dense matrix, and in the matrix of one output
        # row from the three input rows around it; not saved in checkpoints.
        self.register_buffer("_taps", _conv_taps(patch_size, 3), persistent=False)
        self.register_buffer("_row_taps", _row_band_taps(patch_size, 3), persistent=False)

    def forward(self, correlation: torch.Tensor) -> torch.Tensor:
        """``(N, P, P, H, W) -> (N, hidden, H, W)`` (a channels-last view)."""
        n, p, _, height, width = correlation.shape
        # A view when the correlation comes from ops.local_correlation (stored (N, H, W, P, P)).
        planes = correlation.permute(0, 3, 4, 1, 2).reshape(n * height * width, p * p)
        if self.fast and not atm_ops.architectural_cost_enabled():
            encoded = self._encode_fast(planes)
        else:
            encoded = self.layers(planes.view(-1, 1, p, p)).flatten(1)
        return encoded.view(n, height, width, -1).permute(0, 3, 1, 2)

    def _encode_fast(self, planes: torch.Tensor) -> torch.Tensor:
        """``(M, P * P) -> (M, hidden)``: the conv stack as two dense products around two small convs."""
        p = self.patch_size
        # Layer 1 as (M, P*P) @ (P*P, 4*P*P); weight[:, taps] is (4 out channels, P*P in, P*P out).
        weight = F.pad(self.layers[0][0].weight.flatten(1), (0, 1))  # (4, 9 + 1): a zero for "no tap"
        if _encoder_training.handles(self.layers, planes, p):
            # (3 input rows x P columns, P * 4): one output row, (x, c) columns, from the rows around it.
            row_matrix = weight[:, self._row_taps].permute(1, 2, 0).reshape(3 * p, -1)
            return _encoder_training.encode(planes, row_matrix, self.layers, p)
        # Columns in (c, y, x) order: the product is a (M, 4, P, P) NCHW map.
        first_matrix = weight[:, self._taps].permute(1, 0, 2).reshape(p * p, -1)
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
        on_cpu = planes.device.type == "cpu" and not tracing
        if on_cpu and all(_folded_bn(block[1]) is not None for block in self.layers):
            # CPU evaluation: no batch statistics tie the planes together, so each chunk goes through
            # all four layers while its intermediate maps are still in cache (not under a tracer:
            # a loop over the planes would fix the batch size of the graph).
            chunks = planes.split(_encoder_training.CHUNK_PLANES)
            return torch.cat([self._encode_layers(chunk, first_matrix) for chunk in chunks])
        return self._encode_layers(planes, first_matrix)

    def _encode_layers(self, planes: torch.Tensor, first_matrix: torch.Tensor) -> torch.Tensor:
        """The four layers under autograd, BatchNorm folded where it is in eval mode."""
        first, second, third, last = self.layers
        p = self.patch_size
        m = planes.shape[0]
        conv = first[0]
        x = _linear_bn_relu(planes, first_matrix, first[1]).view(m, conv.out_channels, p, p)
        # Layers 2 and 3: real convolutions, channels-last (measured fastest for 4 -> 16 and 16 -> 64).
        x = x.contiguous(memory_format=torch.channels_last)
        x = _conv_bn_relu(x, second[0], second[1])
        x = _conv_bn_relu(x, third[0], third[1])
        # Layer 4 covers the whole remaining map: a dense (M, r*r*64) @ (r*r*64, hidden) in (y, x, c) order.
        weight = last[0].weight
        matrix = weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0])
        return _linear_bn_relu(x.permute(0, 2, 3, 1).reshape(m, -1), matrix, last[1])


def _conv_taps(size: int, kernel: int) -> torch.Tensor:
    """``taps[i, o]``: the tap of a stride-1, same-padded ``kernel x kernel`` conv on a ``size x size`` map
    that links input position ``i`` to output position ``o``, or ``kernel**2`` where none does."""
    pos = torch.arange(size)
    offset = pos.view(-1, 1) - pos.view(1, -1) + kernel // 2  # (input, output) -> tap coordinate
    valid = (offset >= 0) & (offset < kernel)
    taps = offset.view(size, 1, size, 1) * kernel + offset.view(1, size, 1, size)
    inside = valid.view(size, 1, size, 1) & valid.view(1, size, 1, size)
    return torch.where(inside, taps, kernel * kernel).view(size * size, size * size)


def _row_band_taps(size: int, kernel: int) -> torch.Tensor:
    """``taps[r * size + i, o]``: the tap of a stride-1, same-padded ``kernel x kernel`` conv on a
    ``size``-wide map that links column ``i`` of input row ``r`` (of the ``kernel`` rows centred on an
    output row) to output column ``o`` of that row, or ``kernel**2`` where none does."""
    pos = torch.arange(size)
    offset = pos.view(-1, 1) - pos.view(1, -1) + kernel // 2  # (input, output) column -> tap column
    rows = torch.arange(kernel).view(-1, 1, 1)
    taps = torch.where((offset >= 0) & (offset < kernel), rows * kernel + offset, kernel * kernel)
    return taps.reshape(kernel * size, size)


def _folded_bn(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Eval-mode BatchNorm as ``(scale, shift)`` per channel, or ``None`` when it uses batch statistics."""
    if bn.training or bn.running_mean is None or bn.running_var is None:
        return None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _linear_bn_relu(x: torch.Tensor, matrix: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``relu(bn(x @ matrix))``; the ``c * s`` columns of ``matrix`` are ``c`` channels of ``s`` values."""
    channels = bn.num_features
    folded = _folded_bn(bn)
    if folded is not None:
        scale, shift = folded
        per_column = matrix.shape[1] // channels
        return torch.addmm(
            shift.repeat_interleave(per_column), x, matrix * scale.repeat_interleave(per_column)
        ).relu_()
    y = x @ matrix
    return F.relu(_batch_norm(y.view(y.shape[0], channels, -1), bn), inplace=True).view_as(y)


def _conv_bn_relu(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``relu(bn(conv(x)))``; in eval mode the BatchNorm is folded into the convolution's weight and bias."""
    folded = _folded_bn(bn)
    if folded is not None:
        scale, shift = folded
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        bias = shift if conv.bias is None else shift + conv.bias * scale
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups).relu_()
    y = conv(x)
    if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        # A channels-last map is a (N*H*W, C) matrix: the 2-D batch-norm kernel is faster on it (CPU).
        flat = F.relu(_batch_norm(y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]), bn), inplace=True)
        return flat.view(y.shape[0], *y.shape[2:], -1).permute(0, 3, 1, 2)
    return F.relu(_batch_norm(y, bn), inplace=True)


def _batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``bn(x)`` for any ``(N, C, ...)`` layout: what ``nn.BatchNorm2d.forward`` does, without its 4-D check.

    Same statistics (over every axis but C), same running-buffer update and ``num_batches_tracked``.
    """
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            factor = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep_running = not bn.training or bn.track_running_stats
    return F.batch_norm(
        x,
        bn.running_mean if keep_running else None,
        bn.running_var if keep_running else None,
        bn.weight,
        bn.bias,
        use_batch_stats,
        factor,
        bn.eps,
    )


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
        """Fused cue features of every frame, same shape (and memory format) as ``reduced``."""
        n, hidden, height, width = reduced.shape
        pairs = len(self.offsets)
        clip = reduced.view(n // num_frames, num_frames, hidden, height, width)
        fast = not atm_ops.architectural_cost_enabled()
        if self.op == "mul" and fast:
            # Normalise every frame once, not once per pair (the zero frames of the padding stay zero).
            clip = atm_ops.l2_normalize_channels(clip)
            context = atm_ops.span_context(clip, self.offsets)  # (B, T, Z', D, h, w)
            cue = atm_ops.local_correlation(clip.unsqueeze(2).expand_as(context), context, self.patch_size)
        else:
            context = atm_ops.span_context(clip, self.offsets)
            cue = atm_ops.arithmetic(self.op, clip.unsqueeze(2), context, self.patch_size)
        if self.encoder is not None:
            cue = self.encoder(cue.flatten(0, 2))  # (B*T*Z', D, h, w), a channels-last view
        else:
            # One copy into channels-last (B*T*Z', D, h, w): the small 3x3 convs run faster that way.
            cue = cue.permute(0, 1, 2, 4, 5, 3).reshape(-1, height, width, hidden).permute(0, 3, 1, 2)
        cue = _conv_blocks(self.extractor, cue, fast)
        # Pair axis into channels, (B*T, Z'*D, h, w) with channel z * D + d, again channels-last.
        cue = cue.permute(0, 2, 3, 1).reshape(n, pairs, height, width, hidden).permute(0, 2, 3, 1, 4)
        cue = cue.reshape(n, height, width, pairs * hidden).permute(0, 3, 1, 2)
        fused = _conv_blocks((self.fuse,), cue, fast)
        return fused.contiguous(memory_format=_memory_format(reduced))


def _conv_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, fast: bool) -> torch.Tensor:
    """Run ``conv_bn_relu`` blocks one after the other; ``fast`` folds eval-mode BN into the convolution."""
    for block in blocks:
        x = _conv_bn_relu(x, block[0], block[1]) if fast else block(x)
    return x


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """``channels_last`` for a tensor stored that way (and not also plainly contiguous), else contiguous."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


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
        """Project fused cues back to the input channels and, after a downsampling reduce, its size.

        The architecture projects, then upsamples. Both are linear (bilinear interpolation per channel,
        a bias-free 1x1 convolution per position), so they commute; upsampling the ``hidden`` channels
        first interpolates ``hidden / C`` as much data (1/2 to 1/32 for ResNets) for a slightly larger
        projection. ``architectural_cost`` keeps the architecture's order for FLOP counts.
        """
        if branch.shape[-2:] == size:
            return projection(branch)
        if atm_ops.architectural_cost_enabled() or projection.bias is not None:
            return F.interpolate(projection(branch), size=size, mode="bilinear", align_corners=False)
        return projection(F.interpolate(branch, size=size, mode="bilinear", align_corners=False))

    def _residual(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        out = x + branch
        # In place: the sum is a fresh tensor that nothing else reads (no second allocation of a map).
        return out.relu_() if self.residual_act == "relu" else out

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
