"""The run configuration: one typed schema of defaults, flat YAML recipes, ``--set key=value`` overrides.

A run's configuration is resolved in three layers, later ones winning:

1. the dataclass defaults below (the schema: every valid key, its type and its default);
2. a recipe, a flat YAML file of sections (``model:``, ``data:``, ``optim:``, ``train:``, ``eval:``)
   with no includes, so one file tells the whole story (shipped recipes live in
   ``atmvideo/recipes/*.yaml``; ``--config`` takes a recipe name or a path);
3. ``--set a.b=value`` overrides, each value parsed as YAML (``1e-3``, ``true``, ``[30, 45]``).

Every key and value is checked against the schema; errors name the file and line (or the
``--set`` item) and list the valid keys. The resolved configuration is saved with every run
(``OUT/config.yaml``) and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from atmvideo.data.config import DataConfig

__all__ = [
    "ConfigError",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "list_recipes",
    "load_config",
    "parse_views",
    "recipe_path",
    "resolve_config",
]


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclass
class ModelConfig:
    """Which network to build; ``None`` fields are left to the model's own default."""

    name: str = "atm_resnet50"  # any name of atmvideo.list_models()
    num_classes: int = 0  # 0 = the class count of the dataset
    num_frames: int = 8  # frames per clip (T)
    pretrained: str = ""  # weights file (ImageNet / CLIP / atmvideo checkpoint); "" = random init
    drop_rate: float = 0.5  # dropout before the classifier
    atm_ops: str | None = None  # arithmetic operations, e.g. "mul,sub"
    atm_context: int | None = None  # temporal context range Z
    atm_stage: int | None = None  # ResNet stage after which the ATM sits: 2..5 (res2..res5)
    atm_block: int | None = None  # ViT block index at whose input the ATM sits
    atm_style: str | None = None  # atm | parallel | cascade
    atm_extractor: str | None = None  # conv | fc | mlp
    tconv: bool | None = None  # temporal convolution in res4/res5 (ResNet) or on [CLS] (ViT)
    kwargs: dict[str, Any] = field(default_factory=dict)  # further keyword arguments of the model


@dataclass
class OptimConfig:
    """Optimiser, learning-rate schedule and their regularisation."""

    name: str = "sgd"  # sgd | adamw
    lr: float = 0.01  # peak learning rate for the global batch size
    weight_decay: float = 5e-4  # not applied to norms and biases
    momentum: float = 0.9  # SGD only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW only
    layer_decay: float | None = None  # layer-wise LR decay (new ATM / T-Conv parameters stay at 1)
    schedule: str = "multistep"  # multistep | cosine (both stepped every iteration)
    milestones: list[int] = field(
        default_factory=list
    )  # multistep: epochs where the LR is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from warmup_lr
    warmup_lr: float = 0.0
    min_lr: float = 0.0  # cosine floor
    clip_grad_norm: float = 0.0  # clip the global gradient norm to this value; 0 = off


@dataclass
class TrainConfig:
    """The training loop: batch, regularisation, precision, distributed and checkpoint options."""

    epochs: int = 60
    batch_size: int = 64  # global: clips per optimiser step over all processes and accumulation steps
    accum_steps: int = 1  # gradient accumulation steps per optimiser step
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # 0 = off
    cutmix_alpha: float = 0.0  # 0 = off
    mixup_prob: float = 1.0  # probability of mixing a batch when mixup or cutmix is on
    mixup_switch_prob: float = 0.5  # probability of cutmix instead of mixup when both are on
    amp: str = "bf16"  # none | bf16 | fp16 (fp16 uses a GradScaler); GPU only, CPU runs float32
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # SyncBatchNorm across processes (GPU)
    ema: bool = False  # keep an exponential moving average of the weights (evaluated instead)
    ema_decay: float = 0.9998
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms (slower); exact resume on CPU
    dist_backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    num_workers: int = -1  # data loader workers per process; -1 = data.num_workers
    val_views: str = "1x1"  # CROPSxCLIPS of the evaluation after each epoch
    eval_every: int = 1  # evaluate every N epochs (and after the last one)
    save_every_steps: int = 0  # also save last.pt every N optimiser steps inside an epoch; 0 = off
    log_every_steps: int = 20  # TensorBoard / progress-bar update period
    progress: bool = True  # tqdm progress bars on rank 0
    tensorboard: bool = True


@dataclass
class EvalConfig:
    """The test protocol used by ``atmvideo eval``."""

    views: str = "1x1"  # CROPSxCLIPS, e.g. 3x10 for Kinetics ResNet
    batch_size: int = 0  # videos per process per forward pass; 0 = train.batch_size per process
    fusion: str = "softmax"  # how views are fused: softmax | mean | sigmoid
    with_map: bool = False  # also report mAP for single-label data (ActivityNet)
    use_ema: bool = True  # evaluate the EMA weights of a checkpoint that has them
    save_predictions: bool = True  # predictions.pt + predictions.csv in the output folder


@dataclass
class RunConfig:
    """Everything a training or evaluation run needs."""

    description: str = ""  # one line shown by `atmvideo recipes`
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ------------------------------------------------------------------------------------------ type checks


def _type_name(tp: Any) -> str:
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if get_origin(tp) is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to the schema type ``tp``; raise ``TypeError`` if it cannot be."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (Any,)
        if isinstance(value, str):
            # "30,45,55" on the command line reads as a list
            value = [yaml.safe_load(part) for part in value.split(",") if part.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, item_tp) for v in value]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise TypeError
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise TypeError from None
        raise TypeError
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError
    raise TypeError


def _sections() -> dict[str, type]:
    hints = get_type_hints(RunConfig)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(RunConfig)
        if dataclasses.is_dataclass(hints[f.name])
    }


def _valid_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key_message(key: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown config key {key!r}{hint}; valid keys: {', '.join(valid)}"


def _set_value(cfg: RunConfig, dotted: str, value: Any, where: str) -> None:
    """Assign one ``section.key`` (or top-level ``key``) with type checking."""
    parts = dotted.split(".")
    target: Any = cfg
    path = []
    for part in parts[:-1]:
        path.append(part)
        child = getattr(target, part, None) if part in _valid_keys(type(target)) else None
        if child is None or not dataclasses.is_dataclass(child):
            sections = [k for k in _valid_keys(type(target)) if dataclasses.is_dataclass(getattr(target, k))]
            raise ConfigError(_unknown_key_message(".".join(path), sections, where))
        target = child
    name = parts[-1]
    valid = _valid_keys(type(target))
    if name not in valid:
        prefix = ".".join(parts[:-1])
        shown = [f"{prefix}.{k}" if prefix else k for k in valid]
        raise ConfigError(_unknown_key_message(dotted, shown, where))
    if dataclasses.is_dataclass(getattr(target, name)):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: {dotted!r} is a section; set its keys, e.g. {dotted}.KEY=VALUE")
        for key, sub in value.items():
            _set_value(cfg, f"{dotted}.{key}", sub, where)
        return
    tp = get_type_hints(type(target))[name]
    try:
        coerced = _coerce(value, tp)
    except TypeError:
        raise ConfigError(f"{where}: {dotted} expects {_type_name(tp)}, got {value!r}") from None
    setattr(target, name, coerced)


# ------------------------------------------------------------------------------------------ YAML files


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """1-based line of every (dotted) mapping key in a composed YAML document."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key + "."))
    return lines


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"train": {"epochs": 1}}`` -> ``[("train.epochs", 1)]``; dict values (model.kwargs) stay whole."""
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and not prefix and key in _sections():
            items.extend(_flatten(value, dotted + "."))
        else:
            items.append((dotted, value))
    return items


def recipe_dir() -> Path:
    """Folder of the recipes shipped with the package."""
    return Path(str(resources.files("atmvideo") / "recipes"))


def list_recipes() -> list[str]:
    """Names (file stems) of the shipped recipes, sorted."""
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """Resolve ``--config``: an existing file, or the name of a shipped recipe (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    shipped = recipe_dir() / f"{stem}.yaml"
    if str(path.parent) in ("", ".") and shipped.is_file():
        return shipped
    close = difflib.get_close_matches(stem, list_recipes(), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"--config {name_or_path!r}: no such file and no shipped recipe of that name.{hint} "
        "Run `atmvideo recipes` to list the recipes."
    )


def load_config(name_or_path: str | Path | None) -> RunConfig:
    """The defaults updated by one recipe file (a path or a shipped recipe name); None gives the defaults."""
    cfg = RunConfig()
    if name_or_path is None:
        return cfg
    path = recipe_path(name_or_path)
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return cfg
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    lines = _key_lines(node)
    for dotted, value in _flatten(data):
        _set_value(cfg, dotted, value, f"{path}:{lines.get(dotted, 1)}")
    return cfg


def _field_type(cfg: RunConfig, dotted: str) -> Any:
    """Schema type of ``section.key``, or None when there is no such field."""
    owner: Any = cfg
    *sections, name = dotted.split(".")
    for part in sections:
        owner = getattr(owner, part, None)
        if owner is None or not dataclasses.is_dataclass(owner):
            return None
    if not dataclasses.is_dataclass(owner) or name not in _valid_keys(type(owner)):
        return None
    return get_type_hints(type(owner))[name]


def _parse_value(raw: str, tp: Any) -> Any:
    """A ``--set`` value: YAML, except for text fields, which take the text as written.

    YAML would turn ``data.flip_label_map=6:7`` into the base-60 number 367 and a file named
    ``2024-01-01`` into a date; a text field wants neither.
    """
    text = raw.strip()
    if tp is str or tp == (str | None):
        if tp is not str and text in ("", "null", "~", "None"):
            return None
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text
    if not text:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return raw  # not YAML (an odd path, say): the type check decides


def apply_overrides(cfg: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """Apply ``a.b=value`` items in order; values are parsed as YAML scalars or lists (text as written)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=0.02")
        key, raw = item.split("=", 1)
        key = key.strip()
        _set_value(cfg, key, _parse_value(raw, _field_type(cfg, key)), f"--set {item!r}")
    validate_config(cfg)
    return cfg


# What a recipe says about its own dataset, and what it means on another one (see resolve_config)
_DATASET_SPECIFIC: dict[str, Any] = {
    "data.labels": "",  # the recipe's class-name file
    "data.frame_template": "",  # its frame file names
    "data.flip_label_map": "",  # its left/right class pairs
    "data.flip": False,  # unknown classes: a horizontal flip may turn one into another (left <-> right)
}


def resolve_config(config: str | Path | None, overrides: Iterable[str] = ()) -> RunConfig:
    """Defaults <- recipe <- ``--set`` overrides, validated.

    Switching ``data.format`` away from the recipe's (e.g. ``--set data.format=list data.root=...
    data.train=... data.val=...`` to run any recipe on your own data) also resets what belongs to
    the recipe's dataset, unless it is set too: the class-name file, the frame file names, the
    left/right label swap, and horizontal flipping (the new classes may depend on the direction of
    motion; turn it back on with ``data.flip=true``).
    """
    overrides = list(overrides)
    cfg = load_config(config)
    recipe_format = cfg.data.format
    cfg = apply_overrides(cfg, overrides)
    if cfg.data.format != recipe_format:
        keys = {item.split("=", 1)[0].strip() for item in overrides}
        for dotted, value in _DATASET_SPECIFIC.items():
            if dotted not in keys:
                setattr(cfg.data, dotted.split(".", 1)[1], value)
    return cfg


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain nested dict of primitives (what checkpoints and config.yaml store)."""
    return asdict(cfg)


def config_from_dict(
    data: Mapping[str, Any], *, source: str = "checkpoint", strict: bool = False
) -> RunConfig:
    """Rebuild a config from :func:`config_to_dict` output; unknown keys are errors only if ``strict``."""
    cfg = RunConfig()
    for dotted, value in _flatten(data):
        try:
            _set_value(cfg, dotted, value, source)
        except ConfigError:
            if strict:
                raise
    return cfg


class _Dumper(yaml.SafeDumper):
    """Block-style sections with lists on one line (``milestones: [30, 45, 55]``), like the recipes."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _represent_list)


def dump_config(cfg: RunConfig) -> str:
    """The configuration as YAML text, sections in schema order."""
    return yaml.dump(
        config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110
    )


# ------------------------------------------------------------------------------------------ validation

_CHOICES: dict[str, tuple[str, ...]] = {
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("multistep", "cosine"),
    "train.amp": ("none", "bf16", "fp16"),
    "train.dist_backend": ("auto", "nccl", "gloo"),
    "eval.fusion": ("softmax", "mean", "sigmoid"),
}


def parse_views(views: str) -> tuple[int, int]:
    """``"3x10"`` -> ``(3, 10)`` (crops, clips)."""
    parts = str(views).lower().replace("×", "x").split("x")
    try:
        crops, clips = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"views {views!r}: expected CROPSxCLIPS, e.g. 1x1 or 3x10") from None
    if crops not in (1, 3) or clips < 1:
        raise ConfigError(f"views {views!r}: crops must be 1 or 3 and clips >= 1")
    return crops, clips


def validate_config(cfg: RunConfig) -> None:
    """Check value ranges and choices that the types alone cannot express."""
    for dotted, choices in _CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"{dotted}={value!r}: expected one of {', '.join(choices)}")
    positive = {
        "model.num_frames": cfg.model.num_frames,
        "train.epochs": cfg.train.epochs,
        "train.batch_size": cfg.train.batch_size,
        "train.accum_steps": cfg.train.accum_steps,
        "train.eval_every": cfg.train.eval_every,
        "train.log_every_steps": cfg.train.log_every_steps,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}={value}: must be >= 1")
    if cfg.model.num_classes < 0:
        raise ConfigError(f"model.num_classes={cfg.model.num_classes}: must be >= 0 (0 = from the dataset)")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas={cfg.optim.betas}: expected two numbers")
    if cfg.optim.layer_decay is not None and not 0 < cfg.optim.layer_decay <= 1:
        raise ConfigError(f"optim.layer_decay={cfg.optim.layer_decay}: expected a value in (0, 1]")
    if not 0 <= cfg.train.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing={cfg.train.label_smoothing}: expected a value in [0, 1)")
    parse_views(cfg.train.val_views)
    parse_views(cfg.eval.views)
