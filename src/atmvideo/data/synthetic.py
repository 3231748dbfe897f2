"""A small synthetic dataset that only a model of frame order can solve: ``atmvideo make-synthetic``.

Ten classes in five *twin* pairs. In each pair the second class is the first one played
backwards, and a video of the second class is made exactly so: a sample of the first class's
motion is drawn, rendered, and its frames reversed. Start and end positions, sizes, colours
and shapes therefore have the same distribution in both classes of a pair, and so does every
single frame: a model that averages frames without regard to order (TSN) can tell which pair a
video belongs to but not which class of the pair, so its accuracy is capped near 50%, while a
temporal model (ATM) can reach 100%.

=====  ========================================  ==============================================
index  class (SSv2-style template)               motion
=====  ========================================  ==============================================
0, 1   Moving [something] from left to right /   horizontal translation across the frame
       ... from right to left
2, 3   Moving [something] down / up              vertical translation
4, 5   Moving [something] closer / away          the object grows / shrinks
6, 7   Stretching [something] sideways /         the object turns from tall to wide / wide to
       ... upwards                               tall (its area stays the same)
8, 9   [Something] appearing / disappearing      the object pops in / out at 30-70% of the video
=====  ========================================  ==============================================

A horizontal flip turns class 0 into class 1 (and back) and leaves every other class as it is:
train with ``flip=False`` or ``flip_label_map=SYNTHETIC_FLIP_LABEL_MAP`` (``"0-1"``).

Output (Something-Something V2 layout, read with ``DataConfig(format="sthv2", ...)``)::

    DIR/labels.json        {"Moving something from left to right": "0", ...}
    DIR/train.json         [{"id": "17", "label": ..., "template": ..., "placeholders": [...]}, ...]
    DIR/validation.json
    DIR/videos/{id}.mp4    80x80, 16-24 frames at 12 fps, h264 (mpeg4 where h264 is missing)

Everything is a function of the seed: the same seed writes the same annotation files and
the same frames.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CLASSES",
    "FRAME_SIZE",
    "SYNTHETIC_FLIP_LABEL_MAP",
    "VideoSpec",
    "make_synthetic",
    "render",
    "sample_spec",
]

FRAME_SIZE = 80
FPS = 12
MIN_FRAMES, MAX_FRAMES = 16, 24
VAL_FRACTION = 0.3  # validation videos per class, relative to training videos per class
_SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled: smooth sub-pixel motion

# (template, motion, reversed): the second class of each pair is the first one played backwards.
CLASSES: tuple[tuple[str, str, bool], ...] = (
    ("Moving [something] from left to right", "horizontal", False),
    ("Moving [something] from right to left", "horizontal", True),
    ("Moving [something] down", "vertical", False),
    ("Moving [something] up", "vertical", True),
    ("Moving [something] closer", "scale", False),
    ("Moving [something] away", "scale", True),
    ("Stretching [something] sideways", "stretch", False),
    ("Stretching [something] upwards", "stretch", True),
    ("[Something] appearing", "appear", False),
    ("[Something] disappearing", "appear", True),
)
SYNTHETIC_FLIP_LABEL_MAP = "0-1"  # not "0:1": YAML would read that as the base-60 number 1

_SHAPES = ("square", "disk", "triangle", "cross")
_HUES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")


@dataclass
class VideoSpec:
    """Everything that defines one synthetic video."""

    label: int
    num_frames: int
    background: tuple[int, int, int]
    color: tuple[int, int, int]
    color_name: str
    shape: str
    # centre x, centre y, radius, angle (radians), log(width / height) of the stretch
    start: tuple[float, float, float, float, float]
    end: tuple[float, float, float, float, float]
    appear_at: float = 0.0  # fraction of the video from which the object is visible (appear motion)

    @property
    def template(self) -> str:
        """The class template, SSv2 style."""
        return CLASSES[self.label][0]


def sample_spec(label: int, rng: np.random.Generator) -> VideoSpec:
    """Draw a video of class ``label``; twin classes draw from identical distributions."""
    _, motion, _ = CLASSES[label]
    u = rng.uniform
    num_frames = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    background = tuple(int(v) for v in rng.integers(0, 70, size=3))
    hue = u(0, 1)
    color = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, u(0.6, 1.0), u(0.85, 1.0)))
    color_name = _HUES[int(hue * len(_HUES)) % len(_HUES)]
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    radius = u(9.0, 13.0)
    angle = u(0, 2 * math.pi)
    appear_at = 0.0
    if motion == "horizontal":
        y = u(28, 52)
        start, end = (u(18, 28), y, radius, angle, 0.0), (u(52, 62), y + u(-3, 3), radius, angle, 0.0)
    elif motion == "vertical":
        x = u(28, 52)
        start, end = (x, u(18, 28), radius, angle, 0.0), (x + u(-3, 3), u(52, 62), radius, angle, 0.0)
    elif motion == "scale":
        x, y = u(32, 48), u(32, 48)
        start, end = (x, y, u(5, 7), angle, 0.0), (x, y, u(17, 22), angle, 0.0)
    elif motion == "stretch":
        # From about 2:1 tall to 2:1 wide. Stretching acts along the image axes, so a horizontal
        # flip keeps the class (unlike a rotation, which the flip would reverse).
        x, y, radius, stretch = u(32, 48), u(32, 48), u(11.0, 14.0), u(0.6, 0.8)
        start, end = (x, y, radius, angle, -stretch), (x, y, radius, angle, stretch)
    else:  # appear
        x, y = u(28, 52), u(28, 52)
        start = end = (x, y, radius, angle, 0.0)
        appear_at = u(0.3, 0.7)
    return VideoSpec(label, num_frames, background, color, color_name, shape, start, end, appear_at)


def _polygon(
    shape: str, x: float, y: float, r: float, angle: float, stretch: float = 0.0
) -> list[tuple[float, float]] | None:
    """Vertices of ``shape`` at (x, y), size ``r``, turned by ``angle``, then ``exp(stretch)`` times wider.

    None for a disk (drawn as an ellipse).
    """
    if shape == "disk":
        return None
    if shape == "square":
        points = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        points = [(px * 0.85, py * 0.85) for px, py in points]
    elif shape == "triangle":
        points = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "cross":
        a, b = 1.0, 0.35
        points = [
            (-b, -a),
            (b, -a),
            (b, -b),
            (a, -b),
            (a, b),
            (b, b),
            (b, a),
            (-b, a),
            (-b, b),
            (-a, b),
            (-a, -b),
            (-b, -b),
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    c, s = math.cos(angle), math.sin(angle)
    sx, sy = r * math.exp(stretch / 2), r * math.exp(-stretch / 2)
    return [(x + sx * (px * c - py * s), y + sy * (px * s + py * c)) for px, py in points]


def render(spec: VideoSpec) -> np.ndarray:
    """Draw the frames ``(N, 80, 80, 3)`` uint8 of a video; reversed classes come out played backwards."""
    k = _SUPERSAMPLE
    big = FRAME_SIZE * k
    frames = []
    for t in range(spec.num_frames):
        s = t / (spec.num_frames - 1)
        x, y, r, angle, stretch = (a + (b - a) * s for a, b in zip(spec.start, spec.end, strict=True))
        image = Image.new("RGB", (big, big), spec.background)
        if s >= spec.appear_at:
            draw = ImageDraw.Draw(image)
            polygon = _polygon(spec.shape, x * k, y * k, r * k, angle, stretch)
            if polygon is None:
                rx, ry = r * math.exp(stretch / 2), r * math.exp(-stretch / 2)
                draw.ellipse([(x - rx) * k, (y - ry) * k, (x + rx) * k, (y + ry) * k], fill=spec.color)
            else:
                draw.polygon(polygon, fill=spec.color)
        frames.append(np.asarray(image.resize((FRAME_SIZE, FRAME_SIZE), Image.Resampling.BOX)))
    video = np.stack(frames)
    return video[::-1].copy() if CLASSES[spec.label][2] else video


def _codec() -> str:
    import av

    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise RuntimeError("PyAV has neither an h264 nor an mpeg4 encoder")


def _write_mp4(path: Path, frames: np.ndarray, codec: str) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width = stream.height = FRAME_SIZE
        stream.pix_fmt = "yuv420p"
        # Every frame a keyframe: no coding artefact depends on the direction of time (which
        # would leak the class of a reversed twin), and any frame decodes without the others.
        stream.codec_context.gop_size = 1
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
        else:
            stream.codec_context.bit_rate = 1_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _entry(video_id: str, spec: VideoSpec) -> dict:
    thing = f"{spec.color_name} {spec.shape}"
    label = spec.template.replace("[something]", thing).replace("[Something]", thing)
    return {"id": video_id, "label": label.lower(), "template": spec.template, "placeholders": [thing]}


def make_synthetic(out: str | os.PathLike, seed: int = 0, videos: int = 500) -> Path:
    """Write the synthetic dataset (``videos`` training videos, 30% more for validation) to ``out``."""
    if videos < len(CLASSES):
        raise ValueError(f"videos must be at least the number of classes ({len(CLASSES)}), got {videos}")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_class = videos // len(CLASSES)
    val_per_class = max(1, round(per_class * VAL_FRACTION))
    plan = [("train", label) for label in range(len(CLASSES)) for _ in range(per_class)]
    plan += [("train", label) for label in range(videos - len(plan))]  # the remainder, one per class
    plan += [("validation", label) for label in range(len(CLASSES)) for _ in range(val_per_class)]
    order = rng.permutation(len(plan))
    # Ids run in a shuffled order so that neither class nor split can be read off an id.
    ids = rng.permutation(len(plan)) + 1
    codec = _codec()
    splits: dict[str, list[dict]] = {"train": [], "validation": []}
    for n in order:
        split, label = plan[n]
        spec = sample_spec(label, rng)
        video_id = str(int(ids[n]))
        _write_mp4(out / "videos" / f"{video_id}.mp4", render(spec), codec)
        splits[split].append(_entry(video_id, spec))
    for split, entries in splits.items():
        entries.sort(key=lambda e: int(e["id"]))
        (out / f"{split}.json").write_text(json.dumps(entries, indent=1) + "\n")
    labels = {
        template.replace("[", "").replace("]", ""): str(i) for i, (template, _, _) in enumerate(CLASSES)
    }
    (out / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    return out
