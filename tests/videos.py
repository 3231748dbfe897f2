"""Tiny generated videos and frame folders for the data tests (no data is shipped with the tests)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

# Frame i of an ``index_frames`` clip is a flat grey of this level; 12 grey levels apart survive
# lossy coding, so a decoded frame tells which index it was.
_BASE, _STEP = 10, 12


def index_frames(num_frames: int, height: int = 32, width: int = 64) -> np.ndarray:
    """Frames ``(N, H, W, 3)`` whose flat grey level encodes the frame index."""
    if _BASE + _STEP * (num_frames - 1) > 255:
        raise ValueError("too many frames to encode their index in a grey level")
    levels = _BASE + _STEP * np.arange(num_frames)
    return (
        np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).astype(np.uint8).copy()
    )


def frame_index(frame: np.ndarray) -> int:
    """Recover the index of an ``index_frames`` frame from its mean grey level."""
    return int(round((float(np.asarray(frame, dtype=np.float64).mean()) - _BASE) / _STEP))


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    *,
    fps: int = 10,
    codec: str = "libx264",
    gop: int | None = None,
    faststart: bool = False,
    timestamps: bool = True,
) -> Path:
    """Encode ``frames`` (N, H, W, 3) uint8 to a video file; ``gop`` sets the keyframe interval.

    ``timestamps=False`` stamps every frame with time 0: a broken file that only frame counting
    can index.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        codec_options = {"crf": "10"} if codec == "libx264" else {}
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                codec_options.update({"keyint": str(gop), "min-keyint": str(gop), "scenecut": "0"})
        stream.options = codec_options
        for i, frame in enumerate(frames):
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            image.pts, image.time_base = (i if timestamps else 0), Fraction(1, fps)
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frame_folder(
    folder: str | os.PathLike, frames: np.ndarray, template: str = "{:05d}.jpg", start: int = 1
) -> Path:
    """Write ``frames`` as numbered JPEG files, the layout of Something-Something V1."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / template.format(i + start), quality=95)
    return folder
