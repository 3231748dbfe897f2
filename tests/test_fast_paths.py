"""The fast paths (band correlation, dense-matrix correlation encoder, folded BatchNorm, channels-last
branches, shift-and-add T-Conv) give the results and gradients of the plain definitions, in float64,
train and eval mode."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from atmvideo import ops
from atmvideo.models import ATM, TemporalConv, _encoder_training
from atmvideo.models.atm import CorrelationEncoder


def randomise_batch_norms(module: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so that folding them is actually tested."""
    generator = torch.Generator().manual_seed(7)
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            with torch.no_grad():
                bn.running_mean.copy_(torch.rand(bn.num_features, generator=generator) - 0.5)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
                bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
                bn.bias.copy_(torch.rand(bn.num_features, generator=generator) - 0.5)


def gradients(output: torch.Tensor, inputs: list[torch.Tensor], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Gradients of ``<output, g>`` for a fixed random ``g``."""
    g = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=output.dtype)
    return torch.autograd.grad(output, inputs, g)


@pytest.mark.parametrize("patch", [1, 3, 5, 9])
@pytest.mark.parametrize(("height", "width"), [(14, 14), (5, 13), (24, 24), (3, 2), (7, 16)])
@pytest.mark.parametrize("chunk_bytes", [ops._CHUNK_BYTES, 1])
def test_band_correlation_and_gradients_match_reference(
    patch: int, height: int, width: int, chunk_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default chunks (all 6 maps in one here) and with one map per chunk."""
    monkeypatch.setattr(ops, "_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(patch + height * width)
    a = torch.randn(2, 3, 4, height, width, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 4, height, width, dtype=torch.float64, requires_grad=True)
    fast = ops.local_correlation(a, b, patch)
    slow = ops.local_correlation_reference(a, b, patch)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    for got, want in zip(gradients(fast, [a, b]), gradients(slow, [a, b]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("width", [1, 2, 7, 8, 9, 13, 17, 28])
def test_band_correlation_every_column_blocking(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of every width, including ones that do not divide the map and ones narrower than P - 1."""
    a = torch.randn(3, 2, 4, width, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 2, 4, width, dtype=torch.float64, requires_grad=True)
    slow = ops.local_correlation_reference(a, b, 5)
    want = gradients(slow, [a, b])
    for block in range(1, width + 2):
        monkeypatch.setattr(ops, "_column_blocks", lambda w, p, block=block: (-(-w // block), block))
        fast = ops.local_correlation(a, b, 5)
        torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
        for got, expected in zip(gradients(fast, [a, b]), want, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-12)


def test_band_correlation_gradcheck() -> None:
    a = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: ops.local_correlation(x, y, 5), (a, b))


def test_band_correlation_one_input_needs_grad() -> None:
    a = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    (grad,) = gradients(ops.local_correlation(a, b, 3), [a])
    (want,) = gradients(ops.local_correlation_reference(a, b, 3), [a])
    torch.testing.assert_close(grad, want)


def test_band_correlation_reads_strided_inputs_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """Channels-last and expanded (one anchor against several contexts) inputs, one map per chunk."""
    monkeypatch.setattr(ops, "_CHUNK_BYTES", 1)
    generator = torch.Generator().manual_seed(3)
    anchor = torch.randn(2, 1, 6, 11, 10, dtype=torch.float64, generator=generator)
    anchor = anchor.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    context = torch.randn(2, 3, 6, 11, 10, dtype=torch.float64, generator=generator, requires_grad=True)
    a = anchor.expand_as(context)
    fast = ops.local_correlation(a, context, 5)
    slow = ops.local_correlation_reference(a, context, 5)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    for got, want in zip(gradients(fast, [anchor, context]), gradients(slow, [anchor, context]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_band_correlation_chunks_of_unequal_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short last chunk, reusing buffers sized and filled by the longer ones."""
    monkeypatch.setattr(ops, "_ranges", lambda n, step, device: [(0, 4), (4, n)])
    a = torch.randn(6, 5, 7, 12, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 5, 7, 12, dtype=torch.float64, requires_grad=True)
    fast, slow = ops.local_correlation(a, b, 5), ops.local_correlation_reference(a, b, 5)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    for got, want in zip(gradients(fast, [a, b]), gradients(slow, [a, b]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_band_correlation_zeroes_edges_even_with_non_finite_neighbours() -> None:
    """Windows at a map's top and bottom rows reach into the next map: its values must not leak in."""
    a = torch.randn(2, 4, 6, 8, dtype=torch.float64)
    b = torch.randn(2, 4, 6, 8, dtype=torch.float64)
    b[1] = float("inf")  # the second map is the first one's neighbour in the row layouts
    out = ops.local_correlation(a, b, 5)
    torch.testing.assert_close(out[0], ops.local_correlation_reference(a[:1], b[:1], 5)[0])


def test_band_correlation_output_is_a_view_of_planes() -> None:
    """The encoder reads (N, H, W, P, P) planes without a copy."""
    out = ops.local_correlation(torch.randn(4, 8, 6, 7), torch.randn(4, 8, 6, 7), 3)
    assert out.shape == (4, 3, 3, 6, 7)
    assert out.permute(0, 3, 4, 1, 2).is_contiguous()


def test_band_correlation_bfloat16_autocast() -> None:
    """Products in bfloat16 under autocast; the gradients come back in the inputs' float32."""
    a = torch.randn(4, 16, 9, 9, requires_grad=True)
    b = torch.randn(4, 16, 9, 9, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.local_correlation(a, b, 9)
    assert out.dtype == torch.bfloat16
    slow = ops.local_correlation_reference(a, b, 9)
    torch.testing.assert_close(out.float(), slow, rtol=0.05, atol=0.1)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    fast_grads = torch.autograd.grad(out, [a, b], g.bfloat16())
    for got, want in zip(fast_grads, torch.autograd.grad(slow, [a, b], g), strict=True):
        assert got.dtype == torch.float32
        assert (got - want).abs().max() <= 0.01 * want.abs().max()


@pytest.mark.parametrize(("patch", "hidden"), [(9, 64), (3, 6), (5, 8), (7, 16), (1, 4)])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("chunk_planes", [1024, 7])
def test_encoder_fast_path_matches_convolutions(
    patch: int, hidden: int, mode: str, chunk_planes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both fast paths (hand-written training pass on a row of planes; chunked evaluation) against the
    plain convolutions; with 7 planes per chunk the 60 planes make 8 full chunks and a short one."""
    monkeypatch.setattr(_encoder_training, "CHUNK_PLANES", chunk_planes)
    torch.manual_seed(patch)
    fast = CorrelationEncoder(patch, hidden).double()
    randomise_batch_norms(fast)
    plain = copy.deepcopy(fast)
    plain.fast = False
    getattr(fast, mode)()
    getattr(plain, mode)()
    x = torch.randn(3, patch, patch, 4, 5, dtype=torch.float64)
    x_fast, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    # The training pass needs odd sizes before both stride-2 layers: P = 9, 5, 1 but not 3 or 7.
    planes = x.permute(0, 3, 4, 1, 2).reshape(-1, patch * patch)
    assert _encoder_training.handles(fast.layers, planes, patch) == (mode == "train" and patch in (9, 5, 1))
    out_fast, out_plain = fast(x_fast), plain(x_plain)
    assert out_fast.shape == (3, hidden, 4, 5)
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-10, atol=1e-12)
    got = gradients(out_fast, [x_fast, *fast.parameters()])
    want = gradients(out_plain, [x_plain, *plain.parameters()])
    for g_fast, g_plain in zip(got, want, strict=True):
        torch.testing.assert_close(g_fast, g_plain, rtol=1e-5, atol=1e-10)
    # Same keys, same running statistics and batch counters afterwards.
    fast_state, plain_state = fast.state_dict(), plain.state_dict()
    assert list(fast_state) == list(plain_state)
    for key in fast_state:
        torch.testing.assert_close(fast_state[key], plain_state[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("patch", [3, 5])  # the autograd path and the hand-written training pass
def test_encoder_momentum_none_uses_cumulative_average(patch: int) -> None:
    fast = CorrelationEncoder(patch, 4).double()
    for bn in fast.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = None
    plain = copy.deepcopy(fast)
    plain.fast = False
    for _ in range(2):
        x = torch.randn(2, patch, patch, 2, 2, dtype=torch.float64)
        fast(x), plain(x)
    for (key, got), want in zip(fast.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, msg=key)


@pytest.mark.parametrize("style", ["atm", "parallel", "cascade"])
@pytest.mark.parametrize("extractor", ["conv", "mlp"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_atm_fast_paths_match_textbook_ops(style: str, extractor: str, mode: str) -> None:
    """The whole module against its textbook form (shift-loop correlation, plain conv modules)."""
    torch.manual_seed(3)
    atm = ATM(8, num_frames=4, hidden=6, patch_size=5, style=style, extractor=extractor, downsample=True)
    atm = atm.double()
    randomise_batch_norms(atm)
    for projection in atm.project:
        torch.nn.init.normal_(projection.weight, std=0.5)
    textbook = copy.deepcopy(atm)
    getattr(atm, mode)()
    getattr(textbook, mode)()
    x = torch.randn(8, 8, 9, 7, dtype=torch.float64)
    x_fast, x_slow = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_fast = atm(x_fast)
    with ops.architectural_cost():
        out_slow = textbook(x_slow)
    assert out_fast.is_contiguous()
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-10, atol=1e-10)
    got = gradients(out_fast, [x_fast, *atm.parameters()])
    with ops.architectural_cost():
        want = gradients(out_slow, [x_slow, *textbook.parameters()])
    for g_fast, g_slow in zip(got, want, strict=True):
        torch.testing.assert_close(g_fast, g_slow, rtol=1e-5, atol=1e-9)


def test_atm_bfloat16_autocast_runs() -> None:
    torch.manual_seed(0)
    atm = ATM(8, num_frames=4, hidden=6, patch_size=3)
    for projection in atm.project:
        torch.nn.init.normal_(projection.weight, std=0.5)
    x = torch.randn(8, 8, 6, 6, requires_grad=True)
    reference = atm(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = atm(x)
    assert out.dtype in (torch.float32, torch.bfloat16)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, rtol=0.1, atol=0.25)
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.slow
def test_atm_under_torch_compile_matches_eager() -> None:
    """Compiles a tiny ATM (inductor, CPU: a C++ compiler is needed, a minute or two)."""
    torch.manual_seed(0)
    atm = ATM(8, num_frames=4, hidden=6, patch_size=3).double()
    randomise_batch_norms(atm)
    for projection in atm.project:
        torch.nn.init.normal_(projection.weight, std=0.5)
    compiled_atm = copy.deepcopy(atm)
    compiled = torch.compile(compiled_atm)
    x = torch.randn(8, 8, 6, 6, dtype=torch.float64)
    for mode in ("eval", "train"):
        getattr(atm, mode)()
        getattr(compiled_atm, mode)()
        x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_eager, out_compiled = atm(x_eager), compiled(x_compiled)
        torch.testing.assert_close(out_compiled, out_eager, rtol=1e-9, atol=1e-9)
        (g_eager,) = gradients(out_eager, [x_eager])
        (g_compiled,) = gradients(out_compiled, [x_compiled])
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-6, atol=1e-9)


def tconv_by_conv1d(x: torch.Tensor, weight: torch.Tensor, frames: int) -> torch.Tensor:
    """The T-Conv's definition: a depthwise ``conv1d`` over time at every position (time as last axis)."""
    channels = weight.shape[0]
    clip = x.reshape(-1, frames, channels, math.prod(x.shape[2:]))
    seq = clip.permute(0, 3, 2, 1).reshape(-1, channels, frames)
    out = F.conv1d(seq, weight, padding=1, groups=channels)
    out = out.reshape(clip.shape[0], -1, channels, frames).permute(0, 3, 2, 1)
    return out.reshape(x.shape)


@pytest.mark.parametrize(
    ("shape", "channels_last"),
    [((12, 8, 5, 3), False), ((12, 8, 5, 3), True), ((12, 8), False), ((3, 8, 2, 2), False)],
)
@pytest.mark.parametrize("frames", [1, 3])
def test_tconv_shift_and_add_matches_conv1d(shape: tuple[int, ...], channels_last: bool, frames: int) -> None:
    torch.manual_seed(0)
    tconv = TemporalConv(shape[1], num_frames=frames).double()
    torch.nn.init.normal_(tconv.weight)
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out = tconv(x)
    want = tconv_by_conv1d(x, tconv.weight, frames)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    got_grads = gradients(out, [x, tconv.weight])
    want_grads = gradients(want, [x, tconv.weight])
    for got, expected in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(tconv(x), want)


def test_tconv_gradcheck_and_bfloat16_autocast() -> None:
    torch.manual_seed(0)
    tconv = TemporalConv(4, num_frames=3).double()
    torch.nn.init.normal_(tconv.weight)
    x = torch.randn(6, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tconv, (x,))
    tconv = tconv.float()
    x = x.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tconv(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), tconv(x), rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert tconv.weight.grad is not None and tconv.weight.grad.dtype == torch.float32
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.slow
def test_band_correlation_under_torch_compile_with_bfloat16_autocast() -> None:
    """The compiled backward must not write through views of views (banned in compile), in bf16 too."""

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (ops.local_correlation(a, b, 9).float() * weights).sum()

    torch.manual_seed(0)
    weights = torch.randn(2, 3, 9, 9, 7, 11)
    a = torch.randn(2, 3, 8, 7, 11, requires_grad=True)
    b = torch.randn(2, 3, 8, 7, 11, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = torch.autograd.grad(loss(a, b), [a, b])
        compiled = torch.autograd.grad(torch.compile(loss)(a, b), [a, b])
    for got, want in zip(compiled, eager, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("chunk_planes", [1024, 7])
def test_encoder_training_pass_reads_no_unset_memory(
    chunk_planes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The images of the training pass are allocated unset and only their borders zeroed: with unset
    memory filled with NaN, outputs and gradients must still be finite and equal the convolutions'."""
    monkeypatch.setattr(_encoder_training, "CHUNK_PLANES", chunk_planes)
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)
    torch.manual_seed(0)
    fast = CorrelationEncoder(9, 16).double()
    randomise_batch_norms(fast)
    plain = copy.deepcopy(fast)
    plain.fast = False
    x = torch.randn(3, 9, 9, 4, 5, dtype=torch.float64)
    x_fast, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # what makes torch.empty fill with NaN
    try:
        assert torch.empty(1, dtype=torch.float64).isnan().all()
        out_fast = fast(x_fast)
        got = gradients(out_fast, [x_fast, *fast.parameters()])
    finally:
        torch.use_deterministic_algorithms(deterministic)
    out_plain = plain(x_plain)
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-10, atol=1e-12)
    want = gradients(out_plain, [x_plain, *plain.parameters()])
    for g_fast, g_plain in zip(got, want, strict=True):
        torch.testing.assert_close(g_fast, g_plain, rtol=1e-5, atol=1e-10)


def test_encoder_traced_in_eval_mode_keeps_a_dynamic_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunking is off under ``torch.jit.trace``: a traced loop over chunks would fix the batch size."""
    monkeypatch.setattr(_encoder_training, "CHUNK_PLANES", 7)
    torch.manual_seed(0)
    encoder = CorrelationEncoder(9, 8).eval()
    randomise_batch_norms(encoder)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation, and shape checks traced as constants
        traced = torch.jit.trace(encoder, (torch.randn(2, 9, 9, 4, 5),), check_trace=False)
        x = torch.randn(5, 9, 9, 4, 5)  # 100 planes: 15 chunks of 7 for the eager module
        torch.testing.assert_close(traced(x), encoder(x), rtol=1e-5, atol=1e-6)
