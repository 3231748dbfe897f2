"""Parameter-free operations of the Arithmetic Temporal Module: context spanning and the four operations.

Shapes follow one convention: a clip of frame features is ``(B, T, C, H, W)``; spanning a context
adds a pair axis, ``(B, T, Z', C, H, W)``, where ``Z'`` is the number of (anchor, context) pairs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

OPERATIONS: tuple[str, ...] = ("add", "sub", "mul", "div", "context")

_architectural_cost = False


@contextlib.contextmanager
def architectural_cost() -> Iterator[None]:
    """Run the operations in their textbook form, so a FLOP counter sees the architecture's cost.

    The fast kernels do extra multiply-adds (e.g. the correlation compares whole rows); inside this
    context every op computes exactly the multiply-adds its definition needs, as matrix products a
    ``FlopCounterMode`` counts. Meant for counting on the ``meta`` device, where nothing runs.
    """
    global _architectural_cost
    previous, _architectural_cost = _architectural_cost, True
    try:
        yield
    finally:
        _architectural_cost = previous


def architectural_cost_enabled() -> bool:
    """Whether ``architectural_cost()`` is active."""
    return _architectural_cost


def context_offsets(context: int, include_self: bool | None = None) -> list[int]:
    """Frame offsets ``k`` paired with every anchor frame ``t`` (context frame ``t + k``).

    ``context`` is the paper's context range Z: the previous ``Z // 2`` and the next ``Z - Z // 2``
    frames, so Z=1 is the next frame, Z=2 is ``{-1, +1}``, Z=4 is ``{-2, -1, +1, +2}``, and an odd Z
    takes one more future frame than past ones. ``include_self`` adds ``k = 0`` (the anchor with
    itself); ``None`` chooses what the authors' code does: the self pair for Z >= 2, none for Z = 1.
    """
    if context < 1:
        raise ValueError(f"context range Z must be >= 1, got {context}")
    if include_self is None:
        include_self = context >= 2
    before, after = context // 2, context - context // 2
    offsets = list(range(-before, 0))
    if include_self:
        offsets.append(0)
    offsets.extend(range(1, after + 1))
    return offsets


def span_context(clip: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
    """Context frames of every anchor: ``(B, T, C, H, W) -> (B, T, len(offsets), C, H, W)``.

    ``out[:, t, i] = clip[:, t + offsets[i]]``; frames outside the clip are zeros (zero padding in time).
    """
    if clip.ndim != 5:
        raise ValueError(f"expected frame features (B, T, C, H, W), got shape {tuple(clip.shape)}")
    if not offsets:
        raise ValueError("offsets must not be empty")
    pad = max(abs(k) for k in offsets)
    frames = clip.shape[1]
    padded = F.pad(clip.movedim(1, -1), (pad, pad))  # (B, C, H, W, T + 2 pad)
    windows = padded.unfold(-1, frames, 1)  # (B, C, H, W, 2 pad + 1, T): a view, no copy
    index = torch.tensor([k + pad for k in offsets], device=clip.device)
    picked = windows.index_select(-2, index)  # (B, C, H, W, Z', T)
    return picked.permute(0, 5, 4, 1, 2, 3)


def add(anchor: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Addition cue ``anchor + context``, point-wise."""
    return anchor + context


def sub(anchor: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Subtraction cue ``context - anchor``, point-wise (the change from the anchor to its context)."""
    return context - anchor


def div(anchor: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Division cue ``log(|context| + 1) - log(|anchor| + 1)``: the paper's log-ratio, safe for any sign."""
    return torch.log1p(context.abs()) - torch.log1p(anchor.abs())


def context_features(anchor: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """No operation: the context frame's features themselves (the "context features" ablation)."""
    return context.expand(torch.broadcast_shapes(anchor.shape, context.shape))


def l2_normalize_channels(x: torch.Tensor, eps: float = 1e-6, dim: int = -3) -> torch.Tensor:
    """Scale every feature vector along ``dim`` to unit L2 norm: ``x / sqrt(sum(x^2) + eps)``."""
    return x * torch.rsqrt(x.pow(2).sum(dim=dim, keepdim=True) + eps)


def local_correlation(a: torch.Tensor, b: torch.Tensor, patch_size: int = 9) -> torch.Tensor:
    """Dot products of ``a`` with ``b`` over P x P neighbourhoods: ``(..., C, H, W) -> (..., P, P, H, W)``.

    ``out[..., u, v, y, x] = <a[..., :, y, x], b[..., :, y + u - k, x + v - k]>`` with ``k = P // 2``;
    neighbours outside the map contribute 0. This is the layout of the ``spatial_correlation_sampler``
    package. Only the ``P * P`` displacements are computed, never the ``(HW x HW)`` matrix: one batched
    matrix product compares every row of ``a`` (in blocks of a few columns) with the ``P`` rows of ``b``
    around it, read in place through an overlapping strided view (no per-shift copies, no loop), and the
    diagonal band of the result is the output (see ``_BandCorrelation``).

    The result is a permuted view of a contiguous ``(..., H, W, P, P)`` tensor: the correlation encoder
    reads each position's ``P x P`` plane without another copy.
    """
    if a.shape != b.shape:
        raise ValueError(f"local_correlation needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd number, got {patch_size}")
    if _architectural_cost:
        return _local_correlation_by_shifts(a, b, patch_size)
    *lead, channels, height, width = a.shape
    n = math.prod(lead)
    # Channels last, the layout the products read: one transposing copy of each input here, rather than
    # strided gathers chunk by chunk inside.
    out = _BandCorrelation.apply(
        a.movedim(-3, -1).reshape(n, height, width, channels),
        b.movedim(-3, -1).reshape(n, height, width, channels),
        patch_size,
    )  # (n, H, W, P, P)
    return out.permute(0, 3, 4, 1, 2).reshape(*lead, patch_size, patch_size, height, width)


def _column_blocks(width: int, patch_size: int) -> tuple[int, int]:
    """``(blocks, block_width)`` for ``_BandCorrelation``: blocks about ``max(P - 1, 8)`` columns wide.

    Each block of ``wb`` output columns needs ``wb + P - 1`` columns of ``b``, so the matrix product does
    ``(wb + P - 1) / P`` times the necessary work: narrow blocks waste less, but very narrow ones make
    matrix products too small to run fast. ``P - 1`` (8 for P = 9) measured best on CPU.
    """
    target = max(patch_size - 1, 8)
    blocks = max(1, math.ceil(width / target))
    return blocks, math.ceil(width / blocks)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the products run in: the autocast dtype when autocast is on, else the inputs' common one."""
    device = tensors[0].device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.result_type(*tensors)


def _band(scores: torch.Tensor, n: int, height: int, blocks: int, patch_size: int) -> torch.Tensor:
    """The diagonal band of ``scores`` as ``(n, H, blocks, wb, P, P)``: a strided view, no copy.

    ``scores[r, x, u * (wb + P - 1) + x + v]`` compares column ``x`` of a-row ``r`` with displacement
    ``(u, v)``; a-row ``r = (sample * blocks + block) * (H + k) + y``.
    """
    rows_per_unit = height + patch_size // 2
    _, block_width, length = scores.shape
    s0, s1, _ = scores.stride()
    return scores.as_strided(
        (n, height, blocks, block_width, patch_size, patch_size),
        (blocks * rows_per_unit * s0, s0, rows_per_unit * s0, s1 + 1, length // patch_size, 1),
    )


class _BandCorrelation(torch.autograd.Function):
    """``local_correlation`` of ``(n, H, W, C)`` maps, ``(n, H, W, P, P)`` out, as batched products.

    Layout (channels last, ``k = P // 2``): the columns are cut into ``blocks`` of ``wb``; a "unit" is one
    block of one sample. ``a_rows`` holds every unit's ``H`` rows followed by ``k`` zero rows,
    ``b_rows`` every unit's ``k`` zero rows followed by its ``H`` rows, each ``wb + 2k`` columns wide
    (the block and ``k`` neighbours either side). Units follow each other with the same ``H + k`` row
    pitch, so a-row ``r`` meets b-rows ``r .. r + P - 1``: the rows it needs, with the zero rows of the
    same or the next unit standing in for the neighbours beyond the top and bottom edges. Those ``P``
    rows are contiguous in memory, so one overlapping ``as_strided`` view gives every a-row its
    ``(P * (wb + 2k), C)`` window and a single ``bmm`` computes all products; the output is the band
    ``x' = x + v`` of each ``(wb, P * (wb + 2k))`` result. The backward pass uses the same two tricks:
    ``grad_a`` is the band scattered into zeros times the same windows; ``grad_b`` gathers, for every
    b-row, the ``P`` a-rows that read it (again one overlapping window) against the scattered gradient.

    The maps go through in chunks of about 1 MiB of products (``_chunks``, CPU only): the row layouts, the
    products and the scattered gradients of one chunk stay in cache and are never allocated at the
    size of the whole batch. Only the inputs are saved; the backward pass rebuilds the row layouts.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, patch_size: int) -> torch.Tensor:
        """``(n, H, W, C)`` maps -> ``(n, H, W, P, P)`` correlation."""
        n, height, width, channels = a.shape
        blocks, block_width = _column_blocks(width, patch_size)
        padded_width = blocks * block_width
        ctx.input_dtypes = (a.dtype, b.dtype)
        dtype = _compute_dtype(a, b)
        a, b = a.to(dtype), b.to(dtype)
        out = a.new_empty(n, height, padded_width, patch_size, patch_size)
        scratch = _Scratch(a)
        for start, end in _chunks(n, height, blocks, block_width, patch_size, a.device):
            a_store, b_rows = _row_layouts(
                a[start:end], b[start:end], blocks, block_width, patch_size, scratch
            )
            count, rows = end - start, _product_rows(end - start, height, blocks, patch_size)
            rows_a = a_store[patch_size - 1 : patch_size - 1 + rows]
            windows = _windows(b_rows, rows, patch_size).transpose(1, 2)
            scores = torch.bmm(
                rows_a, windows, out=scratch.take("scores", (rows, block_width, windows.shape[2]))
            )
            band = _band(scores, count, height, blocks, patch_size)
            out[start:end].view(band.shape).copy_(band)
        if padded_width != width:
            out = out[:, :, :width].contiguous()
        ctx.save_for_backward(a, b)
        ctx.patch_size = patch_size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        """Gradients of both maps from the gradient of the correlation."""
        a, b = ctx.saved_tensors
        patch_size = ctx.patch_size
        n, height, width, channels = a.shape
        k = patch_size // 2
        blocks, block_width = _column_blocks(width, patch_size)
        padded_width = blocks * block_width
        window_width = block_width + 2 * k
        rows_per_unit = height + k
        grad = grad.to(a.dtype)
        if padded_width != width:
            grad = F.pad(grad, (0, 0, 0, 0, 0, padded_width - width))
        grad = grad.view(n, height, blocks, block_width, patch_size, patch_size)
        needs_a, needs_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_a = a.new_empty(n, height, width, channels) if needs_a else None
        grad_b = b.new_empty(n, height, width, channels) if needs_b else None
        scratch = _Scratch(a)
        for start, end in _chunks(n, height, blocks, block_width, patch_size, a.device):
            count = end - start
            a_store, b_rows = _row_layouts(
                a[start:end], b[start:end], blocks, block_width, patch_size, scratch
            )
            chunk_grad = grad[start:end]
            unit_rows = count * blocks * rows_per_unit
            if grad_a is not None:
                rows = _product_rows(count, height, blocks, patch_size)
                spread = scratch.take("spread", (rows, block_width, patch_size * window_width), zero=True)
                _band(spread, count, height, blocks, patch_size).copy_(chunk_grad)
                # Room for every unit's rows (the last unit's k zero rows get no products, and are not read).
                grad_rows = scratch.take("grad", (unit_rows, block_width, channels))
                torch.bmm(spread, _windows(b_rows, rows, patch_size), out=grad_rows[:rows])
                by_unit = grad_rows.view(count, blocks, rows_per_unit, block_width, channels)[:, :, :height]
                if padded_width == width:
                    grad_a[start:end].view(count, height, blocks, block_width, channels).copy_(
                        by_unit.transpose(1, 2)
                    )
                else:
                    grad_a[start:end] = by_unit.transpose(1, 2).reshape(count, height, -1, channels)[
                        :, :, :width
                    ]
            if grad_b is not None:
                # b-row rho, column t: sum over (u, x) of grad[a-row rho - u, x, u, t - x] * a[rho - u, x].
                # Scatter the gradient into (rho, P - 1 - u, x, t) so that, for every rho, the P a-rows
                # rho - P + 1 .. rho form one contiguous window of a (after P - 1 leading zero rows); t
                # last, so that the scatter writes runs of P values.
                rows = unit_rows + k  # the last unit's bottom neighbours spill k rows past it
                spread = scratch.take("spread", (rows, patch_size, block_width, window_width), zero=True)
                t0, t1, t2, t3 = spread.stride()
                spread.as_strided(
                    chunk_grad.shape,
                    (blocks * rows_per_unit * t0, t0, rows_per_unit * t0, t2 + t3, t0 - t1, t3),
                    (patch_size - 1) * t1,
                ).copy_(chunk_grad)
                grad_units = torch.bmm(
                    spread.view(rows, -1, window_width).transpose(1, 2),
                    _windows(a_store, rows, patch_size),
                    out=scratch.take("grad", (rows, window_width, channels)),
                )
                grad_units = grad_units[:unit_rows]
                grad_units = grad_units.view(count, blocks, rows_per_unit, window_width, channels)[:, :, k:]
                grad_b[start:end] = _overlap_add_columns(grad_units, block_width)[:, :, k : k + width]
        if grad_a is not None:
            grad_a = grad_a.to(ctx.input_dtypes[0])
        if grad_b is not None:
            grad_b = grad_b.to(ctx.input_dtypes[1])
        return grad_a, grad_b, None


# Products per chunk of maps: about a core's L2 cache (1 MiB measured best of 256 KiB to 8 MiB).
_CHUNK_BYTES = 1 << 20


def _chunks(
    n: int, height: int, blocks: int, block_width: int, patch_size: int, device: torch.device
) -> list[tuple[int, int]]:
    """``(start, end)`` ranges of maps whose products take about ``_CHUNK_BYTES`` (at least one map).

    Chunks are for CPU caches. One range elsewhere (a GPU wants large kernels), and while
    ``torch.compile``, ``torch.export`` or ``torch.jit.trace`` traces: a loop over ``n`` would fix the
    graph's batch size.
    """
    if device.type != "cpu" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return [(0, n)]
    window = patch_size * (block_width + 2 * (patch_size // 2))
    per_map = blocks * (height + patch_size // 2) * block_width * window * 4
    step = max(1, _CHUNK_BYTES // per_map)
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def _product_rows(count: int, height: int, blocks: int, patch_size: int) -> int:
    """a-rows that need products: every unit's rows but the last unit's ``k`` zero rows."""
    return count * blocks * (height + patch_size // 2) - patch_size // 2


class _Scratch:
    """Buffers reused by every chunk of one call: the chunks' temporaries are allocated once, not
    once per chunk (each fresh allocation of this size is memory the kernel maps and zeroes again).

    While ``torch.compile`` traces, every ``take`` is a fresh tensor: the compiler cannot functionalise
    writes through an ``as_strided`` view of a view of a buffer, and plans memory itself.
    """

    def __init__(self, like: torch.Tensor) -> None:
        self.like = like
        self.buffers: dict[str, torch.Tensor] = {}
        self.reuse = not torch.compiler.is_compiling()

    def take(self, name: str, shape: tuple[int, ...], zero: bool = False) -> torch.Tensor:
        """A contiguous ``shape`` view of buffer ``name`` (grown when too small), zeroed if asked."""
        if not self.reuse:
            return self.like.new_zeros(shape) if zero else self.like.new_empty(shape)
        numel = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < numel:
            buffer = self.buffers[name] = self.like.new_empty(numel)
        view = buffer[:numel].view(shape)
        return view.zero_() if zero else view


def _row_layouts(
    a: torch.Tensor, b: torch.Tensor, blocks: int, block_width: int, patch_size: int, scratch: _Scratch
) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` ``(n, H, W, C)`` in the row layouts of ``_BandCorrelation``.

    ``a_store`` has ``P - 1`` zero rows before the units and ``k`` after them, so that the backward
    pass can read windows of ``P`` rows ending at every row in place; only those and the ``k`` zero rows
    of each unit are cleared.
    """
    n, height, width, channels = a.shape
    k = patch_size // 2
    padded_width = blocks * block_width
    if padded_width != width:
        a, b = F.pad(a, (0, 0, 0, padded_width - width)), F.pad(b, (0, 0, 0, padded_width - width))
    rows_per_unit = height + k
    units = n * blocks * rows_per_unit
    a_store = scratch.take("a_rows", (patch_size - 1 + units + k, block_width, channels))
    a_store[: patch_size - 1].zero_()
    a_store[patch_size - 1 + units :].zero_()
    a_units = a_store[patch_size - 1 : patch_size - 1 + units].view(
        n, blocks, rows_per_unit, block_width, channels
    )
    a_units[:, :, :height] = a.view(n, height, blocks, block_width, channels).transpose(1, 2)
    a_units[:, :, height:].zero_()
    b_rows = scratch.take("b_rows", (units + k + 1, block_width + 2 * k, channels))
    return a_store, _block_rows(b, blocks, block_width, k, b_rows)


def _block_rows(b: torch.Tensor, blocks: int, block_width: int, k: int, b_rows: torch.Tensor) -> torch.Tensor:
    """``b`` ``(n, H, blocks * wb, C)`` as the b-rows of ``_BandCorrelation``: ``(units * (H + k) + k + 1,
    wb + 2k, C)``.

    Every unit is ``k`` zero rows, then the block's ``H`` rows with ``k`` neighbour columns either side
    (zeros beyond the map); ``k + 1`` zero rows close the store (the last unit's bottom neighbours and
    the end of the last window). Written into ``b_rows`` in a few strided copies; only the zero parts
    are cleared.
    """
    n, height, _, channels = b.shape
    rows_per_unit = height + k
    units = n * blocks * rows_per_unit
    b_rows[units:].zero_()
    b_units = b_rows[:units].view(n, blocks, rows_per_unit, block_width + 2 * k, channels)
    b_units[:, :, :k].zero_()
    body = b_units[:, :, k:]  # (n, blocks, H, wb + 2k, C)
    if block_width < k:  # neighbours reach past the next block: cut them from a padded copy
        padded = F.pad(b, (0, 0, k, k))
        body.copy_(padded.unfold(2, block_width + 2 * k, block_width).permute(0, 2, 1, 4, 3))
        return b_rows
    by_block = b.view(n, height, blocks, block_width, channels).transpose(1, 2)  # (n, blocks, H, wb, C)
    body[:, :, :, k : k + block_width] = by_block
    body[:, 1:, :, :k] = by_block[:, :-1, :, block_width - k :]  # left neighbours: end of the block before
    body[:, :1, :, :k].zero_()
    body[:, :-1, :, k + block_width :] = by_block[:, 1:, :, :k]  # right neighbours: start of the next one
    body[:, -1:, :, k + block_width :].zero_()
    return b_rows


def _windows(row_store: torch.Tensor, rows: int, patch_size: int) -> torch.Tensor:
    """Entry ``r`` is rows ``r .. r + P - 1`` of ``(R, width, C)`` as one ``(P * width, C)`` matrix.

    Consecutive windows overlap in memory (a strided view, no copy); ``bmm`` reads them in place.
    """
    _, width, channels = row_store.shape
    return row_store.as_strided((rows, patch_size * width, channels), (width * channels, channels, 1))


def _overlap_add_columns(units: torch.Tensor, block_width: int) -> torch.Tensor:
    """Sum overlapping column blocks ``(n, blocks, H, wb + 2k, C)`` into ``(n, H, blocks * wb + 2k, C)``.

    Block ``j`` starts at column ``j * wb``; it is added in pieces of ``wb`` columns so that each piece
    of all blocks lands, side by side, in one slice (a few adds, whatever the number of blocks).
    """
    n, blocks, height, window_width, channels = units.shape
    pieces = math.ceil(window_width / block_width)
    total = units.new_empty(n, height, (blocks + pieces - 1) * block_width, channels)
    covered = blocks * block_width
    total[:, :, covered:].zero_()  # the first piece writes (not adds) everything before this
    for piece in range(pieces):
        part = units[:, :, :, piece * block_width : (piece + 1) * block_width]
        part = F.pad(part, (0, 0, 0, block_width - part.shape[3])).transpose(1, 2)  # (n, H, blocks, wb, C)
        target = total[:, :, piece * block_width : piece * block_width + covered].view(part.shape)
        if piece == 0:
            target.copy_(part)
        else:
            target += part
    return total


def local_correlation_reference(a: torch.Tensor, b: torch.Tensor, patch_size: int = 9) -> torch.Tensor:
    """Slow, obviously correct ``local_correlation``: one shifted product per displacement (for tests)."""
    *lead, channels, height, width = a.shape
    k = patch_size // 2
    padded = F.pad(b, (k, k, k, k))
    out = a.new_zeros(*lead, patch_size, patch_size, height, width)
    for u in range(patch_size):
        for v in range(patch_size):
            shifted = padded[..., u : u + height, v : v + width]
            out[..., u, v, :, :] = (a * shifted).sum(dim=-3)
    return out


def _local_correlation_by_shifts(a: torch.Tensor, b: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``local_correlation`` as one channel contraction per displacement: ``P*P*C*H*W`` multiply-adds."""
    *lead, channels, height, width = a.shape
    k = patch_size // 2
    padded = F.pad(b, (k, k, k, k))
    rows = [
        torch.einsum("...chw,...chw->...hw", a, padded[..., u : u + height, v : v + width])
        for u in range(patch_size)
        for v in range(patch_size)
    ]
    return torch.stack(rows, dim=-3).unflatten(-3, (patch_size, patch_size))


def correlate(anchor: torch.Tensor, context: torch.Tensor, patch_size: int = 9) -> torch.Tensor:
    """Multiplication cue: local correlation of channel-normalised features, ``(..., P, P, H, W)``."""
    anchor, context = torch.broadcast_tensors(anchor, context)
    return local_correlation(l2_normalize_channels(anchor), l2_normalize_channels(context), patch_size)


_POINTWISE = {"add": add, "sub": sub, "div": div, "context": context_features}


def arithmetic(op: str, anchor: torch.Tensor, context: torch.Tensor, patch_size: int = 9) -> torch.Tensor:
    """Apply one ATM operation by name to (broadcastable) anchor and context features.

    Point-wise operations return the broadcast shape ``(..., C, H, W)``; ``mul`` returns the local
    correlation ``(..., P, P, H, W)``.
    """
    if op == "mul":
        return correlate(anchor, context, patch_size)
    try:
        return _POINTWISE[op](anchor, context)
    except KeyError:
        raise ValueError(f"unknown ATM operation {op!r}; choose from {', '.join(OPERATIONS)}") from None
