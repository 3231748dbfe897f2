"""The frame-level video classifier that every atmvideo model is: backbone per frame, TSN consensus head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TemporalModule(nn.Module):
    """A module that mixes information across the frames of a clip stacked as ``(B*T, ...)``.

    Subclasses read ``self.num_frames`` to unfold the batch axis; the owning model keeps it in sync
    with the clip length (``VideoClassifier.set_num_frames``). Parameters of temporal modules are new
    (never in an image checkpoint), which layer-wise LR decay and weight loading need to know.
    """

    def __init__(self, num_frames: int) -> None:
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = num_frames

    def batch_and_frames(self, x: torch.Tensor) -> tuple[int, int]:
        """Split the leading ``B*T`` axis of ``x`` into ``(B, T)``, with a clear error if it cannot."""
        frames = self.num_frames
        if x.shape[0] % frames:
            raise ValueError(
                f"{type(self).__name__}: leading axis {x.shape[0]} is not a multiple of num_frames={frames}"
            )
        return x.shape[0] // frames, frames


class VideoClassifier(nn.Module):
    """Base of all atmvideo models: input ``(B, T, 3, H, W)``, logits ``(B, num_classes)``.

    Subclasses implement ``forward_frames`` (``(B*T, 3, H, W) -> (B*T, num_features)``) and the timm
    hooks ``group_matcher`` and ``set_grad_checkpointing``. The head averages the per-frame
    embeddings over time (TSN consensus), then applies dropout and a linear classifier.
    """

    def __init__(
        self, *, num_classes: int, num_frames: int, num_features: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.num_features = num_features
        self.head_hidden_size = num_features
        self.drop_rate = drop_rate
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg: dict[str, Any] = {}

    def forward_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Embed every frame: ``(B*T, 3, H, W) -> (B*T, num_features)``."""
        raise NotImplementedError

    def set_num_frames(self, num_frames: int) -> None:
        """Change the clip length every temporal module expects (e.g. to test an 8-frame model on 16)."""
        self.num_frames = num_frames
        for module in self.modules():
            if isinstance(module, TemporalModule):
                module.num_frames = num_frames

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame embeddings of a clip batch: ``(B, T, 3, H, W) -> (B, T, num_features)``."""
        if x.ndim != 5:
            raise ValueError(f"expected a clip batch (B, T, C, H, W), got shape {tuple(x.shape)}")
        batch, frames = x.shape[:2]
        if frames != self.num_frames:
            self.set_num_frames(frames)
        embeddings = self.forward_frames(x.flatten(0, 1))
        return embeddings.view(batch, frames, -1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average per-frame embeddings ``(B, T, F)`` over time and classify them."""
        x = self.head_drop(x.mean(dim=1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a clip batch ``(B, T, 3, H, W)``."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final linear classifier."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` classes."""
        self.num_classes = num_classes
        device = next(self.parameters()).device
        self.head = (
            nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        )

    def temporal_parameter_names(self) -> set[str]:
        """Names of the parameters of temporal modules (ATM, T-Conv): new, so layer-decay scale 1."""
        names: set[str] = set()
        for module_name, module in self.named_modules():
            if isinstance(module, TemporalModule):
                prefix = f"{module_name}." if module_name else ""
                names.update(prefix + name for name, _ in module.named_parameters())
        return names
