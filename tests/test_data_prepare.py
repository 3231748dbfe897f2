"""Preparation tools: frame extraction, re-encoding with dense keyframes, list files, and their CLI."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from PIL import Image
from videos import frame_index, index_frames, write_video

from atmvideo.cli import main
from atmvideo.data import DataConfig, VideoReadError, build_dataset, read_annotations, read_frames
from atmvideo.data.prepare import extract_frames, resize_video, scaled_size, write_list


@pytest.fixture()
def video(tmp_path):
    return write_video(tmp_path / "src" / "clip.mp4", index_frames(12))


def test_extract_frames_numbering_and_content(video, tmp_path):
    assert extract_frames(video, tmp_path / "v1") == 12
    names = sorted(p.name for p in (tmp_path / "v1").iterdir())
    assert names == [f"{i:05d}.jpg" for i in range(1, 13)]
    assert [frame_index(np.asarray(Image.open(tmp_path / "v1" / n))) for n in names] == list(range(12))
    assert extract_frames(video, tmp_path / "v2", template="{:06d}.jpg", start=0, short_side=16) == 12
    with Image.open(tmp_path / "v2" / "000000.jpg") as image:
        assert image.size == (32, 16)


def test_resize_video_short_side_keyframes_and_frames(video, tmp_path):
    out = tmp_path / "out" / "clip.mp4"
    assert resize_video(video, out, short_side=16, gop=4) == 12
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (32, 16) and stream.frames == 12
        keys = [i for i, packet in enumerate(container.demux(stream)) if packet.is_keyframe]
    assert keys == [0, 4, 8]
    assert [frame_index(f) for f in read_frames(out, [0, 5, 11]).numpy()] == [0, 5, 11]


def test_resize_video_unreadable_input(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    with pytest.raises(VideoReadError, match="bad.mp4: cannot open"):
        resize_video(bad, tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()


def test_scaled_size_keeps_aspect_and_even_sides():
    assert scaled_size(1280, 720, 256) == (456, 256)
    assert scaled_size(720, 1280, 256) == (256, 456)
    assert scaled_size(175, 143, 0) == (176, 144)


def test_write_list_from_official_annotations_reads_back(tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "7.mp4", index_frames(12))
    write_video(videos / "9.mp4", index_frames(10))
    (tmp_path / "labels.json").write_text(json.dumps({"Lifting something": "0", "Dropping something": "1"}))
    (tmp_path / "train.json").write_text(
        json.dumps(
            [{"id": "7", "template": "Dropping [something]"}, {"id": "9", "template": "Lifting [something]"}]
        )
    )
    ann = read_annotations(
        "sthv2", str(tmp_path / "train.json"), root=str(videos), labels=str(tmp_path / "labels.json")
    )
    assert write_list(ann, tmp_path / "train.txt", root=videos, count=True) == 2
    assert (tmp_path / "train.txt").read_text() == "7.mp4 12 1\n9.mp4 10 0\n"
    cfg = DataConfig(
        format="list",
        root=str(videos),
        train=str(tmp_path / "train.txt"),
        labels=str(tmp_path / "labels.json"),
        input_size=16,
        short_side=16,
    )
    ds = build_dataset(cfg, "train", num_frames=4, train=True)
    assert [s.num_frames for s in ds.samples] == [12, 10] and ds.class_names == [
        "Lifting something",
        "Dropping something",
    ]


def test_prepare_cli_actions(tmp_path, capsys):
    src = tmp_path / "raw"
    write_video(src / "a" / "x.mp4", index_frames(6))
    write_video(src / "y.webm", index_frames(5), codec="libvpx-vp9")
    (src / "broken.mp4").write_text("not a video")
    status = main(["prepare", "frames", str(src), str(tmp_path / "frames"), "--workers", "1"])
    assert status == 1  # one video failed, and the others were still done
    captured = capsys.readouterr()
    assert "extracted frames of 2 video(s); 1 failed" in captured.out and "broken.mp4" in captured.err
    assert len(list((tmp_path / "frames" / "a" / "x").glob("*.jpg"))) == 6
    assert len(list((tmp_path / "frames" / "y").glob("*.jpg"))) == 5

    (src / "broken.mp4").unlink()
    assert (
        main(["prepare", "resize", str(src), str(tmp_path / "small"), "--short-side", "16", "--workers", "2"])
        == 0
    )
    with av.open(str(tmp_path / "small" / "y.mp4")) as container:
        assert container.streams.video[0].height == 16

    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\nswimming,y,0,10,train\n")
    (tmp_path / "small" / "y_000000_000010.mp4").write_bytes((tmp_path / "small" / "y.mp4").read_bytes())
    out = tmp_path / "k.txt"
    lists = ["prepare", "lists", "--format", "kinetics400", "--ann", str(tmp_path / "k.csv")]
    assert main(lists + ["--root", str(tmp_path / "small"), "--out", str(out), "--count-frames"]) == 0
    assert out.read_text() == "y_000000_000010.mp4 5 0\n"
