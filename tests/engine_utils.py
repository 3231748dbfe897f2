"""Tiny generated video datasets and run helpers for the engine tests (no data ships with the tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Encode ``(N, H, W, 3)`` uint8 frames, every frame a keyframe (fast, exact random access)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 1
        stream.codec_context.bit_rate = 2_000_000
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def moving_square(label: int, rng: np.random.Generator, num_frames: int = 8, size: int = 32) -> np.ndarray:
    """A bright square crossing the frame left-to-right (label 0) or right-to-left (label 1).

    Both classes show the same set of frames, only in opposite order: a frame-averaging model
    cannot tell them apart, a temporal one can.
    """
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    frames[:] = rng.integers(0, 40, size=3, dtype=np.uint8)
    y = int(rng.integers(4, size - 12))
    side = 8
    xs = np.linspace(2, size - side - 2, num_frames).round().astype(int)
    color = rng.integers(150, 256, size=3, dtype=np.uint8)
    for t, x in enumerate(xs):
        frames[t, y : y + side, x : x + side] = color
    return frames[::-1].copy() if label == 1 else frames


def write_two_class_list_dataset(
    root: Path,
    make_frames: Callable[[int, np.random.Generator], np.ndarray],
    *,
    train: int,
    val: int,
    num_frames: int,
    seed: int,
) -> dict[str, str]:
    """Write ``videos/*.mp4`` + ``train.txt`` / ``val.txt`` with labels alternating 0, 1.

    ``make_frames(label, rng)`` draws one video; returns the ``--set`` values that point a recipe at it.
    """
    rng = np.random.default_rng(seed)
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("val", val)):
        lines = []
        for i in range(count):
            label = i % 2
            name = f"{split}_{i:03d}.mp4"
            write_mp4(videos / name, make_frames(label, rng))
            lines.append(f"{name} {num_frames} {label}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return {
        "data.format": "list",
        "data.root": str(videos),
        "data.train": str(root / "train.txt"),
        "data.val": str(root / "val.txt"),
        "model.num_classes": "2",
    }


def make_list_dataset(
    root: Path, *, train: int, val: int, num_frames: int = 8, size: int = 32, seed: int = 0
) -> dict[str, str]:
    """A two-class (left vs right) list-format dataset of :func:`moving_square` videos."""
    return write_two_class_list_dataset(
        root,
        lambda label, rng: moving_square(label, rng, num_frames, size),
        train=train,
        val=val,
        num_frames=num_frames,
        seed=seed,
    )


def tiny_overrides(data: dict[str, str], **extra: object) -> list[str]:
    """``--set`` items of a fast CPU run: TSN-ResNet-18 at 32 px, 4 frames, no workers, float32."""
    values: dict[str, object] = {
        **data,
        "model.name": "tsn_resnet18",
        "model.num_frames": 4,
        "model.drop_rate": 0.0,
        "data.input_size": 32,
        "data.short_side": 32,
        "data.num_workers": 0,
        "data.flip": "false",
        "optim.name": "sgd",
        "optim.lr": 0.01,
        "optim.schedule": "cosine",
        "train.epochs": 1,
        "train.batch_size": 4,
        "train.amp": "none",
        "train.progress": "false",
        "train.tensorboard": "false",
        "eval.batch_size": 8,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def free_port() -> int:
    """An unused TCP port for a torchrun rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subprocess_env(threads: int = 1) -> dict[str, str]:
    """Environment of a child ``atmvideo`` process: offline, few threads, the repo's sources first."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def atmvideo_cmd(*args: str) -> list[str]:
    """Command line that runs ``atmvideo`` with this interpreter."""
    return [sys.executable, "-m", "atmvideo", *args]


def run_atmvideo(*args: str, timeout: float = 300, threads: int = 1) -> subprocess.CompletedProcess:
    """Run ``atmvideo ARGS`` in a child process and capture its output."""
    return subprocess.run(
        atmvideo_cmd(*args),
        env=subprocess_env(threads),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def brightness_ramp(label: int, rng: np.random.Generator, num_frames: int = 4, size: int = 32) -> np.ndarray:
    """Flat-colour frames getting brighter (label 0) or darker (label 1).

    Every frame is one colour, so any crop, resize or flip leaves the clip unchanged: training on
    these videos does not depend on the augmentation's random draws.
    """
    base = rng.integers(20, 60, size=3)
    levels = np.linspace(0, 150, num_frames)
    if label == 1:
        levels = levels[::-1]
    frames = (base[None, :] + levels[:, None]).clip(0, 255).astype(np.uint8)
    return np.broadcast_to(frames[:, None, None, :], (num_frames, size, size, 3)).copy()


def make_ramp_dataset(
    root: Path, *, train: int, val: int, num_frames: int = 4, seed: int = 0
) -> dict[str, str]:
    """Like :func:`make_list_dataset`, with :func:`brightness_ramp` videos of ``num_frames`` frames."""
    return write_two_class_list_dataset(
        root,
        lambda label, rng: brightness_ramp(label, rng, num_frames),
        train=train,
        val=val,
        num_frames=num_frames,
        seed=seed,
    )


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread for in-process training: on a small shared machine threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
