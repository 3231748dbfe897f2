"""Mixed precision and reproducibility switches: autocast dtype, gradient scaler, seeding, determinism."""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

__all__ = ["amp_dtype", "autocast", "configure_determinism", "make_grad_scaler", "seed_everything"]


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``; None means full float32.

    Mixed precision is a GPU feature here: on CPU the run stays in float32 (CPU autocast is slow
    for convolutions and would make CPU results differ from what the tests check).
    """
    if amp == "none" or device.type != "cuda":
        return None
    if amp == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise RuntimeError("train.amp=bf16 needs a GPU with bfloat16 support; use train.amp=fp16")
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    raise ValueError(f"unknown train.amp {amp!r}; expected none, bf16 or fp16")


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context for float32."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A GradScaler for float16 (its small range needs loss scaling); None for bf16 and float32."""
    if dtype is torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool) -> None:
    """Deterministic kernels (reproducible, slower) or cuDNN autotuning (fast)."""
    if deterministic:
        # cuBLAS reads this when its first handle is created, i.e. before any GPU matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
