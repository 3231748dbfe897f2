"""Dataset preparation: frame extraction, re-encoding for fast seeking, list files from annotations.

- ``extract_frames``: a video to a folder of numbered JPEGs (``00001.jpg`` as Something-Something
  V1, or ``{:06d}.jpg`` as the V2 frame releases).
- ``resize_video``: re-encode to a 256-pixel short side with a keyframe every few frames, so that
  ``read_frames`` seeks straight to any frame instead of decoding from a distant keyframe. The
  output is constant-frame-rate h264 (mpeg4 where h264 is missing) with no audio.
- ``write_list``: the generic ``relative/path [num_frames] label[,label...]`` list of an
  annotation file, so any dataset can be read with ``format="list"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

from atmvideo.data.annotations import VIDEO_EXTENSIONS, Annotations
from atmvideo.data.decode import count_frames, open_video_container
from atmvideo.data.errors import VideoReadError

__all__ = ["extract_frames", "find_videos", "resize_video", "run_jobs", "scaled_size", "write_list"]

log = logging.getLogger("atmvideo.data")


def find_videos(src: str | os.PathLike) -> list[Path]:
    """Video files under ``src`` (recursively, sorted), or ``[src]`` when it is a file."""
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or folder")
    return sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(width, height)`` with the shorter side ``short_side`` (0: unchanged), rounded to even numbers."""
    if short_side <= 0:
        w, h = width, height
    elif width <= height:
        w, h = short_side, height * short_side / width
    else:
        w, h = width * short_side / height, short_side
    # 4:2:0 video needs even sides.
    return max(2, int(round(w / 2)) * 2), max(2, int(round(h / 2)) * 2)


def extract_frames(
    video: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    template: str = "{:05d}.jpg",
    start: int = 1,
    short_side: int = 0,
    quality: int = 90,
) -> int:
    """Write every frame of ``video`` as ``out_dir/template.format(start + i)``; return the frame count."""
    video, out_dir = str(video), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    container = open_video_container(video)
    count = 0
    try:
        stream = container.streams.video[0]
        size = None
        for frame in container.decode(stream):
            if size is None:
                size = (
                    scaled_size(frame.width, frame.height, short_side)
                    if short_side
                    else (frame.width, frame.height)
                )
            image = frame.to_image(width=size[0], height=size[1]) if short_side else frame.to_image()
            image.save(out_dir / template.format(start + count), quality=quality)
            count += 1
    except VideoReadError:
        raise
    except Exception as exc:
        if count == 0:
            raise VideoReadError(video, f"cannot decode ({exc})") from None
        log.warning("%s: decoding stopped after %d frames (%s)", video, count, exc)
    finally:
        container.close()
    if count == 0:
        raise VideoReadError(video, "no video frames")
    return count


def _encoder() -> str:
    import av

    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise RuntimeError("PyAV has neither an h264 nor an mpeg4 encoder")


def resize_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    short_side: int = 256,
    gop: int = 8,
    crf: int = 23,
    codec: str | None = None,
) -> int:
    """Re-encode ``src`` to ``dst`` at ``short_side``, a keyframe every ``gop`` frames; return the count."""
    import av

    src, dst = str(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or _encoder()
    container = open_video_container(src)
    count = 0
    tmp = dst.with_name(dst.stem + ".part" + dst.suffix)
    try:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or stream.guessed_rate or 25).limit_denominator(1001)
        with av.open(str(tmp), "w") as output:
            out = output.add_stream(codec, rate=rate)
            width, height = scaled_size(stream.codec_context.width, stream.codec_context.height, short_side)
            out.width, out.height, out.pix_fmt = width, height, "yuv420p"
            out.codec_context.gop_size = gop
            if codec == "libx264":
                # Fixed keyframe spacing (no scene-cut keyframes) keeps every seek equally short.
                keyframes = {"keyint": str(gop), "min-keyint": str(gop), "scenecut": "0"}
                out.options = {"crf": str(crf), "preset": "veryfast", **keyframes}
            else:
                out.codec_context.bit_rate = 2_000_000
            try:
                for frame in container.decode(stream):
                    image = frame.reformat(width=width, height=height, format="yuv420p")
                    # Constant frame rate: frame i is shown at i / rate, whatever the source said.
                    image.pts, image.time_base = count, 1 / rate
                    for packet in out.encode(image):
                        output.mux(packet)
                    count += 1
            except Exception as exc:
                if count == 0:
                    raise VideoReadError(src, f"cannot decode ({exc})") from None
                log.warning("%s: decoding stopped after %d frames (%s)", src, count, exc)
            for packet in out.encode():
                output.mux(packet)
        if count == 0:
            raise VideoReadError(src, "no video frames")
        os.replace(tmp, dst)
    finally:
        container.close()
        if tmp.exists():
            tmp.unlink()
    return count


def write_list(
    annotations: Annotations,
    out: str | os.PathLike,
    *,
    root: str | os.PathLike,
    count: bool = False,
    backend: str = "pyav",
) -> int:
    """Write a ``relative/path [num_frames] label[,label...]`` line per record; return how many were written.

    With ``count`` the frame count of each video is read (slow on big datasets) and written;
    videos that cannot be read are left out with a warning.
    """
    root = os.fspath(root)
    lines = []
    for record in annotations.records:
        rel = os.path.relpath(record.path, root)
        if " " in rel:
            raise ValueError(f"{rel!r}: list files cannot hold paths with spaces")
        labels = ",".join(str(x) for x in record.labels) if record.labels else "-1"
        if count:
            try:
                frames = count_frames(record.path, backend)
            except VideoReadError as exc:
                log.warning("left out of the list: %s", exc)
                continue
            lines.append(f"{rel} {frames} {labels}")
        else:
            lines.append(f"{rel} {labels}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("".join(line + "\n" for line in lines))
    return len(lines)


def run_jobs(fn: Callable[..., int], jobs: Iterable[tuple], workers: int = 1) -> tuple[int, list[str]]:
    """Run ``fn(*job)`` for every job, in ``workers`` processes; return (jobs done, error messages)."""
    jobs = list(jobs)
    errors: list[str] = []
    done = 0
    if workers <= 1:
        for job in jobs:
            try:
                fn(*job)
                done += 1
            except (VideoReadError, OSError) as exc:
                errors.append(str(exc))
        return done, errors
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        for future in futures:
            try:
                future.result()
                done += 1
            except (VideoReadError, OSError) as exc:
                errors.append(str(exc))
    return done, errors
