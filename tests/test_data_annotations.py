"""Annotation readers: every format written as a tiny file, read back, and broken on purpose."""

from __future__ import annotations

import json

import pytest

from atmvideo.data import AnnotationError, read_annotations
from atmvideo.data.annotations import read_class_names


def _write(path, text: str):
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------------------- sthv1


def test_sthv1_reads_ids_and_classes(tmp_path):
    labels = _write(
        tmp_path / "labels.csv", "Holding something\nPushing something, something and something\n"
    )
    ann = _write(
        tmp_path / "train.csv", "100218;Pushing something, something and something\n7;Holding something\n\n"
    )
    out = read_annotations("sthv1", ann, root="/frames", labels=labels, frames=True)
    assert out.class_names == ["Holding something", "Pushing something, something and something"]
    assert [(r.path, r.labels) for r in out.records] == [("/frames/100218", (1,)), ("/frames/7", (0,))]
    assert not out.multi_label


def test_sthv1_malformed_row_names_file_and_line(tmp_path):
    labels = _write(tmp_path / "labels.csv", "Holding something\n")
    ann = _write(tmp_path / "train.csv", "1;Holding something\n2;Holding something\n3 Holding something\n")
    with pytest.raises(AnnotationError, match=r"train\.csv:3: expected 'id;class name'"):
        read_annotations("sthv1", ann, root="/frames", labels=labels)


def test_sthv1_unknown_class_names_line(tmp_path):
    labels = _write(tmp_path / "labels.csv", "Holding something\n")
    ann = _write(tmp_path / "train.csv", "1;Holding something\n2;Dropping something\n")
    with pytest.raises(AnnotationError, match=r"train\.csv:2: class 'Dropping something' is not in"):
        read_annotations("sthv1", ann, root="/frames", labels=labels)


# --------------------------------------------------------------------------------------- sthv2


def _sthv2_labels(tmp_path):
    return _write(
        tmp_path / "labels.json",
        json.dumps({"Holding something next to something": "1", "Pushing something from left to right": "0"}),
    )


def test_sthv2_template_maps_through_labels_and_finds_any_extension(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "78687.webm").write_bytes(b"x")
    (videos / "42.mp4").write_bytes(b"x")
    holding, pushing = "Holding [something] next to [something]", "Pushing [something] from left to right"
    entries = [
        {
            "id": "78687",
            "label": "holding potato next to cup",
            "template": holding,
            "placeholders": ["potato", "cup"],
        },
        {"id": "42", "label": "pushing pen", "template": pushing, "placeholders": ["pen"]},
        {"id": "5", "label": "x", "template": pushing, "placeholders": ["x"]},
    ]
    ann = _write(tmp_path / "train.json", json.dumps(entries, indent=2))
    out = read_annotations("sthv2", ann, root=str(videos), labels=_sthv2_labels(tmp_path))
    assert out.class_names == ["Pushing something from left to right", "Holding something next to something"]
    assert [r.labels for r in out.records] == [(1,), (0,), (0,)]
    assert out.records[0].path == str(videos / "78687.webm")
    assert out.records[1].path == str(videos / "42.mp4")
    # A missing video keeps the official name, so reading it later fails with a clear path.
    assert out.records[2].path == str(videos / "5.webm")


def test_sthv2_frame_folders(tmp_path):
    ann = _write(
        tmp_path / "val.json", json.dumps([{"id": 3, "template": "Pushing [something] from left to right"}])
    )
    out = read_annotations(
        "sthv2", ann, root=str(tmp_path / "frames"), labels=_sthv2_labels(tmp_path), frames=True
    )
    assert out.records[0].path == str(tmp_path / "frames" / "3")


def test_sthv2_entry_without_template_names_its_line(tmp_path):
    good = {"id": "1", "template": "Pushing [something] from left to right"}
    text = (
        "[\n"
        + json.dumps(good)
        + ",\n"
        + json.dumps(good)
        + ",\n"
        + json.dumps({"id": "9", "label": "x"})
        + "\n]\n"
    )
    ann = _write(tmp_path / "train.json", text)
    with pytest.raises(AnnotationError, match=r"train\.json:4: entry 2 has no 'template'"):
        read_annotations("sthv2", ann, root=str(tmp_path), labels=_sthv2_labels(tmp_path))


def test_sthv2_invalid_json_names_line(tmp_path):
    ann = _write(tmp_path / "train.json", '[\n{"id": "1",\n "template": }\n]')
    with pytest.raises(AnnotationError, match=r"train\.json:3: invalid JSON"):
        read_annotations("sthv2", ann, root=str(tmp_path), labels=_sthv2_labels(tmp_path))


def test_labels_json_with_gaps_is_rejected(tmp_path):
    path = _write(tmp_path / "labels.json", json.dumps({"a": "0", "b": "2"}))
    with pytest.raises(AnnotationError, match="class indices must be 0..1"):
        read_class_names(path)


# ------------------------------------------------------------------------------------ Kinetics

KINETICS = (
    "label,youtube_id,time_start,time_end,split\n"
    "abseiling,--07WQ2iBlw,1,11,train\n"
    '"passing American football (in game)",-0NMh2oxyNU,20,30,train\n'
    "abseiling,zzz,0,10,train\n"
)


def test_kinetics_names_videos_and_sorts_classes(tmp_path):
    root = tmp_path / "videos" / "abseiling"
    root.mkdir(parents=True)
    (root / "--07WQ2iBlw_000001_000011.mkv").write_bytes(b"x")  # class folder, other extension
    ann = _write(tmp_path / "train.csv", KINETICS)
    out = read_annotations("kinetics400", ann, root=str(tmp_path / "videos"))
    assert out.class_names == ["abseiling", "passing American football (in game)"]
    assert [r.labels for r in out.records] == [(0,), (1,), (0,)]
    assert out.records[0].path == str(root / "--07WQ2iBlw_000001_000011.mkv")
    assert out.records[1].path == str(tmp_path / "videos" / "-0NMh2oxyNU_000020_000030.mp4")
    assert out.records[0].duration == 10.0


def test_kinetics_short_row_is_the_documented_error(tmp_path):
    ann = _write(tmp_path / "train.csv", KINETICS + "\n" * 12 + "abseiling,abc,0\n")
    with pytest.raises(AnnotationError, match=r"train\.csv:17: expected 5 columns, got 3"):
        read_annotations("kinetics400", ann, root=str(tmp_path))


def test_kinetics_bad_time_names_line(tmp_path):
    ann = _write(tmp_path / "val.csv", "abseiling,abc,zero,10,val\n")
    with pytest.raises(AnnotationError, match=r"val\.csv:1: time_start/time_end must be numbers"):
        read_annotations("kinetics400", ann, root=str(tmp_path))


# --------------------------------------------------------------------------------- ActivityNet


def _activitynet(tmp_path, extra: dict | None = None):
    zumba = [{"label": "Zumba", "segment": [10.0, 20.5]}, {"label": "Zumba", "segment": [50, 60]}]
    database = {
        "abc": {"subset": "training", "duration": 100.0, "url": "", "annotations": zumba},
        "v_def": {
            "subset": "validation",
            "duration": 30.0,
            "annotations": [{"label": "Archery", "segment": [0, 30]}],
        },
        "ghi": {"subset": "testing", "duration": 12.0, "annotations": []},
    }
    database.update(extra or {})
    data = {"version": "VERSION 1.3", "taxonomy": [], "database": database}
    return _write(tmp_path / "activity_net.v1-3.min.json", json.dumps(data, indent=1))


def test_activitynet_subsets_segments_and_names(tmp_path):
    (tmp_path / "v_abc.mp4").write_bytes(b"x")
    (tmp_path / "def.mp4").write_bytes(b"x")
    path = _activitynet(tmp_path)
    train = read_annotations("activitynet", path, root=str(tmp_path), split="train")
    val = read_annotations("activitynet", path, root=str(tmp_path), split="val")
    assert train.class_names == val.class_names == ["Archery", "Zumba"]
    assert [r.video_id for r in train.records] == ["abc"] and [r.video_id for r in val.records] == ["v_def"]
    assert train.records[0].path == str(tmp_path / "v_abc.mp4")
    assert val.records[0].path == str(tmp_path / "def.mp4")
    assert train.records[0].labels == (1,)
    assert train.records[0].segments == ((10.0, 20.5, 1), (50.0, 60.0, 1))
    assert train.records[0].duration == 100.0
    assert not train.multi_label and not val.multi_label


def test_activitynet_multi_label_decided_on_whole_file(tmp_path):
    both = [{"label": "Zumba", "segment": [0, 1]}, {"label": "Archery", "segment": [2, 3]}]
    extra = {"two": {"subset": "training", "duration": 9.0, "annotations": both}}
    path = _activitynet(tmp_path, extra)
    val = read_annotations("activitynet", path, root=str(tmp_path), split="val")
    assert val.multi_label  # same label format for both splits


def test_activitynet_bad_segment_names_line(tmp_path):
    extra = {"bad": {"subset": "training", "annotations": [{"label": "Zumba", "segment": [1]}]}}
    path = _activitynet(tmp_path, extra)
    line = [i for i, text in enumerate(open(path).read().splitlines(), 1) if '"bad"' in text][0]
    with pytest.raises(AnnotationError, match=rf"v1-3\.min\.json:{line}: video 'bad', annotation 0"):
        read_annotations("activitynet", path, root=str(tmp_path), split="train")


# ------------------------------------------------------------------------------------ Charades

CHARADES = (
    "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
    '46GP8,HR43,Kitchen,6,7,Yes,"A person cooks, then eats.",food;stove,"He cooks.",'
    "c092 11.90 21.20;c147 0.00 12.60,24.83\n"
    "N11GT,0KZ7,Stairs,6,7,Yes,walks,stairs,walks,,18.00\n"
)


def test_charades_multi_label_with_segments(tmp_path):
    ann = _write(tmp_path / "Charades_v1_train.csv", CHARADES)
    out = read_annotations("charades", ann, root=str(tmp_path))
    assert out.multi_label and len(out.class_names) == 157 and out.class_names[92] == "c092"
    first, second = out.records
    assert first.labels == (92, 147) and first.path == str(tmp_path / "46GP8.mp4")
    assert first.segments == ((11.9, 21.2, 92), (0.0, 12.6, 147)) and first.duration == 24.83
    assert second.labels == ()


def test_charades_class_file_gives_names(tmp_path):
    classes = _write(
        tmp_path / "Charades_v1_classes.txt", "c000 Holding some clothes\nc001 Putting clothes somewhere\n"
    )
    ann = _write(tmp_path / "train.csv", CHARADES)
    out = read_annotations("charades", ann, root=str(tmp_path), labels=classes)
    assert out.class_names[:2] == ["Holding some clothes", "Putting clothes somewhere"]
    assert len(out.class_names) == 157


def test_charades_bad_action_names_line(tmp_path):
    ann = _write(tmp_path / "train.csv", CHARADES + "X,a,b,c,d,e,f,g,h,c012 1.0,5\n")
    with pytest.raises(AnnotationError, match=r"train\.csv:4: action 'c012 1.0' is not 'cNNN start end'"):
        read_annotations("charades", ann, root=str(tmp_path))


def test_charades_wrong_column_count_names_line(tmp_path):
    ann = _write(tmp_path / "train.csv", CHARADES + "X,a,b\n")
    with pytest.raises(AnnotationError, match=r"train\.csv:4: expected 11 columns, got 3"):
        read_annotations("charades", ann, root=str(tmp_path))


# ---------------------------------------------------------------------------------------- list


def test_list_with_and_without_frame_counts(tmp_path):
    ann = _write(tmp_path / "train.txt", "a/v1.mp4 3\n# comment\nb/v2 120 0,4\n\nc/v3.webm 2\n")
    out = read_annotations("list", ann, root="/data")
    assert [(r.path, r.num_frames, r.labels) for r in out.records] == [
        ("/data/a/v1.mp4", None, (3,)),
        ("/data/b/v2", 120, (0, 4)),
        ("/data/c/v3.webm", None, (2,)),
    ]
    assert out.multi_label and out.class_names == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a.mp4", "expected 'path \\[num_frames\\] label"),
        ("a.mp4 ten 3", "num_frames 'ten' is not an integer"),
        ("a.mp4 10 x", "labels 'x' are not integers"),
        ("a.mp4 10 1 2", "expected .*, got 4 fields"),
    ],
)
def test_list_malformed_rows_name_file_and_line(tmp_path, line, message):
    ann = _write(tmp_path / "train.txt", "ok.mp4 1\n" + line + "\n")
    with pytest.raises(AnnotationError, match=rf"train\.txt:2: {message}"):
        read_annotations("list", ann, root="/data")


def test_list_label_beyond_class_file(tmp_path):
    names = _write(tmp_path / "classes.txt", "a\nb\n")
    ann = _write(tmp_path / "train.txt", "x.mp4 1\ny.mp4 2\n")
    with pytest.raises(AnnotationError, match=r"train\.txt:2: label 2 is out of range for 2 classes"):
        read_annotations("list", ann, root="/data", labels=names)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(AnnotationError, match="nope.csv: file not found"):
        read_annotations("kinetics400", str(tmp_path / "nope.csv"), root=str(tmp_path))
