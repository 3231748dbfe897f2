"""Read chosen frames of a video file or JPEG frame folder into a ``(N, H, W, 3)`` uint8 tensor.

Backends:

- ``pyav`` (default): needs no system library. It seeks to the keyframe before the first wanted
  frame, decodes forward, converts to RGB only the frames it returns, seeks again across long
  gaps between wanted frames, and stops after the last wanted frame.
- ``decord`` and ``torchcodec``: optional packages, imported on first use.
- ``frames``: a folder of images, one per frame, ordered by the number in their names
  (``00001.jpg``, ``img_000001.jpg``, ...).

Frame ``i`` is the ``i``-th frame in presentation order, counted from 0. For ``pyav`` it is
computed from the frame's timestamp (``round((pts - start) * fps)``), which is exact for
constant-frame-rate video, the case of every dataset here.

Container headers can claim more frames than a file holds (a truncated download, a lying
``nb_frames``). Every backend therefore *clamps*: an index past the last frame that could be
decoded returns that last frame. ``read_frames_info`` also says how many frames a file
really held when the decoder hit its end, so a caller can reject such a video.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from atmvideo.data.errors import VideoReadError

__all__ = [
    "BACKENDS",
    "VideoReadError",
    "available_backends",
    "count_frames",
    "read_frames",
    "read_frames_info",
]

log = logging.getLogger("atmvideo.data")

BACKENDS: tuple[str, ...] = ("pyav", "decord", "torchcodec", "frames")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")

# Below this many frames between two wanted frames, decoding through is cheaper than a seek.
_MIN_SEEK_GAP = 16


@dataclass
class FrameRead:
    """Frames read from a video, and how many frames it held if the decoder reached its end."""

    frames: torch.Tensor  # (N, H, W, 3) uint8
    available: int | None  # frames the file really holds, known only when a read went past its end
    decoded: int | None = None  # frames the decoder produced (pyav only): what the read cost


def available_backends() -> list[str]:
    """List the backends whose Python packages are importable here."""
    names = ["pyav", "frames"]
    for name, module in (("decord", "decord"), ("torchcodec", "torchcodec.decoders")):
        try:
            __import__(module)
        except Exception:  # a broken native library raises more than ImportError
            continue
        names.insert(-1, name)
    return names


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray | torch.Tensor,
    backend: str = "pyav",
    *,
    frame_template: str | None = None,
    threads: int = 1,
) -> torch.Tensor:
    """Decode the frames at ``indices`` (any order, repeats allowed) into a ``(N, H, W, 3)`` uint8 tensor."""
    return read_frames_info(path, indices, backend, frame_template=frame_template, threads=threads).frames


def read_frames_info(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray | torch.Tensor,
    backend: str = "pyav",
    *,
    frame_template: str | None = None,
    threads: int = 1,
) -> FrameRead:
    """Like ``read_frames`` but also report the real frame count when decoding reached the end."""
    path = os.fspath(path)
    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if wanted.size == 0:
        raise ValueError("indices is empty")
    if (wanted < 0).any():
        raise ValueError(f"negative frame index in {wanted.tolist()}")
    unique = np.unique(wanted)
    decoded = None
    if backend == "frames":
        frames, available = _read_folder(path, unique, frame_template)
    else:
        _check_file(path)
        if backend == "pyav":
            frames, available, decoded = _read_pyav(path, unique, threads)
        elif backend == "decord":
            frames, available = _read_decord(path, unique, threads)
        elif backend == "torchcodec":
            frames, available = _read_torchcodec(path, unique, threads)
        else:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    # ``frames`` follows ``unique``; map every requested index (repeats included) onto it.
    tensor = torch.from_numpy(np.ascontiguousarray(np.stack(frames)))
    return FrameRead(tensor[torch.from_numpy(np.searchsorted(unique, wanted))], available, decoded)


def count_frames(
    path: str | os.PathLike, backend: str = "pyav", *, frame_template: str | None = None, threads: int = 1
) -> int:
    """Return the number of frames of a video (from its header where it has one) or frame folder."""
    path = os.fspath(path)
    if backend == "frames":
        return len(_list_frames(path, frame_template))
    _check_file(path)
    if backend == "pyav":
        return _count_pyav(path)
    if backend == "decord":
        return len(_open_decord(path, threads))
    if backend == "torchcodec":
        decoder = _open_torchcodec(path, threads, "approximate")
        return int(decoder.metadata.num_frames or 0) or len(_open_torchcodec(path, threads, "exact"))
    raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def _check_file(path: str) -> None:
    """Fail early, with a plain reason, on what every decoder would choke on differently."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise VideoReadError(path, "file not found") from None
    except OSError as exc:
        raise VideoReadError(path, f"cannot stat file ({exc.strerror or exc})") from None
    if os.path.isdir(path):
        raise VideoReadError(
            path, "is a directory, not a video file (use backend='frames' for frame folders)"
        )
    if size == 0:
        raise VideoReadError(path, "file is empty")


# --------------------------------------------------------------------------------------- PyAV


def open_video_container(path: str):  # -> av.container.InputContainer
    """Open a video with PyAV, or raise ``VideoReadError`` naming the file and the reason."""
    import av

    try:
        container = av.open(path, metadata_errors="ignore")
    except Exception as exc:
        raise VideoReadError(path, f"cannot open ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "no video stream")
    return container


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.replace("\n", " ")


def _count_pyav(path: str) -> int:
    container = open_video_container(path)
    try:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        # Matroska/WebM headers carry no frame count: count packets, which needs no decoding.
        count = 0
        try:
            for packet in container.demux(stream):
                if packet.size > 0:
                    count += 1
        except Exception as exc:
            if count == 0:
                raise VideoReadError(path, f"cannot demux ({_reason(exc)})") from None
        if count == 0:
            raise VideoReadError(path, "no video frames")
        return count
    finally:
        container.close()


class _Seeker:
    """Maps frame timestamps to frame indices and frame indices to seek targets for one stream."""

    def __init__(self, stream) -> None:
        self.stream = stream
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.rate = Fraction(rate) if rate else None
        self.time_base = Fraction(stream.time_base) if stream.time_base else None
        self.origin = stream.start_time if stream.start_time is not None else 0
        self.can_seek = self.rate is not None and self.time_base is not None
        # Float, not Fraction: called for every decoded frame, and exact to far below half a frame.
        self._scale = float(self.time_base * self.rate) if self.can_seek else 0.0

    def index(self, pts: int) -> int:
        """Frame index of a timestamp."""
        return round((pts - self.origin) * self._scale)

    def pts(self, index: int) -> int:
        """Timestamp of a frame index (where a seek to that frame aims)."""
        return int(self.origin + index / self.rate / self.time_base)


class _Restart(Exception):
    """Timestamps cannot be trusted for this file: decode it again from the start, counting frames."""


def _read_pyav(path: str, wanted: np.ndarray, threads: int) -> tuple[list[np.ndarray], int | None, int]:
    for use_timestamps in (True, False):
        container = open_video_container(path)
        try:
            return _decode_pyav(container, path, wanted.tolist(), threads, use_timestamps)
        except _Restart:
            continue
        finally:
            container.close()
    raise AssertionError("unreachable: counting frames from the start never restarts")


def _demux_decode(container, stream, keys: list[int]):
    """Decoded frames of ``stream``; the timestamp of each keyframe packet met is appended to ``keys``.

    Keyframes are taken from the packets (the container's sync samples, where a seek can land),
    not from decoded frames, which also flag I-frames that a seek cannot start from.
    """
    for packet in container.demux(stream):
        if packet.is_keyframe and packet.pts is not None:
            keys.append(packet.pts)
        yield from packet.decode()


def _decode_pyav(
    container, path: str, wanted: list[int], threads: int, use_timestamps: bool
) -> tuple[list[np.ndarray], int | None, int]:
    """Decode forward past ``wanted``: each wanted index gets the last frame at or before it.

    With ``use_timestamps`` a frame's index comes from its timestamp, which allows seeking; if the
    timestamps turn out unusable (missing, not increasing, a seek that overshoots) ``_Restart`` is
    raised and the caller decodes from the start again, numbering frames by counting them.
    """
    stream = container.streams.video[0]
    stream.codec_context.thread_count = max(0, threads)
    seeker = _Seeker(stream)
    allow_seek = use_timestamps and seeker.can_seek
    out: dict[int, np.ndarray] = {}
    k = 0  # next unassigned position in ``wanted``
    prev = prev_rgb = None
    prev_idx = -1
    keys: list[int] = []  # keyframe packet timestamps, in the order met
    last_key, gop, seen_keys = None, 0, 0
    available: int | None = None
    decoded = 0
    seek_to = wanted[0] if allow_seek and wanted[0] > 0 else None
    while True:
        seeked = seek_to is not None
        if seeked:
            try:
                container.seek(seeker.pts(seek_to), stream=stream, backward=True, any_frame=False)
            except Exception:
                raise _Restart from None
            last_key = None  # keyframes before and after a jump are not one interval
        seek_to = None
        first = True
        catching_up = seeked
        count = -1
        try:
            for frame in _demux_decode(container, stream, keys):
                count += 1
                decoded += 1
                if not use_timestamps:
                    idx = count
                elif frame.pts is None or seeker.time_base is None or seeker.rate is None:
                    raise _Restart
                else:
                    idx = seeker.index(frame.pts)
                if first and seeked and idx > wanted[k]:
                    raise _Restart  # the seek overshot the wanted frame (sparse index, odd timestamps)
                if first and seeked and idx <= prev_idx:
                    allow_seek = False  # the jump landed behind us: keyframes are too far apart to help
                first = False
                if idx <= prev_idx:
                    if not catching_up:
                        raise _Restart  # timestamps that do not increase: count frames instead
                    continue  # a seek landed behind frames already seen
                catching_up = False
                for key in keys[seen_keys:]:
                    key_idx = seeker.index(key) if use_timestamps else 0
                    if last_key is not None and key_idx > last_key:
                        gop = max(gop, key_idx - last_key)
                    last_key = key_idx if last_key is None else max(last_key, key_idx)
                seen_keys = len(keys)
                while k < len(wanted) and wanted[k] < idx:
                    if prev is None:  # wanted frames before the first decodable one: clamp to it
                        out[wanted[k]] = frame.to_ndarray(format="rgb24")
                    else:
                        if prev_rgb is None:
                            prev_rgb = prev.to_ndarray(format="rgb24")
                        out[wanted[k]] = prev_rgb
                    k += 1
                prev, prev_rgb, prev_idx = frame, None, idx
                if k < len(wanted) and wanted[k] == idx:
                    prev_rgb = out[idx] = frame.to_ndarray(format="rgb24")
                    k += 1
                if k == len(wanted):
                    break
                # A seek lands on the keyframe before the target: worth it when that keyframe is
                # likely past the current frame, i.e. the gap is longer than any keyframe interval
                # seen (or than the run since the last keyframe, a lower bound of the current one).
                since_key = idx - last_key if last_key is not None else idx
                if allow_seek and wanted[k] - idx > max(_MIN_SEEK_GAP, gop, since_key):
                    seek_to = wanted[k]  # a long gap: jumping to the next keyframe is cheaper
                    break
        except _Restart:
            raise
        except Exception as exc:  # corrupt data mid-stream: keep what was decoded, as for a short file
            if prev is None:
                raise VideoReadError(path, f"cannot decode ({_reason(exc)})") from None
            log.warning(
                "%s: decoding stopped after frame %d (%s); later frames read as that one",
                path,
                prev_idx,
                _reason(exc),
            )
            available = prev_idx + 1
            break
        if seek_to is not None:
            continue
        if k < len(wanted):  # the stream ended before every wanted frame: the header promised more
            if prev is None:
                raise VideoReadError(path, "no decodable video frames")
            available = prev_idx + 1
        break
    if k < len(wanted):
        last = prev_rgb if prev_rgb is not None else prev.to_ndarray(format="rgb24")
        for w in wanted[k:]:
            out[w] = last
    return [out[w] for w in wanted], available, decoded


# --------------------------------------------------------------------------------------- decord


def _open_decord(path: str, threads: int):
    try:
        import decord
    except ImportError:
        raise ImportError(
            "backend 'decord' needs the decord package: pip install 'atmvideo[decord]'"
        ) from None
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=max(0, threads))
    except Exception as exc:
        raise VideoReadError(path, f"cannot open ({_reason(exc)})") from None


def _read_decord(path: str, wanted: np.ndarray, threads: int) -> tuple[list[np.ndarray], int | None]:
    reader = _open_decord(path, threads)
    total = len(reader)
    if total == 0:
        raise VideoReadError(path, "no video frames")
    clamped = np.minimum(wanted, total - 1)
    try:
        batch = reader.get_batch(clamped.tolist()).asnumpy()
    except Exception as exc:
        raise VideoReadError(path, f"cannot decode ({_reason(exc)})") from None
    return list(batch), total if wanted[-1] >= total else None  # decord's count comes from the index


# ----------------------------------------------------------------------------------- torchcodec


def _open_torchcodec(path: str, threads: int, seek_mode: str):
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as exc:  # missing package, or its FFmpeg libraries are not installed
        raise ImportError(
            "backend 'torchcodec' needs the torchcodec package and FFmpeg's shared libraries: "
            f"pip install 'atmvideo[torchcodec]' and install ffmpeg ({_reason(exc)})"
        ) from None
    try:
        return VideoDecoder(
            path, seek_mode=seek_mode, dimension_order="NHWC", num_ffmpeg_threads=max(0, threads)
        )
    except Exception as exc:
        raise VideoReadError(path, f"cannot open ({_reason(exc)})") from None


def _read_torchcodec(path: str, wanted: np.ndarray, threads: int) -> tuple[list[np.ndarray], int | None]:
    # "approximate" trusts the header (no scan of the file); if the header lies the frame
    # lookup fails, and "exact" (which scans the file and so knows the true count) takes over.
    for mode in ("approximate", "exact"):
        decoder = _open_torchcodec(path, threads, mode)
        total = int(decoder.metadata.num_frames or 0) or len(decoder)
        if total == 0:
            raise VideoReadError(path, "no video frames")
        clamped = np.minimum(wanted, total - 1)
        try:
            batch = decoder.get_frames_at(clamped.tolist()).data.numpy()
        except Exception as exc:
            if mode == "exact":
                raise VideoReadError(path, f"cannot decode ({_reason(exc)})") from None
            continue
        return list(batch), total if wanted[-1] >= total else None
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------- frame folders

_NUMBER = re.compile(r"(\d+)(?=\.[^.]+$)")


def _template_pattern(template: str) -> re.Pattern[str]:
    """Turn ``img_{:05d}.jpg`` into a regex that matches those names and captures the number."""
    match = re.search(r"\{[^}]*\}", template)
    if not match:
        raise ValueError(f"frame template {template!r} has no {{}} field for the frame number")
    head, tail = template[: match.start()], template[match.end() :]
    return re.compile(re.escape(head) + r"(\d+)" + re.escape(tail) + "$")


def _list_frames(folder: str, frame_template: str | None) -> list[str]:
    """Frame file names of a folder, in frame order."""
    if not os.path.exists(folder):
        raise VideoReadError(folder, "frame folder not found")
    if not os.path.isdir(folder):
        raise VideoReadError(folder, "not a folder (backend 'frames' reads folders of images)")
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise VideoReadError(folder, f"cannot list folder ({exc.strerror or exc})") from None
    numbered: list[tuple[int, str]] = []
    if frame_template:
        pattern = _template_pattern(frame_template)
        for name in names:
            m = pattern.match(name)
            if m:
                numbered.append((int(m.group(1)), name))
    else:
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                m = _NUMBER.search(name)
                if m:
                    numbered.append((int(m.group(1)), name))
    numbered.sort()
    return [name for _, name in numbered]


def _read_folder(
    folder: str, wanted: np.ndarray, frame_template: str | None
) -> tuple[list[np.ndarray], int | None]:
    from PIL import Image

    names = _list_frames(folder, frame_template)
    if not names:
        raise VideoReadError(
            folder, "no frame images" + (f" matching {frame_template!r}" if frame_template else "")
        )
    out = []
    for idx in wanted.tolist():
        file = os.path.join(folder, names[min(idx, len(names) - 1)])
        try:
            with Image.open(file) as image:
                out.append(np.asarray(image.convert("RGB")))
        except Exception as exc:
            raise VideoReadError(file, f"cannot decode image ({_reason(exc)})") from None
    shapes = {frame.shape for frame in out}
    if len(shapes) > 1:
        raise VideoReadError(folder, f"frames differ in size: {sorted(shapes)}")
    return out, len(names) if wanted[-1] >= len(names) else None
