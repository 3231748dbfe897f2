"""FLOP counts reproduce the paper's ResNet table (SPEC §4) within 3%."""

from __future__ import annotations

import json

import pytest

from atmvideo.cli import main
from atmvideo.flops import count_flops

# (model, frames, keyword arguments, the paper's GFLOPs)
PAPER_RESNET_ROWS = [
    ("tsn_resnet18", 8, {}, 14.5),
    ("atm_resnet18", 8, {"atm_context": 1, "tconv": False}, 15.4),
    ("atm_resnet18", 8, {"atm_context": 2, "tconv": False}, 16.5),
    ("atm_resnet18", 8, {"atm_context": 4, "tconv": False}, 17.7),
    ("atm_resnet18", 8, {"atm_context": 6, "tconv": False}, 18.8),
    ("atm_resnet18", 8, {"atm_stage": 2}, 26.5),
    ("atm_resnet18", 8, {"atm_stage": 3}, 17.7),
    ("atm_resnet18", 8, {"atm_stage": 4}, 17.9),
    ("atm_resnet18", 8, {"atm_stage": 5}, 15.5),
    ("atm_resnet50", 8, {}, 37),
    ("atm_resnet50", 16, {}, 74),
    ("atm_resnet50", 32, {}, 148),
    ("atm_resnet101", 8, {}, 67),
    ("atm_resnet101", 16, {}, 134),
    ("atm_resnet101", 32, {}, 268),
    ("atm_resnet152", 16, {}, 191),
]


@pytest.mark.parametrize(("name", "frames", "kwargs", "paper"), PAPER_RESNET_ROWS)
def test_resnet_rows_match_paper(name: str, frames: int, kwargs: dict, paper: float) -> None:
    result = count_flops(name, frames=frames, **kwargs)
    assert result.gflops == pytest.approx(paper, rel=0.03)
    assert result.size == 224 and result.frames == frames


def test_atm_cost_grows_with_context_and_params_are_counted() -> None:
    costs = [count_flops("atm_resnet18", frames=8, atm_context=z, tconv=False).gflops for z in (1, 2, 4, 6)]
    assert costs == sorted(costs)
    tsn = count_flops("tsn_resnet18", frames=8)
    atm = count_flops("atm_resnet18", frames=8)
    assert 11_000_000 < tsn.params < 11_500_000  # ResNet-18 without its ImageNet head, + 400-way head
    assert atm.params > tsn.params


def test_flops_scale_with_frames_and_area() -> None:
    base = count_flops("tsn_resnet18", frames=4, size=112).gflops
    assert count_flops("tsn_resnet18", frames=8, size=112).gflops == pytest.approx(2 * base, rel=1e-3)
    # 112 px leaves a 4x4 (not 3.5x3.5) res5 map, so the area ratio is only close to 4
    assert count_flops("tsn_resnet18", frames=4, size=224).gflops == pytest.approx(4 * base, rel=0.1)


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["flops", "atm_resnet18", "--frames", "8", "-k", "atm_context=2", "-k", "tconv=false", "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["gflops"] == pytest.approx(16.5, rel=0.03)
    assert isinstance(result["params"], int)


def test_cli_text_and_bad_kwarg(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "tsn_resnet18", "--frames", "8"]) == 0
    assert "GFLOPs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["flops", "tsn_resnet18", "-k", "oops"])


@pytest.mark.parametrize(
    ("name", "frames", "paper"),
    [
        ("atm_vit_base_patch16_clip_224", 32, 378),
        ("atm_vit_large_patch14_clip_224", 8, 421),
        ("atm_vit_large_patch14_clip_336", 8, 946),
    ],
)
def test_vit_rows_match_paper_without_attention(name: str, frames: int, paper: float) -> None:
    paper_count = count_flops(name, frames=frames, convention="paper")
    assert paper_count.gflops == pytest.approx(paper, rel=0.01)
    full = count_flops(name, frames=frames)
    assert full.gflops > 1.4 * paper_count.gflops  # the honest count includes attention


def test_paper_convention_leaves_resnets_unchanged() -> None:
    full = count_flops("atm_resnet18", frames=2, size=64)
    paper = count_flops("atm_resnet18", frames=2, size=64, convention="paper")
    assert paper.gflops == full.gflops
    with pytest.raises(ValueError, match="unknown FLOP convention"):
        count_flops("atm_resnet18", frames=2, size=64, convention="fvcore")
