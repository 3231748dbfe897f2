"""What the arithmetic operations see: the paper's Figure 1 on any video, and a trained ATM's cue maps.

Figure 1 of the paper shows two consecutive frames and the four operations (+, −, ×, ÷) applied to
their pixels. :func:`figure1_maps` computes those maps with the project's own operations
(``atmvideo.ops``), one single-channel ``(H, W)`` map per operation, from frames as RGB in ``[0, 1]``:

- ``add``: mean over R, G, B of ``a + b`` (range ``[0, 2]``): the two frames blended.
- ``sub``: mean over R, G, B of ``b − a`` (``[−1, 1]``): signed change, zero wherever nothing moved.
- ``mul``: the local correlation at zero displacement, i.e. the cosine similarity of the two frames'
  feature vectors at the same pixel (``[−1, 1]``, 1 = unchanged). A pixel's feature vector is its
  3 x 3 RGB neighbourhood (27 values) minus the pair's mean colour: the neighbourhood makes it see
  structure, not only colour, and centring lets dissimilar vectors point apart (all-positive RGB
  vectors are nearly parallel). It goes through ``ops.correlate`` (L2 normalisation with eps 1e-6,
  as in ATM, on 0..255 values so the eps is negligible); a pixel whose whole neighbourhood equals the
  mean colour scores 0. Zero displacement
  is what the paper's text describes ("features unchanged along time are highlighted"); the maximum
  over the P x P window would be ~1 almost everywhere, since small motions stay inside the window.
- ``div``: mean over R, G, B of ``ops.div`` on 0..255 intensities, ``log(b + 1) − log(a + 1)``: the
  log ratio of brightness (range about ``±5.5``), which weighs a change in a dark region more than
  the same change in a bright one.

With a trained checkpoint, :func:`atm_cue_maps` runs a clip through the model and records the ATM's
learned cues: the output of each operation branch's feature extractor, per (anchor, context) pair,
reduced to one map per context offset by the mean absolute value over channels.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from atmvideo import ops

__all__ = [
    "FIGURE1_OPS",
    "CueMaps",
    "atm_cue_maps",
    "clip_indices",
    "figure1_figure",
    "figure1_maps",
    "pair_cues",
    "plot_figure1",
    "resize_frames",
    "visualize_video",
]

FIGURE1_OPS: tuple[str, ...] = ("add", "sub", "mul", "div")
SYMBOLS: dict[str, str] = {"add": "+", "sub": "−", "mul": "×", "div": "÷", "context": "ctx"}
TITLES: dict[str, str] = {
    "add": "(c) +  a + b",
    "sub": "(d) −  b − a",
    "mul": "(e) ×  correlation (cosine) of 3x3 patches",
    "div": "(f) ÷  log(b + 1) − log(a + 1)",
}
FEATURE_PATCH = 3  # side of the RGB neighbourhood that forms a pixel's feature vector for ``mul``


def _as_float_rgb(frame: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An ``(H, W, 3)`` frame (uint8, or float in [0, 1]) as a float64 ``(3, H, W)`` tensor in [0, 1]."""
    tensor = torch.as_tensor(np.asarray(frame) if not isinstance(frame, torch.Tensor) else frame)
    if tensor.ndim != 3 or tensor.shape[-1] != 3:
        raise ValueError(f"expected an RGB frame (H, W, 3), got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        tensor = tensor.double() / 255.0
    else:
        tensor = tensor.double()
    return tensor.permute(2, 0, 1)


def figure1_maps(
    frame_a: np.ndarray | torch.Tensor, frame_b: np.ndarray | torch.Tensor
) -> dict[str, np.ndarray]:
    """The four operation maps of the paper's Figure 1 between frames ``a`` (anchor) and ``b`` (next).

    Frames are ``(H, W, 3)`` RGB, uint8 or float in ``[0, 1]``. Returns ``{"add", "sub", "mul", "div"}``
    -> float ``(H, W)`` arrays, as defined in this module's docstring.
    """
    a, b = _as_float_rgb(frame_a), _as_float_rgb(frame_b)
    if a.shape != b.shape:
        raise ValueError(f"frames differ in size: {tuple(frame_a.shape)} and {tuple(frame_b.shape)}")
    maps = {
        "add": ops.arithmetic("add", a, b).mean(dim=0),
        "sub": ops.arithmetic("sub", a, b).mean(dim=0),
        "div": ops.arithmetic("div", a * 255.0, b * 255.0).mean(dim=0),
    }
    # One mean colour for both frames: a colour present in both stays the same vector in both. On the
    # 0..255 scale the normalisation's eps (1e-6) is negligible even for low-contrast neighbourhoods.
    mean = torch.cat([a, b], dim=-1).mean(dim=(-2, -1), keepdim=True)
    features = [_patch_features((x - mean) * 255.0) for x in (a, b)]
    correlation = ops.arithmetic("mul", features[0], features[1], patch_size=1)  # (1, 1, H, W)
    maps["mul"] = correlation[0, 0]
    return {name: maps[name].float().numpy() for name in FIGURE1_OPS}


def _patch_features(image: torch.Tensor) -> torch.Tensor:
    """``(3, H, W) -> (3 * p * p, H, W)``: each pixel's p x p neighbourhood (zeros outside the frame)."""
    height, width = image.shape[-2:]
    cols = F.unfold(image.unsqueeze(0), FEATURE_PATCH, padding=FEATURE_PATCH // 2)
    return cols.view(-1, height, width)


def resize_frames(frames: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """Shrink uint8 ``(N, H, W, 3)`` frames so their longer side is at most ``max_side`` (None: unchanged)."""
    height, width = frames.shape[1:3]
    if not max_side or max(height, width) <= max_side:
        return frames
    scale = max_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(
        frames.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def clip_indices(anchor: int, num_frames: int, total: int, stride: int = 1) -> tuple[list[int], int]:
    """Frame indices of a ``num_frames`` clip around frame ``anchor``, and the anchor's position in it.

    Frames are ``stride`` apart; the anchor sits at position ``T // 2 - 1`` when the video allows, so it
    has context on both sides and (stride 1) its ``+1`` context is frame ``anchor + 1``. Near the ends of
    the video the clip shifts to stay inside it.
    """
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
    span = (num_frames - 1) * stride
    start = anchor - max(num_frames // 2 - 1, 0) * stride
    overflow = start + span - (total - 1)
    if overflow > 0:  # past the end: move back by whole strides, so the anchor stays on the grid
        start -= math.ceil(overflow / stride) * stride
    if start < 0:  # before the start (a video shorter than the clip): move forward, clamp the end
        start += math.ceil(-start / stride) * stride
    indices = [min(start + i * stride, max(total - 1, 0)) for i in range(num_frames)]
    position = (anchor - start) // stride
    return indices, position


@dataclass
class CueMaps:
    """Learned ATM cues of one anchor frame: per operation, one ``(h, w)`` map per context offset."""

    ops: tuple[str, ...]
    offsets: list[int]
    maps: dict[str, np.ndarray]  # op -> (len(offsets), h, w), channel-mean |cue|
    logits: torch.Tensor  # (num_classes,) of the clip


@torch.no_grad()
def atm_cue_maps(model: torch.nn.Module, clip: torch.Tensor, anchor: int) -> CueMaps:
    """Run a normalised clip ``(T, 3, S, S)`` through ``model``; record each ATM branch's cues of ``anchor``.

    The cue of a pair is the output of the branch's feature extractor (weights shared over pairs), one
    ``(D, h, w)`` map per (anchor, context offset); shown as its mean absolute value over the D channels.
    """
    atm = getattr(model, "atm", None)
    if atm is None:
        raise ValueError(
            f"{type(model).__name__} has no ATM (a tsn_* or tconv_* model?): no learned cues to show"
        )
    frames = clip.shape[0]
    if not 0 <= anchor < frames:
        raise ValueError(f"anchor {anchor} is outside the clip of {frames} frames")
    inputs: dict[str, tuple[torch.Tensor, int]] = {}
    handles = []
    for branch in atm.branches:
        # The per-pair cues never leave the branch's forward (its fast path runs the extractor's
        # layers one by one), so record what the branch receives and recompute them from that.
        def hook(_module: Any, args: tuple[Any, ...], op: str = branch.op) -> None:
            inputs[op] = (args[0].detach(), int(args[1]))

        handles.append(branch.register_forward_pre_hook(hook))
    try:
        model.eval()
        logits = model(clip.unsqueeze(0))[0]
    finally:
        for handle in handles:
            handle.remove()
    maps = {}
    for branch in atm.branches:
        cue = pair_cues(branch, *inputs[branch.op])  # (B*T, Z', D, h, w) with B = 1
        maps[branch.op] = cue[anchor].abs().mean(dim=1).float().cpu().numpy()
    return CueMaps(ops=tuple(atm.ops), offsets=list(atm.offsets), maps=maps, logits=logits.float().cpu())


@torch.no_grad()
def pair_cues(branch: torch.nn.Module, reduced: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per-pair cues of an ATM ``OperationBranch``: ``(B*T, D, h, w) -> (B*T, Z', D, h, w)``.

    The first half of the branch's forward with its own modules: span the context, apply the
    operation, encode correlations (``mul``), run the shared feature extractor on every pair.
    """
    n, hidden, height, width = reduced.shape
    clip = reduced.reshape(n // num_frames, num_frames, hidden, height, width)
    context = ops.span_context(clip, branch.offsets)  # (B, T, Z', D, h, w)
    cue = ops.arithmetic(branch.op, clip.unsqueeze(2), context, branch.patch_size).flatten(0, 2)
    if branch.encoder is not None:
        cue = branch.encoder(cue)
    cue = branch.extractor(cue.contiguous())
    return cue.reshape(n, len(branch.offsets), *cue.shape[1:])


# ------------------------------------------------------------------------------------------- plotting


def _new_figure(figsize: tuple[float, float], dpi: int) -> Any:
    # Figure + Agg canvas instead of pyplot: no global state, no display needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _symmetric_limit(values: np.ndarray) -> float:
    """A colour range ``±limit`` that ignores the brightest 0.5 % (codec noise would flatten the rest)."""
    limit = float(np.percentile(np.abs(values), 99.5)) if values.size else 0.0
    return limit if limit > 1e-6 else max(float(np.abs(values).max(initial=0.0)), 1e-6)


def _map_style(op: str, values: np.ndarray) -> dict[str, Any]:
    """Colour map and range of one operation's panel: diverging around 0 for signed changes."""
    if op in ("sub", "div"):
        limit = _symmetric_limit(values)
        return {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}
    if op == "mul":
        low = float(np.percentile(values, 0.5)) if values.size else 0.0
        return {"cmap": "magma", "vmin": min(low, 1.0 - 1e-3), "vmax": 1.0}
    return {"cmap": "gray", "vmin": 0.0, "vmax": 2.0}


def figure1_figure(
    frame_a: np.ndarray | torch.Tensor,
    frame_b: np.ndarray | torch.Tensor,
    maps: dict[str, np.ndarray],
    *,
    labels: Sequence[str] = ("frame K", "frame K+1"),
    title: str | None = None,
    cues: CueMaps | None = None,
    class_names: Sequence[str] | None = None,
    dpi: int = 100,
) -> Any:
    """A matplotlib Figure: the six Figure 1 panels (two frames, four maps with colour bars), ``cues``."""
    height, width = np.asarray(frame_a).shape[:2]
    panel_w = 4.2
    panel_h = max(1.6, panel_w * height / width) + 0.5
    cue_rows = len(cues.ops) if cues is not None else 0
    cue_cols = len(cues.offsets) if cues is not None else 0
    cue_h = cue_rows * 2.3 + 0.8 if cues is not None else 0.0
    fig = _new_figure((3 * panel_w, 2 * panel_h + cue_h + (0.4 if title else 0.0)), dpi)
    if title:
        fig.suptitle(title)
    if cues is not None:
        top, bottom = fig.subfigures(2, 1, height_ratios=[2 * panel_h, cue_h])
    else:
        top, bottom = fig, None
    axes = top.subplots(2, 3)
    for ax, frame, label in zip(axes[0, :2], (frame_a, frame_b), labels, strict=True):
        ax.imshow(np.asarray(frame))
        ax.set_title(label)
    for ax, op in zip([axes[0, 2], *axes[1]], FIGURE1_OPS, strict=True):
        image = ax.imshow(maps[op], interpolation="nearest", **_map_style(op, maps[op]))
        ax.set_title(TITLES[op], fontsize=10)
        # An inset colour bar follows the image's drawn box (aspect kept), so it is exactly as tall.
        top.colorbar(image, cax=ax.inset_axes((1.03, 0.0, 0.045, 1.0)))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if cues is not None and bottom is not None:
        _plot_cues(bottom, cues, cue_rows, cue_cols, class_names)
    return fig


def plot_figure1(
    frame_a: np.ndarray | torch.Tensor,
    frame_b: np.ndarray | torch.Tensor,
    maps: dict[str, np.ndarray],
    out_png: str | os.PathLike,
    **kwargs: Any,
) -> Path:
    """Write :func:`figure1_figure` (same keyword arguments) to a PNG file atomically."""
    from atmvideo.engine.outputs import atomic_write_bytes

    fig = figure1_figure(frame_a, frame_b, maps, **kwargs)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return atomic_write_bytes(out_png, buf.getvalue())


def _plot_cues(subfig: Any, cues: CueMaps, rows: int, cols: int, class_names: Sequence[str] | None) -> None:
    """One row per operation, one column per context offset; one colour scale per row."""
    probs = torch.softmax(cues.logits, dim=0)
    best = int(probs.argmax())
    name = class_names[best] if class_names is not None and best < len(class_names) else str(best)
    subfig.suptitle(
        f"learned ATM cues of frame K (mean |cue| over channels); prediction: {name} (p={probs[best]:.2f})",
        fontsize=11,
    )
    axes = np.asarray(subfig.subplots(rows, cols, squeeze=False))
    for row, op in enumerate(cues.ops):
        values = cues.maps[op]
        # The row's own range: cues of one operation are compared across offsets, and a scale from 0
        # would flatten maps whose values all sit in a narrow band.
        vmin = float(values.min()) if values.size else 0.0
        vmax = max(float(values.max()) if values.size else 1.0, vmin + 1e-6)
        image = None
        for col, offset in enumerate(cues.offsets):
            ax = axes[row, col]
            image = ax.imshow(values[col], cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(
                f"{SYMBOLS.get(op, op)}  K{offset:+d}" if offset else f"{SYMBOLS.get(op, op)}  K (self)"
            )
            ax.set_xticks([])
            ax.set_yticks([])
        subfig.colorbar(image, ax=list(axes[row]), shrink=0.85)


# ------------------------------------------------------------------------------------------ end to end


def _model_clip(frames: torch.Tensor, config: dict[str, Any], model: torch.nn.Module) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` frames -> the normalised centre view ``(T, 3, S, S)`` that evaluation uses."""
    from atmvideo.data.transforms import EvalTransform, normalize_stats

    data = config.get("data", {}) if isinstance(config, dict) else {}
    size = int(data.get("input_size") or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    short_side = int(data.get("short_side") or math.ceil(size * 256 / 224))
    mean, std = normalize_stats(
        str(data.get("normalize") or model.pretrained_cfg.get("normalize", "imagenet"))
    )
    return EvalTransform(size=size, short_side=short_side, mean=mean, std=std)(frames)[0]


def visualize_video(
    video: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    frame: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    backend: str = "pyav",
    max_side: int | None = 512,
    stride: int = 1,
) -> Path:
    """Write Figure 1 of frames ``frame`` and ``frame + 1`` of ``video`` (default: the middle) to ``out_png``.

    With ``checkpoint``, also the learned ATM cues of that frame: the model sees a clip of its
    ``num_frames`` frames, ``stride`` apart, around the frame (see :func:`clip_indices`). Raises
    ``VideoReadError`` when the video cannot be read.
    """
    from atmvideo.data.decode import count_frames, read_frames

    total = count_frames(video, backend=backend)
    if total < 2:
        raise ValueError(f"{video}: Figure 1 needs two frames, the video has {total}")
    if frame is None:
        frame = total // 2 - 1
    if not 0 <= frame < total - 1:
        raise ValueError(f"--frame {frame}: must be in 0..{total - 2} (the video has {total} frames)")
    pair = read_frames(video, [frame, frame + 1], backend=backend)
    shown = resize_frames(pair, max_side)
    maps = figure1_maps(shown[0], shown[1])
    cues, class_names = None, None
    if checkpoint is not None:
        from atmvideo.export import load_checkpoint_model

        model, info = load_checkpoint_model(checkpoint)
        num_frames = int(info["config"].get("model", {}).get("num_frames") or model.num_frames)
        indices, anchor = clip_indices(frame, num_frames, total, stride)
        clip = _model_clip(read_frames(video, indices, backend=backend), info["config"], model)
        cues = atm_cue_maps(model, clip, anchor)
        class_names = info.get("class_names")
    name = Path(video).name
    title = f"{name}: frames {frame} and {frame + 1} of {total}"
    return plot_figure1(
        shown[0].numpy(),
        shown[1].numpy(),
        maps,
        out_png,
        labels=(f"(a) frame {frame}", f"(b) frame {frame + 1}"),
        title=title,
        cues=cues,
        class_names=class_names,
    )
