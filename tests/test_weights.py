"""Offline weight loading (atmvideo.models.weights): every supported key format, on tiny random models."""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from timm.models.eva import checkpoint_filter_fn as eva_checkpoint_filter_fn
from torch import nn

from atmvideo.models import vit  # noqa: F401  (registers the ViT models)
from atmvideo.models._base import VideoClassifier
from atmvideo.models._registry import create_model
from atmvideo.models.weights import (
    LoadReport,
    WeightLoadError,
    _new_by_design,
    convert_state_dict,
    load_pretrained,
    maybe_load_pretrained,
    read_checkpoint,
)

FRAMES = 2
WIDTH, DEPTH, HEADS, PATCH, CLIP_DIM = 64, 2, 2, 8, 16
TINY_VIT: dict[str, Any] = dict(
    depth=DEPTH, embed_dim=WIDTH, num_heads=HEADS, img_size=32, patch_size=PATCH, clip_embed_dim=CLIP_DIM
)


def tiny_vit(
    kind: str, seed: int = 0, arch: str = "vit_base_patch16_clip_224", **kwargs: Any
) -> VideoClassifier:
    """A tiny ``{kind}_{arch}`` model with 5 classes and 2 frames, in eval mode."""
    extra: dict[str, Any] = dict(TINY_VIT, num_classes=5, num_frames=FRAMES)
    if arch.startswith("eva"):
        extra["ref_feat_shape"] = (4, 4)
    if kind == "atm":
        extra.update(atm_block=1, atm_hidden=8)
    extra.update(kwargs)
    torch.manual_seed(seed)
    model = create_model(f"{kind}_{arch}", **extra).eval()
    with torch.no_grad():  # make every tensor distinctive, zero-initialised ones included
        for name, tensor in model.state_dict().items():
            if name == "backbone.head.bias":
                tensor.zero_()  # OpenAI's projection has no bias: timm's converter makes it zeros
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif tensor.is_floating_point():
                tensor.normal_(0.0, 0.1)
    return model


def tiny_resnet(seed: int = 0) -> VideoClassifier:
    """ATM-ResNet-18 with 5 classes and 4 frames."""
    torch.manual_seed(seed)
    return create_model("atm_resnet18", num_classes=5, num_frames=4).eval()


def temporal_and_head_keys(model: VideoClassifier) -> list[str]:
    """What a load from an image checkpoint must report as new."""
    return sorted(_new_by_design(model))


def assert_same_state(model: nn.Module, reference: nn.Module, keys: list[str] | None = None) -> None:
    """Every (or every listed) state tensor of ``model`` equals ``reference``'s."""
    ours, theirs = model.state_dict(), reference.state_dict()
    for key in keys if keys is not None else list(theirs):
        assert torch.equal(ours[key], theirs[key]), key


# --- key layouts built by hand ---------------------------------------------------------------------

_OPENAI_NAMES = (
    ("norm1.", "ln_1."),
    ("norm2.", "ln_2."),
    ("attn.qkv.", "attn.in_proj_"),
    ("attn.proj.", "attn.out_proj."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)
TEXT_TOWER = {
    "token_embedding.weight": torch.randn(10, 8),
    "positional_embedding": torch.randn(7, 8),
    "transformer.resblocks.0.ln_1.weight": torch.randn(8),
    "ln_final.weight": torch.randn(8),
    "text_projection": torch.randn(8, CLIP_DIM),
    "logit_scale": torch.tensor(4.6),
    "input_resolution": torch.tensor(32),
    "context_length": torch.tensor(7),
    "vocab_size": torch.tensor(10),
}


def to_openai(model: VideoClassifier, text: bool = True) -> dict[str, torch.Tensor]:
    """The model's CLIP tower in OpenAI CLIP's key layout (``visual.*``), plus a small text tower."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if not key.startswith("backbone."):
            continue
        key = key[len("backbone.") :]
        if key == "patch_embed.proj.weight":
            out["visual.conv1.weight"] = value
        elif key == "cls_token":
            out["visual.class_embedding"] = value[0, 0]
        elif key == "pos_embed":
            out["visual.positional_embedding"] = value[0]
        elif key.startswith("norm_pre."):
            out["visual.ln_pre." + key.split(".")[1]] = value
        elif key.startswith("norm."):
            out["visual.ln_post." + key.split(".")[1]] = value
        elif key == "head.weight":
            out["visual.proj"] = value.t().contiguous()
        elif key == "head.bias":
            assert not value.any()
        else:
            match = re.match(r"blocks\.(\d+)\.(.+)$", key)
            assert match, key
            rest = match.group(2)
            for ours, theirs in _OPENAI_NAMES:
                rest = rest.replace(ours, theirs)
            out[f"visual.transformer.resblocks.{match.group(1)}.{rest}"] = value
    if text:
        out.update(TEXT_TOWER)
    return {key: value.clone() for key, value in out.items()}


_EVA_NAMES = (
    ("mlp.fc1_g.", "mlp.w1."),
    ("mlp.fc1_x.", "mlp.w2."),
    ("mlp.fc2.", "mlp.w3."),
    ("mlp.norm.", "mlp.ffn_ln."),
    ("attn.norm.", "attn.inner_attn_ln."),
    ("attn.q_proj.bias", "attn.q_bias"),
    ("attn.v_proj.bias", "attn.v_bias"),
)


def to_eva_clip(model: VideoClassifier) -> dict[str, torch.Tensor]:
    """The model's EVA tower in EVA-CLIP's key layout (``visual.*``, RoPE tables, a text tower)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            key = key[len("backbone.") :]
            for ours, theirs in _EVA_NAMES:
                key = key.replace(ours, theirs)
            out[f"visual.{key}"] = value.clone()
    out["visual.rope.freqs_cos"] = torch.randn(16, 32)
    out["visual.rope.freqs_sin"] = torch.randn(16, 32)
    out["text.transformer.resblocks.0.ln_1.weight"] = torch.randn(8)
    out["logit_scale"] = torch.tensor(4.6)
    return out


# The authors' (github.com/whwu95/ATM, modules/ATM.py) names of our ATM(x, -) tensors; "3d" = Conv3d kernel.
_AUTHORS_ATM_NAMES = {
    "reduce.0.": ("corrlayer.sim.downsample.", False),
    "reduce.1.": ("difflayer.downsample.", False),
    "branches.0.encoder.layers.0.": ("corrlayer.uv2c.conv0.", True),
    "branches.0.encoder.layers.1.": ("corrlayer.uv2c.conv1.", True),
    "branches.0.encoder.layers.2.": ("corrlayer.uv2c.conv2.", True),
    "branches.0.encoder.layers.3.": ("corrlayer.uv2c.conv3.", True),
    "branches.0.extractor.0.": ("corrlayer.sim2vis.conv1.", True),
    "branches.0.extractor.1.": ("corrlayer.sim2vis.conv2.", True),
    "branches.0.fuse.0.": ("corrlayer.sim2vis.conv3_fuse.1.", True),
    "branches.0.fuse.1.": ("corrlayer.sim2vis.conv3_fuse.2.", True),
    "project.0.": ("corrlayer.sim2vis.upsample.0.", True),
    "branches.1.extractor.0.": ("difflayer.diff2vis.conv1.", True),
    "branches.1.extractor.1.": ("difflayer.diff2vis.conv2.", True),
    "branches.1.fuse.0.": ("difflayer.diff2vis.conv3_fuse.1.", True),
    "branches.1.fuse.1.": ("difflayer.diff2vis.conv3_fuse.2.", True),
    "project.1.": ("difflayer.diff2vis.upsample.0.", True),
}


def to_authors(
    model: VideoClassifier, block_prefix: str = "visual.transformer.resblocks"
) -> dict[str, torch.Tensor]:
    """An ATM-ViT in the layout of a checkpoint trained with the authors' code (VideoCLIP.state_dict())."""
    out = to_openai(model, text=False) if block_prefix.endswith("resblocks") else {}
    for key, value in model.state_dict().items():
        value = value.clone()
        if key.startswith(("tconv_attn.", "tconv_mlp.")):
            kind, block, _ = key.split(".")
            point = "control_point1" if kind == "tconv_attn" else "control_point2"
            out[f"{block_prefix}.{block}.{point}.conv.weight"] = value
        elif key.startswith("atm."):
            rest = key[len("atm.") :]
            ours = next(prefix for prefix in _AUTHORS_ATM_NAMES if rest.startswith(prefix))
            theirs, conv3d = _AUTHORS_ATM_NAMES[ours]
            if conv3d and value.ndim == 4:
                value = value.unsqueeze(2)  # Conv3d kernel (1, k, k)
            out[f"{block_prefix}.{model.atm_block}.control_point_c.{theirs}{rest[len(ours) :]}"] = value
        elif key.startswith("head."):
            out["fc." + key.split(".")[1]] = value
    return out


def openai_visual_forward(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's VisionTransformer.forward, written from its source: the reference for the conversion."""
    weight = state["visual.conv1.weight"]
    x = F.conv2d(images, weight, stride=weight.shape[-1]).flatten(2).transpose(1, 2)
    cls = state["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + state["visual.positional_embedding"]

    def layer_norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (WIDTH,), state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-5)

    x = layer_norm(x, "visual.ln_pre")
    for index in range(DEPTH):
        pre = f"visual.transformer.resblocks.{index}."
        h = layer_norm(x, pre + "ln_1").transpose(0, 1)
        attn, _ = F.multi_head_attention_forward(
            h, h, h, WIDTH, HEADS, state[pre + "attn.in_proj_weight"], state[pre + "attn.in_proj_bias"],
            None, None, False, 0.0, state[pre + "attn.out_proj.weight"], state[pre + "attn.out_proj.bias"],
            training=False, need_weights=False,
        )  # fmt: skip
        x = x + attn.transpose(0, 1)
        h = F.linear(
            layer_norm(x, pre + "ln_2"), state[pre + "mlp.c_fc.weight"], state[pre + "mlp.c_fc.bias"]
        )
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + F.linear(h, state[pre + "mlp.c_proj.weight"], state[pre + "mlp.c_proj.bias"])
    return layer_norm(x[:, 0], "visual.ln_post") @ state["visual.proj"]


class _Holder(nn.Module):
    """A module that only holds tensors, to write a TorchScript archive like OpenAI's CLIP ``.pt``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` as the parameters of a scripted module tree (keys = dotted module paths)."""
    root = _Holder()
    for key, value in state.items():
        *path_parts, leaf = key.split(".")
        module = root
        for part in path_parts:
            if part not in module._modules:
                module.add_module(part, _Holder())
            module = module._modules[part]
        module.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, and what OpenAI's files are
        torch.jit.save(torch.jit.script(root), str(path))


# --- ResNet: torchvision and timm ----------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-pickle"])
def test_torchvision_resnet_state_dict(tmp_path: Path, zip_format: bool) -> None:
    torch.manual_seed(3)
    source = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        source.bn1.running_mean.normal_()
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(source.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    model = tiny_resnet()
    report = load_pretrained(model, path)
    assert report.format == "timm/torchvision"
    assert report.skipped == ["fc.bias", "fc.weight"]
    assert report.new == temporal_and_head_keys(model)
    assert any(".conv1.tconv.weight" in key for key in report.new)
    expected = {f"backbone.{key}" for key in source.state_dict() if not key.startswith("fc.")}
    assert set(report.loaded) == expected
    state = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(state[f"backbone.{key}"], value), key
    assert model(torch.randn(1, 4, 3, 64, 64)).shape == (1, 5)


def test_timm_resnet_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(4)
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    model = tiny_resnet()
    report = load_pretrained(model, path)
    assert report.new == temporal_and_head_keys(model)
    assert report.skipped == ["fc.bias", "fc.weight"]
    assert torch.equal(model.backbone.layer4[1].bn2.weight, source.layer4[1].bn2.weight)
    assert torch.equal(model.backbone.layer3[0].conv1.weight, source.layer3[0].conv1.weight)


def test_unexpected_and_missing_keys_fail_loudly(tmp_path: Path) -> None:
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    model = tiny_resnet()

    path = tmp_path / "extra.pth"
    torch.save({**state, "layer9.conv.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightLoadError, match=r"layer9\.conv\.weight"):
        load_pretrained(model, path)

    path = tmp_path / "missing.pth"
    torch.save({key: value for key, value in state.items() if key != "layer1.0.conv1.weight"}, path)
    with pytest.raises(WeightLoadError, match=r"backbone\.layer1\.0\.conv1\.weight"):
        load_pretrained(model, path)
    report = load_pretrained(model, path, strict_backbone=False)
    assert "backbone.layer1.0.conv1.weight" in report.new

    path = tmp_path / "shape.pth"
    torch.save({**state, "conv1.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(WeightLoadError, match=r"wrong shape.*backbone\.conv1\.weight"):
        load_pretrained(model, path)


def test_files_that_are_not_plain_tensors_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Holder()}, path)
    with pytest.raises(WeightLoadError, match="tensors only"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.pth")
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightLoadError, match="dict of tensors"):
        read_checkpoint(path)


# --- CLIP ViT: OpenAI, open_clip ---------------------------------------------------------------------


@pytest.mark.parametrize("container", ["state_dict", "torchscript", "safetensors"])
def test_openai_clip_formats(tmp_path: Path, container: str) -> None:
    source = tiny_vit("tsn", seed=1)
    state = to_openai(source)
    path = tmp_path / ("clip.safetensors" if container == "safetensors" else "ViT-tiny.pt")
    if container == "torchscript":
        save_torchscript(state, path)
    elif container == "safetensors":  # open_clip's files for OpenAI towers have the same keys
        save_file(state, str(path))
    else:
        torch.save(state, path)

    model = tiny_vit("atm", seed=2)
    report = load_pretrained(model, path)
    assert report.format == "openai-clip"
    assert report.new == temporal_and_head_keys(model)
    assert report.skipped == sorted(TEXT_TOWER)
    backbone_keys = [key for key in source.state_dict() if key.startswith("backbone.")]
    assert sorted(report.loaded) == sorted(backbone_keys)
    assert_same_state(model, source, backbone_keys)
    assert torch.equal(
        model.backbone.blocks[1].attn.qkv.weight, state["visual.transformer.resblocks.1.attn.in_proj_weight"]
    )


def test_openai_clip_forward_matches_the_original(tmp_path: Path) -> None:
    """The converted tower computes OpenAI CLIP's image embedding (QuickGELU backbone, exact key mapping)."""
    state = to_openai(tiny_vit("tsn", seed=5))
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    model = tiny_vit("tsn", seed=6)
    load_pretrained(model, path)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.forward_frames(images), openai_visual_forward(state, images), atol=1e-5)


def test_pos_embed_is_resized_to_the_model_grid(tmp_path: Path) -> None:
    source = tiny_vit("tsn", seed=1, img_size=16)  # a 2x2 grid
    path = tmp_path / "clip16.pt"
    torch.save(to_openai(source), path)
    model = tiny_vit("tsn", seed=2)  # a 4x4 grid
    load_pretrained(model, path)
    assert model.backbone.pos_embed.shape == (1, 17, WIDTH)
    assert torch.equal(model.backbone.pos_embed[0, 0], source.backbone.pos_embed[0, 0])  # [CLS] kept


def test_clip_checkpoint_into_the_wrong_backbone_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "clip.pt"
    torch.save(to_openai(tiny_vit("tsn")), path)
    with pytest.raises(WeightLoadError, match="ResNet"):
        load_pretrained(tiny_resnet(), path)
    state = to_openai(tiny_vit("tsn"))
    state["visual.transformer.resblocks.0.attn.extra_weight"] = torch.zeros(1)
    with pytest.raises(WeightLoadError, match="extra_weight"):
        load_pretrained(tiny_vit("tsn"), _save(state, tmp_path / "bad.pt"))
    state = to_openai(tiny_vit("tsn"))
    state["not_clip_at_all"] = torch.zeros(1)
    with pytest.raises(WeightLoadError, match="not_clip_at_all"):
        load_pretrained(tiny_vit("tsn"), _save(state, tmp_path / "bad2.pt"))


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


# --- EVA-CLIP ------------------------------------------------------------------------------------------


def test_eva_clip_checkpoint(tmp_path: Path) -> None:
    arch = "eva02_large_patch14_clip_224"
    source = tiny_vit("tsn", seed=1, arch=arch)
    state = to_eva_clip(source)
    path = tmp_path / "EVA02_CLIP_tiny.pt"
    torch.save({"module": state}, path)  # EVA-CLIP's training checkpoints nest the weights
    model = tiny_vit("tconv", seed=2, arch=arch)
    report = load_pretrained(model, path)
    assert report.format == "eva-clip"
    assert report.new == temporal_and_head_keys(model)
    assert report.skipped == [
        "logit_scale",
        "text.transformer.resblocks.0.ln_1.weight",
        "visual.rope.freqs_cos",
        "visual.rope.freqs_sin",
    ]
    backbone_keys = [key for key in source.state_dict() if key.startswith("backbone.")]
    assert_same_state(model, source, backbone_keys)
    # the renaming is timm's own EVA-CLIP converter's
    converted = convert_state_dict(model, state).tensors
    expected = eva_checkpoint_filter_fn(state, model.backbone)
    assert sorted(converted) == sorted(f"backbone.{key}" for key in expected)
    assert all(torch.equal(converted[f"backbone.{key}"], value) for key, value in expected.items())


# --- this project's own checkpoints ------------------------------------------------------------------


def test_own_checkpoint_loads_strictly(tmp_path: Path) -> None:
    source = tiny_vit("atm", seed=1)
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {"model": source.state_dict(), "epoch": 3, "optimizer": {"state": {}, "param_groups": []}}, path
    )
    model = tiny_vit("atm", seed=2)
    report = load_pretrained(model, path)
    assert report.format == "atmvideo"
    assert report.new == [] and report.skipped == []
    assert sorted(report.loaded) == sorted(source.state_dict())
    assert_same_state(model, source)
    clip = torch.randn(1, FRAMES, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(clip), source(clip))

    path = tmp_path / "ema.pth"
    torch.save({"ema": source.state_dict()}, path)
    assert load_pretrained(tiny_vit("atm", seed=3), path).new == []

    # the trainer's best.pt: weights, an EMA (timm's ModelEma keys start with "module."), metadata
    ema = {
        f"module.{key}": value + 1 if value.is_floating_point() else value
        for key, value in source.state_dict().items()
    }
    engine: dict[str, Any] = {"format": "atmvideo-checkpoint-v1", "model": source.state_dict(), "ema": ema}
    engine.update(config={"lr": 0.1}, class_names=["a", "b"], num_classes=5, metrics={"top1": 0.5})
    path = tmp_path / "best.pt"
    torch.save(engine, path)
    model = tiny_vit("atm", seed=4)
    load_pretrained(model, path)
    assert_same_state(model, source)
    load_pretrained(model, path, key="ema")
    assert torch.equal(model.head.weight, source.head.weight + 1)

    state = source.state_dict()
    del state["atm.project.1.weight"]
    with pytest.raises(WeightLoadError, match=r"atm\.project\.1\.weight"):
        load_pretrained(tiny_vit("atm"), _save(state, tmp_path / "missing.pth"))
    with pytest.raises(WeightLoadError, match=r"atm\.reduce\.0\.0\.weight"):  # an ATM checkpoint into TSN
        load_pretrained(tiny_vit("tsn"), path)


def test_own_checkpoint_with_other_classes_keeps_a_new_head(tmp_path: Path) -> None:
    source = tiny_vit("tsn", seed=1, num_classes=7)
    path = _save(source.state_dict(), tmp_path / "k400.pth")
    report = load_pretrained(tiny_vit("tsn", seed=2), path)
    assert report.new == ["head.bias", "head.weight"]
    assert report.skipped == ["head.bias", "head.weight"]


def test_create_model_pretrained_path(tmp_path: Path) -> None:
    source = tiny_vit("tsn", seed=1)
    path = _save(to_openai(source), tmp_path / "clip.pt")
    torch.manual_seed(9)
    model = create_model("atm_vit_base_patch16_clip_224", pretrained=str(path), **TINY_VIT, atm_block=1)
    assert torch.equal(model.backbone.pos_embed, source.backbone.pos_embed)
    assert maybe_load_pretrained(model, False) is None
    with pytest.raises(ValueError, match="local checkpoint"):
        create_model("tsn_vit_base_patch16_clip_224", pretrained=True, **TINY_VIT)


# --- checkpoints trained with the authors' code --------------------------------------------------------


@pytest.mark.parametrize("wrapping", ["amp", "deepspeed"])
def test_authors_vit_checkpoint(tmp_path: Path, wrapping: str) -> None:
    source = tiny_vit("atm", seed=1)
    state = to_authors(source)
    assert "visual.transformer.resblocks.1.control_point_c.corrlayer.uv2c.conv3.0.weight" in state
    assert "visual.transformer.resblocks.0.control_point2.conv.weight" in state
    path = tmp_path / "checkpoint-best.pth"
    if wrapping == "amp":  # utils.save_model: the state dict, optimizer, epoch and the argparse args
        torch.save({"model": state, "epoch": "best", "args": argparse.Namespace(model="ViT-B/16")}, path)
    else:
        torch.save({"module": {f"module.{key}": value.half() for key, value in state.items()}}, path)
    model = tiny_vit("atm", seed=2)
    report = load_pretrained(model, path)
    assert report.format == "authors"
    assert report.new == [] and report.skipped == []
    if wrapping == "amp":
        assert_same_state(model, source)
    else:  # fp16 on disk
        for key, value in source.state_dict().items():
            assert torch.allclose(model.state_dict()[key].float(), value.float(), atol=1e-2, rtol=1e-2), key


def test_authors_eva_checkpoint(tmp_path: Path) -> None:
    arch = "eva02_large_patch14_clip_224"
    source = tiny_vit("atm", seed=1, arch=arch)
    state = {**to_eva_clip(source), **to_authors(source, block_prefix="visual.blocks")}
    model = tiny_vit("atm", seed=2, arch=arch)
    report = load_pretrained(model, _save(state, tmp_path / "eva.pth"))
    assert report.format == "authors"
    assert report.new == []
    assert_same_state(model, source)


def test_authors_checkpoint_into_a_differently_built_model(tmp_path: Path) -> None:
    path = _save(to_authors(tiny_vit("atm", seed=1)), tmp_path / "authors.pth")
    with pytest.raises(WeightLoadError, match="atm_ops"):
        load_pretrained(tiny_vit("atm", atm_ops="sub,mul"), path)
    with pytest.raises(WeightLoadError, match="block 1"):
        load_pretrained(tiny_vit("atm", atm_block=0), path)
    with pytest.raises(WeightLoadError, match="control_point_c"):
        load_pretrained(tiny_vit("tconv"), path)
    report = load_pretrained(tiny_vit("atm", num_classes=9), path)  # another dataset's classes
    assert report.new == ["head.bias", "head.weight"]


def test_report_summary() -> None:
    report = LoadReport(loaded=["backbone.a"], new=["atm.x", "atm.y", "head.weight"], skipped=["fc.weight"])
    report.source, report.format = "w.pth", "timm/torchvision"
    text = report.summary()
    assert "loaded 1 tensors from w.pth (timm/torchvision)" in text
    assert "atm.* (2), head.* (1)" in text
    assert "fc.* (1)" in text
