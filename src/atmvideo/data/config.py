"""Options that describe a video dataset and how clips are sampled and augmented from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """Where a dataset lives, its annotation format, and the clip sampling / augmentation recipe.

    The engine's run configuration embeds one of these as ``data``; every field can be
    overridden from the command line as ``--set data.FIELD=VALUE``.
    """

    # sthv1 | sthv2 | kinetics400 | activitynet | charades | list
    format: str = "sthv2"
    root: str = ""  # folder that holds the videos or frame folders
    train: str = ""  # annotation file of the training split
    val: str = ""  # annotation file of the validation split
    labels: str = ""  # class-name file where the format has one (sthv2 labels.json, ...)
    backend: str = "pyav"  # pyav | decord | torchcodec | frames
    frame_template: str = ""  # file name of frame i in a frame folder; empty = the format's default
    sampling: str = "segment"  # segment (TSN) | dense
    dense_stride: int = 4  # frame step of a dense clip
    input_size: int = 224  # crop side fed to the model
    short_side: int = 256  # test-time resize of the shorter side (and train resize before the crop)
    train_crop: str = "multiscale"  # multiscale | rrc
    flip: bool = True
    flip_label_map: str = ""  # "" | sthv2 | "a:b,c:d" pairs of class indices swapped on flip
    randaugment: str = ""  # timm string, e.g. rand-m7-n4-mstd0.5-inc1; empty = off
    grayscale: float = 0.0  # probability of converting a clip to grayscale
    normalize: str = "imagenet"  # imagenet | clip
    repeated_aug: int = 1  # repeated augmentation factor (each video seen this many times per epoch)
    num_workers: int = 4
    on_bad_sample: str = "error"  # error | skip
    # Added with the data pipeline (issue 3); all optional.
    # A video with fewer frames than the clip: "error" = a bad sample, "repeat" = repeat frames in order.
    short_video: str = "error"  # error | repeat
    rrc_min_scale: float = 0.08  # smallest area fraction of a RandomResizedCrop (train_crop=rrc)
    num_classes: int = 0  # list format without a labels file: class count (0 = largest label + 1)
    decode_threads: int = 1  # decoder threads per DataLoader worker (the workers already run in parallel)
