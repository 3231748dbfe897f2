"""ATM-ResNet-18...152 and their baselines (TSN, T-Conv only), built on timm's ResNet."""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.utils.checkpoint import checkpoint

from atmvideo.models._base import VideoClassifier
from atmvideo.models._builder import drop_timm_only_kwargs, pop_temporal_options
from atmvideo.models._registry import register_video_model
from atmvideo.models.atm import ATM
from atmvideo.models.tconv import TemporalConv

STAGES: tuple[int, ...] = (2, 3, 4, 5)  # res2..res5 = timm's layer1..layer4


class ConvWithTemporalInput(nn.Conv2d):
    """A residual branch's first convolution with a T-Conv on its input (keeps timm's ``conv1.*`` keys)."""

    tconv: TemporalConv

    @classmethod
    def wrap(cls, conv: nn.Conv2d, num_frames: int) -> ConvWithTemporalInput:
        """A copy of ``conv`` sharing its parameters, with a new T-Conv over its input channels."""
        wrapped = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        wrapped.weight = conv.weight
        wrapped.bias = conv.bias
        wrapped.tconv = TemporalConv(conv.in_channels, num_frames=num_frames).to(conv.weight.device)
        return wrapped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix frames, then convolve."""
        return super().forward(self.tconv(x))


class ResNetVideoClassifier(VideoClassifier):
    """A timm ResNet run on every frame, with an optional ATM after a stage and T-Conv in others.

    ``backbone`` is the unmodified timm ResNet (without its classifier) so image checkpoints load by
    name; the ATM lives in ``atm`` and runs after the last block of ``res{atm_stage}``; T-Convs sit at
    the input of every residual branch of the ``tconv_stages``.
    """

    def __init__(
        self,
        variant: str,
        *,
        num_classes: int = 400,
        num_frames: int = 8,
        atm: dict[str, Any] | None = None,
        atm_stage: int = 3,
        tconv: bool = True,
        tconv_stages: tuple[int, ...] = (4, 5),
        drop_rate: float = 0.0,
        **backbone_kwargs: Any,
    ) -> None:
        backbone = timm.create_model(variant, pretrained=False, num_classes=0, **backbone_kwargs)
        super().__init__(
            num_classes=num_classes,
            num_frames=num_frames,
            num_features=backbone.num_features,
            drop_rate=drop_rate,
        )
        self.backbone = backbone
        self.variant = variant
        self.pretrained_cfg = {
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
            "input_size": (3, 224, 224),
            "normalize": "imagenet",
        }
        self.grad_checkpointing = False
        self.atm_stage = atm_stage if atm is not None else None
        self.atm: ATM | None = None
        if atm is not None:
            if atm_stage not in STAGES:
                raise ValueError(f"atm_stage must be one of {STAGES} (res2..res5), got {atm_stage}")
            atm = dict(atm)
            if atm.get("downsample") is None:
                atm["downsample"] = atm_stage <= 3  # 56x56 / 28x28 maps: reduce to half size (SPEC §1.1)
            self.atm = ATM(self.stage_channels(atm_stage), num_frames=num_frames, **atm)
        self.tconv_stages = tuple(tconv_stages) if tconv else ()
        for stage in self.tconv_stages:
            if stage not in STAGES:
                raise ValueError(f"tconv stages must be in {STAGES}, got {stage}")
            for block in self.stage(stage):
                block.conv1 = ConvWithTemporalInput.wrap(block.conv1, num_frames)

    def stage(self, stage: int) -> nn.Sequential:
        """The timm layer that is ``res{stage}``."""
        return getattr(self.backbone, f"layer{stage - 1}")

    def stage_channels(self, stage: int) -> int:
        """Output channels of ``res{stage}``."""
        for info in self.backbone.feature_info:
            if info["module"] == f"layer{stage - 1}":
                return int(info["num_chs"])
        raise ValueError(f"backbone has no stage res{stage}")

    def forward_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Embed every frame: stem, res2..res5 (ATM after ``res{atm_stage}``), global pooling."""
        backbone = self.backbone
        x = backbone.maxpool(backbone.act1(backbone.bn1(backbone.conv1(frames))))
        for stage in STAGES:
            layer = self.stage(stage)
            if self.grad_checkpointing and self.training:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
            if stage == self.atm_stage and self.atm is not None:
                x = self.atm(x)
        return backbone.forward_head(x, pre_logits=True)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups by depth (for layer-wise LR decay): stem, then each block (or stage)."""
        return {
            "stem": r"^backbone\.(?:conv1|bn1)",
            "blocks": r"^backbone\.layer(\d+)" if coarse else r"^backbone\.layer(\d+)\.(\d+)",
        }

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass to save memory."""
        self.grad_checkpointing = enable


def _build(
    variant: str, family: str, pretrained: str | bool, kwargs: dict[str, Any]
) -> ResNetVideoClassifier:
    from atmvideo.models.weights import maybe_load_pretrained

    drop_timm_only_kwargs(f"{family}_{variant}", kwargs)
    atm, tconv = pop_temporal_options(family, kwargs)
    if atm is None:
        kwargs.pop("atm_stage", None)
    model = ResNetVideoClassifier(variant, atm=atm, tconv=tconv, **kwargs)
    maybe_load_pretrained(model, pretrained)
    return model


@register_video_model
def atm_resnet18(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """ATM-ResNet-18: ATM(-, x) after res3, T-Conv in res4/res5."""
    return _build("resnet18", "atm", pretrained, kwargs)


@register_video_model
def atm_resnet34(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """ATM-ResNet-34: ATM(-, x) after res3, T-Conv in res4/res5."""
    return _build("resnet34", "atm", pretrained, kwargs)


@register_video_model
def atm_resnet50(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """ATM-ResNet-50: ATM(-, x) after res3, T-Conv in res4/res5."""
    return _build("resnet50", "atm", pretrained, kwargs)


@register_video_model
def atm_resnet101(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """ATM-ResNet-101: ATM(-, x) after res3, T-Conv in res4/res5."""
    return _build("resnet101", "atm", pretrained, kwargs)


@register_video_model
def atm_resnet152(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """ATM-ResNet-152: ATM(-, x) after res3, T-Conv in res4/res5."""
    return _build("resnet152", "atm", pretrained, kwargs)


@register_video_model
def tsn_resnet18(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """TSN ResNet-18 baseline: per-frame ResNet, mean over time, no temporal module."""
    return _build("resnet18", "tsn", pretrained, kwargs)


@register_video_model
def tsn_resnet34(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """TSN ResNet-34 baseline: per-frame ResNet, mean over time, no temporal module."""
    return _build("resnet34", "tsn", pretrained, kwargs)


@register_video_model
def tsn_resnet50(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """TSN ResNet-50 baseline: per-frame ResNet, mean over time, no temporal module."""
    return _build("resnet50", "tsn", pretrained, kwargs)


@register_video_model
def tsn_resnet101(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """TSN ResNet-101 baseline: per-frame ResNet, mean over time, no temporal module."""
    return _build("resnet101", "tsn", pretrained, kwargs)


@register_video_model
def tsn_resnet152(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """TSN ResNet-152 baseline: per-frame ResNet, mean over time, no temporal module."""
    return _build("resnet152", "tsn", pretrained, kwargs)


@register_video_model
def tconv_resnet18(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """T-Conv ResNet-18 baseline: T-Conv in res4/res5, no ATM."""
    return _build("resnet18", "tconv", pretrained, kwargs)


@register_video_model
def tconv_resnet34(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """T-Conv ResNet-34 baseline: T-Conv in res4/res5, no ATM."""
    return _build("resnet34", "tconv", pretrained, kwargs)


@register_video_model
def tconv_resnet50(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """T-Conv ResNet-50 baseline: T-Conv in res4/res5, no ATM."""
    return _build("resnet50", "tconv", pretrained, kwargs)


@register_video_model
def tconv_resnet101(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """T-Conv ResNet-101 baseline: T-Conv in res4/res5, no ATM."""
    return _build("resnet101", "tconv", pretrained, kwargs)


@register_video_model
def tconv_resnet152(pretrained: str | bool = False, **kwargs: Any) -> ResNetVideoClassifier:
    """T-Conv ResNet-152 baseline: T-Conv in res4/res5, no ATM."""
    return _build("resnet152", "tconv", pretrained, kwargs)
