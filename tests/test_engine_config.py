"""The run configuration: schema, recipes, overrides, errors, round trips."""

from __future__ import annotations

import argparse

import pytest
import torch
import yaml

from atmvideo.engine.builders import model_kwargs, per_device_batch_size
from atmvideo.engine.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    list_recipes,
    load_config,
    parse_views,
    recipe_path,
    resolve_config,
)
from atmvideo.engine.runner import add_config_arguments
from atmvideo.models import create_model

# one recipe per column of SPEC §6, and the ablations of Tables 1 and 2
REQUIRED_RECIPES = [
    "atm_r50_in1k_8x1x1_60e_sthv1",
    "atm_r50_in1k_8x1x1_60e_sthv2",
    "atm_r50_in1k_8x1x1_150e_k400",
    "atm_vitb16_clip_8x1x1_20e_sthv1",
    "atm_vitb16_clip_8x1x1_20e_sthv2",
    "atm_vitb16_clip_8x1x1_20e_k400",
    "atm_vitl14_clip_16x1x1_15e_anet",
    "atm_vitl14_clip_16x1x1_15e_charades",
    "tsn_r18_in1k_8x1x1_60e_sthv1",
    "tconv_r18_in1k_8x1x1_60e_sthv1",
    "atm-add_r18_in1k_8x1x1_60e_sthv1",
    "atm-z2_r18_in1k_8x1x1_60e_sthv1",
    "atm-fc_r18_in1k_8x1x1_60e_sthv1",
    "atm-res2_r18_in1k_8x1x1_60e_sthv1",
    "atm-cascade_r18_in1k_8x1x1_60e_sthv1",
    "atm-block4_vitb16_clip_8x1x1_20e_sthv1",
    "demo_atm_r18_synthetic",
    "demo_tsn_r18_synthetic",
]


def test_required_recipes_are_shipped():
    names = set(list_recipes())
    missing = [n for n in REQUIRED_RECIPES if n not in names]
    assert not missing
    assert len(names) >= 60


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_validates_and_builds_its_model(name):
    cfg = resolve_config(name)
    assert cfg.description
    # the model entry point accepts every keyword the recipe gives it (built on meta: no memory)
    with torch.device("meta"):
        model = create_model(
            cfg.model.name, **model_kwargs(cfg.model, cfg.model.num_classes, pretrained=False)
        )
    assert model.num_classes == cfg.model.num_classes
    assert model.num_frames == cfg.model.num_frames
    # the global batch splits over 1, 2, 4 and 8 GPUs
    for world in (1, 2, 4, 8):
        assert per_device_batch_size(cfg, world) * world * cfg.train.accum_steps == cfg.train.batch_size


def test_recipe_values_follow_the_paper():
    r50 = resolve_config("atm_r50_in1k_8x1x1_60e_sthv1")
    assert (r50.optim.name, r50.optim.lr, r50.optim.weight_decay) == ("sgd", 0.01, 5e-4)
    assert r50.optim.milestones == [30, 45, 55] and r50.train.epochs == 60 and r50.train.batch_size == 64
    assert (r50.model.atm_ops, r50.model.atm_context, r50.model.atm_stage, r50.model.tconv) == (
        "mul,sub",
        4,
        3,
        True,
    )
    k400 = resolve_config("atm_r50_in1k_8x1x1_150e_k400")
    assert k400.optim.milestones == [80, 120, 140] and k400.eval.views == "3x10"
    vit = resolve_config("atm_vitb16_clip_8x1x1_20e_sthv1")
    assert (vit.optim.name, vit.optim.lr, vit.optim.layer_decay, vit.optim.schedule) == (
        "adamw",
        7e-4,
        0.7,
        "cosine",
    )
    assert (vit.train.mixup_alpha, vit.train.cutmix_alpha, vit.train.label_smoothing) == (0.8, 1.0, 0.1)
    assert (vit.data.randaugment, vit.data.repeated_aug, vit.eval.views) == (
        "rand-m7-n4-mstd0.5-inc1",
        2,
        "3x2",
    )
    assert vit.model.atm_block == 7 and vit.optim.warmup_epochs == 5.0
    vitl_k400 = resolve_config("atm_vitl14_clip_8x1x1_15e_k400")
    assert (vitl_k400.optim.lr, vitl_k400.optim.layer_decay, vitl_k400.data.grayscale) == (2e-4, 0.7, 0.2)
    charades = resolve_config("atm_vitl14_clip_16x1x1_15e_charades")
    assert charades.data.format == "charades" and charades.model.num_classes == 157
    assert resolve_config("atm-z6_r18_in1k_8x1x1_60e_sthv1").model.atm_context == 6
    assert resolve_config("atm-res5_r18_in1k_8x1x1_60e_sthv1").model.atm_stage == 5
    assert resolve_config("atm-block10_vitb16_clip_8x1x1_20e_sthv1").model.atm_block == 10


def test_overrides_are_parsed_as_yaml_and_applied_in_order():
    cfg = resolve_config(
        "atm_r50_in1k_8x1x1_60e_sthv1",
        ["optim.lr=1e-3", "optim.milestones=[10, 20]", "train.amp=none", "model.tconv=false", "optim.lr=0.5"],
    )
    assert cfg.optim.lr == 0.5  # the later item wins; "1e-3" (a YAML 1.1 string) was accepted as a float
    assert cfg.optim.milestones == [10, 20]
    assert cfg.model.tconv is False and cfg.train.amp == "none"
    cfg = apply_overrides(
        cfg, ["optim.milestones=5,7", "model.atm_ops=null", "model.kwargs={norm_layer: groupnorm}"]
    )
    assert cfg.optim.milestones == [5, 7] and cfg.model.atm_ops is None
    assert cfg.model.kwargs == {"norm_layer": "groupnorm"}


def test_text_fields_take_the_text_as_written():
    cfg = resolve_config(
        None,
        ["data.flip_label_map=6:7", "data.root=2024-01-01", "data.train='x y.txt'", "model.atm_ops=mul,sub"],
    )
    assert cfg.data.flip_label_map == "6:7"  # not YAML's base-60 number 367
    assert cfg.data.root == "2024-01-01" and cfg.data.train == "x y.txt" and cfg.model.atm_ops == "mul,sub"
    assert resolve_config(None, ["model.atm_ops=null"]).model.atm_ops is None
    assert resolve_config(None, ["data.labels="]).data.labels == ""


def test_set_flag_takes_several_items_and_repeats():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config", "x", "--set", "a.b=1", "c.d=2", "--set", "e.f=3"])
    assert args.overrides == ["a.b=1", "c.d=2", "e.f=3"]


def test_switching_to_list_format_resets_what_belongs_to_the_recipes_dataset():
    sets = [
        "data.format=list",
        "data.root=/d",
        "data.train=/d/t.txt",
        "data.val=/d/v.txt",
        "model.num_classes=5",
    ]
    recipe = "atm_vitb16_clip_8x1x1_20e_sthv2"
    original = resolve_config(recipe).data
    assert (original.labels, original.flip, original.flip_label_map) == (
        "data/sthv2/labels/labels.json",
        True,
        "sthv2",
    )
    data = resolve_config(recipe, sets).data
    assert (data.format, data.labels, data.flip, data.flip_label_map) == ("list", "", False, "")
    assert resolve_config(recipe, sets).model.num_classes == 5
    # whatever is set explicitly stays
    data = resolve_config(recipe, [*sets, "data.labels=/d/c.txt", "data.flip=true"]).data
    assert (data.labels, data.flip) == ("/d/c.txt", True)
    # the same format: nothing is reset
    assert resolve_config(recipe, ["data.root=/x"]).data.flip_label_map == "sthv2"


def test_unknown_key_error_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError) as err:
        resolve_config(None, ["optim.lrr=0.1"])
    text = str(err.value)
    assert "--set 'optim.lrr=0.1'" in text and "did you mean 'optim.lr'" in text
    assert "optim.weight_decay" in text and "optim.milestones" in text
    with pytest.raises(
        ConfigError, match="unknown config key 'optm'.*valid keys: model, data, optim, train, eval"
    ):
        resolve_config(None, ["optm.lr=1"])


def test_bad_values_are_rejected_with_the_key():
    with pytest.raises(ConfigError, match="optim.lr expects float, got 'fast'"):
        resolve_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="train.epochs expects int"):
        resolve_config(None, ["train.epochs=1.5"])
    with pytest.raises(ConfigError, match=r"train.amp='fp32': expected one of none, bf16, fp16"):
        resolve_config(None, ["train.amp=fp32"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        resolve_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="crops must be 1 or 3"):
        resolve_config(None, ["eval.views=2x4"])


def test_recipe_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name: atm_resnet18\ntrain:\n  epochs: 3\n  batch_sise: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:5" in str(err.value) and "did you mean 'train.batch_size'" in str(err.value)
    path.write_text("optim:\n  lr: [1, 2]\n")
    with pytest.raises(ConfigError, match=f"{path}:2: optim.lr expects float"):
        load_config(path)
    path.write_text("model: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_unknown_recipe_name_suggests_close_ones():
    with pytest.raises(ConfigError, match="Did you mean: .*atm_r50_in1k_8x1x1_60e_sthv1"):
        recipe_path("atm_r50_in1k_8x1x1_60e_sthv")
    assert recipe_path("atm_r50_in1k_8x1x1_60e_sthv1.yaml").name == "atm_r50_in1k_8x1x1_60e_sthv1.yaml"


def test_dump_and_dict_round_trip():
    cfg = resolve_config("atm_vitb16_clip_8x1x1_20e_sthv2", ["model.kwargs={a: 1}", "optim.layer_decay=0.5"])
    text = dump_config(cfg)
    assert "milestones: []" in text and "betas: [0.9, 0.999]" in text
    assert config_from_dict(yaml.safe_load(text), strict=True) == cfg
    assert config_from_dict(config_to_dict(cfg), strict=True) == cfg
    with pytest.raises(ConfigError):
        config_from_dict({"train": {"nope": 1}}, strict=True)
    # checkpoints of older versions (unknown keys) still load
    assert config_from_dict({"train": {"nope": 1, "epochs": 7}}).train.epochs == 7


def test_views_and_batch_helpers():
    assert parse_views("3x10") == (3, 10) and parse_views("1X2") == (1, 2)
    cfg = RunConfig()
    cfg.train.batch_size, cfg.train.accum_steps = 64, 2
    assert per_device_batch_size(cfg, 4) == 8
    with pytest.raises(ConfigError, match="not divisible"):
        per_device_batch_size(cfg, 3)


def test_recipes_command(capsys):
    from atmvideo.cli import main

    assert main(["recipes"]) == 0
    assert capsys.readouterr().out.split() == list_recipes()
    assert main(["recipes", "atm_r50*sthv1", "-l"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "atm_r50_in1k_16x1x1_60e_sthv1",
        "atm_r50_in1k_8x1x1_60e_sthv1",
    ]
    assert "paper: 53.9 top-1" in lines[1]
    assert main(["recipes", "--show", "demo_atm_r18_synthetic"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == "atm_resnet18"
    assert main(["recipes", "--show", "nope"]) == 2
