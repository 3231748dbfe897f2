"""ATM-ResNet and its baselines: shapes, temporal sensitivity, equality with timm, options."""

from __future__ import annotations

import pytest
import timm
import torch

import atmvideo
from atmvideo.models.resnet import ConvWithTemporalInput


def clip_batch(frames: int = 4, size: int = 64, batch: int = 2) -> torch.Tensor:
    """A reproducible random clip batch."""
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(0))


def activate_atm(model: torch.nn.Module) -> None:
    """Randomise the zero-initialised ATM projections so the ATM changes the features."""
    torch.manual_seed(7)
    for projection in model.atm.project:
        torch.nn.init.normal_(projection.weight, std=0.2)


def open_residual_branches(model: torch.nn.Module) -> None:
    """timm zero-initialises each block's last BN, which silences residual branches (and T-Convs)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)


@pytest.mark.parametrize("family", ["atm", "tconv", "tsn"])
def test_logits_shape(family: str) -> None:
    model = atmvideo.create_model(f"{family}_resnet18", num_classes=5, num_frames=4).eval()
    assert model(clip_batch()).shape == (2, 5)
    assert model.forward_features(clip_batch()).shape == (2, 4, 512)


def test_registered_in_timm() -> None:
    model = timm.create_model("atm_resnet18", num_classes=3, num_frames=2)
    assert isinstance(model, atmvideo.VideoClassifier)
    assert {"atm_resnet50", "tsn_resnet152", "tconv_resnet34"} <= set(atmvideo.list_models("*resnet*"))


def test_reversing_frames_changes_atm_logits_but_not_tsn() -> None:
    clips = clip_batch()
    atm_model = atmvideo.create_model("atm_resnet18", num_classes=5, num_frames=4).eval()
    activate_atm(atm_model)
    tsn_model = atmvideo.create_model("tsn_resnet18", num_classes=5, num_frames=4).eval()
    with torch.no_grad():
        assert (atm_model(clips) - atm_model(clips.flip(1))).abs().max() > 1e-4
        torch.testing.assert_close(tsn_model(clips), tsn_model(clips.flip(1)), rtol=1e-5, atol=1e-5)


def test_tconv_alone_is_order_sensitive() -> None:
    model = atmvideo.create_model("tconv_resnet18", num_classes=5, num_frames=4).eval()
    open_residual_branches(model)
    with torch.no_grad():
        assert (model(clip_batch()) - model(clip_batch().flip(1))).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["tsn_resnet18", "atm_resnet18"])
def test_per_frame_features_equal_timm_without_temporal_modules(name: str) -> None:
    kwargs = {"tconv": False} if name.startswith("atm") else {}
    model = atmvideo.create_model(name, num_classes=5, num_frames=4, **kwargs).eval()
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    reference.load_state_dict(model.backbone.state_dict())
    frames = clip_batch().flatten(0, 1)
    with torch.no_grad():
        # a fresh ATM is the identity on ReLU features (zero-initialised projection)
        torch.testing.assert_close(model.forward_frames(frames), reference(frames), rtol=1e-5, atol=1e-5)


def test_every_atm_and_tconv_parameter_receives_a_gradient() -> None:
    model = atmvideo.create_model("atm_resnet18", num_classes=5, num_frames=4)
    activate_atm(model)
    open_residual_branches(model)
    for module in model.modules():
        if isinstance(module, ConvWithTemporalInput):
            torch.nn.init.normal_(module.tconv.weight, std=0.5)
    torch.nn.functional.cross_entropy(model(clip_batch()), torch.tensor([1, 3])).backward()
    temporal = model.temporal_parameter_names()
    assert any(name.startswith("atm.") for name in temporal)
    assert any(".tconv." in name for name in temporal)
    params = dict(model.named_parameters())
    for name in temporal:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


def test_backbone_keys_are_timms() -> None:
    model = atmvideo.create_model("atm_resnet50", num_classes=5, num_frames=2)
    timm_keys = set(timm.create_model("resnet50", pretrained=False, num_classes=0).state_dict())
    backbone_keys = set(model.backbone.state_dict())
    assert timm_keys <= backbone_keys
    assert all(".tconv." in key for key in backbone_keys - timm_keys)
    tconv_layers = {key.split(".")[0] for key in backbone_keys - timm_keys}
    assert tconv_layers == {"layer3", "layer4"}  # res4 and res5


@pytest.mark.parametrize(
    ("stage", "channels", "downsample"), [(2, 64, True), (3, 128, True), (4, 256, False)]
)
def test_atm_stage_options(stage: int, channels: int, downsample: bool) -> None:
    model = atmvideo.create_model("atm_resnet18", num_classes=2, num_frames=2, atm_stage=stage).eval()
    assert model.atm.reduce[0][0].in_channels == channels
    assert model.atm.downsample is downsample
    assert model(clip_batch(frames=2, batch=1)).shape == (1, 2)


def test_atm_keywords_reach_the_module() -> None:
    model = atmvideo.create_model(
        "atm_resnet18",
        num_frames=2,
        atm_ops="add,div",
        atm_context=2,
        atm_include_self=False,
        atm_extractor="mlp",
        atm_style="parallel",
        atm_hidden=16,
        atm_patch_size=5,
        atm_residual_act="identity",
    )
    assert model.atm.ops == ("add", "div")
    assert model.atm.offsets == [-1, 1]
    assert model.atm.style == "parallel" and model.atm.residual_act == "identity"
    assert model.atm.reduce[0][0].out_channels == 16


def test_bad_keywords_raise() -> None:
    with pytest.raises(TypeError, match="atm_ops"):
        atmvideo.create_model("tsn_resnet18", atm_ops="mul")
    with pytest.raises(TypeError, match="tconv"):
        atmvideo.create_model("tsn_resnet18", tconv=True)
    with pytest.raises(TypeError, match="atm_contex"):
        atmvideo.create_model("atm_resnet18", atm_contex=2)
    with pytest.raises(ValueError, match="atm_stage"):
        atmvideo.create_model("atm_resnet18", atm_stage=6)
    with pytest.raises(ValueError, match="unknown model"):
        atmvideo.create_model("atm_resnet19")


def test_set_num_frames_and_gradient_checkpointing_agree() -> None:
    model = atmvideo.create_model("atm_resnet18", num_classes=3, num_frames=4)
    activate_atm(model)
    model.eval()
    clips = clip_batch(frames=6, batch=1)
    with torch.no_grad():
        logits = model(clips)  # switches every temporal module to 6 frames
    assert model.atm.num_frames == 6
    model.train()
    model.set_grad_checkpointing(True)
    torch.manual_seed(0)
    first = model(clips)
    first.sum().backward()
    grad_ckpt = model.atm.project[0].weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(False)
    second = model(clips)
    second.sum().backward()
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(grad_ckpt, model.atm.project[0].weight.grad)
    assert logits.shape == (1, 3)


def test_layer_groups_cover_backbone() -> None:
    model = atmvideo.create_model("atm_resnet18", num_frames=2)
    matcher = model.group_matcher()
    assert set(matcher) == {"stem", "blocks"}
    from timm.models import group_parameters

    groups = group_parameters(model, matcher)
    grouped = {name for names in groups.values() for name in names}
    assert {name for name, _ in model.named_parameters() if name.startswith("backbone.")} <= grouped
