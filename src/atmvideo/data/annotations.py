"""Readers for the official annotation files of each dataset, and for the generic list format.

Every reader returns an ``Annotations``: one ``VideoRecord`` per video (absolute path of the video
file or frame folder, class indices, and what the file says about frames and time) plus the class
names. A malformed row raises ``AnnotationError`` whose message starts with ``file:line:``.

Formats (``DataConfig.format``):

- ``sthv1``: ``something-something-v1-{train,validation}.csv`` rows ``id;class name`` and
  ``something-something-v1-labels.csv`` (one class name per line); JPEG folders ``root/id/00001.jpg``.
- ``sthv2``: official ``train.json`` / ``validation.json`` lists of ``{"id", "template", ...}``;
  the class is the template without brackets, looked up in ``labels.json`` (``{name: "index"}``).
  Videos ``root/id.webm`` (any video extension is found) or frame folders ``root/id/``.
- ``kinetics400``: official CSV ``label,youtube_id,time_start,time_end,split``; videos
  ``{youtube_id}_{start:06d}_{end:06d}.mp4`` directly in ``root`` or one folder below it.
- ``activitynet``: the v1.3 JSON (``database -> {id: {subset, duration, annotations}}``); one
  file holds all subsets, ``train`` reads ``training`` and ``val`` reads ``validation``.
  Videos ``v_{id}.mp4`` or ``{id}.mp4``.
- ``charades``: ``Charades_v1_{train,test}.csv`` with columns ``id`` and ``actions``
  (``c092 11.90 21.20;c147 0.00 12.60``), multi-label over 157 classes; videos ``{id}.mp4``.
- ``list``: lines ``relative/path [num_frames] label[,label...]`` (labels are class indices).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from atmvideo.data.errors import AnnotationError

__all__ = [
    "FORMATS",
    "Annotations",
    "VideoRecord",
    "read_activitynet",
    "read_annotations",
    "read_charades",
    "read_class_names",
    "read_kinetics",
    "read_list",
    "read_sthv1",
    "read_sthv2",
]

FORMATS: tuple[str, ...] = ("sthv1", "sthv2", "kinetics400", "activitynet", "charades", "list")
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".webm",
    ".mp4",
    ".mkv",
    ".avi",
    ".mov",
    ".m4v",
    ".flv",
    ".mpg",
    ".mpeg",
    ".ogv",
)
CHARADES_NUM_CLASSES = 157
_ACTIVITYNET_SUBSETS = {"train": "training", "val": "validation", "test": "testing"}


@dataclass
class VideoRecord:
    """One video of an annotation file: where it is and what it shows."""

    path: str  # video file, or frame folder for the ``frames`` backend
    labels: tuple[int, ...]  # class indices: one for single-label data, any number for multi-label
    num_frames: int | None = None  # when the annotation file states it (list format)
    duration: float | None = None  # seconds, for formats whose segments are in seconds
    segments: tuple[tuple[float, float, int], ...] = ()  # annotated (start s, end s, class) intervals
    video_id: str = ""

    @property
    def label(self) -> int:
        """The class of a single-label video (the first class, -1 when it has none)."""
        return self.labels[0] if self.labels else -1


@dataclass
class Annotations:
    """The records of one annotation file and the class names they index into."""

    records: list[VideoRecord]
    class_names: list[str]
    multi_label: bool = False
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- locating videos


class _Finder:
    """Finds ``root/stem.<any video extension>`` (or a frame folder), listing ``root`` only once."""

    def __init__(self, root: str, frames: bool) -> None:
        self.root = root
        self.frames = frames
        self._top: dict[str, str] | None = None
        self._deep: dict[str, str] | None = None

    def _scan(self, folder: str, depth: int, into: dict[str, str]) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            is_dir = entry.is_dir()
            if self.frames and is_dir:
                into.setdefault(entry.name, entry.path)
            elif not self.frames and not is_dir:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() in VIDEO_EXTENSIONS:
                    # Prefer the first extension of VIDEO_EXTENSIONS when a video has several.
                    old = into.get(stem)
                    if old is None or _ext_rank(entry.name) < _ext_rank(old):
                        into[stem] = entry.path
            if is_dir and depth > 0 and not (self.frames and folder == self.root):
                self._scan(entry.path, depth - 1, into)

    def find(self, stems: Iterable[str], default: str) -> str:
        """Path of the first of ``stems`` that exists, else ``root/default`` (reading it fails later)."""
        stems = list(stems)
        if self._top is None:
            self._top = {}
            self._scan(self.root, 0, self._top)
        for stem in stems:
            if stem in self._top:
                return self._top[stem]
        # Not in ``root`` itself: look one or two folders down (Kinetics keeps class folders).
        if self._deep is None:
            self._deep = {}
            self._scan(self.root, 2, self._deep)
        for stem in stems:
            if stem in self._deep:
                return self._deep[stem]
        return os.path.join(self.root, default)


def _ext_rank(name: str) -> int:
    ext = os.path.splitext(name)[1].lower()
    return VIDEO_EXTENSIONS.index(ext) if ext in VIDEO_EXTENSIONS else len(VIDEO_EXTENSIONS)


# ------------------------------------------------------------------------------ class names


def read_class_names(path: str) -> list[str]:
    """Read class names from a JSON list, a JSON ``{name: index}`` map, or a text file (one per line)."""
    text = _read_text(path)
    if path.lower().endswith(".json"):
        data = _load_json(path, text)
        if isinstance(data, list):
            return [str(x) for x in data]
        if isinstance(data, dict):
            names: dict[int, str] = {}
            for name, index in data.items():
                try:
                    i = int(index)
                except (TypeError, ValueError):
                    raise AnnotationError(
                        path, _json_line(text, name), f"index of {name!r} is not an integer"
                    ) from None
                if i in names:
                    raise AnnotationError(path, _json_line(text, name), f"index {i} used twice")
                names[i] = name
            if sorted(names) != list(range(len(names))):
                raise AnnotationError(path, None, f"class indices must be 0..{len(names) - 1}")
            return [names[i] for i in range(len(names))]
        raise AnnotationError(path, 1, "expected a JSON list of names or a {name: index} object")
    names_list = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            names_list.append(line)
    if not names_list:
        raise AnnotationError(path, None, "no class names")
    return names_list


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise AnnotationError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, None, f"cannot read ({exc})") from None


def _load_json(path: str, text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, exc.lineno, f"invalid JSON ({exc.msg}, column {exc.colno})") from None


def _json_line(text: str, key: str) -> int | None:
    """Line of the first ``"key":`` in a JSON text: where to point a reader of a bad entry."""
    match = re.search(re.escape(json.dumps(key)) + r"\s*:", text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _class_index(names: list[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


# ----------------------------------------------------------------------------- Something-Something


def read_sthv1(path: str, labels: str, root: str) -> Annotations:
    """Read a Something-Something V1 ``id;class name`` file; frame folders are ``root/id``."""
    if not labels:
        raise AnnotationError(path, None, "sthv1 needs the class list (something-something-v1-labels.csv)")
    class_names = read_class_names(labels)
    index = _class_index(class_names)
    records = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(";", 1)
        if len(parts) != 2 or not parts[0].strip():
            raise AnnotationError(path, lineno, f"expected 'id;class name', got {line.strip()!r}")
        video_id, name = parts[0].strip(), parts[1].strip()
        if name not in index:
            raise AnnotationError(path, lineno, f"class {name!r} is not in {labels}")
        records.append(VideoRecord(os.path.join(root, video_id), (index[name],), video_id=video_id))
    return Annotations(records, class_names)


def _entry_line(text: str, i: int) -> int:
    """Line where entry ``i`` of a JSON list starts (``json`` keeps no positions; found on error only)."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"[\s,\[]*")
    pos = ws.match(text, 0).end()
    for _ in range(i):
        pos = ws.match(text, decoder.raw_decode(text, pos)[1]).end()
    return text.count("\n", 0, pos) + 1


def read_sthv2(path: str, labels: str, root: str, *, frames: bool = False) -> Annotations:
    """Read a Something-Something V2 JSON split; videos ``root/id.<ext>`` or frame folders ``root/id``."""
    if not labels:
        raise AnnotationError(path, None, "sthv2 needs labels.json")
    class_names = read_class_names(labels)
    index = _class_index(class_names)
    finder = _Finder(root, frames)
    text = _read_text(path)
    entries = _load_json(path, text)
    if not isinstance(entries, list):
        raise AnnotationError(path, 1, "expected a JSON list of videos")
    records = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise AnnotationError(
                path, _entry_line(text, i), f"expected an object, got {type(entry).__name__}"
            )
        for key in ("id", "template"):
            if key not in entry:
                raise AnnotationError(path, _entry_line(text, i), f"entry {i} has no {key!r}")
        video_id = str(entry["id"])
        name = str(entry["template"]).replace("[", "").replace("]", "")
        if name not in index:
            raise AnnotationError(path, _entry_line(text, i), f"class {name!r} is not in {labels}")
        video = finder.find([video_id], video_id if frames else video_id + ".webm")
        records.append(VideoRecord(video, (index[name],), video_id=video_id))
    return Annotations(records, class_names)


# ------------------------------------------------------------------------------------- Kinetics

_KINETICS_COLUMNS = ["label", "youtube_id", "time_start", "time_end", "split"]


def _kinetics_rows(path: str) -> Iterable[tuple[int, list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            if not row or not "".join(row).strip():
                continue
            if [c.strip() for c in row] == _KINETICS_COLUMNS:
                continue  # the header
            if len(row) != len(_KINETICS_COLUMNS):
                raise AnnotationError(path, reader.line_num, f"expected 5 columns, got {len(row)}")
            yield reader.line_num, [c.strip() for c in row]


def kinetics_class_names(path: str) -> list[str]:
    """The sorted class names of a Kinetics CSV (the usual index order when no class file is given)."""
    _exists(path)
    return sorted({row[0] for _, row in _kinetics_rows(path)})


def _exists(path: str) -> None:
    if not os.path.isfile(path):
        raise AnnotationError(path, None, "file not found")


def read_kinetics(
    path: str, root: str, class_names: list[str] | None = None, *, frames: bool = False
) -> Annotations:
    """Read a Kinetics CSV; the video of a row is ``{youtube_id}_{start:06d}_{end:06d}.<ext>``."""
    _exists(path)
    class_names = class_names or kinetics_class_names(path)
    index = _class_index(class_names)
    finder = _Finder(root, frames)
    records = []
    for lineno, (label, youtube_id, start, end, _split) in _kinetics_rows(path):
        try:
            t0, t1 = int(float(start)), int(float(end))
        except ValueError:
            raise AnnotationError(
                path, lineno, f"time_start/time_end must be numbers, got {start!r}, {end!r}"
            ) from None
        if label not in index:
            raise AnnotationError(path, lineno, f"class {label!r} is not in the class list")
        stem = f"{youtube_id}_{t0:06d}_{t1:06d}"
        video = finder.find([stem, youtube_id], stem if frames else stem + ".mp4")
        records.append(VideoRecord(video, (index[label],), duration=float(t1 - t0), video_id=stem))
    return Annotations(records, class_names)


# ----------------------------------------------------------------------------------- ActivityNet


def _activitynet_database(path: str) -> tuple[dict, str]:
    text = _read_text(path)
    data = _load_json(path, text)
    database = data.get("database", data) if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise AnnotationError(path, 1, "expected an object with a 'database' of videos")
    return database, text


def activitynet_class_names(path: str) -> list[str]:
    """Sorted names of every class annotated anywhere in an ActivityNet JSON (200 for v1.3)."""
    database, _ = _activitynet_database(path)
    names = set()
    for video in database.values():
        for ann in video.get("annotations", []) if isinstance(video, dict) else []:
            if isinstance(ann, dict) and "label" in ann:
                names.add(str(ann["label"]))
    return sorted(names)


def read_activitynet(
    path: str, root: str, split: str = "train", class_names: list[str] | None = None, *, frames: bool = False
) -> Annotations:
    """Read the videos of one subset of an ActivityNet JSON, with their annotated segments."""
    database, text = _activitynet_database(path)
    subset = _ACTIVITYNET_SUBSETS.get(split, split)
    class_names = class_names or activitynet_class_names(path)
    index = _class_index(class_names)
    finder = _Finder(root, frames)
    records = []
    for vid, video in database.items():
        line = _json_line(text, vid)
        if not isinstance(video, dict) or "subset" not in video:
            raise AnnotationError(path, line, f"video {vid!r} has no 'subset'")
        if video["subset"] != subset:
            continue
        segments = []
        for k, ann in enumerate(video.get("annotations", [])):
            seg = ann.get("segment") if isinstance(ann, dict) else None
            if not isinstance(seg, list) or len(seg) != 2 or "label" not in ann:
                raise AnnotationError(
                    path, line, f"video {vid!r}, annotation {k}: expected label and segment [start, end]"
                )
            if ann["label"] not in index:
                raise AnnotationError(
                    path, line, f"video {vid!r}: class {ann['label']!r} is not in the class list"
                )
            try:
                start, end = float(seg[0]), float(seg[1])
            except (TypeError, ValueError):
                raise AnnotationError(
                    path, line, f"video {vid!r}, annotation {k}: segment must be numbers"
                ) from None
            segments.append((start, end, index[ann["label"]]))
        labels = tuple(sorted({s[2] for s in segments}))
        try:
            duration = float(video["duration"]) if "duration" in video else None
        except (TypeError, ValueError):
            raise AnnotationError(path, line, f"video {vid!r}: duration must be a number") from None
        stems = [f"v_{vid}", vid] if not vid.startswith("v_") else [vid, vid[2:]]
        default = stems[0] if frames else stems[0] + ".mp4"
        records.append(VideoRecord(finder.find(stems, default), labels, None, duration, tuple(segments), vid))
    # The label format must not depend on the subset read, so multi-label is decided on all of them.
    multi = any(
        len({a.get("label") for a in v.get("annotations", []) if isinstance(a, dict)}) > 1
        for v in database.values()
        if isinstance(v, dict)
    )
    return Annotations(records, class_names, multi_label=multi)


# ------------------------------------------------------------------------------------- Charades

_CHARADES_ACTION = re.compile(r"^c(\d{3})\s+(-?[\d.]+)\s+(-?[\d.]+)$")


def charades_class_names(path: str | None = None) -> list[str]:
    """Charades class names from ``Charades_v1_classes.txt`` (``c000 Holding some clothes``), or codes."""
    if not path:
        return [f"c{i:03d}" for i in range(CHARADES_NUM_CLASSES)]
    names = {}
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        m = re.match(r"^c(\d{3})\s+(.*)$", line.strip())
        if not m:
            raise AnnotationError(path, lineno, f"expected 'cNNN class name', got {line.strip()!r}")
        names[int(m.group(1))] = m.group(2)
    return [names.get(i, f"c{i:03d}") for i in range(max(CHARADES_NUM_CLASSES, max(names, default=0) + 1))]


def read_charades(
    path: str, root: str, class_names: list[str] | None = None, *, frames: bool = False
) -> Annotations:
    """Read a Charades CSV: every action of a video is one of its labels (multi-label)."""
    _exists(path)
    class_names = class_names or charades_class_names()
    finder = _Finder(root, frames)
    records = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or "id" not in header or "actions" not in header:
            raise AnnotationError(path, 1, "expected a header with 'id' and 'actions' columns")
        col_id, col_actions = header.index("id"), header.index("actions")
        col_length = header.index("length") if "length" in header else None
        for row in reader:
            if not row:
                continue
            lineno = reader.line_num
            if len(row) != len(header):
                raise AnnotationError(path, lineno, f"expected {len(header)} columns, got {len(row)}")
            segments = []
            for action in filter(None, (a.strip() for a in row[col_actions].split(";"))):
                m = _CHARADES_ACTION.match(action)
                if not m:
                    raise AnnotationError(path, lineno, f"action {action!r} is not 'cNNN start end'")
                cls = int(m.group(1))
                if cls >= len(class_names):
                    raise AnnotationError(path, lineno, f"class c{cls:03d} is out of range")
                segments.append((float(m.group(2)), float(m.group(3)), cls))
            duration = None
            if col_length is not None and row[col_length].strip():
                try:
                    duration = float(row[col_length])
                except ValueError:
                    raise AnnotationError(
                        path, lineno, f"length {row[col_length]!r} is not a number"
                    ) from None
            video_id = row[col_id].strip()
            video = finder.find([video_id], video_id if frames else video_id + ".mp4")
            labels = tuple(sorted({s[2] for s in segments}))
            records.append(VideoRecord(video, labels, None, duration, tuple(segments), video_id))
    return Annotations(records, class_names, multi_label=True)


# ----------------------------------------------------------------------------------- list files


def read_list(
    path: str, root: str, class_names: list[str] | None = None, num_classes: int = 0
) -> Annotations:
    """Read a list file of ``relative/path [num_frames] label[,label...]`` lines."""
    records = []
    multi = False
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) not in (2, 3):
            raise AnnotationError(
                path, lineno, f"expected 'path [num_frames] label[,label...]', got {len(parts)} fields"
            )
        num_frames = None
        if len(parts) == 3:
            try:
                num_frames = int(parts[1])
            except ValueError:
                raise AnnotationError(path, lineno, f"num_frames {parts[1]!r} is not an integer") from None
            if num_frames < 0:
                raise AnnotationError(path, lineno, f"num_frames {num_frames} is negative")
        try:
            labels = tuple(int(x) for x in parts[-1].split(","))
        except ValueError:
            raise AnnotationError(path, lineno, f"labels {parts[-1]!r} are not integers") from None
        if any(x < 0 for x in labels):
            raise AnnotationError(path, lineno, f"negative label in {parts[-1]!r}")
        limit = len(class_names) if class_names else num_classes
        if limit and any(x >= limit for x in labels):
            raise AnnotationError(path, lineno, f"label {max(labels)} is out of range for {limit} classes")
        multi = multi or len(labels) > 1
        records.append(VideoRecord(os.path.join(root, parts[0]), labels, num_frames, video_id=parts[0]))
    if class_names is None:
        top = max((max(r.labels) for r in records if r.labels), default=-1) + 1
        class_names = [str(i) for i in range(max(num_classes, top))]
    return Annotations(records, class_names, multi_label=multi)


# ------------------------------------------------------------------------------------ dispatch


def read_annotations(
    format: str,
    path: str,
    *,
    root: str,
    labels: str = "",
    split: str = "train",
    frames: bool = False,
    class_names: list[str] | None = None,
    num_classes: int = 0,
) -> Annotations:
    """Read one annotation file of any supported ``format`` (see the module docstring)."""
    if format == "sthv1":
        return read_sthv1(path, labels, root)
    if format == "sthv2":
        return read_sthv2(path, labels, root, frames=frames)
    if format == "kinetics400":
        return read_kinetics(
            path, root, class_names or (read_class_names(labels) if labels else None), frames=frames
        )
    if format == "activitynet":
        names = class_names or (read_class_names(labels) if labels else None)
        return read_activitynet(path, root, split, names, frames=frames)
    if format == "charades":
        return read_charades(path, root, class_names or charades_class_names(labels or None), frames=frames)
    if format == "list":
        names = class_names or (read_class_names(labels) if labels else None)
        return read_list(path, root, names, num_classes)
    raise ValueError(f"unknown annotation format {format!r}; expected one of {', '.join(FORMATS)}")
