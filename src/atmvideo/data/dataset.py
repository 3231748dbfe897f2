"""The video dataset (file -> frames -> clip tensor) and the DataLoader factory.

Items are ``(clip, target, index)``:

- ``clip``: float32 ``(T, 3, S, S)`` in training; ``(V, T, 3, S, S)`` in evaluation with
  ``V = crops * clips`` views ordered clip-major (view ``v`` is temporal clip ``v // crops``,
  spatial crop ``v % crops``), the leading axis present even when ``V = 1``.
- ``target``: the class index (``int``), or a float32 multi-hot ``(num_classes,)`` vector when
  ``dataset.multi_label`` (Charades; ActivityNet if any video has several classes).
- ``index``: the position of the sample in ``dataset.samples``, or ``-1`` when that sample could
  not be read and ``on_bad_sample="skip"`` put another sample in its place.

Bad samples. With ``on_bad_sample="error"`` an unreadable video raises ``VideoReadError``. With
``"skip"`` it is logged (logger ``atmvideo.data``, level WARNING, with path and reason), counted,
and its item comes back with index ``-1``: in training the clip and target of a random other
sample (the batch stays full), in evaluation a zero clip that the engine must drop
(``keep = index >= 0``) so that no sample is scored twice or scored from garbage.

``dataset.skipped`` is the number of items returned with index ``-1`` since the last
``reset_skipped()``. It lives in shared memory and DataLoader worker processes add to it, so
the main process reads the total over all workers (also persistent ones). For an epoch summary:
``dataset.reset_skipped()`` before the epoch (or the evaluation), ``dataset.skipped`` after it,
all-reduced over ranks under ``torch.distributed``; equivalently count ``index == -1`` in the
batches.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from atmvideo.data.annotations import (
    FORMATS,
    Annotations,
    VideoRecord,
    activitynet_class_names,
    kinetics_class_names,
    read_annotations,
    read_class_names,
    read_list,
)
from atmvideo.data.config import DataConfig
from atmvideo.data.decode import BACKENDS, count_frames, read_frames_info
from atmvideo.data.errors import VideoReadError
from atmvideo.data.samplers import EvalShardSampler, RepeatAugSampler, TrainSampler, world
from atmvideo.data.sampling import clip_indices, segment_window
from atmvideo.data.transforms import EvalTransform, TrainTransform, normalize_stats, parse_flip_label_map

__all__ = ["VideoDataset", "build_dataset", "build_loader"]

log = logging.getLogger("atmvideo.data")

# Workers count skips in their own slot of a shared tensor, so no lock is needed.
_SKIP_SLOTS = 64
# Give up when this many substitutes in a row are unreadable too: the data is broken, not a file.
_MAX_SUBSTITUTES = 50


class VideoDataset(Dataset):
    """Clips sampled from annotated videos; see the module docstring for items and bad samples."""

    def __init__(
        self,
        samples: list[VideoRecord],
        *,
        class_names: list[str],
        multi_label: bool,
        num_frames: int,
        train: bool,
        transform: TrainTransform | EvalTransform,
        views: tuple[int, int] = (1, 1),
        sampling: str = "segment",
        dense_stride: int = 4,
        untrimmed: bool = False,
        backend: str = "pyav",
        frame_template: str | None = None,
        on_bad_sample: str = "error",
        short_video: str = "error",
        decode_threads: int = 1,
        num_workers: int = 4,
    ) -> None:
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
        if short_video not in ("error", "repeat"):
            raise ValueError(f"short_video must be 'error' or 'repeat', got {short_video!r}")
        if sampling not in ("segment", "dense"):
            raise ValueError(f"sampling must be 'segment' or 'dense', got {sampling!r}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if train and tuple(views) != (1, 1):
            raise ValueError("views other than (1, 1) are for evaluation")
        self.samples = samples
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.multi_label = multi_label
        self.num_frames = num_frames
        self.train = train
        self.transform = transform
        self.crops, self.clips = views
        self.sampling, self.dense_stride, self.untrimmed = sampling, dense_stride, untrimmed
        self.backend, self.frame_template = backend, frame_template or None
        self.on_bad_sample, self.short_video = on_bad_sample, short_video
        self.decode_threads = decode_threads
        self.num_workers = num_workers  # the loader's default
        self._skips = torch.zeros(_SKIP_SLOTS, dtype=torch.int64).share_memory_()
        self._frame_counts: dict[str, int] = {}  # per process: what each video really holds

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def skipped(self) -> int:
        """Bad samples skipped so far, summed over the main process and every DataLoader worker."""
        return int(self._skips.sum())

    def reset_skipped(self) -> None:
        """Set the skip count back to zero (e.g. at the start of an epoch)."""
        self._skips.zero_()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor, int]:
        """Return ``(clip, target, index)`` of sample ``index`` (``index`` is ``-1`` for a skipped sample)."""
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        try:
            clip, target = self.load(index, rng)
            return clip, target, index
        except VideoReadError as exc:
            if self.on_bad_sample != "skip":
                raise
            info = get_worker_info()
            self._skips[0 if info is None else 1 + info.id % (_SKIP_SLOTS - 1)] += 1
            log.warning("skipped %s: %s", exc.path, exc.reason or exc)
        if not self.train:
            # Evaluation: a zero clip flagged -1 costs no decoding; the engine drops the row.
            return self._placeholder(), self._target(self.samples[index].labels), -1
        # Training: another sample keeps the batch full (random ones, each tried at most once).
        others = [int(i) for i in rng.permutation(len(self)) if i != index]
        for current in others[:_MAX_SUBSTITUTES]:
            try:
                clip, target = self.load(current, rng)
                return clip, target, -1
            except VideoReadError as exc:
                log.warning("skipped %s (drawn as a substitute): %s", exc.path, exc.reason or exc)
        tried = min(len(others), _MAX_SUBSTITUTES)
        raise VideoReadError(
            self.samples[index].path, f"unreadable, and so were the {tried} samples tried in its place"
        )

    def _placeholder(self) -> torch.Tensor:
        size = self.transform.size
        return torch.zeros(self.crops * self.clips, self.num_frames, 3, size, size)

    # ------------------------------------------------------------------------------- loading

    def frame_count(self, record: VideoRecord) -> int:
        """Frames of a video: the annotation's count, else the header's, corrected by what decoding found."""
        count = self._frame_counts.get(record.path)
        if count is None:
            count = record.num_frames or count_frames(
                record.path, self.backend, frame_template=self.frame_template, threads=self.decode_threads
            )
            self._frame_counts[record.path] = count
        return count

    def _check_length(self, record: VideoRecord, total: int, claimed: int | None = None) -> None:
        if total < self.num_frames and self.short_video == "error":
            held = (
                f"holds only {total} decodable frames (its header says {claimed})"
                if claimed
                else f"has {total} frames"
            )
            raise VideoReadError(
                record.path,
                f"{held}, fewer than the {self.num_frames} of a clip (set short_video=repeat to use it)",
            )
        if total < 1:
            raise VideoReadError(record.path, "has no frames")

    def _indices(self, record: VideoRecord, total: int, rng: np.random.Generator) -> list[np.ndarray]:
        window = None
        if self.untrimmed and self.train:
            window = segment_window(total, record.duration, record.segments, rng)
        return [
            clip_indices(
                total,
                self.num_frames,
                mode=self.sampling,
                train=self.train,
                rng=rng,
                stride=self.dense_stride,
                clip=c,
                num_clips=self.clips,
                window=window,
            )
            for c in range(1 if self.train else self.clips)
        ]

    def load(self, i: int, rng: np.random.Generator) -> tuple[torch.Tensor, int | torch.Tensor]:
        """Read, sample and transform sample ``i``; raise ``VideoReadError`` if it is unreadable."""
        record = self.samples[i]
        total = self.frame_count(record)
        self._check_length(record, total)
        indices = self._indices(record, total, rng)
        read = self._read(record, indices)
        if read.available is not None and read.available < total:
            # The header promised more frames than the file holds: sample again from what is there.
            log.info("%s: holds %d frames, its header says %d", record.path, read.available, total)
            self._frame_counts[record.path] = read.available
            self._check_length(record, read.available, claimed=total)
            indices = self._indices(record, read.available, rng)
            read = self._read(record, indices)
        frames = read.frames.split(self.num_frames)
        labels = record.labels
        if self.train:
            clip, labels = self.transform(frames[0], labels, rng)
        else:
            clip = torch.cat([self.transform(f) for f in frames])  # clip-major: (clips * crops, T, 3, S, S)
        return clip, self._target(labels)

    def _read(self, record: VideoRecord, indices: list[np.ndarray]):
        return read_frames_info(
            record.path,
            np.concatenate(indices),
            self.backend,
            frame_template=self.frame_template,
            threads=self.decode_threads,
        )

    def _target(self, labels: tuple[int, ...]) -> int | torch.Tensor:
        if not self.multi_label:
            return labels[0] if labels else -1
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        if labels:
            target[list(labels)] = 1.0
        return target


# --------------------------------------------------------------------------------- factories


def _annotations(cfg: DataConfig, split: str, path: str) -> Annotations:
    """Read the split's annotation file with a class list shared by both splits."""
    frames = cfg.backend == "frames"
    common = {"root": cfg.root, "labels": cfg.labels, "split": split, "frames": frames}
    if cfg.format == "kinetics400" and not cfg.labels:
        names = kinetics_class_names(cfg.train or path)
        return read_annotations(cfg.format, path, class_names=names, **common)
    if cfg.format == "activitynet" and not cfg.labels:
        return read_annotations(
            cfg.format, path, class_names=activitynet_class_names(cfg.train or path), **common
        )
    if cfg.format == "list":
        # Class count and single/multi-label must agree between the splits: look at both files.
        names = read_class_names(cfg.labels) if cfg.labels else None
        ann = read_list(path, cfg.root, names, cfg.num_classes)
        other = cfg.val if split == "train" else cfg.train
        if names is None and other and os.path.isfile(other) and other != path:
            peer = read_list(other, cfg.root, None, cfg.num_classes)
            if len(peer.class_names) > len(ann.class_names):
                ann.class_names = peer.class_names
            ann.multi_label = ann.multi_label or peer.multi_label
        return ann
    return read_annotations(cfg.format, path, num_classes=cfg.num_classes, **common)


def build_dataset(
    cfg: DataConfig, split: str, *, num_frames: int, train: bool, views: tuple[int, int] = (1, 1)
) -> VideoDataset:
    """Build the dataset of ``split`` ("train" or "val") with training augmentation or test views."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if cfg.format not in FORMATS:
        raise ValueError(f"unknown data format {cfg.format!r}; expected one of {', '.join(FORMATS)}")
    path = cfg.train if split == "train" else cfg.val
    if not path:
        raise ValueError(f"DataConfig.{split} (the {split} annotation file) is not set")
    crops, clips = views
    if clips < 1:
        raise ValueError(f"views must have at least one clip, got {views}")
    ann = _annotations(cfg, split, path)
    mean, std = normalize_stats(cfg.normalize)
    if train:
        transform: TrainTransform | EvalTransform = TrainTransform(
            size=cfg.input_size,
            short_side=cfg.short_side,
            crop=cfg.train_crop,
            rrc_scale=(cfg.rrc_min_scale, 1.0),
            flip=cfg.flip,
            flip_label_map=parse_flip_label_map(cfg.flip_label_map),
            randaugment=cfg.randaugment,
            grayscale=cfg.grayscale,
            mean=mean,
            std=std,
        )
    else:
        transform = EvalTransform(
            size=cfg.input_size, short_side=cfg.short_side, crops=crops, mean=mean, std=std
        )
    return VideoDataset(
        ann.records,
        class_names=ann.class_names,
        multi_label=ann.multi_label,
        num_frames=num_frames,
        train=train,
        transform=transform,
        views=views,
        sampling=cfg.sampling,
        dense_stride=cfg.dense_stride,
        untrimmed=cfg.format == "activitynet",
        backend=cfg.backend,
        frame_template=cfg.frame_template or None,
        on_bad_sample=cfg.on_bad_sample,
        short_video=cfg.short_video,
        decode_threads=cfg.decode_threads,
        num_workers=cfg.num_workers,
    )


def build_loader(
    dataset: VideoDataset,
    *,
    batch_size: int,
    train: bool,
    distributed: bool = False,
    seed: int = 0,
    num_workers: int | None = None,
    repeated_aug: int = 1,
    drop_last: bool | None = None,
) -> DataLoader:
    """Wrap a dataset in a DataLoader with the right sampler; call ``loader.sampler.set_epoch(e)`` per epoch.

    Training shuffles (``TrainSampler``, or ``RepeatAugSampler`` when ``repeated_aug > 1``) and
    drops the last partial batch by default. Evaluation uses ``EvalShardSampler``: under
    ``torch.distributed`` each rank reads a disjoint shard, with no padding, so every sample is
    scored exactly once once the engine gathers predictions by index.
    """
    num_replicas, rank = world() if distributed else (1, 0)
    n = len(dataset)
    if train and repeated_aug > 1:
        sampler = RepeatAugSampler(
            n, num_repeats=repeated_aug, num_replicas=num_replicas, rank=rank, seed=seed
        )
    elif train:
        sampler = TrainSampler(n, num_replicas=num_replicas, rank=rank, seed=seed)
    else:
        sampler = EvalShardSampler(n, num_replicas=num_replicas, rank=rank)
    workers = getattr(dataset, "num_workers", 0) if num_workers is None else num_workers
    generator = torch.Generator()
    generator.manual_seed(seed * 1000 + rank)  # worker seeds: reproducible, different on every rank
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=train if drop_last is None else drop_last,
        persistent_workers=workers > 0,
        generator=generator,
    )
