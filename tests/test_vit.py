"""ATM-CLIP-ViT models (atmvideo.models.vit) on tiny ViT / EVA towers."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models import group_parameters

from atmvideo.models._registry import create_model
from atmvideo.models.vit import ViTVideoClassifier, _tconv_cls, default_atm_block
from atmvideo.models.weights import _new_by_design

FRAMES = 4
# 2 blocks, width 64, 32x32 frames in 8x8 patches: a 4x4 token grid
TINY: dict[str, Any] = dict(depth=2, embed_dim=64, num_heads=2, img_size=32, patch_size=8, clip_embed_dim=16)
TIMM_NAMES = {"vit": "vit_base_patch16_clip_quickgelu_224", "eva": "eva02_large_patch14_clip_224"}
ARCHS = {"vit": "vit_base_patch16_clip_224", "eva": "eva02_large_patch14_clip_224"}


def tiny(kind: str, arch: str = "vit", **kwargs: Any) -> ViTVideoClassifier:
    """A tiny ``{kind}_{arch}`` model in eval mode, 5 classes, 4 frames."""
    extra: dict[str, Any] = dict(TINY, num_classes=5, num_frames=FRAMES)
    if arch == "eva":
        extra["ref_feat_shape"] = (4, 4)
    if kind == "atm":
        extra.update(atm_block=1, atm_hidden=8)
    extra.update(kwargs)
    torch.manual_seed(0)
    model = create_model(f"{kind}_{ARCHS[arch]}", **extra)
    assert isinstance(model, ViTVideoClassifier)
    return model.eval()


def clip(batch: int = 2, seed: int = 1) -> torch.Tensor:
    """A random clip batch ``(B, T, 3, 32, 32)``."""
    return torch.randn(batch, FRAMES, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def perturb_atm(model: ViTVideoClassifier) -> None:
    """Give ATM's zero-initialised output convolutions weights, so its branches affect the output."""
    assert model.atm is not None
    with torch.no_grad():
        for projection in model.atm.project:
            projection.weight.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("arch", ["vit", "eva"])
@pytest.mark.parametrize("kind", ["atm", "tconv", "tsn"])
def test_output_shapes_and_modules(kind: str, arch: str) -> None:
    model = tiny(kind, arch)
    assert model(clip()).shape == (2, 5)
    assert model.forward_features(clip()).shape == (2, FRAMES, 16)
    assert (model.atm is not None) == (kind == "atm")
    assert (model.tconv_attn is not None) == (kind in ("atm", "tconv"))
    if model.tconv_attn is not None:
        assert len(model.tconv_attn) == len(model.tconv_mlp) == 2


@pytest.mark.parametrize("arch", ["vit", "eva"])
def test_tsn_frames_equal_plain_timm(arch: str) -> None:
    model = tiny("tsn", arch)
    extra = {key: value for key, value in TINY.items() if key != "clip_embed_dim"}
    if arch == "eva":
        extra["ref_feat_shape"] = (4, 4)
    plain = timm.create_model(TIMM_NAMES[arch], pretrained=False, num_classes=16, **extra).eval()
    plain.load_state_dict(model.backbone.state_dict())
    frames = clip().flatten(0, 1)
    with torch.no_grad():
        expected = plain(frames)
        assert torch.allclose(model.forward_frames(frames), expected, atol=1e-5)
        model.set_grad_checkpointing(True)
        assert torch.allclose(model.forward_frames(frames), expected, atol=1e-5)


@pytest.mark.parametrize("arch", ["vit", "eva"])
def test_identity_tconv_reproduces_timm_blocks(arch: str) -> None:
    """With T-Conv kernels set to identity, the split block forward must equal timm's block forward."""
    with_tconv, without = tiny("tconv", arch), tiny("tsn", arch)
    without.load_state_dict(with_tconv.state_dict(), strict=False)
    with torch.no_grad():
        for tconv in [*with_tconv.tconv_attn, *with_tconv.tconv_mlp]:
            tconv.weight.zero_()
            tconv.weight[:, 0, 1] = 1.0
        assert torch.allclose(with_tconv(clip()), without(clip()), atol=1e-5)


def test_tconv_acts_on_cls_only() -> None:
    model = tiny("tconv")
    tokens = torch.randn(2 * FRAMES, 17, 64)
    out = _tconv_cls(tokens, model.tconv_attn[0])
    assert torch.equal(out[:, 1:], tokens[:, 1:])
    expected = model.tconv_attn[0](tokens[:, 0])
    assert torch.allclose(out[:, 0], expected)
    assert not torch.allclose(out[:, 0], tokens[:, 0])  # the shift moved a quarter of the channels


def reversal_gap(model: ViTVideoClassifier) -> float:
    """How far per-frame features are from following a reversal of the frames, relative to their size.

    Exactly 0 for a frame-wise model. Random tiny ViTs pass little of a patch-token change on to [CLS]
    (and EVA scales its head by 1e-3), hence a relative measure.
    """
    x = clip()
    with torch.no_grad():
        features = model.forward_features(x)
        gap = (features.flip(1) - model.forward_features(x.flip(1))).abs().max()
        return (gap / features.abs().max()).item()


@pytest.mark.parametrize("arch", ["vit", "eva"])
def test_frame_order_matters_for_atm_not_tsn(arch: str) -> None:
    tsn = tiny("tsn", arch)
    assert reversal_gap(tsn) < 1e-6
    with torch.no_grad():
        assert torch.allclose(tsn(clip()), tsn(clip().flip(1)), atol=1e-6)
    atm_only = tiny("atm", arch, tconv=False)
    perturb_atm(atm_only)
    assert reversal_gap(atm_only) > 5e-4
    assert reversal_gap(tiny("tconv", arch)) > 5e-3
    atm = tiny("atm", arch)
    perturb_atm(atm)
    with torch.no_grad():
        logits = atm(clip())
        assert (logits - atm(clip().flip(1))).abs().max() > 1e-4 * logits.abs().max()


@pytest.mark.parametrize("arch", ["vit", "eva"])
def test_every_temporal_parameter_gets_a_gradient(arch: str) -> None:
    model = tiny("atm", arch).train()
    perturb_atm(model)
    model.set_grad_checkpointing(True)
    model(clip()).square().sum().backward()
    temporal = model.temporal_parameter_names()
    assert any(name.startswith("atm.") for name in temporal)
    assert any(name.startswith("tconv_mlp.") for name in temporal)
    params = dict(model.named_parameters())
    no_grad = [name for name in temporal if params[name].grad is None or params[name].grad.abs().sum() == 0]
    assert no_grad == []
    assert params["backbone.patch_embed.proj.weight"].grad.abs().sum() > 0


@pytest.mark.parametrize("atm_block", [0, 1, 2])
def test_atm_block_positions(atm_block: int) -> None:
    model = tiny("atm", atm_block=atm_block)
    perturb_atm(model)
    assert model.atm_block == atm_block
    assert model(clip()).shape == (2, 5)


def test_atm_block_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"atm_block must be in 0\.\.2"):
        tiny("atm", atm_block=3)
    assert tiny("atm", atm_block=None).atm_block == default_atm_block(2) == 1


def test_default_atm_block_matches_the_paper() -> None:
    assert default_atm_block(12) == 7
    assert default_atm_block(24) == 14
    with torch.device("meta"):
        assert create_model("atm_vit_base_patch16_clip_224").atm_block == 7
        assert create_model("atm_vit_large_patch14_clip_336").atm_block == 14
        assert create_model("atm_eva02_large_patch14_clip_224").atm_block == 14


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("tsn_vit_base_patch16_clip_224", {"atm_ops": "sub"}, "atm_ops"),
        ("tsn_vit_base_patch16_clip_224", {"atm_block": 1}, "atm_block"),
        ("tsn_vit_base_patch16_clip_224", {"tconv": True}, "tconv"),
        ("tconv_vit_base_patch16_clip_224", {"atm_context": 2}, "atm_context"),
        ("atm_vit_base_patch16_clip_224", {"atm_stage": 3}, "atm_stage"),
        ("atm_vit_base_patch16_clip_224", {"atm_bogus": 3}, "atm_bogus"),
    ],
)
def test_misplaced_keywords_are_type_errors(name: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        create_model(name, **TINY, **kwargs)


def test_atm_options_reach_the_module() -> None:
    model = tiny("atm", atm_ops=["sub"], atm_context=2, atm_style="parallel", atm_residual_act="identity")
    assert model.atm.ops == ("sub",)
    assert model.atm.offsets == [-1, 0, 1]
    assert model.atm.style == "parallel"
    assert model.atm.downsample is False
    assert model(clip()).shape == (2, 5)


def test_registered_in_timm_too() -> None:
    model = timm.create_model("tsn_vit_base_patch16_clip_224", **TINY, num_classes=3, num_frames=FRAMES)
    assert isinstance(model, ViTVideoClassifier)
    assert model(clip()).shape == (2, 3)


def test_pretrained_cfg_and_weight_decay_names() -> None:
    model = tiny("atm")
    assert model.pretrained_cfg["mean"] == OPENAI_CLIP_MEAN
    assert model.pretrained_cfg["std"] == OPENAI_CLIP_STD
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert model.pretrained_cfg["backbone"] == "vit_base_patch16_clip_quickgelu_224"
    assert {"backbone.pos_embed", "backbone.cls_token"} <= model.no_weight_decay()
    params = dict(model.named_parameters())
    assert {name for name in model.no_weight_decay() if name in params} == {
        "backbone.pos_embed",
        "backbone.cls_token",
    }
    with torch.device("meta"):
        large = create_model("tsn_vit_large_patch14_clip_336")
    assert large.pretrained_cfg["input_size"] == (3, 336, 336)
    assert large.num_features == 768


def test_group_matcher_layer_ids() -> None:
    model = tiny("atm")
    layer = group_parameters(model, model.group_matcher(), reverse=True)
    names = [name for name, _ in model.named_parameters()]
    assert set(layer) == set(names)
    assert layer["backbone.cls_token"] == layer["backbone.patch_embed.proj.weight"] == 0
    assert layer["backbone.blocks.0.attn.qkv.weight"] == 1
    block1 = layer["backbone.blocks.1.attn.qkv.weight"]
    assert block1 == 2
    assert layer["atm.project.0.weight"] == block1  # ATM acts at the input of block 1
    assert layer["tconv_attn.1.weight"] == layer["tconv_mlp.1.weight"] == block1
    assert layer["tconv_attn.0.weight"] == 1
    assert layer["backbone.norm.weight"] == block1  # timm: the final norm joins the last block
    assert layer["head.weight"] == max(layer.values()) == 3
    assert model.temporal_parameter_names() <= {name for name in names if name.startswith(("atm.", "tconv_"))}


def test_new_by_design_keys() -> None:
    model = tiny("atm")
    new = _new_by_design(model)
    assert "atm.reduce.0.1.running_mean" in new  # buffers of temporal modules are new too
    assert {"head.weight", "head.bias", "tconv_attn.0.weight"} <= new
    assert not any(name.startswith("backbone.") for name in new)


def test_meta_device_forward_for_flop_counting() -> None:
    with torch.device("meta"):
        model = create_model("atm_vit_base_patch16_clip_224", num_frames=8)
        logits = model(torch.empty(1, 8, 3, 224, 224))
    assert logits.shape == (1, 400)
    assert logits.device.type == "meta"
    assert model.atm is not None and len(model.tconv_attn) == 12


def test_patch_dropout_is_rejected_with_atm() -> None:
    with pytest.raises(ValueError, match="patch dropout"):
        tiny("atm", patch_drop_rate=0.5)
