"""Clips per second per core of the training data pipeline: 8-frame TSN sampling, 224 crop.

Writes its own inputs to a temporary folder: moving-texture videos at 256p (340x256, 25 fps,
10 s, like Kinetics) encoded as h264 mp4 twice, with x264's default keyframe spacing (a single
keyframe per video here, the worst case for seeking) and with a keyframe every 8 frames (what
``atmvideo prepare resize`` writes), plus the same frames as JPEG folders. Then, for each
installed backend, it times

- ``decode``: ``read_frames`` of the 8 TSN-sampled frames, and
- ``pipeline``: a whole training item (sampling, decoding, MultiScaleCrop to 224, flip,
  normalisation) from ``VideoDataset``,

in one process with one thread everywhere (torch and the decoders), so that the rate per CPU
second is the rate per core. CPU time, not wall time, is the divisor: other work on the machine
changes it little. Run: ``python benchmarks/data_loading.py [--clips 40] [--videos 4]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from atmvideo.data import DataConfig, available_backends, build_dataset, read_frames
from atmvideo.data.sampling import segment_indices

WIDTH, HEIGHT, FPS, SECONDS = 340, 256, 25, 10
DEFAULT_KEYINT, KEYINT_8, JPEG = "mp4 h264 default keyint", "mp4 h264 keyint 8", "jpeg folder"


def texture_frames(seed: int) -> np.ndarray:
    """Frames of a smooth random texture panning diagonally: content that costs h264 real work."""
    rng = np.random.default_rng(seed)
    n = FPS * SECONDS
    cells = (HEIGHT // 8 + 2 * n // 8 + 8, WIDTH // 8 + 3 * n // 8 + 8, 3)
    small = Image.fromarray(rng.integers(0, 256, cells, dtype=np.uint8))
    big = np.asarray(small.resize((cells[1] * 8, cells[0] * 8), Image.Resampling.BICUBIC))
    return np.stack([big[2 * t : 2 * t + HEIGHT, 3 * t : 3 * t + WIDTH] for t in range(n)])


def write_mp4(path: Path, frames: np.ndarray, keyint: int | None) -> None:
    """h264 (CRF 23, preset veryfast); ``keyint`` None keeps x264's default keyframe spacing."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        options = {"crf": "23", "preset": "veryfast"}
        if keyint:
            stream.codec_context.gop_size = keyint
            options.update({"keyint": str(keyint), "min-keyint": str(keyint), "scenecut": "0"})
        stream.options = options
        for i, frame in enumerate(frames):
            image = av.VideoFrame.from_ndarray(frame, format="rgb24")
            image.pts, image.time_base = i, Fraction(1, FPS)
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_jpegs(folder: Path, frames: np.ndarray) -> None:
    """``{:05d}.jpg`` from 1, quality 90: the Something-Something V1 layout."""
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i + 1:05d}.jpg", quality=90)


def make_inputs(root: Path, videos: int) -> dict[str, list[Path]]:
    """Write every source; return the paths of each, by source name."""
    sources: dict[str, list[Path]] = {DEFAULT_KEYINT: [], KEYINT_8: [], JPEG: []}
    for v in range(videos):
        frames = texture_frames(v)
        write_mp4(root / f"default_{v}.mp4", frames, None)
        write_mp4(root / f"gop8_{v}.mp4", frames, 8)
        write_jpegs(root / f"frames_{v}", frames)
        sources[DEFAULT_KEYINT].append(root / f"default_{v}.mp4")
        sources[KEYINT_8].append(root / f"gop8_{v}.mp4")
        sources[JPEG].append(root / f"frames_{v}")
    return sources


def timed(fn: Callable[[int], None], clips: int) -> tuple[float, float]:
    """(clips per CPU second, clips per wall second) of ``clips`` calls of ``fn(i)``."""
    fn(0)  # warm-up: imports, first open
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(clips):
        fn(i)
    return clips / (time.process_time() - cpu), clips / (time.perf_counter() - wall)


def measure(root: Path, paths: list[Path], backend: str, clips: int) -> tuple[float, float, float]:
    """Decode rate, pipeline rate (per CPU second) and pipeline wall rate of one source and backend."""
    rng = np.random.default_rng(0)
    n = FPS * SECONDS
    listing = root / f"{backend}.txt"
    listing.write_text("".join(f"{p.name} {n} 0\n" for p in paths))
    cfg = DataConfig(format="list", root=str(root), train=str(listing), backend=backend, num_classes=1)
    dataset = build_dataset(cfg, "train", num_frames=8, train=True)

    def decode(i: int) -> None:
        """Decode the 8 sampled frames of one video."""
        read_frames(paths[i % len(paths)], segment_indices(n, 8, train=True, rng=rng), backend)

    def item(i: int) -> None:
        """Build one training item: sampling, decoding, crop, flip, normalisation."""
        clip, _ = dataset.load(i % len(dataset), rng)
        assert clip.shape == (8, 3, 224, 224)

    decode_cpu, _ = timed(decode, clips)
    item_cpu, item_wall = timed(item, clips)
    return decode_cpu, item_cpu, item_wall


def main() -> None:
    """Generate inputs, time every source x backend, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=40, help="clips timed per row (default 40)")
    parser.add_argument("--videos", type=int, default=4, help="distinct videos read in turn (default 4)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    video_backends = [b for b in available_backends() if b != "frames"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="atmvideo-bench-") as tmp:
        root = Path(tmp)
        for source, paths in make_inputs(root, args.videos).items():
            for backend in ["frames"] if source == JPEG else video_backends:
                decode, pipeline, wall = measure(root, paths, backend, args.clips)
                rows.append(
                    (
                        source,
                        backend,
                        f"{decode:.1f}",
                        f"{pipeline:.1f}",
                        f"{1000 / pipeline:.1f}",
                        f"{wall:.1f}",
                    )
                )
    print(f"8-frame TSN clips, {WIDTH}x{HEIGHT} {FPS} fps {SECONDS} s videos, MultiScaleCrop 224, 1 thread")
    header = ("source", "backend", "decode clips/s/core", "pipeline clips/s/core", "ms/clip", "wall clips/s")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
