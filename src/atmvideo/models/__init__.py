"""atmvideo models: ATM-ResNet, ATM-CLIP-ViT and their baselines, registered in timm's registry too."""

from atmvideo.models import (
    resnet,  # noqa: F401  (registers the ResNet models)
    vit,  # noqa: F401  (registers the ViT models)
)
from atmvideo.models._base import TemporalModule, VideoClassifier
from atmvideo.models._registry import create_model, list_models
from atmvideo.models.atm import ATM
from atmvideo.models.tconv import TemporalConv

__all__ = ["ATM", "TemporalConv", "TemporalModule", "VideoClassifier", "create_model", "list_models"]
