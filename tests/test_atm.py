"""The ATM module and T-Conv: shapes, initial identity, temporal sensitivity, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from atmvideo.models import ATM, TemporalConv


def perturb_projections(atm: ATM) -> None:
    """Give the zero-initialised projections random weights so the branch output is visible."""
    torch.manual_seed(123)
    for projection in atm.project:
        torch.nn.init.normal_(projection.weight, std=0.5)


def small_atm(**kwargs) -> ATM:
    """A narrow ATM for 4-frame clips of 8-channel maps."""
    kwargs.setdefault("hidden", 6)
    kwargs.setdefault("patch_size", 3)
    return ATM(8, num_frames=4, **kwargs)


@pytest.mark.parametrize("style", ["atm", "parallel", "cascade"])
@pytest.mark.parametrize("ops", ["mul,sub", "add", "div", "context", "add,sub,mul,div"])
def test_shapes_and_identity_at_init(style: str, ops: str) -> None:
    atm = small_atm(ops=ops, style=style).eval()
    x = torch.rand(2 * 4, 8, 6, 5)  # non-negative: relu(x + 0) == x
    out = atm(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize("extractor", ["conv", "fc", "mlp"])
@pytest.mark.parametrize("context", [1, 2, 3, 4, 5, 6])
def test_every_context_and_extractor_runs(extractor: str, context: int) -> None:
    atm = small_atm(extractor=extractor, context=context)
    perturb_projections(atm)
    x = torch.randn(4, 8, 5, 5)
    assert atm(x).shape == x.shape
    assert len(atm.branches[0].offsets) == len(atm.offsets)


def test_downsample_restores_input_size() -> None:
    atm = small_atm(downsample=True)
    perturb_projections(atm)
    x = torch.randn(8, 8, 7, 9)
    out = atm(x)
    assert out.shape == x.shape
    assert atm.reduce[0][0].stride == (2, 2)


def test_reversing_frames_changes_output() -> None:
    atm = small_atm().eval()
    perturb_projections(atm)
    x = torch.randn(1, 4, 8, 6, 6)
    forward = atm(x.flatten(0, 1)).view_as(x)
    backward = atm(x.flip(1).flatten(0, 1)).view_as(x).flip(1)
    assert (forward - backward).abs().max() > 1e-3


def test_frames_of_different_clips_do_not_mix() -> None:
    atm = small_atm().eval()
    perturb_projections(atm)
    clips = torch.randn(2, 4, 8, 5, 5)
    together = atm(clips.flatten(0, 1)).view_as(clips)
    alone = atm(clips[1]).view(4, 8, 5, 5)
    torch.testing.assert_close(together[1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("style", ["atm", "parallel", "cascade"])
def test_every_parameter_receives_a_gradient(style: str) -> None:
    atm = small_atm(ops="mul,sub,add,div", style=style)
    perturb_projections(atm)
    atm(torch.randn(8, 8, 6, 6)).pow(2).sum().backward()
    for name, param in atm.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_module_counts_per_style() -> None:
    assert len(small_atm(style="atm").reduce) == 2
    assert len(small_atm(style="parallel").project) == 2
    cascade = small_atm(style="cascade")
    assert len(cascade.reduce) == 1 and len(cascade.project) == 1 and len(cascade.branches) == 2
    assert cascade.branches[0].encoder is not None and cascade.branches[1].encoder is None


def test_correlation_encoder_reduces_patch_to_one_vector() -> None:
    atm = ATM(8, num_frames=2, ops="mul", hidden=16, patch_size=9)
    encoder = atm.branches[0].encoder
    encoded = encoder(torch.randn(3, 9, 9, 4, 5))
    assert encoded.shape == (3, 16, 4, 5)
    channels = [layer[0].out_channels for layer in encoder.layers]
    assert channels == [4, 16, 64, 16]


def test_identity_residual_act_keeps_negative_values() -> None:
    atm = small_atm(residual_act="identity").eval()
    x = torch.randn(4, 8, 5, 5)
    torch.testing.assert_close(atm(x), x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ops": "mul,pow"}, "unknown ATM operation"),
        ({"ops": "sub,sub"}, "must not repeat"),
        ({"ops": ""}, "at least one"),
        ({"style": "serial"}, "unknown ATM style"),
        ({"extractor": "rnn"}, "unknown ATM extractor"),
        ({"patch_size": 4}, "odd"),
        ({"residual_act": "gelu"}, "residual_act"),
        ({"context": 0}, "context range"),
    ],
)
def test_bad_options_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_atm(**kwargs)


def test_batch_not_multiple_of_frames_raises() -> None:
    with pytest.raises(ValueError, match="multiple of num_frames=4"):
        small_atm()(torch.randn(6, 8, 4, 4))


def test_tconv_initialised_as_shift() -> None:
    tconv = TemporalConv(8, num_frames=3)
    x = torch.randn(2, 3, 8, 2, 2)
    out = tconv(x.flatten(0, 1)).view_as(x)
    zero = torch.zeros_like(x[:, :1])
    torch.testing.assert_close(out[:, :, :2], torch.cat([x[:, 1:], zero], 1)[:, :, :2])  # copies t + 1
    torch.testing.assert_close(out[:, :, 2:4], torch.cat([zero, x[:, :-1]], 1)[:, :, 2:4])  # copies t - 1
    torch.testing.assert_close(out[:, :, 4:], x[:, :, 4:])


def test_tconv_on_tokens_and_is_a_depthwise_temporal_conv() -> None:
    tconv = TemporalConv(4, num_frames=5)
    torch.nn.init.normal_(tconv.weight)
    tokens = torch.randn(2 * 5, 4)
    out = tconv(tokens).view(2, 5, 4)
    x = tokens.view(2, 5, 4)
    w = tconv.weight[:, 0]
    for t in range(5):
        expected = w[:, 1] * x[:, t]
        if t > 0:
            expected = expected + w[:, 0] * x[:, t - 1]
        if t < 4:
            expected = expected + w[:, 2] * x[:, t + 1]
        torch.testing.assert_close(out[:, t], expected)
