"""Offline weight loading for every atmvideo model: detect a checkpoint's format, convert, load, report.

Formats (detected from the keys, never from the file name):

- ``atmvideo``: this project's checkpoints (``backbone.*``, ``atm.*``, ``tconv_*``, ``head.*``; bare or in
  ``{"model"|"state_dict"|"ema": ...}``). Loaded strictly: every key of the model must be in the file.
- ``timm`` / ``torchvision``: an image model's state dict with timm names (torchvision's ResNet names are
  the same); the ImageNet classifier (``fc.*``) is skipped.
- ``openai-clip``: OpenAI CLIP (``visual.*`` + text tower), as a TorchScript ``.pt`` archive or a state
  dict; open_clip's files for these towers use the same keys (``.bin`` or ``.safetensors``).
- ``eva-clip``: EVA-CLIP / open_clip EVA checkpoints (``visual.blocks.N.attn.q_proj.*``, ``mlp.w1``...).
- ``authors``: checkpoints trained with the authors' code (github.com/whwu95/ATM): CLIP or EVA-CLIP
  names under ``visual.``, ``fc.*`` = the video classifier, T-Conv in ``...control_point1/2.conv.weight``
  and ATM(x, -) in ``...control_point_c.{corrlayer,difflayer}.*`` (Conv3d kernels ``(1, k, k)``).

Only tensors are read: pickles with ``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed for
the authors' ``args`` entry), TorchScript archives with ``torch.jit.load`` and ``.safetensors`` directly.
Anything the model has that the file lacks, or the file has that maps nowhere, raises ``WeightLoadError``
unless it is new by design (ATM, T-Conv, the video classifier) or a known unused part (text tower,
ImageNet classifier, RoPE tables).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from atmvideo.models._base import TemporalModule, VideoClassifier

__all__ = [
    "LoadReport",
    "WeightLoadError",
    "convert_state_dict",
    "load_pretrained",
    "maybe_load_pretrained",
    "read_checkpoint",
]

logger = logging.getLogger("atmvideo.weights")

# Where training scripts nest the state dict, in order of preference (EMA only when nothing else).
_CONTAINER_KEYS = ("model", "state_dict", "module", "model_ema", "state_dict_ema", "ema")
# An image classifier's own head: present in ImageNet checkpoints, unused by a video model's backbone.
_IMAGE_CLASSIFIER = re.compile(r"^(?:fc|classifier|head|head\.fc|last_linear)\.(?:weight|bias)$")
# The text half of a CLIP checkpoint (OpenAI, open_clip, EVA-CLIP): unused by an image tower.
_TEXT_TOWER = re.compile(
    r"^(?:transformer\.|token_embedding\.|positional_embedding$|ln_final\.|text_projection$|logit_scale$"
    r"|logit_bias$|text\.|attn_mask$|input_resolution$|context_length$|vocab_size$)"
)
_AUTHORS_TEMPORAL = re.compile(
    r"^visual\.(?:transformer\.resblocks|blocks)\.(\d+)\.(control_point1|control_point2|control_point_c)\.(.+)$"
)


class WeightLoadError(RuntimeError):
    """A checkpoint does not fit the model: keys missing, unexpected, or of the wrong shape."""


@dataclass
class LoadReport:
    """What a load did, by model key (``loaded``, ``new``) and by file key (``skipped``)."""

    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    source: str = ""
    format: str = ""

    def summary(self) -> str:
        """A few lines for a log: counts, and the new/skipped keys grouped by their first name part."""
        lines = [f"loaded {len(self.loaded)} tensors from {self.source or '<state dict>'} ({self.format})"]
        if self.new:
            lines.append(f"new (initialised, not in the file): {len(self.new)}: {_group(self.new)}")
        if self.skipped:
            lines.append(f"skipped (in the file, unused): {len(self.skipped)}: {_group(self.skipped)}")
        return "\n".join(lines)


def _group(keys: Iterable[str]) -> str:
    """``atm.* (20), head.* (2)``: keys counted by their first dotted component."""
    counts = Counter(key.split(".", 1)[0] for key in keys)
    return ", ".join(f"{prefix}.* ({count})" for prefix, count in sorted(counts.items()))


# --- reading ----------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file, unwrapped from training containers, ``module.`` stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    elif _is_torchscript(path):
        # TorchScript archives (OpenAI's CLIP .pt) hold code for TorchScript's interpreter, not pickled Python
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; these files are not
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise WeightLoadError(
                f"{path}: cannot read it as tensors only ({error}). Save just its state dict, e.g. "
                "torch.save(ckpt['model'], 'weights.pth'), and load that."
            ) from error
    return _unwrap(obj, key=key, source=str(path))


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header size, then that many bytes of JSON."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 2 <= length <= min(size - 8, 100_000_000):
            return False
        header = handle.read(length)
    if not header.startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(header), dict)
    except ValueError:
        return False


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with compiled code (``code/``) besides the tensors."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist())


def _unwrap(obj: object, *, key: str | None, source: str) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a training checkpoint and strip a DDP ``module.`` prefix."""
    if not isinstance(obj, Mapping):
        raise WeightLoadError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise WeightLoadError(f"{source}: no entry {key!r}; entries: {sorted(map(str, obj))}")
        obj = obj[key]
    else:
        for container in _CONTAINER_KEYS:
            if isinstance(obj.get(container), Mapping) and obj[container]:
                obj = obj[container]
                break
    if not isinstance(obj, Mapping):
        raise WeightLoadError(f"{source}: the state dict is a {type(obj).__name__}, not a dict")
    state = dict(obj)
    not_tensors = sorted(str(name) for name, value in state.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise WeightLoadError(f"{source}: entries that are not tensors: {not_tensors[:10]}")
    if state and all(name.startswith("module.") for name in state):
        state = {name[len("module.") :]: value for name, value in state.items()}
    return state


# --- converting -------------------------------------------------------------------------------------


@dataclass
class Conversion:
    """A checkpoint in the model's key names: tensors by model key, the file keys left unused, the format."""

    tensors: dict[str, torch.Tensor]
    skipped: list[str]
    format: str
    strict: bool = False  # every model key must be provided (own checkpoints)


def convert_state_dict(model: VideoClassifier, state: Mapping[str, torch.Tensor]) -> Conversion:
    """Rename a checkpoint's tensors to ``model``'s keys; ``WeightLoadError`` for keys that map nowhere."""
    keys = set(state)
    if any(key.startswith("backbone.") for key in keys):
        return _convert_own(model, state)
    authors = any(_AUTHORS_TEMPORAL.match(key) for key in keys)
    if "visual.class_embedding" in keys:
        fmt = "authors" if authors else "openai-clip"
        return _convert_clip_like(model, state, fmt, _openai_clip_converter(model, fmt))
    if "visual.pos_embed" in keys:
        fmt = "authors" if authors else "eva-clip"
        return _convert_clip_like(model, state, fmt, _eva_clip_converter(model, fmt))
    return _convert_image_model(model, state)


def _convert_own(model: VideoClassifier, state: Mapping[str, torch.Tensor]) -> Conversion:
    """This project's checkpoint: names are already the model's."""
    return Conversion(dict(state), [], "atmvideo", strict=True)


def _convert_image_model(model: VideoClassifier, state: Mapping[str, torch.Tensor]) -> Conversion:
    """A timm / torchvision image model's state dict: ``key -> backbone.key``, its classifier skipped."""
    targets = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    unexpected: list[str] = []
    for key, value in state.items():
        if f"backbone.{key}" in targets:
            tensors[f"backbone.{key}"] = value
        elif _IMAGE_CLASSIFIER.match(key):
            skipped.append(key)
        else:
            unexpected.append(key)
    if unexpected:
        raise WeightLoadError(f"{len(unexpected)} file key(s) map to nothing in the model: {unexpected[:20]}")
    return Conversion(tensors, skipped, "timm/torchvision")


def _convert_clip_like(
    model: VideoClassifier,
    state: Mapping[str, torch.Tensor],
    fmt: str,
    convert_tower: Callable[[str, torch.Tensor], dict[str, torch.Tensor] | None],
) -> Conversion:
    """CLIP-style checkpoints: the image tower under ``visual.``, maybe the authors' temporal modules."""
    tensors: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    unexpected: list[str] = []
    for key, value in state.items():
        if not key.startswith("visual."):
            if key in ("fc.weight", "fc.bias"):
                tensors[f"head.{key[3:]}"] = value  # the authors' video classifier
            elif _TEXT_TOWER.match(key):
                skipped.append(key)
            else:
                unexpected.append(key)
            continue
        match = _AUTHORS_TEMPORAL.match(key)
        if match:
            name = _authors_temporal_key(model, int(match.group(1)), match.group(2), match.group(3))
            if name is None:
                unexpected.append(key)
            else:
                tensors[name] = value
            continue
        converted = convert_tower(key, value)
        if converted is None:
            skipped.append(key)
        else:
            tensors.update({f"backbone.{name}": tensor for name, tensor in converted.items()})
    if unexpected:
        raise WeightLoadError(f"{len(unexpected)} file key(s) map to nothing in the model: {unexpected[:20]}")
    return Conversion(tensors, sorted(set(skipped)), fmt)


def _backbone(model: VideoClassifier) -> nn.Module:
    """The timm model inside a video classifier."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise WeightLoadError(f"{type(model).__name__} has no timm backbone to load image weights into")
    return backbone


def _openai_clip_converter(
    model: VideoClassifier, fmt: str
) -> Callable[[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Per-key OpenAI CLIP -> timm ``VisionTransformer`` renaming (timm's own converter, key by key)."""
    from timm.models.vision_transformer import VisionTransformer, _convert_openai_clip

    backbone = _backbone(model)
    if not isinstance(backbone, VisionTransformer):
        raise WeightLoadError(
            f"{fmt} checkpoint holds a CLIP ViT, but the model's backbone is {type(backbone).__name__}"
        )

    def convert(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
        # the timm converter has no cross-key logic, so one key at a time keeps every key traceable
        return _convert_openai_clip({key: value}, backbone, prefix="visual.")

    return convert


# EVA-CLIP -> timm Eva renames: timm.models.eva.checkpoint_filter_fn for EVA-CLIP's separate q/k/v
_EVA_RENAMES = (
    ("mlp.ffn_ln", "mlp.norm"),
    ("attn.inner_attn_ln", "attn.norm"),
    ("mlp.w12", "mlp.fc1"),
    ("mlp.w1", "mlp.fc1_g"),
    ("mlp.w2", "mlp.fc1_x"),
    ("mlp.w3", "mlp.fc2"),
    ("attn.q_bias", "attn.q_proj.bias"),
    ("attn.v_bias", "attn.v_proj.bias"),
)


def _eva_clip_converter(
    model: VideoClassifier, fmt: str
) -> Callable[[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Per-key EVA-CLIP -> timm ``Eva`` renaming; RoPE tables are skipped (timm computes them)."""
    from timm.models.eva import Eva

    backbone = _backbone(model)
    if not isinstance(backbone, Eva):
        raise WeightLoadError(
            f"{fmt} checkpoint holds an EVA-CLIP ViT, but the backbone is {type(backbone).__name__}"
        )
    if backbone.blocks[0].attn.q_proj is None:
        raise WeightLoadError("EVA-CLIP checkpoints have separate q/k/v: build the Eva with qkv_fused=False")

    def convert(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
        name = key[len("visual.") :]
        if "rope." in name or name.startswith("rope"):
            return None
        for old, new in _EVA_RENAMES:
            name = name.replace(old, new)
        return {name: value}

    return convert


# The authors' ATMBlock (corrlayer = x, difflayer = -) in our ATM's names, for ops ("mul", "sub").
_AUTHORS_ATM = (
    (r"corrlayer\.sim\.downsample\.([01])\.", r"reduce.0.\1."),
    (r"corrlayer\.uv2c\.conv([0-3])\.([01])\.", r"branches.0.encoder.layers.\1.\2."),
    (r"corrlayer\.sim2vis\.conv1\.([01])\.", r"branches.0.extractor.0.\1."),
    (r"corrlayer\.sim2vis\.conv2\.([01])\.", r"branches.0.extractor.1.\1."),
    (r"corrlayer\.sim2vis\.conv3_fuse\.1\.", r"branches.0.fuse.0."),
    (r"corrlayer\.sim2vis\.conv3_fuse\.2\.", r"branches.0.fuse.1."),
    (r"corrlayer\.sim2vis\.upsample\.0\.", r"project.0."),
    (r"difflayer\.downsample\.([01])\.", r"reduce.1.\1."),
    (r"difflayer\.diff2vis\.conv1\.([01])\.", r"branches.1.extractor.0.\1."),
    (r"difflayer\.diff2vis\.conv2\.([01])\.", r"branches.1.extractor.1.\1."),
    (r"difflayer\.diff2vis\.conv3_fuse\.1\.", r"branches.1.fuse.0."),
    (r"difflayer\.diff2vis\.conv3_fuse\.2\.", r"branches.1.fuse.1."),
    (r"difflayer\.diff2vis\.upsample\.0\.", r"project.1."),
)


def _authors_temporal_key(model: VideoClassifier, block: int, point: str, rest: str) -> str | None:
    """Our name for one of the authors' temporal tensors in block ``block``, or None if it has no place."""
    if point in ("control_point1", "control_point2"):
        modules = getattr(model, "tconv_attn" if point == "control_point1" else "tconv_mlp", None)
        if rest != "conv.weight" or modules is None or block >= len(modules):
            return None
        return f"{'tconv_attn' if point == 'control_point1' else 'tconv_mlp'}.{block}.weight"
    atm = getattr(model, "atm", None)
    if atm is None:
        return None
    if getattr(model, "atm_block", None) != block:
        raise WeightLoadError(f"the checkpoint's ATM is at block {block}, the model's at {model.atm_block}")
    if tuple(getattr(atm, "ops", ())) != ("mul", "sub") or getattr(atm, "style", None) != "atm":
        raise WeightLoadError(
            "the authors' ATM is ATM(x, -) in the 'atm' style: "
            "build the model with atm_ops='mul,sub', atm_style='atm'"
        )
    for pattern, replacement in _AUTHORS_ATM:
        name, count = re.subn(f"^{pattern}", replacement, rest)
        if count:
            return f"atm.{name}"
    return None


# --- loading ----------------------------------------------------------------------------------------


def _new_by_design(model: VideoClassifier) -> set[str]:
    """State keys that no image checkpoint has: temporal modules' (parameters and buffers) and the head's."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, TemporalModule):
            names.update(f"{module_name}.{key}" for key in module.state_dict())
    names.update(f"head.{key}" for key in model.head.state_dict())
    return names


def _fit(key: str, value: torch.Tensor, target: torch.Tensor, model: VideoClassifier) -> torch.Tensor:
    """Adapt a tensor to its target's shape where the difference is only layout; else return it unchanged."""
    if value.shape == target.shape:
        return value
    if value.ndim == target.ndim + 1 and value.ndim == 5 and value.shape[2] == 1:
        value = value.squeeze(2)  # the authors' Conv3d (1, k, k) kernels -> Conv2d
    if key == "backbone.pos_embed" and value.ndim == 3 and value.shape[-1] == target.shape[-1]:
        value = _resample_pos_embed(value, _backbone(model))
    return value


def _resample_pos_embed(pos_embed: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """Interpolate an absolute position embedding to the backbone's patch grid (prefix tokens kept)."""
    from timm.layers import resample_abs_pos_embed

    prefix = (
        0 if getattr(backbone, "no_embed_class", False) else int(getattr(backbone, "num_prefix_tokens", 1))
    )
    old_tokens = pos_embed.shape[1] - prefix
    side = round(old_tokens**0.5)
    if side * side != old_tokens:
        return pos_embed  # not a square grid: let the shape check report it
    new_size = tuple(backbone.patch_embed.grid_size)
    logger.info("resizing pos_embed from %dx%d to %dx%d", side, side, *new_size)
    return resample_abs_pos_embed(
        pos_embed, new_size=new_size, old_size=(side, side), num_prefix_tokens=prefix
    )


def load_pretrained(
    model: VideoClassifier,
    path: str | Path,
    *,
    strict_backbone: bool = True,
    key: str | None = None,
) -> LoadReport:
    """Load a local checkpoint of any supported format into ``model`` and report what happened.

    Args:
        model: an atmvideo model.
        path: the checkpoint file.
        strict_backbone: raise if a backbone key is not in the file (else it keeps its initialisation).
        key: the entry of a training checkpoint that holds the state dict (default: found automatically).

    Raises:
        WeightLoadError: a file key maps to nothing, a tensor has the wrong shape, or a key the model
            needs is missing (for this project's own checkpoints: any key).
    """
    state = read_checkpoint(path, key=key)
    report = load_state_dict_converted(model, state, strict_backbone=strict_backbone)
    report.source = str(path)
    logger.info(report.summary())
    return report


def load_state_dict_converted(
    model: VideoClassifier, state: Mapping[str, torch.Tensor], *, strict_backbone: bool = True
) -> LoadReport:
    """``load_pretrained`` for a state dict already in memory."""
    conversion = convert_state_dict(model, state)
    targets = model.state_dict()
    new_by_design = _new_by_design(model)

    tensors: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    skipped = list(conversion.skipped)
    for name, value in conversion.tensors.items():
        if name not in targets:
            unexpected.append(name)
            continue
        value = _fit(name, value, targets[name], model)
        if value.shape != targets[name].shape:
            if name.startswith("head."):
                # a trained video classifier for other classes (fine-tuning on a new dataset): not usable
                logger.warning(
                    "%s %s does not fit the model's %s: skipped", name, value.shape, targets[name].shape
                )
                skipped.append(name)
                continue
            mismatched.append(f"{name}: file {tuple(value.shape)} vs model {tuple(targets[name].shape)}")
            continue
        tensors[name] = value
    if unexpected:
        raise WeightLoadError(
            f"{len(unexpected)} checkpoint tensor(s) ({conversion.format}) have no place in the model: "
            f"{unexpected[:20]}"
        )
    if mismatched:
        raise WeightLoadError(f"{len(mismatched)} tensor(s) of the wrong shape: {mismatched[:20]}")

    missing = [name for name in targets if name not in tensors]
    if conversion.strict:
        absent = [
            name for name in missing if not name.endswith("num_batches_tracked") and name not in skipped
        ]
        if absent:
            raise WeightLoadError(f"{len(absent)} model key(s) missing from the checkpoint: {absent[:20]}")
    elif strict_backbone:
        absent = [
            name for name in missing if name not in new_by_design and not name.endswith("num_batches_tracked")
        ]
        if absent:
            raise WeightLoadError(
                f"{len(absent)} backbone key(s) missing from the {conversion.format} file: {absent[:20]}"
            )

    result = model.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # checked above
    return LoadReport(
        loaded=sorted(tensors), new=sorted(missing), skipped=sorted(set(skipped)), format=conversion.format
    )


def maybe_load_pretrained(model: VideoClassifier, pretrained: str | Path | bool | None) -> LoadReport | None:
    """What entry points call: ``False``/``None``/``""`` -> nothing, a path -> ``load_pretrained``."""
    if pretrained is None or pretrained is False or pretrained == "":
        return None
    if pretrained is True:
        raise ValueError(
            "pretrained=True needs a model hub, which atmvideo does not use: pass the path of a local "
            "checkpoint (timm/torchvision state dict, OpenAI CLIP .pt, open_clip/EVA-CLIP file, or ours)"
        )
    return load_pretrained(model, pretrained)
