"""The correlation encoder's training pass, written out by hand, on planes laid side by side.

The encoder runs four conv + BatchNorm + ReLU layers on millions of tiny ``P x P`` planes. Three things
make the obvious implementation slow on CPU:

- The first layer (``1 -> 4``) as a dense map of a flattened plane, ``(P*P, P*P*4)``, spends 8 of 9
  products on taps beyond its kernel. Here each output row is computed from the three input rows
  around it, one ``(3 * P, P * 4)`` matrix for every row of every plane: a third of the dense map's
  products (each output reads 27 inputs, 9 of them under its kernel). Layer 1 took 4.3 against 6.5 ms
  per ResNet-18 training step in a profile with 2 threads.
- Convolution kernels handle a batch of thousands of 9x9 or 5x5 images poorly (the backward pass
  of the ``4 -> 16`` layer runs at a tenth of the speed of a large convolution). Here the planes of a
  chunk are placed side by side in the rows of a few wide images, each behind one zero column and
  between zero rows. A stride-2 convolution without padding over such a row computes exactly each
  plane's padded convolution (the zeros are its padding, shared with the neighbour), as one large
  convolution; the last layer, whose kernel covers the whole remaining plane, is a convolution with
  stride equal to its kernel. A chunk makes up to ``MAX_IMAGES`` images, a batch, rather than one:
  the kernels share a batch between threads better (layers 2 and 3's backward passes took 0.56 and
  1.03 ms per 1,024 planes in 8 images against 0.81 and 1.29 ms in one, 2 threads).
- Under autograd the four layers make about twenty temporaries the size of a whole layer (up to
  ``M x 576`` floats, 18 MB for one ResNet-18 clip), each a fresh allocation to map and zero and a
  pass over memory that has left the cache. Here every layer runs chunk by chunk and BatchNorm's batch
  statistics are merged from per-chunk moments, so normalisation, ReLU and the next convolution meet
  each chunk while it is in cache. Only the pre-BatchNorm outputs are kept; the backward pass
  recomputes the ReLU outputs and turns BatchNorm's backward into ``a * g + b * y + c`` per channel,
  gathering the sums it needs while each gradient chunk is produced.

The arithmetic is that of ``nn.BatchNorm2d`` in training mode: biased variance to normalise,
unbiased for the running average, the same momentum and ``num_batches_tracked`` rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

CHUNK_PLANES = 1024  # planes per chunk: 2.4 MB for the 16 -> 64 layer's output, about what stays in cache
MAX_IMAGES = 8  # images a chunk's planes are split over


def handles(layers: Sequence[nn.Sequential], planes: torch.Tensor, patch_size: int) -> bool:
    """Whether ``encode`` applies: CPU, float32/64, no autocast, not being compiled, BatchNorms in
    training mode and affine, and odd map sizes before both stride-2 layers (P = 9: 9 -> 5 -> 3).

    Both of its tricks answer CPU caches and kernels and were measured only there; elsewhere the
    batched autograd path runs as before.
    """
    if planes.device.type != "cpu" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if planes.dtype not in (torch.float32, torch.float64):
        return False
    device = planes.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return False
    if patch_size % 2 == 0 or _halved(patch_size) % 2 == 0:
        return False
    return all(block[0].bias is None and block[1].training and block[1].affine for block in layers)


def encode(
    planes: torch.Tensor, row_matrix: torch.Tensor, layers: Sequence[nn.Sequential], patch_size: int
) -> torch.Tensor:
    """``(M, P*P) -> (M, hidden)`` in training mode; ``row_matrix`` is layer 1 for one output row, a
    ``(3 * P, P * 4)`` matrix from the three input rows around it to ``(x, c)`` columns (built by the
    caller from the weight, so its gradient flows)."""
    bns = tuple(block[1] for block in layers)
    weights = [block[0].weight for block in layers[1:]]
    affine = [param for bn in bns for param in (bn.weight, bn.bias)]
    return _EncoderTraining.apply(planes, patch_size, bns, row_matrix, *weights, *affine)


def _halved(size: int) -> int:
    """Output size of a 3x3, stride-2, padding-1 convolution."""
    return (size + 1) // 2


class _Moments:
    """Per-channel count, mean and sum of squared deviations of a layer's output, gathered chunk by chunk
    and merged once at the end (in float64: the variance of the column means plus their mean variance)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.means: list[torch.Tensor] = []
        self.variances: list[torch.Tensor] = []
        self.rows: list[int] = []

    def add(self, rows: torch.Tensor) -> None:
        """Add the moments of ``rows`` ``(N, k * C)``: channel ``c`` in columns ``c, C + c, ...`` (the
        positions of a row when ``k`` > 1, where ``C`` is too small to vectorise)."""
        if rows.shape[1] < 64 and rows.is_contiguous():
            # Narrow rows vectorise poorly (90 against 38 us for a chunk of layer 2, 16 channels): read
            # rows of several positions instead.
            rows = rows.view(-1, _positions_per_row(rows.shape[0]) * rows.shape[1])
        mean, var = torch.batch_norm_update_stats(rows, None, None, 0.0)
        self.means.append(mean.view(-1, self.channels))
        self.variances.append(var.view(-1, self.channels))
        self.rows.extend([rows.shape[0]] * self.means[-1].shape[0])

    def finish(self, bn: nn.BatchNorm2d, dtype: torch.dtype) -> _Layer:
        """The layer's batch statistics; updates ``bn``'s running statistics as its forward would."""
        means = torch.cat(self.means).double()  # (columns, C)
        variances = torch.cat(self.variances).double()
        weights = means.new_tensor(self.rows).unsqueeze(1)  # values per column
        count = sum(self.rows)
        mean = (means * weights).sum(0) / count
        squares = ((variances + (means - mean).square()) * weights).sum(0)
        if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
            factor = 0.0 if bn.momentum is None else bn.momentum
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
                if bn.momentum is None:  # cumulative moving average
                    factor = 1.0 / float(bn.num_batches_tracked)
            unbiased = squares / max(count - 1, 1)
            bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
        invstd = torch.rsqrt(squares / count + bn.eps)
        return _Layer(mean.to(dtype), invstd.to(dtype), bn, count)


class _Layer:
    """One BatchNorm's batch statistics and what its forward and backward need of them."""

    def __init__(self, mean: torch.Tensor, invstd: torch.Tensor, bn: nn.BatchNorm2d, count: int) -> None:
        self.mean, self.invstd, self.count = mean, invstd, count
        self._repeated: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.weight = bn.weight.detach()
        self.scale = self.weight * invstd
        self.shift = bn.bias.detach() - mean * self.scale

    def tiled(self, repeats: int) -> _Layer:
        """The same layer for tensors whose last axis holds ``repeats`` positions of every channel."""
        tiled = object.__new__(_Layer)
        tiled.count, tiled._repeated = self.count, {}
        for name in ("mean", "invstd", "weight", "scale", "shift"):
            setattr(tiled, name, getattr(self, name).repeat(repeats))
        return tiled

    def normalize_relu(self, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``relu(bn(y))`` with batch statistics, channels on the last axis of ``y``; written into ``out``."""
        # One pass for the affine part, one for the ReLU.
        return torch.addcmul(self.shift, y, self.scale, out=out).relu_()

    def repeated(self, repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, invstd)`` for rows of ``repeats`` positions of every channel (kept for the next call)."""
        if repeats not in self._repeated:
            self._repeated[repeats] = (self.mean.repeat(repeats), self.invstd.repeat(repeats))
        return self._repeated[repeats]

    def input_gradient(self, sum_g: torch.Tensor, sum_g_xhat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """From ``sum(g)`` and ``sum(g * xhat)`` over the batch (``xhat`` the normalised input): ``(a, b,
        c)`` with ``dy = a*g + b*y + c``, and the gradients of the BatchNorm's weight and bias."""
        a = self.weight * self.invstd
        b = -a * self.invstd * sum_g_xhat / self.count
        c = -a * sum_g / self.count - b * self.mean
        return a, b, c, sum_g_xhat, sum_g


class _Buffers:
    """Tensors that every chunk writes afresh, allocated once per training step and shared by its forward
    and backward passes: a fresh tensor of a few MB is memory the kernel maps and zeroes again on first
    touch (page faults), once per chunk."""

    def __init__(self) -> None:
        self.tensors: dict[tuple[object, ...], torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int], like: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The tensor ``name`` of ``shape`` (``like``'s dtype and device), and whether it is new (unset)."""
        key = (name, *shape)
        tensor = self.tensors.get(key)
        if tensor is not None:
            return tensor, False
        tensor = self.tensors[key] = like.new_empty(tuple(shape))
        return tensor, True


def _images(count: int) -> int:
    """How many images ``count`` planes are split over: the largest divisor of ``count`` up to
    ``MAX_IMAGES``, so that every image holds as many planes."""
    return next(images for images in range(min(MAX_IMAGES, count), 0, -1) if count % images == 0)


def _row_grid(
    count: int, size: int, channels: int, like: torch.Tensor, buffers: _Buffers
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(B, C, size + 2, per_image * (size + 1) + 1)`` channels-last batch of images for ``count``
    planes, ``B = _images(count)``, zero but for the plane interiors (whatever the last chunk left, or
    unset), and the view of those interiors as ``(B, size, per_image, size, C)``: image, row, plane,
    column, channel."""
    images = _images(count)
    per_image = count // images
    rows, new = buffers.get("grid", (images, size + 2, per_image * (size + 1) + 1, channels), like)
    if new:  # only the zero rows and columns: the caller writes every cell, every chunk
        rows[:, 0].zero_()
        rows[:, -1].zero_()
        rows[:, 1:-1, :: size + 1].zero_()
    cells = rows[:, 1 : size + 1, : per_image * (size + 1)].unflatten(2, (per_image, size + 1))[:, :, :, 1:]
    return _as_image(rows), cells


def _as_image(rows: torch.Tensor) -> torch.Tensor:
    """A contiguous ``(B, H, W, C)`` tensor as a ``(B, C, H, W)`` channels-last batch of images.

    The strides must be the canonical ones (batch stride ``H * W * C``): convolution kernels copy
    anything else into plain NCHW first, inputs and gradients alike.
    """
    return rows.permute(0, 3, 1, 2)


def _channels_last_rows(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` as ``(B, H, W, C)`` (a view when ``x`` is channels-last)."""
    return x.permute(0, 2, 3, 1)


def _masked_sums(
    g: torch.Tensor, relu_out: torch.Tensor, y: torch.Tensor, layer: _Layer, sums: list[torch.Tensor]
) -> torch.Tensor:
    """``g * (relu_out > 0)``, adding its ``sum`` and ``sum(* xhat)`` per channel (last axis) to ``sums``,
    ``xhat`` the normalised ``y`` of ``layer``.

    In place when ``g`` (always a fresh gradient) is contiguous; a view with gaps (the cells of an image)
    gets a contiguous result instead, which the next layer's backward then reads as rows without a copy.
    """
    g = _relu_backward(g, relu_out, out=g if g.is_contiguous() else None)
    channels = g.shape[-1]
    # Rows of up to 8 positions: a reduction that keeps only 4 or 16 values on the innermost axis
    # vectorises poorly. The native kernel reads g and y once, with no g * y in memory (41 against
    # 116 us for a chunk of layer 3, 2 threads).
    positions = _positions_per_row(g.numel() // channels)
    mean, invstd = layer.repeated(positions)
    _, sum_g_xhat, sum_g = torch.ops.aten.native_batch_norm_backward(
        g.reshape(-1, positions * channels), y.reshape(-1, positions * channels), None, None, None,
        mean, invstd, True, 0.0, [False, True, True],
    )  # fmt: skip
    sums[0] += sum_g.view(positions, channels).sum(0)
    sums[1] += sum_g_xhat.view(positions, channels).sum(0)
    return g


def _positions_per_row(count: int) -> int:
    """How many positions of ``count`` to read as one row in per-channel reductions: the largest of
    8, 4, 2, 1 that divides ``count``."""
    return next(positions for positions in (8, 4, 2, 1) if count % positions == 0)


def _relu_backward(g: torch.Tensor, relu_out: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``g`` where ``relu_out > 0``, else 0: one pass (``g * (relu_out > 0)`` makes a boolean mask, then,
    on CPU, a float copy of it before the product)."""
    if out is None:
        return torch.ops.aten.threshold_backward(g, relu_out, 0)
    return torch.ops.aten.threshold_backward.grad_input(g, relu_out, 0, grad_input=out)


class _EncoderTraining(torch.autograd.Function):
    """Forward and backward of the four encoder layers in training mode (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        planes: torch.Tensor,
        patch_size: int,
        bns: tuple[nn.BatchNorm2d, ...],
        row_matrix: torch.Tensor,
        second_weight: torch.Tensor,
        third_weight: torch.Tensor,
        last_weight: torch.Tensor,
        *affine: torch.Tensor,
    ) -> torch.Tensor:
        """``(M, P*P)`` planes -> ``(M, hidden)`` codes."""
        total, dtype = planes.shape[0], planes.dtype
        sizes = (patch_size, _halved(patch_size), _halved(_halved(patch_size)))
        channels = [bn.num_features for bn in bns]
        spans = [(start, min(start + CHUNK_PLANES, total)) for start in range(0, total, CHUNK_PLANES)]

        buffers = _Buffers()
        first_out, moments = [], _Moments(channels[0])
        for start, end in spans:
            # Each output row from the 3 input rows around it: a third of the products of the dense
            # (P*P, P*P*4) map, whose zeros for taps beyond the kernel were 8 in 9 of its work.
            windows = _row_windows(planes[start:end], patch_size, buffers)
            y = (windows.flatten(0, 2) @ row_matrix).view(*windows.shape[:3], -1)  # (B, P, per, P * C)
            moments.add(y.view(end - start, -1))
            first_out.append(y)
        layer1 = moments.finish(bns[0], dtype)
        wide1 = layer1.tiled(sizes[0])  # layer 1's maps are used as (..., P * C): x and c on one axis

        second_out, layer2 = _stride_two_layer(
            first_out, lambda y: _second_input(wide1, y, sizes, channels, buffers), second_weight, bns[1]
        )
        third_out, layer3 = _stride_two_layer(
            second_out, lambda y: _third_input(layer2, y, sizes, channels, buffers), third_weight, bns[2]
        )

        last = [
            _channels_last_rows(F.conv2d(_third_relu(layer3, y), last_weight, stride=sizes[2])).reshape(
                -1, last_weight.shape[0]
            )
            for y in third_out
        ]
        last_out = torch.cat(last)  # (M, hidden)
        moments = _Moments(channels[3])
        moments.add(last_out)
        layer4 = moments.finish(bns[3], dtype)

        ctx.save_for_backward(planes, row_matrix, second_weight, third_weight, last_weight, last_out)
        ctx.outputs = (first_out, second_out, third_out)
        ctx.layers = (layer1, wide1, layer2, layer3, layer4)
        ctx.buffers = buffers
        ctx.sizes, ctx.channels, ctx.eps = sizes, channels, bns[3].eps
        return layer4.normalize_relu(last_out)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Gradients of the planes, the four weights and the four BatchNorms' weights and biases."""
        planes, row_matrix, second_weight, third_weight, last_weight, last_out = ctx.saved_tensors
        first_out, second_out, third_out = ctx.outputs
        layer1, wide1, layer2, layer3, layer4 = ctx.layers
        sizes, channels, buffers = ctx.sizes, ctx.channels, ctx.buffers

        # Layer 4 is small ((M, hidden)): mask the ReLU and let the native kernel do its BatchNorm.
        grad_last, weight4, bias4 = torch.ops.aten.native_batch_norm_backward(
            _relu_backward(grad, layer4.normalize_relu(last_out)), last_out, layer4.weight, None, None,
            layer4.mean, layer4.invstd, True, ctx.eps, [True, True, True],
        )  # fmt: skip

        # Layer 4's convolution; the masked gradient of layer 3's output and its BatchNorm sums.
        last_grad = torch.zeros_like(last_weight)
        masked3, sums3, start = [], _zero_sums(layer3), 0
        for y in third_out:
            images, per_image = y.shape[0], y.shape[-1] // sizes[2]
            count = images * per_image
            relu_out = _third_relu(layer3, y)
            g_out = grad_last[start : start + count].view(images, 1, per_image, -1).permute(0, 3, 1, 2)
            grad_in, grad_w, _ = _conv_backward(g_out, relu_out, last_weight, sizes[2])
            last_grad += grad_w
            rows = (_channels_last_rows(t) for t in (grad_in, relu_out, y))
            masked3.append(_masked_sums(*rows, layer3, sums3))
            start += count

        def backward_through(outputs, inputs, masked, layer, sums, weight, make_input, next_layer):
            a, b, c, weight_grad_bn, bias_grad_bn = layer.input_gradient(*sums)
            weight_grad = torch.zeros_like(weight)
            next_masked, next_sums = [], None
            for y, y_in, g in zip(outputs, inputs, masked, strict=True):
                rows = _channels_last_rows(y)
                g = g.reshape(rows.shape)
                grad_y = torch.addcmul(c, g, a, out=g).addcmul_(rows, b)  # g is not needed again
                grid, relu_cells, y_in_cells = make_input(y_in)
                grad_in, grad_w, _ = _conv_backward(_as_image(grad_y), grid, weight, 2)
                weight_grad += grad_w
                if next_sums is None:
                    next_sums = [relu_cells.new_zeros(relu_cells.shape[-1]) for _ in range(2)]
                # The gradient of the input image, without its zeros, in the layout of relu_cells.
                grad_cells = _unpad_cells(_channels_last_rows(grad_in)[:, 1:-1, :-1], relu_cells.shape[2])
                grad_cells = grad_cells.reshape(relu_cells.shape)
                next_masked.append(_masked_sums(grad_cells, relu_cells, y_in_cells, next_layer, next_sums))
            return weight_grad, weight_grad_bn, bias_grad_bn, next_masked, next_sums

        grad_w3, weight3, bias3, masked2, sums2 = backward_through(
            third_out, second_out, masked3, layer3, sums3, third_weight,
            lambda y_in: _third_input(layer2, y_in, sizes, channels, buffers), layer2,
        )  # fmt: skip
        grad_w2, weight2, bias2, masked1, sums1 = backward_through(
            second_out, first_out, masked2, layer2, sums2, second_weight,
            lambda y_in: _second_input(wide1, y_in, sizes, channels, buffers), wide1,
        )  # fmt: skip

        folded = [total.view(sizes[0], -1).sum(0) for total in sums1]  # (P * C,) -> (C,)
        a, b, c, weight1, bias1 = layer1.input_gradient(*folded)
        a, b, c = (t.repeat(sizes[0]) for t in (a, b, c))
        first_grad = torch.zeros_like(row_matrix)
        grad_planes = torch.empty_like(planes) if ctx.needs_input_grad[0] else None
        size = sizes[0]
        start = 0
        for y, g in zip(first_out, masked1, strict=True):
            images, _, per_image, _ = y.shape
            count = images * per_image
            g = g.view_as(y)
            grad_cells = torch.addcmul(c, g, a, out=g).addcmul_(y, b)  # g is not needed again
            grad_rows = grad_cells.view(-1, grad_cells.shape[-1])  # one row per output row, (x, c)
            windows = _row_windows(planes[start : start + count], size, buffers)
            first_grad.addmm_(windows.flatten(0, 2).t(), grad_rows)
            if grad_planes is not None:
                # Each output row's gradient for its 3 input rows, added up per input row.
                by_row = (grad_rows @ row_matrix.t()).view(images, size, per_image, 3, size).transpose(1, 2)
                target = grad_planes[start : start + count].view(images, per_image, size, size)
                target.copy_(by_row[:, :, :, 1])
                target[:, :, :-1] += by_row[:, :, 1:, 0]
                target[:, :, 1:] += by_row[:, :, :-1, 2]
            start += count

        return (
            grad_planes, None, None, first_grad, grad_w2, grad_w3, last_grad,
            weight1, bias1, weight2, bias2, weight3, bias3, weight4, bias4,
        )  # fmt: skip


def _stride_two_layer(
    inputs: list[torch.Tensor],
    make_input: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    weight: torch.Tensor,
    bn: nn.BatchNorm2d,
) -> tuple[list[torch.Tensor], _Layer]:
    """Layer 2 or 3 forward: every chunk's input images through the unpadded stride-2 convolution, and
    the BatchNorm statistics of all the outputs (pre-BatchNorm outputs, channels-last)."""
    outputs, moments = [], _Moments(bn.num_features)
    for y in inputs:
        images, _, _ = make_input(y)
        outputs.append(F.conv2d(images, weight, stride=2))
        moments.add(_channels_last_rows(outputs[-1]).reshape(-1, weight.shape[0]))
    return outputs, moments.finish(bn, weight.dtype)


def _second_input(
    wide1: _Layer, y: torch.Tensor, sizes: tuple[int, ...], channels: list[int], buffers: _Buffers
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer 2's input images for a chunk of layer 1 outputs ``y`` ``(B, P, per_image, P * C)``, their
    ReLU cells (a view into the images, same shape) and ``y``."""
    grid, cells = _row_grid(y.shape[0] * y.shape[2], sizes[0], channels[0], y, buffers)
    return grid, wide1.normalize_relu(y, out=cells.flatten(3)), y


def _third_input(
    layer2: _Layer, y: torch.Tensor, sizes: tuple[int, ...], channels: list[int], buffers: _Buffers
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer 3's input images for a chunk of layer 2 outputs ``y`` ``(B, C, s, per_image * s)``, their
    ReLU cells ``(B, s, per_image, s, C)`` (a view into the images) and ``y`` in the same layout."""
    per_image = y.shape[-1] // sizes[1]
    grid, cells = _row_grid(y.shape[0] * per_image, sizes[1], channels[1], y, buffers)
    y_cells = _cells(y, per_image)
    return grid, layer2.normalize_relu(y_cells, out=cells), y_cells


def _row_windows(planes: torch.Tensor, size: int, buffers: _Buffers) -> torch.Tensor:
    """The input of every output row of layer 1: that row of its plane with the rows above and below it
    (zeros beyond the plane), ``(B, P, per_image, 3 * P)`` for ``(count, P * P)`` planes, ``B =
    _images(count)``: image, row, plane, then the ``3 * P`` values, the order of layer 2's images."""
    count = planes.shape[0]
    padded, new = buffers.get("padded_planes", (count, (size + 2) * size), planes)
    if new:  # a zero row above and below every plane, written once
        padded[:, :size].zero_()
        padded[:, -size:].zero_()
    padded[:, size:-size] = planes
    images = _images(count)
    per_image = count // images
    windows, _ = buffers.get("row_windows", (images, size, per_image, 3 * size), planes)
    plane_stride = padded.shape[1]
    return windows.copy_(padded.as_strided(windows.shape, (per_image * plane_stride, size, plane_stride, 1)))


def _unpad_cells(rows: torch.Tensor, per_image: int) -> torch.Tensor:
    """The ``(B, s, per_image * (s + 1), C)`` rows of a grid without its zero rows, as
    ``(B, s, per_image, s, C)`` cells: every cell without its leading zero column (a view)."""
    return rows.unflatten(2, (per_image, -1))[:, :, :, 1:]


def _cells(y: torch.Tensor, per_image: int) -> torch.Tensor:
    """``(B, C, s, per_image * s)`` rows of outputs as ``(B, s, per_image, s, C)`` (a view)."""
    return _channels_last_rows(y).unflatten(2, (per_image, -1))


def _third_relu(layer3: _Layer, y: torch.Tensor) -> torch.Tensor:
    """Layer 3's ReLU output, same layout as its pre-BatchNorm output ``y`` (the input of layer 4)."""
    return _as_image(layer3.normalize_relu(_channels_last_rows(y)))


def _conv_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Input and weight gradients of an unpadded ``conv2d(x, weight, stride=stride)``."""
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [stride, stride], [0, 0], [1, 1], False, [0, 0], 1, [True, True, False]
    )


def _zero_sums(layer: _Layer) -> list[torch.Tensor]:
    """Fresh ``[sum(g), sum(g * y)]`` accumulators for one BatchNorm."""
    return [torch.zeros_like(layer.mean), torch.zeros_like(layer.mean)]
