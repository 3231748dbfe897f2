"""Video data: annotation readers, decoders, clip sampling, clip transforms, datasets and loaders.

The path of a sample: ``annotations`` (file -> records) -> ``decode`` (record -> frames) ->
``sampling`` (which frames) -> ``transforms`` (frames -> clip tensor) -> ``dataset`` (items,
loader). ``mixup`` mixes whole batches in the training loop; ``synthetic`` writes a small
temporal dataset; ``prepare`` converts raw datasets. See docs/data.md.
"""

from atmvideo.data.annotations import FORMATS, Annotations, VideoRecord, read_annotations
from atmvideo.data.config import DataConfig
from atmvideo.data.dataset import VideoDataset, build_dataset, build_loader
from atmvideo.data.decode import BACKENDS, available_backends, count_frames, read_frames
from atmvideo.data.errors import AnnotationError, VideoReadError
from atmvideo.data.mixup import build_mixup
from atmvideo.data.synthetic import make_synthetic
from atmvideo.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "BACKENDS",
    "CLIP_MEAN",
    "CLIP_STD",
    "FORMATS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AnnotationError",
    "Annotations",
    "DataConfig",
    "VideoDataset",
    "VideoReadError",
    "VideoRecord",
    "available_backends",
    "build_dataset",
    "build_loader",
    "build_mixup",
    "count_frames",
    "make_synthetic",
    "read_annotations",
    "read_frames",
]
