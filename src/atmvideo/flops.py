"""FLOP and parameter counts of atmvideo models, counted on the ``meta`` device (no weights needed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from atmvideo import ops
from atmvideo.models import create_model


@dataclass(frozen=True)
class FlopsResult:
    """Cost of one view: GFLOPs (one multiply-add = one FLOP) and the number of parameters."""

    model: str
    frames: int
    size: int
    gflops: float
    params: int
    convention: str = "full"

    def as_dict(self) -> dict[str, Any]:
        """The result as a plain dict (for JSON)."""
        return asdict(self)


CONVENTIONS: tuple[str, ...] = ("full", "paper")


def count_flops(
    name: str, *, frames: int = 8, size: int | None = None, convention: str = "full", **model_kwargs: Any
) -> FlopsResult:
    """Count the multiply-adds of one ``frames x size x size`` view through model ``name``.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 per multiply-add, so the
    total is halved) on the ``meta`` device, with every ATM operation in its textbook form
    (``ops.architectural_cost``) so the count describes the architecture, not the kernels. Only
    convolutions, matrix products and attention are counted. ``convention="paper"`` leaves out
    everything inside the ViT attention modules (q/k/v and output projections, attention products),
    which is what reproduces the paper's ViT column (docs/flops.md); ResNets are unaffected.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOP convention {convention!r}; choose from {', '.join(CONVENTIONS)}")
    model_kwargs.pop("pretrained", None)
    with torch.device("meta"):
        model = create_model(name, num_frames=frames, **model_kwargs)
    model.eval()
    if size is None:
        size = int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    clip = torch.empty(1, frames, 3, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, ops.architectural_cost():
        model(clip)
    total = counter.get_total_flops()
    if convention == "paper":
        total -= sum(
            sum(per_op.values())
            for module_name, per_op in counter.get_flop_counts().items()
            if module_name.rsplit(".", 1)[-1] == "attn"
        )
    params = sum(p.numel() for p in model.parameters())
    return FlopsResult(
        model=name, frames=frames, size=size, gflops=total / 2 / 1e9, params=params, convention=convention
    )
