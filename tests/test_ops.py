"""Every ATM operation against a brute-force loop on random inputs."""

from __future__ import annotations

import math

import pytest
import torch

from atmvideo import ops


def brute_span(clip: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """Context frames by explicit loops, zeros outside the clip."""
    batch, frames = clip.shape[:2]
    out = torch.zeros(batch, frames, len(offsets), *clip.shape[2:], dtype=clip.dtype)
    for b in range(batch):
        for t in range(frames):
            for i, k in enumerate(offsets):
                if 0 <= t + k < frames:
                    out[b, t, i] = clip[b, t + k]
    return out


def brute_correlation(a: torch.Tensor, b: torch.Tensor, patch: int) -> torch.Tensor:
    """SPEC §1.3 by explicit loops over samples, displacements and positions (borders give 0)."""
    n, _, height, width = a.shape
    k = patch // 2
    out = torch.zeros(n, patch, patch, height, width, dtype=a.dtype)
    for s in range(n):
        for u in range(patch):
            for v in range(patch):
                for y in range(height):
                    for x in range(width):
                        yy, xx = y + u - k, x + v - k
                        if 0 <= yy < height and 0 <= xx < width:
                            out[s, u, v, y, x] = torch.dot(a[s, :, y, x], b[s, :, yy, xx])
    return out


@pytest.mark.parametrize(
    ("context", "include_self", "expected"),
    [
        (1, None, [1]),
        (1, True, [0, 1]),
        (2, None, [-1, 0, 1]),
        (2, False, [-1, 1]),
        (3, None, [-1, 0, 1, 2]),
        (4, None, [-2, -1, 0, 1, 2]),
        (4, False, [-2, -1, 1, 2]),
        (5, False, [-2, -1, 1, 2, 3]),
        (6, None, [-3, -2, -1, 0, 1, 2, 3]),
    ],
)
def test_context_offsets(context: int, include_self: bool | None, expected: list[int]) -> None:
    assert ops.context_offsets(context, include_self) == expected


def test_context_offsets_rejects_zero() -> None:
    with pytest.raises(ValueError, match="context range"):
        ops.context_offsets(0)


@pytest.mark.parametrize("context", range(1, 7))
@pytest.mark.parametrize("include_self", [True, False])
def test_span_context_matches_loop(context: int, include_self: bool) -> None:
    torch.manual_seed(context)
    clip = torch.randn(2, 5, 3, 2, 3)
    offsets = ops.context_offsets(context, include_self)
    spanned = ops.span_context(clip, offsets)
    assert spanned.shape == (2, 5, len(offsets), 3, 2, 3)
    torch.testing.assert_close(spanned, brute_span(clip, offsets), rtol=0, atol=0)


@pytest.mark.parametrize("offsets", [[-2, -1, 0, 1, 2], [-2, -1, 1, 2], [1], [0, 1, 2, 3], [3, -1]])
def test_span_context_gradient_matches_loop(offsets: list[int]) -> None:
    """Consecutive offsets give an overlapping view of the padded clip, others a stacked copy: each
    context frame's gradient must reach its frame, once per pair that reads it."""
    torch.manual_seed(len(offsets))
    clip = torch.randn(2, 5, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 5, len(offsets), 3, 2, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad((ops.span_context(clip, offsets) * weights).sum(), clip)
    (expected,) = torch.autograd.grad((brute_span(clip, offsets) * weights).sum(), clip)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


def test_span_context_longer_than_clip() -> None:
    clip = torch.randn(1, 2, 1, 1, 1)
    spanned = ops.span_context(clip, ops.context_offsets(6))
    torch.testing.assert_close(spanned, brute_span(clip, ops.context_offsets(6)))


@pytest.mark.parametrize(
    ("op", "formula"),
    [
        ("add", lambda a, b: a + b),
        ("sub", lambda a, b: b - a),
        ("div", lambda a, b: math.log(abs(b) + 1) - math.log(abs(a) + 1)),
        ("context", lambda a, b: b),
    ],
)
def test_pointwise_ops_match_scalar_formula(op: str, formula) -> None:
    torch.manual_seed(0)
    anchor = torch.randn(2, 3, 1, 4, 2, 2, dtype=torch.float64)  # negative values included
    context = torch.randn(2, 3, 5, 4, 2, 2, dtype=torch.float64)
    out = ops.arithmetic(op, anchor, context)
    assert out.shape == context.shape
    expected = torch.empty_like(out)
    for index in range(out.numel()):
        pos = list(torch.unravel_index(torch.tensor(index), out.shape))
        anchor_pos = pos.copy()
        anchor_pos[2] = torch.tensor(0)
        expected.view(-1)[index] = formula(anchor[tuple(anchor_pos)].item(), context[tuple(pos)].item())
    torch.testing.assert_close(out, expected)


def test_div_equals_paper_log_ratio_on_non_negative_features() -> None:
    a, b = torch.rand(10, dtype=torch.float64) * 5, torch.rand(10, dtype=torch.float64) * 5
    torch.testing.assert_close(ops.div(a, b), torch.log(b + 1) - torch.log(a + 1))


@pytest.mark.parametrize("patch", [1, 3, 5, 9])
@pytest.mark.parametrize(("height", "width"), [(5, 6), (3, 2), (9, 9)])
def test_local_correlation_matches_brute_force(patch: int, height: int, width: int) -> None:
    torch.manual_seed(patch * 100 + height)
    a = torch.randn(3, 4, height, width, dtype=torch.float64)
    b = torch.randn(3, 4, height, width, dtype=torch.float64)
    out = ops.local_correlation(a, b, patch)
    assert out.shape == (3, patch, patch, height, width)
    torch.testing.assert_close(out, brute_correlation(a, b, patch))
    torch.testing.assert_close(ops.local_correlation_reference(a, b, patch), out)


def test_local_correlation_keeps_leading_axes() -> None:
    a, b = torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 4, 5, 6)
    out = ops.local_correlation(a, b, 3)
    assert out.shape == (2, 3, 3, 3, 5, 6)
    torch.testing.assert_close(out[1, 2], ops.local_correlation(a[1, 2:3], b[1, 2:3], 3)[0])


def test_local_correlation_gradients() -> None:
    a = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: ops.local_correlation(x, y, 3), (a, b))


def test_architectural_cost_mode_gives_same_values() -> None:
    a, b = torch.randn(2, 8, 6, 7), torch.randn(2, 8, 6, 7)
    fast = ops.local_correlation(a, b, 5)
    with ops.architectural_cost():
        assert ops.architectural_cost_enabled()
        slow = ops.local_correlation(a, b, 5)
    assert not ops.architectural_cost_enabled()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_mul_is_correlation_of_unit_vectors() -> None:
    torch.manual_seed(1)
    anchor = torch.randn(1, 2, 1, 16, 4, 4, dtype=torch.float64)
    context = torch.randn(1, 2, 3, 16, 4, 4, dtype=torch.float64)
    out = ops.arithmetic("mul", anchor, context, patch_size=3)
    assert out.shape == (1, 2, 3, 3, 3, 4, 4)
    assert out.abs().max() <= 1.0 + 1e-9  # cosine similarities
    self_corr = ops.arithmetic("mul", anchor, anchor, patch_size=3)[..., 1, 1, :, :]
    torch.testing.assert_close(self_corr, torch.ones_like(self_corr), rtol=0, atol=1e-6)
    na = anchor / anchor.norm(dim=3, keepdim=True)
    nc = context / context.norm(dim=3, keepdim=True)
    expected = brute_correlation(na.expand_as(nc).flatten(0, 2), nc.flatten(0, 2), 3)
    torch.testing.assert_close(out.flatten(0, 2), expected, rtol=1e-6, atol=1e-6)


def test_unknown_operation_and_bad_patch() -> None:
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="unknown ATM operation"):
        ops.arithmetic("pow", x, x)
    with pytest.raises(ValueError, match="odd"):
        ops.local_correlation(x, x, 4)
    with pytest.raises(ValueError, match="equal shapes"):
        ops.local_correlation(x, torch.zeros(1, 1, 2, 3))
