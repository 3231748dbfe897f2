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
    For consecutive offsets (the default context) the result is an overlapping view of a time-padded
    copy of the clip, not a tensor of its own: read it, do not write into it.
    """
    if clip.ndim != 5:
        raise ValueError(f"expected frame features (B, T, C, H, W), got shape {tuple(clip.shape)}")
    if not offsets:
        raise ValueError("offsets must not be empty")
    pad = max(abs(k) for k in offsets)
    frames = clip.shape[1]
    padded = F.pad(clip, (0, 0, 0, 0, 0, 0, pad, pad))  # zero frames either side: (B, T + 2 pad, C, H, W)
    first = min(offsets)
    if list(offsets) == list(range(first, first + len(offsets))) and not torch.compiler.is_compiling():
        # Consecutive offsets (the default context): context z of frame t is padded frame
        # t + pad + first + z, so all of them are one overlapping view of the padded clip, each frame
        # still stored as a whole (C, H, W) map. No copy; the backward pass is one unfold_backward.
        # Not under torch.compile: inductor's gradient through this view differed from eager's (by
        # 2e-3 in float64, torch 2.14), the stacked copy below compiles correctly.
        windows = padded.unfold(1, len(offsets), 1)  # (B, T + 2 pad - Z' + 1, C, H, W, Z')
        return windows[:, pad + first : pad + first + frames].permute(0, 1, 5, 2, 3, 4)
    return torch.stack([padded[:, pad + k : pad + k + frames] for k in offsets], dim=2)


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
    out = _BandCorrelation.apply(
        a.reshape(n, channels, height, width), b.reshape(n, channels, height, width), patch_size
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


def _band(scores: torch.Tensor, n: int, grid: _Grid) -> torch.Tensor:
    """The diagonal band of ``scores`` as ``(n, H, blocks, wb, P, P)``: a strided view, no copy.

    ``scores[r, x, u * (wb + P - 1) + x + v]`` compares column ``x`` of a-row ``r`` with displacement
    ``(u, v)``; a-row ``r = (sample * blocks + block) * H + y``.
    """
    height, patch_size = grid.height, grid.patch_size
    _, block_width, length = scores.shape
    s0, s1, _ = scores.stride()
    return scores.as_strided(
        (n, height, grid.blocks, block_width, patch_size, patch_size),
        (grid.blocks * height * s0, s0, height * s0, s1 + 1, length // patch_size, 1),
    )


def _zero_outside(band: torch.Tensor, k: int) -> None:
    """Zero the displacements ``(u, .)`` of ``(n, H, blocks, wb, P, P)`` that leave the map at the top
    or bottom (``y + u - k`` outside ``0 .. H - 1``): their products met rows of other units."""
    height = band.shape[1]
    for y in range(min(k, height)):
        band[:, y, :, :, : k - y].zero_()
        band[:, height - 1 - y, :, :, k + 1 + y :].zero_()


class _BandCorrelation(torch.autograd.Function):
    """``local_correlation`` of ``(n, C, H, W)`` maps, ``(n, H, W, P, P)`` out, as batched products.

    Layout (channels last, ``k = P // 2``): the columns are cut into ``blocks`` of ``wb``; a "unit" is one
    block of one sample, ``H`` rows. ``a_rows`` holds every unit's rows, ``wb`` columns wide, and
    ``b_rows`` too, ``wb + 2k`` columns wide (the block and ``k`` neighbours either side), the units
    one after the other in both, after ``k`` zero rows. So a-row ``r`` meets b-rows ``r .. r + P - 1``:
    the ``P`` rows around it. Those rows are contiguous in memory, so one overlapping ``as_strided``
    view gives every a-row its ``(P * (wb + 2k), C)`` window and a single ``bmm`` computes all products;
    the output is the band ``x' = x + v`` of each ``(wb, P * (wb + 2k))`` result. Near the top and
    bottom edges a window reaches into the unit before or after; those displacements are zeroed in the
    output (``_zero_outside``), and in a copy of the incoming gradient. The backward pass uses the same
    two tricks: ``grad_a`` is the band scattered into zeros times the same windows; ``grad_b`` gathers,
    for every b-row, the ``P`` a-rows that read it (again one overlapping window) against the
    scattered gradient.

    The maps go through in chunks of about ``_CHUNK_BYTES`` of row layouts and products (CPU only): the
    layouts are copied straight from the inputs, whatever their strides, in a few large copies per chunk,
    and are still in cache when the chunk's one ``bmm`` reads them; nothing is allocated at the size of
    the whole batch but the output. Only the inputs are saved; the backward pass rebuilds the layouts.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, patch_size: int) -> torch.Tensor:
        """``(n, C, H, W)`` maps -> ``(n, H, W, P, P)`` correlation."""
        n, channels, height, width = a.shape
        grid = _Grid(width, height, patch_size)
        dtype = _compute_dtype(a, b)
        out = torch.empty(
            (n, height, grid.padded_width, patch_size, patch_size), dtype=dtype, device=a.device
        )
        scratch = _Scratch(a, dtype)
        for start, end in grid.chunks(n, channels, a.device):
            a_rows, b_rows = _row_layouts(a[start:end], b[start:end], grid, scratch)
            rows = grid.unit_rows(end - start)
            windows = _windows(b_rows, rows, patch_size).transpose(1, 2)
            scores = torch.bmm(
                a_rows[grid.k : grid.k + rows],
                windows,
                out=scratch.take("scores", (rows, grid.block_width, windows.shape[2])),
            )
            band = _band(scores, end - start, grid)
            chunk_out = out[start:end].view(band.shape)
            chunk_out.copy_(band)
            _zero_outside(chunk_out, grid.k)
        if grid.padded_width != width:
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
        n, channels, height, width = a.shape
        grid = _Grid(width, height, patch_size)
        blocks, block_width, window_width, k = grid.blocks, grid.block_width, grid.window_width, grid.k
        dtype = _compute_dtype(a, b)
        needs_a, needs_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # Channels last (returned as (n, C, H, W) views): written from the row layouts in runs of whole
        # pixels, which transposing to (n, C, H, W) here would not be.
        grad_a = a.new_empty(n, height, grid.padded_width, channels) if needs_a else None
        grad_b = b.new_empty(n, height, width, channels) if needs_b else None
        scratch = _Scratch(a, dtype)
        for start, end in grid.chunks(n, channels, a.device):
            count = end - start
            rows = grid.unit_rows(count)
            a_rows, b_rows = _row_layouts(a[start:end], b[start:end], grid, scratch)
            # The products read every gradient: those of the zeroed displacements must be 0 (a copy).
            masked = scratch.take("grad", (count, height, blocks, block_width, patch_size, patch_size))
            by_column = masked.view(count, height, grid.padded_width, patch_size, patch_size)
            by_column[:, :, :width] = grad[start:end]
            by_column[:, :, width:].zero_()
            _zero_outside(masked, k)
            if grad_a is not None:
                spread = scratch.take_sparse("spread_a", (rows, block_width, patch_size * window_width))
                _band(spread, count, grid).copy_(masked)
                grad_rows = torch.bmm(
                    spread,
                    _windows(b_rows, rows, patch_size),
                    out=scratch.take("grad_rows", (rows, block_width, channels)),
                )
                grad_a[start:end].view(count, height, blocks, block_width, channels).copy_(
                    grad_rows.view(count, blocks, height, block_width, channels).transpose(1, 2)
                )
            if grad_b is not None:
                # b-row rho (after the k zero rows), column t: sum over (u, x) of
                # grad[a-row rho + k - u, x, u, t - x] * a[rho + k - u, x]. Scatter the gradient into
                # (rho, P - 1 - u, x, t) so that, for every rho, the P a-rows rho - k .. rho + k form one
                # contiguous window of a_rows; t last, so that the scatter writes runs of P values.
                # Gradients that land before the first or after the last b-row of the chunk are zeroed
                # ones (they met other units); k spare rows either side take them.
                spread = scratch.take_sparse(
                    "spread_b", (rows + 2 * k, patch_size, block_width, window_width)
                )
                t0, t1, t2, t3 = spread.stride()
                spread.as_strided(
                    masked.shape,
                    (blocks * height * t0, t0, height * t0, t2 + t3, t0 - t1, t3),
                    (patch_size - 1) * t1,
                ).copy_(masked)
                grad_rows = torch.bmm(
                    spread[k : k + rows].view(rows, -1, window_width).transpose(1, 2),
                    _windows(a_rows, rows, patch_size),
                    out=scratch.take("grad_rows", (rows, window_width, channels)),
                )
                grad_units = grad_rows.view(count, blocks, height, window_width, channels)
                if grid.padded_width == width and block_width >= k:
                    # Each block's own columns, plus the k neighbour columns either side that it
                    # reached into, added to the blocks beside it (those beyond the map dropped).
                    windows = grad_units.transpose(1, 2)
                    by_block = grad_b[start:end].view(count, height, blocks, block_width, channels)
                    by_block.copy_(windows[:, :, :, k : k + block_width])
                    by_block[:, :, :-1, block_width - k :] += windows[:, :, 1:, :k]
                    by_block[:, :, 1:, :k] += windows[:, :, :-1, k + block_width :]
                else:
                    # Image column j - k in column j.
                    summed = _overlap_add_columns(grad_units, block_width)
                    grad_b[start:end] = summed[:, :, k : k + width]
        if grad_a is not None:
            grad_a = grad_a[:, :, :width].permute(0, 3, 1, 2)
        if grad_b is not None:
            grad_b = grad_b.permute(0, 3, 1, 2)
        return grad_a, grad_b, None


# The row layouts and products of one chunk of maps: about 6 MiB, so that they stay in cache between the
# copies that build them and the products that read them (8 maps at 24 x 24 with 64 channels; 6 MiB
# measured best of 3 to 12 MiB, forward and backward, 1 and 2 threads).
_CHUNK_BYTES = 6 << 20


class _Grid:
    """The block geometry of ``_BandCorrelation`` for ``H x W`` maps and patch size ``P``."""

    def __init__(self, width: int, height: int, patch_size: int) -> None:
        self.patch_size, self.height, self.k = patch_size, height, patch_size // 2
        self.blocks, self.block_width = _column_blocks(width, patch_size)
        self.padded_width = self.blocks * self.block_width
        self.window_width = self.block_width + 2 * self.k  # a block and k neighbour columns either side

    def unit_rows(self, count: int) -> int:
        """Rows of ``count`` maps' units in the row layouts."""
        return count * self.blocks * self.height

    def chunks(self, n: int, channels: int, device: torch.device) -> list[tuple[int, int]]:
        """``(start, end)`` ranges of maps whose row layouts and products take about ``_CHUNK_BYTES``."""
        per_row = (self.block_width + self.window_width) * channels
        per_row += self.block_width * self.patch_size * self.window_width
        return _ranges(n, _CHUNK_BYTES // (self.unit_rows(1) * per_row * 4), device)


def _ranges(n: int, step: int, device: torch.device) -> list[tuple[int, int]]:
    """``(start, end)`` ranges of ``step`` maps (at least one) on CPU; one range elsewhere.

    One range on a GPU (it wants large kernels), and while ``torch.compile``, ``torch.export`` or
    ``torch.jit.trace`` traces: a loop over ``n`` would fix the graph's batch size.
    """
    if device.type != "cpu" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return [(0, n)]
    step = max(1, step)
    return [(start, min(start + step, n)) for start in range(0, n, step)]


class _Scratch:
    """Buffers reused by every chunk of one call: the chunks' temporaries are allocated once, not
    once per chunk (each fresh allocation of this size is memory the kernel maps and zeroes again).

    While ``torch.compile`` traces, every ``take`` is a fresh tensor: the compiler cannot functionalise
    writes through an ``as_strided`` view of a view of a buffer, and plans memory itself.
    """

    def __init__(self, like: torch.Tensor, dtype: torch.dtype) -> None:
        self.device, self.dtype = like.device, dtype
        self.buffers: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.reuse = not torch.compiler.is_compiling()

    def take(self, name: str, shape: tuple[int, ...], zero: bool = False) -> torch.Tensor:
        """A contiguous ``shape`` view of buffer ``name`` (grown when too small), zeroed if asked."""
        if not self.reuse:
            make = torch.zeros if zero else torch.empty
            return make(shape, dtype=self.dtype, device=self.device)
        numel = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < numel:
            buffer = self.buffers[name] = torch.empty(numel, dtype=self.dtype, device=self.device)
        view = buffer[:numel].view(shape)
        return view.zero_() if zero else view

    def take_sparse(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Buffer ``name`` for a user that writes the same entries of ``shape`` on every take: the others
        stay zero, so the buffer is zeroed only when it is new or its shape changes."""
        if not self.reuse:
            return torch.zeros(shape, dtype=self.dtype, device=self.device)
        fresh = self.shapes.get(name) != shape
        self.shapes[name] = shape
        return self.take(name, shape, zero=fresh)


def _by_block(x: torch.Tensor, grid: _Grid) -> torch.Tensor:
    """``(n, C, H, blocks * wb)`` maps as a ``(n, blocks, H, wb, C)`` view, whatever their strides."""
    return x.unflatten(3, (grid.blocks, grid.block_width)).permute(0, 3, 2, 4, 1)


def _row_layouts(
    a: torch.Tensor, b: torch.Tensor, grid: _Grid, scratch: _Scratch
) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` ``(n, C, H, W)`` in the row layouts of ``_BandCorrelation``.

    Both have ``k`` zero rows before the units and ``k`` after them: the windows of the first and last
    rows read them (as zeros, so that no stale memory, say a NaN, meets a zero gradient). The copies
    read the inputs in place (transposing to channels last) and cast them to the scratch dtype.
    """
    n, channels, height, width = a.shape
    k, block_width = grid.k, grid.block_width
    if grid.padded_width != width:
        a, b = F.pad(a, (0, grid.padded_width - width)), F.pad(b, (0, grid.padded_width - width))
    units = grid.unit_rows(n)
    a_rows = scratch.take("a_rows", (units + 2 * k, block_width, channels))
    a_rows[:k].zero_()
    a_rows[k + units :].zero_()
    a_rows[k : k + units].view(n, grid.blocks, height, block_width, channels).copy_(_by_block(a, grid))
    b_rows = scratch.take("b_rows", (units + 2 * k, grid.window_width, channels))
    b_rows[:k].zero_()
    b_rows[k + units :].zero_()
    _block_rows(b, grid, b_rows[k : k + units].view(n, grid.blocks, height, grid.window_width, channels))
    return a_rows, b_rows


def _block_rows(b: torch.Tensor, grid: _Grid, units: torch.Tensor) -> None:
    """Write ``b`` ``(n, C, H, blocks * wb)`` into ``units`` ``(n, blocks, H, wb + 2k, C)``: every block
    with ``k`` neighbour columns either side (zeros beyond the map).

    The blocks are copied from ``b``, their neighbour columns from the blocks beside them in ``units``
    (contiguous runs); only the zero columns are cleared.
    """
    k, block_width = grid.k, grid.block_width
    if block_width < k:  # neighbours reach past the next block: cut them from a padded copy
        padded = F.pad(b, (k, k))
        units.copy_(padded.unfold(3, grid.window_width, block_width).permute(0, 3, 2, 4, 1))
        return
    units[:, :, :, k : k + block_width] = _by_block(b, grid)
    units[:, 1:, :, :k] = units[:, :-1, :, block_width : block_width + k]  # left: end of the block before
    units[:, :1, :, :k].zero_()
    units[:, :-1, :, k + block_width :] = units[:, 1:, :, k : 2 * k]  # right: start of the next block
    units[:, -1:, :, k + block_width :].zero_()


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
