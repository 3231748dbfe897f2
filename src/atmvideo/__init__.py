"""atmvideo: the Arithmetic Temporal Module (ATM, ICCV 2023) for video action recognition."""

from atmvideo.models import ATM, TemporalConv, VideoClassifier, create_model, list_models

__version__ = "0.1.0"

__all__ = ["ATM", "TemporalConv", "VideoClassifier", "__version__", "create_model", "list_models"]
