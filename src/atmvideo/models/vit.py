"""ATM-CLIP-ViT: CLIP / EVA-CLIP image towers from timm with ATM on the patch tokens and T-Conv on [CLS].

The timm model is held unchanged as ``self.backbone`` (its state-dict keys are exactly timm's, so timm's
and open_clip's checkpoints and converters apply), the CLIP projection is timm's ``head`` and gives the
per-frame embedding. The temporal modules live beside it on the classifier:

- ``self.atm``: one ATM on the residual stream at the input of block ``atm_block`` (after that many full
  blocks). It sees the patch tokens as a ``(C, H, W)`` map; [CLS] and register tokens bypass it.
- ``self.tconv_attn[i]`` / ``self.tconv_mlp[i]``: a temporal convolution of the [CLS] token on the residual
  stream before the attention and before the MLP of block ``i`` (the authors' ``TokenT1D``).

With neither module the per-frame output is exactly the timm model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models.eva import Eva, EvaBlock
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from atmvideo.models._base import VideoClassifier
from atmvideo.models._builder import drop_timm_only_kwargs, pop_temporal_options
from atmvideo.models._registry import register_video_model
from atmvideo.models.atm import ATM
from atmvideo.models.tconv import TemporalConv
from atmvideo.models.weights import maybe_load_pretrained

__all__ = ["ViTVideoClassifier", "default_atm_block"]

DEFAULT_NUM_CLASSES = 400  # Kinetics-400; every recipe sets its own


def default_atm_block(depth: int) -> int:
    """The paper's ATM position: 7 of 12 blocks (ViT-B), 14 of 24 (ViT-L); the same 7/12 ratio otherwise."""
    return 7 * depth // 12


class ViTVideoClassifier(VideoClassifier):
    """A timm ViT / EVA image tower run per frame, with optional ATM and [CLS] T-Conv, and a TSN head.

    Args:
        backbone: a timm ``VisionTransformer`` or ``Eva`` whose ``head`` is the CLIP projection.
        num_classes: classes of the video classifier.
        num_frames: frames per clip.
        atm: the ATM module (channels = the backbone's width), or None for no ATM.
        atm_block: ATM acts on the input of this block, ``0..depth`` (``depth``: after the last block).
        tconv: add the [CLS] temporal convolutions before attention and MLP of every block.
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int = DEFAULT_NUM_CLASSES,
        num_frames: int = 8,
        atm: nn.Module | None = None,
        atm_block: int | None = None,
        tconv: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        if not isinstance(backbone, VisionTransformer | Eva):
            raise TypeError(
                f"backbone must be a timm VisionTransformer or Eva, not {type(backbone).__name__}"
            )
        if not isinstance(backbone.head, nn.Linear):
            raise ValueError(
                "backbone.head must be the CLIP projection: build the backbone with num_classes>0"
            )
        super().__init__(
            num_classes=num_classes,
            num_frames=num_frames,
            num_features=backbone.head.out_features,
            drop_rate=drop_rate,
        )
        self.backbone = backbone
        depth = len(backbone.blocks)
        width = backbone.embed_dim
        self.grad_checkpointing = False

        if atm is not None:
            atm_block = default_atm_block(depth) if atm_block is None else atm_block
            if not 0 <= atm_block <= depth:
                raise ValueError(f"atm_block must be in 0..{depth} (the backbone's depth), got {atm_block}")
            if _has_patch_dropout(backbone):
                raise ValueError("patch dropout removes tokens, so ATM cannot see a full map: disable it")
        elif atm_block is not None:
            raise ValueError("atm_block was given but there is no ATM")
        self.atm = atm
        self.atm_block = atm_block

        if tconv:
            if getattr(backbone, "cls_token", None) is None:
                raise ValueError("T-Conv acts on the [CLS] token, but this backbone has none")
            for index, block in enumerate(backbone.blocks):
                if _block_kind(block) is None:
                    raise NotImplementedError(
                        f"T-Conv needs timm's Block or EvaBlock, block {index} is {type(block).__name__}"
                    )
            self.tconv_attn: nn.ModuleList | None = nn.ModuleList(
                TemporalConv(width, num_frames=num_frames) for _ in range(depth)
            )
            self.tconv_mlp: nn.ModuleList | None = nn.ModuleList(
                TemporalConv(width, num_frames=num_frames) for _ in range(depth)
            )
        else:
            self.tconv_attn = self.tconv_mlp = None

        input_size = (3, *backbone.patch_embed.img_size)
        self.pretrained_cfg = {
            "input_size": input_size,
            "mean": OPENAI_CLIP_MEAN,
            "std": OPENAI_CLIP_STD,
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "num_classes": num_classes,
            "num_frames": num_frames,
            "first_conv": "backbone.patch_embed.proj",
            "classifier": "head",
        }

    # --- timm hooks -------------------------------------------------------------------------------

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups under ``backbone.``; ATM and T-Conv join the block they act in, head last."""
        inner = self.backbone.group_matcher(coarse=coarse)
        matcher: dict[str, Any] = {}
        for group, spec in inner.items():
            if isinstance(spec, list | tuple):
                matcher[group] = [(_prefixed(pattern), suffix) for pattern, suffix in spec]
            else:
                matcher[group] = _prefixed(spec)
        temporal: list[tuple[str, tuple[int, ...] | None]] = [(r"^tconv_(?:attn|mlp)\.(\d+)", None)]
        if self.atm is not None:
            depth = len(self.backbone.blocks)
            temporal.append((r"^atm\.", (self.atm_block,) if self.atm_block < depth else (99999,)))
        if isinstance(matcher.get("blocks"), list):
            matcher["blocks"] = matcher["blocks"] + temporal
        return matcher

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block (with its T-Conv) in the backward pass to save memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The backbone's no-weight-decay parameters (embeddings, tokens), with the ``backbone.`` prefix."""
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    # --- forward ----------------------------------------------------------------------------------

    def forward_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding of every frame: ``(B*T, 3, H, W) -> (B*T, num_features)``."""
        backbone = self.backbone
        grid = backbone.patch_embed.dynamic_feat_size(tuple(frames.shape[-2:]))
        x = backbone.patch_embed(frames)
        if isinstance(backbone, Eva):
            x, rope = backbone._pos_embed(x)
        else:
            x = backbone.patch_drop(backbone._pos_embed(x))
            rope = None
        x = backbone.norm_pre(x)

        depth = len(backbone.blocks)
        for index in range(depth):
            if self.atm is not None and index == self.atm_block:
                x = self._apply_atm(x, grid)
            block_rope = rope[index] if rope is not None and getattr(backbone, "rope_mixed", False) else rope
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(self._run_block, index, x, block_rope, use_reentrant=False)
            else:
                x = self._run_block(index, x, block_rope)
        if self.atm is not None and self.atm_block == depth:
            x = self._apply_atm(x, grid)

        x = backbone.norm(x)
        return backbone.forward_head(x)

    def _run_block(self, index: int, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        """Block ``index`` of the backbone, with the [CLS] T-Conv before its attention and its MLP."""
        block = self.backbone.blocks[index]
        if self.tconv_attn is None or self.tconv_mlp is None:
            # timm's own forward: keeps the no-T-Conv path exactly timm's
            return block(x) if rope is None else block(x, rope=rope)
        # timm's Block / EvaBlock forward split in two, so T-Conv can act between the residual updates
        x = _tconv_cls(x, self.tconv_attn[index])
        if _block_kind(block) is EvaBlock:
            update = block.attn(block.norm1(x), rope=rope)
            if block.gamma_1 is not None:
                update = block.gamma_1 * update
            x = x + block.drop_path1(update)
            x = _tconv_cls(x, self.tconv_mlp[index])
            update = block.mlp(block.norm2(x))
            if block.gamma_2 is not None:
                update = block.gamma_2 * update
            return x + block.drop_path2(update)
        x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
        x = _tconv_cls(x, self.tconv_mlp[index])
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    def _apply_atm(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Run ATM on the patch tokens as a ``(B*T, C, H, W)`` map; prefix tokens pass unchanged."""
        assert self.atm is not None
        prefix_len = self.backbone.num_prefix_tokens
        prefix, patches = x[:, :prefix_len], x[:, prefix_len:]
        frames, tokens, channels = patches.shape
        height, width = grid
        if tokens != height * width:
            raise ValueError(f"ATM expects {height}x{width}={height * width} patch tokens, got {tokens}")
        fmap = patches.transpose(1, 2).reshape(frames, channels, height, width)
        patches = self.atm(fmap).flatten(2).transpose(1, 2)
        return torch.cat([prefix, patches], dim=1)


def _tconv_cls(x: torch.Tensor, tconv: nn.Module) -> torch.Tensor:
    """Apply a temporal conv to the [CLS] token (index 0) of ``(B*T, N, C)`` tokens."""
    return torch.cat([tconv(x[:, 0]).unsqueeze(1), x[:, 1:]], dim=1)


def _block_kind(block: nn.Module) -> type[nn.Module] | None:
    """``Block`` or ``EvaBlock`` if the block runs their forward unchanged (so it can be split), else None."""
    for kind in (Block, EvaBlock):
        if isinstance(block, kind) and type(block).forward is kind.forward:
            return kind
    return None


def _has_patch_dropout(backbone: nn.Module) -> bool:
    """Whether the backbone drops patch tokens in training (timm's ``patch_drop``)."""
    patch_drop = getattr(backbone, "patch_drop", None)
    return patch_drop is not None and not isinstance(patch_drop, nn.Identity)


def _prefixed(pattern: str) -> str:
    """Re-anchor a timm group regex (matched at the start of a name) under ``backbone.``."""
    body = pattern[1:] if pattern.startswith("^") else pattern
    return rf"^backbone\.(?:{body})"


# --- builders ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Backbone:
    """How to build one CLIP image tower with timm."""

    timm_name: str
    clip_dim: int  # CLIP embedding width = the projection's output (timm's head)


# OpenAI CLIP is natively QuickGELU: timm's `_quickgelu` variants have the same keys and reproduce the
# original model exactly (the plain `vit_*_clip_*` names use GELU, a silent mismatch with OpenAI weights).
_BACKBONES: dict[str, _Backbone] = {
    "vit_base_patch16_clip_224": _Backbone("vit_base_patch16_clip_quickgelu_224", 512),
    "vit_large_patch14_clip_224": _Backbone("vit_large_patch14_clip_quickgelu_224", 768),
    "vit_large_patch14_clip_336": _Backbone("vit_large_patch14_clip_quickgelu_336", 768),
    "eva02_large_patch14_clip_224": _Backbone("eva02_large_patch14_clip_224", 768),
    "eva02_large_patch14_clip_336": _Backbone("eva02_large_patch14_clip_336", 768),
}


def _create_vit_video(
    name: str, arch: str, temporal: str, pretrained: str | bool, kwargs: dict[str, Any]
) -> ViTVideoClassifier:
    """Build ``{temporal}_{arch}``: ``temporal`` is ``atm`` (ATM + T-Conv), ``tconv`` or ``tsn``.

    Keywords (same names as the ResNet models'): ``num_classes`` (400), ``num_frames`` (8), ``drop_rate``,
    ``tconv`` (on for ``atm_*``/``tconv_*``), ``atm_block`` (default 7 of 12 / 14 of 24 blocks) and the
    ``atm_*`` options of ``ATM`` (``atm_ops``, ``atm_context``, ...; ``atm_*`` models only);
    ``clip_embed_dim`` (the projection width: 512 for B/16, 768 for L/14). Everything else goes to the
    timm model (``depth``, ``embed_dim``, ``num_heads``, ``img_size``, ``patch_size``, ``drop_path_rate``).
    ``pretrained``: False, or a local checkpoint file (see ``atmvideo.models.weights``).
    """
    spec = _BACKBONES[arch]
    kwargs = dict(kwargs)
    atm_args, tconv = pop_temporal_options(temporal, kwargs)
    atm_block = kwargs.pop("atm_block", None)
    if "atm_stage" in kwargs:
        raise TypeError(f"{name}: ViT models place ATM with atm_block (a block index), not atm_stage")
    num_classes = kwargs.pop("num_classes", DEFAULT_NUM_CLASSES)
    num_frames = kwargs.pop("num_frames", 8)
    drop_rate = kwargs.pop("drop_rate", 0.0)
    clip_dim = kwargs.pop("clip_embed_dim", spec.clip_dim)
    drop_timm_only_kwargs(name, kwargs)

    # whatever is left configures the timm tower (depth, img_size, embed_dim, drop_path_rate, ...)
    backbone = timm.create_model(
        spec.timm_name, pretrained=False, num_classes=clip_dim, use_naflex=False, **kwargs
    )
    atm = None
    if atm_args is not None:
        atm_args.setdefault("downsample", False)  # every ViT map is small (14x14 to 24x24): SPEC §1.1
        atm = ATM(backbone.embed_dim, num_frames=num_frames, **atm_args)
    model = ViTVideoClassifier(
        backbone,
        num_classes=num_classes,
        num_frames=num_frames,
        atm=atm,
        atm_block=atm_block,
        tconv=tconv,
        drop_rate=drop_rate,
    )
    model.pretrained_cfg.update(architecture=name, backbone=spec.timm_name)
    maybe_load_pretrained(model, pretrained)
    return model


@register_video_model
def atm_vit_base_patch16_clip_224(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """CLIP ViT-B/16 (OpenAI WIT-400M) with ATM(-, x) and [CLS] T-Conv."""
    return _create_vit_video(
        "atm_vit_base_patch16_clip_224", "vit_base_patch16_clip_224", "atm", pretrained, kwargs
    )


@register_video_model
def atm_vit_large_patch14_clip_224(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """CLIP ViT-L/14 (OpenAI WIT-400M) with ATM(-, x) and [CLS] T-Conv."""
    return _create_vit_video(
        "atm_vit_large_patch14_clip_224", "vit_large_patch14_clip_224", "atm", pretrained, kwargs
    )


@register_video_model
def atm_vit_large_patch14_clip_336(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """CLIP ViT-L/14@336 (OpenAI WIT-400M) with ATM(-, x) and [CLS] T-Conv."""
    return _create_vit_video(
        "atm_vit_large_patch14_clip_336", "vit_large_patch14_clip_336", "atm", pretrained, kwargs
    )


@register_video_model
def atm_eva02_large_patch14_clip_224(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """EVA02-CLIP-L/14 (Merged-2B) with ATM(-, x) and [CLS] T-Conv."""
    return _create_vit_video(
        "atm_eva02_large_patch14_clip_224", "eva02_large_patch14_clip_224", "atm", pretrained, kwargs
    )


@register_video_model
def atm_eva02_large_patch14_clip_336(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """EVA02-CLIP-L/14@336 (Merged-2B) with ATM(-, x) and [CLS] T-Conv."""
    return _create_vit_video(
        "atm_eva02_large_patch14_clip_336", "eva02_large_patch14_clip_336", "atm", pretrained, kwargs
    )


@register_video_model
def tconv_vit_base_patch16_clip_224(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """CLIP ViT-B/16 (OpenAI WIT-400M) with [CLS] T-Conv only (baseline)."""
    return _create_vit_video(
        "tconv_vit_base_patch16_clip_224", "vit_base_patch16_clip_224", "tconv", pretrained, kwargs
    )


@register_video_model
def tconv_vit_large_patch14_clip_224(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """CLIP ViT-L/14 (OpenAI WIT-400M) with [CLS] T-Conv only (baseline)."""
    return _create_vit_video(
        "tconv_vit_large_patch14_clip_224", "vit_large_patch14_clip_224", "tconv", pretrained, kwargs
    )


@register_video_model
def tconv_vit_large_patch14_clip_336(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """CLIP ViT-L/14@336 (OpenAI WIT-400M) with [CLS] T-Conv only (baseline)."""
    return _create_vit_video(
        "tconv_vit_large_patch14_clip_336", "vit_large_patch14_clip_336", "tconv", pretrained, kwargs
    )


@register_video_model
def tconv_eva02_large_patch14_clip_224(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """EVA02-CLIP-L/14 (Merged-2B) with [CLS] T-Conv only (baseline)."""
    return _create_vit_video(
        "tconv_eva02_large_patch14_clip_224", "eva02_large_patch14_clip_224", "tconv", pretrained, kwargs
    )


@register_video_model
def tconv_eva02_large_patch14_clip_336(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """EVA02-CLIP-L/14@336 (Merged-2B) with [CLS] T-Conv only (baseline)."""
    return _create_vit_video(
        "tconv_eva02_large_patch14_clip_336", "eva02_large_patch14_clip_336", "tconv", pretrained, kwargs
    )


@register_video_model
def tsn_vit_base_patch16_clip_224(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """CLIP ViT-B/16 (OpenAI WIT-400M) without temporal modules (TSN baseline)."""
    return _create_vit_video(
        "tsn_vit_base_patch16_clip_224", "vit_base_patch16_clip_224", "tsn", pretrained, kwargs
    )


@register_video_model
def tsn_vit_large_patch14_clip_224(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """CLIP ViT-L/14 (OpenAI WIT-400M) without temporal modules (TSN baseline)."""
    return _create_vit_video(
        "tsn_vit_large_patch14_clip_224", "vit_large_patch14_clip_224", "tsn", pretrained, kwargs
    )


@register_video_model
def tsn_vit_large_patch14_clip_336(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """CLIP ViT-L/14@336 (OpenAI WIT-400M) without temporal modules (TSN baseline)."""
    return _create_vit_video(
        "tsn_vit_large_patch14_clip_336", "vit_large_patch14_clip_336", "tsn", pretrained, kwargs
    )


@register_video_model
def tsn_eva02_large_patch14_clip_224(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """EVA02-CLIP-L/14 (Merged-2B) without temporal modules (TSN baseline)."""
    return _create_vit_video(
        "tsn_eva02_large_patch14_clip_224", "eva02_large_patch14_clip_224", "tsn", pretrained, kwargs
    )


@register_video_model
def tsn_eva02_large_patch14_clip_336(pretrained: str | bool = False, **kwargs: Any) -> ViTVideoClassifier:
    """EVA02-CLIP-L/14@336 (Merged-2B) without temporal modules (TSN baseline)."""
    return _create_vit_video(
        "tsn_eva02_large_patch14_clip_336", "eva02_large_patch14_clip_336", "tsn", pretrained, kwargs
    )
