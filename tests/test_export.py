"""ONNX and TorchScript export of ATM models, checked against PyTorch (atmvideo.export)."""

from __future__ import annotations

import argparse
import copy
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from atmvideo.commands import export as export_command
from atmvideo.export import check_export, export_model, random_clips
from atmvideo.models import create_model

ATOL = 1e-4
# A 2-block ATM-CLIP-ViT small enough for a test: ATM at the input of block 1 on a 2x2 patch map.
TINY_VIT = {
    "depth": 2,
    "embed_dim": 64,
    "num_heads": 2,
    "img_size": 32,
    "atm_block": 1,
    "atm_hidden": 8,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these small models gain nothing from more, and lose a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _exercise_atm(model: nn.Module) -> nn.Module:
    """Give the zero-initialised ATM projections, the BN statistics and the classifier trained-like values.

    A fresh ATM is the identity (its last 1x1 conv is zero), so an export check on it would pass even
    if the ATM branch were exported wrongly; these weights make every part of it reach the logits. The
    classifier is scaled up to logits of a few units, like a trained model's, so the absolute
    tolerance is not met merely because the logits are small.
    """
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
        for projection in model.atm.project:
            projection.weight.normal_(0.0, 0.5, generator=generator)
        model.head.weight.mul_(30.0)
    return model.eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return _exercise_atm(create_model("atm_resnet18", num_classes=10, num_frames=8))


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return _exercise_atm(
        create_model("atm_vit_base_patch16_clip_224", num_classes=10, num_frames=8, **TINY_VIT)
    )


def _needs_onnx() -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'atmvideo[onnx]')")


def _atm_reaches_the_output(path: Path, fmt: str, model: nn.Module, frames: int, size: int) -> None:
    """The file matches the model, and not the same model without its ATM: the ATM is in the graph."""
    clips = random_clips(2, frames, size, seed=5)
    without_atm = copy.deepcopy(model)
    with torch.no_grad():
        for projection in without_atm.atm.project:
            projection.weight.zero_()
    assert check_export(path, fmt, model, [clips]) <= ATOL
    assert check_export(path, fmt, without_atm, [clips]) > 10 * ATOL


def test_onnx_atm_resnet18_matches_pytorch(resnet: nn.Module, tmp_path: Path) -> None:
    _needs_onnx()
    result = export_model(resnet, tmp_path / "r18.onnx", "onnx", frames=8, size=64)
    assert result.path.is_file() and not Path(f"{result.path}.data").exists()  # weights inside the file
    assert result.input_shape == (2, 8, 3, 64, 64) and result.output_shape == (2, 10)
    assert result.checked_batches == (2, 3)  # a batch size other than the export's: the axis is dynamic
    assert result.max_abs_diff is not None and result.max_abs_diff <= ATOL
    _atm_reaches_the_output(result.path, "onnx", resnet, 8, 64)

    import onnx

    graph = onnx.load(str(result.path)).graph
    assert [i.name for i in graph.input] == ["clips"] and [o.name for o in graph.output] == ["logits"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [8, 3, 64, 64]


def test_onnx_atm_vit_matches_pytorch(vit: nn.Module, tmp_path: Path) -> None:
    _needs_onnx()
    result = export_model(vit, tmp_path / "vit.onnx", "onnx", frames=8, size=32)
    assert result.max_abs_diff is not None and result.max_abs_diff <= ATOL
    _atm_reaches_the_output(result.path, "onnx", vit, 8, 32)


@pytest.mark.parametrize("which", ["resnet", "vit"])
def test_torchscript_matches_pytorch(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model = request.getfixturevalue(which)
    size = 32  # tracing does not depend on the size; small keeps the eager reference runs quick
    result = export_model(model, tmp_path / f"{which}.pt", "torchscript", frames=8, size=size)
    assert result.max_abs_diff is not None and result.max_abs_diff <= ATOL
    _atm_reaches_the_output(result.path, "torchscript", model, 8, size)


def test_export_rejects_a_batch_of_one(resnet: nn.Module, tmp_path: Path) -> None:
    _needs_onnx()
    with pytest.raises(ValueError, match="at least 2 clips"):
        export_model(resnet, tmp_path / "x.onnx", "onnx", frames=8, size=64, batch=1)


def test_unknown_format(resnet: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="onnx, torchscript"):
        export_model(resnet, tmp_path / "x.bin", "tflite", frames=8, size=64)


def test_missing_onnxruntime_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, vit: nn.Module
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "onnxruntime" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match=r"onnxruntime.*pip install 'atmvideo\[onnx\]'"):
        check_export(tmp_path / "missing.onnx", "onnx", vit, [random_clips(2, 8, 32)])


# ------------------------------------------------------------------------------------------- command


def _run_cli(argv: list[str]) -> int:
    """Run the export sub-command alone (independent of the other commands' modules)."""
    parser = argparse.ArgumentParser(prog="atmvideo")
    export_command.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_command_exports_a_model_and_prints_the_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "vit.pt"
    argv = ["export", "--model", "atm_vit_base_patch16_clip_224", "--frames", "4", "--format", "torchscript"]
    argv += ["--out", str(out), *[f"-k{k}={v}" for k, v in TINY_VIT.items()], "-knum_classes=3"]
    assert _run_cli(argv) == 0
    text = capsys.readouterr().out
    assert "clips (batch, 4, 3, 32, 32) -> logits (batch, 3)" in text
    reported = float(text.rsplit(":", 1)[1])
    assert 0 <= reported <= ATOL
    loaded = torch.jit.load(str(out))
    with torch.jit.optimized_execution(False):
        assert loaded(torch.zeros(5, 4, 3, 32, 32)).shape == (5, 3)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_command_exports_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from atmvideo.engine.builders import build_model
    from atmvideo.engine.checkpoint import save_checkpoint
    from atmvideo.engine.config import RunConfig, config_to_dict

    cfg = RunConfig()
    cfg.model.name, cfg.model.num_frames, cfg.model.kwargs = "atm_resnet18", 4, {"atm_hidden": 8}
    cfg.data.input_size = 32
    model = _exercise_atm(build_model(cfg.model, 2, pretrained=False))
    ckpt = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "num_classes": 2}, ckpt)
    out = tmp_path / "model.pt"
    assert _run_cli(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    assert "clips (batch, 4, 3, 32, 32) -> logits (batch, 2)" in capsys.readouterr().out
    clips = random_clips(2, 4, 32, seed=9)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        np.testing.assert_allclose(torch.jit.load(str(out))(clips).numpy(), model(clips).numpy(), atol=ATOL)


def test_command_reports_a_bad_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, bogus)
    assert (
        _run_cli(["export", "--checkpoint", str(bogus), "--format", "onnx", "--out", str(tmp_path / "x")])
        == 1
    )
    assert "not an atmvideo training checkpoint" in capsys.readouterr().err
