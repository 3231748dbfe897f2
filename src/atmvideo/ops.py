"""Parameter-free operations of the Arithmetic Temporal Module: context spanning and the four operations.

Shapes follow one convention: a clip of frame features is ``(B, T, C, H, W)``; spanning a context
adds a pair axis, ``(B, T, Z', C, H, W)``, where ``Z'`` is the number of (anchor, context) pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

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
    package. Only the ``P * P`` displacements are computed, never the ``(HW x HW)`` matrix: for each
    vertical shift ``u`` one batched matrix product compares every row of ``a`` with the shifted row of
    ``b``, reading both in place (no per-shift copies of ``b``).
    """
    if a.shape != b.shape:
        raise ValueError(f"local_correlation needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd number, got {patch_size}")
    if _architectural_cost:
        return _local_correlation_by_shifts(a, b, patch_size)
    *lead, channels, height, width = a.shape
    k = patch_size // 2
    n = a[..., 0, 0, 0].numel()
    padded_height, padded_width = height + 2 * k, width + 2 * k
    # Rows of both maps laid out channels-last with k zero rows above and below each sample, so that
    # "row r of a" meets "row r + u of b" at one uniform batch stride for all samples.
    a_rows = F.pad(a.reshape(n, channels, height, width), (0, 0, 0, 2 * k))
    a_rows = a_rows.permute(0, 2, 3, 1).reshape(n * padded_height, width, channels)
    b_rows = F.pad(b.reshape(n, channels, height, width), (k, k, k, k))
    b_rows = b_rows.permute(0, 2, 1, 3).reshape(n * padded_height, channels, padded_width)
    total_rows = n * padded_height
    used_rows = total_rows - 2 * k
    per_shift = [
        torch.bmm(a_rows[:used_rows], b_rows[u : u + used_rows])  # (rows, W, W + 2k)
        for u in range(patch_size)
    ]
    scores = torch.stack(per_shift, dim=1)  # (rows, P, W, W + 2k)
    # out[..., x, v] = scores[..., x, x + v]: a strided diagonal band of each row block.
    s0, s1, s2, s3 = scores.stride()
    band = scores.as_strided((used_rows, patch_size, width, patch_size), (s0, s1, s2 + s3, s3))
    band = F.pad(band, (0, 0, 0, 0, 0, 0, 0, 2 * k)).view(n, padded_height, patch_size, width, patch_size)
    out = band[:, :height].permute(0, 2, 4, 1, 3)  # (n, P_u, P_v, H, W)
    return out.reshape(*lead, patch_size, patch_size, height, width)


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
