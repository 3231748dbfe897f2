"""Checkpoints: what a run saves to continue exactly where it stopped, and how it is read back.

A checkpoint is a dict of tensors and primitive containers only, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs). Random-number-generator states are
converted to tensors and lists for that reason. Files are written atomically (temp + rename): a
kill during a save leaves the previous ``last.pt`` intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atmvideo.engine.outputs import atomic_torch_save

__all__ = [
    "CHECKPOINT_FORMAT",
    "capture_rng_state",
    "find_resume_checkpoint",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "state_dict_is_finite",
]

CHECKPOINT_FORMAT = "atmvideo-checkpoint-v1"
LAST = "last.pt"
BEST = "best.pt"


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors / primitives."""
    version, py_state, gauss = random.getstate()
    key, np_state, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "key": str(key),
            "state": torch.from_numpy(np_state.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["key"],
            npy["state"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def state_dict_is_finite(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when every floating-point tensor of a state dict is free of NaN and inf."""
    return all(
        bool(torch.isfinite(t).all())
        for t in state_dict.values()
        if torch.is_tensor(t) and t.is_floating_point()
    )


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint atomically, tagged with :data:`CHECKPOINT_FORMAT`."""
    return atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign / unsafe files
        raise RuntimeError(f"{path}: cannot be read as a weights-only checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: not an atmvideo training checkpoint (no format={CHECKPOINT_FORMAT!r}); "
            "to start from plain weights use --set model.pretrained=PATH"
        )
    return ckpt


def find_resume_checkpoint(out_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint ``--resume`` points at: ``auto`` = ``OUT/last.pt`` if it exists, else a path."""
    if not resume:
        return None
    if resume == "auto":
        candidate = Path(out_dir) / LAST
        return candidate if candidate.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
    return path
