"""``atmvideo demo``: ATM vs TSN on a synthetic dataset that only a temporal model can solve.

Generates the synthetic twin-class dataset (``atmvideo.data.make_synthetic``) if it is missing,
trains ATM-ResNet-18 and TSN-ResNet-18 from scratch with the ``demo_*`` recipes, and prints one
row per model: top-1 overall, top-1 on the motion-defined classes, top-1 on the class *pair*
(which a frame-averaging model can get right from appearance alone), GFLOPs per clip and the
training time. Re-running continues or reuses the runs (``--resume auto``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from atmvideo.engine import metrics as M
from atmvideo.engine.builders import model_kwargs
from atmvideo.engine.config import RunConfig, resolve_config
from atmvideo.engine.outputs import atomic_write_json, atomic_write_text, format_table
from atmvideo.flops import count_flops

__all__ = ["DEMO_MODELS", "motion_defined_classes", "run_demo", "twin_of"]

_logger = logging.getLogger(__name__)

# (row label, recipe)
DEMO_MODELS: tuple[tuple[str, str], ...] = (
    ("ATM-ResNet-18", "demo_atm_r18_synthetic"),
    ("TSN-ResNet-18", "demo_tsn_r18_synthetic"),
)
COLUMNS = ("model", "top1", "top1_motion", "top1_pair", "gflops", "params_m", "train_min")


def twin_of() -> list[int]:
    """For every synthetic class, the class with the same motion (its time-reversed twin), else itself."""
    from atmvideo.data.synthetic import CLASSES

    twins = []
    for i, (_, motion, _) in enumerate(CLASSES):
        same = [j for j, (_, m, _) in enumerate(CLASSES) if m == motion and j != i]
        twins.append(same[0] if same else i)
    return twins


def motion_defined_classes() -> list[int]:
    """Classes told apart from another class only by the direction of time (a twin exists)."""
    return [i for i, twin in enumerate(twin_of()) if twin != i]


def data_overrides(data_dir: Path) -> list[str]:
    """``--set`` items that point a demo recipe at the generated dataset (and its flip label swap)."""
    from atmvideo.data.synthetic import SYNTHETIC_FLIP_LABEL_MAP

    return [
        f"data.root={data_dir / 'videos'}",
        f"data.train={data_dir / 'train.json'}",
        f"data.val={data_dir / 'validation.json'}",
        f"data.labels={data_dir / 'labels.json'}",
        f"data.flip_label_map={SYNTHETIC_FLIP_LABEL_MAP}",
    ]


def ensure_dataset(data_dir: Path, *, seed: int, videos: int) -> Path:
    """Generate the synthetic dataset unless ``data_dir`` already holds one."""
    if (data_dir / "labels.json").is_file() and (data_dir / "validation.json").is_file():
        _logger.info("using the synthetic dataset in %s", data_dir)
        return data_dir
    from atmvideo.data import make_synthetic

    start = time.perf_counter()
    make_synthetic(data_dir, seed=seed, videos=videos)
    _logger.info(
        "generated %d synthetic training videos in %s (%.0f s)", videos, data_dir, time.perf_counter() - start
    )
    return data_dir


def summarize_run(label: str, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """One table row from a finished run's final predictions, metrics and the model's FLOPs."""
    pred = torch.load(run_dir / "predictions.pt", map_location="cpu", weights_only=True)
    scores, targets = pred["scores"], pred["targets"].long()
    predicted = scores.argmax(dim=1)
    motion = torch.tensor(motion_defined_classes())
    on_motion = torch.isin(targets, motion)
    twins = torch.tensor(twin_of())
    row: dict[str, Any] = {
        "model": label,
        "top1": M.topk_accuracy(scores, targets, ks=(1,))[1],
        "top1_motion": 100.0 * (predicted[on_motion] == targets[on_motion]).double().mean().item(),
        # right pair, ignoring the direction of time: what appearance alone can tell
        "top1_pair": 100.0 * ((predicted == targets) | (predicted == twins[targets])).double().mean().item(),
        "num_samples": int(targets.numel()),
    }
    metrics = pred.get("metrics", {})
    row["train_min"] = float(metrics.get("train_time", float("nan"))) / 60.0
    kwargs = model_kwargs(cfg.model, cfg.model.num_classes, pretrained=False)
    kwargs.pop("num_frames")
    cost = count_flops(cfg.model.name, frames=cfg.model.num_frames, size=cfg.data.input_size, **kwargs)
    row["gflops"], row["params_m"] = cost.gflops, cost.params / 1e6
    return row


def run_demo(
    output: str | Path,
    *,
    videos: int = 500,
    seed: int = 0,
    overrides: Sequence[str] = (),
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Generate data if needed, train and evaluate both demo models, print and save the table."""
    from atmvideo.engine.runner import train

    out = Path(output)
    start = time.perf_counter()
    data_dir = ensure_dataset(out / "data", seed=seed, videos=videos)
    rows = []
    for label, recipe in DEMO_MODELS:
        cfg = resolve_config(recipe, [*data_overrides(data_dir), f"train.seed={seed}", *overrides])
        run_dir = out / recipe.removeprefix("demo_")
        _logger.info("training %s (%s) -> %s", label, recipe, run_dir)
        train(cfg, run_dir, resume="auto", device=device)
        rows.append(summarize_run(label, cfg, run_dir))
    table = format_table(rows, COLUMNS)
    total = time.perf_counter() - start
    text = (
        f"{table}\n\ntop1: all validation videos; top1_motion: classes told apart only by the direction "
        "of time; "
        f"top1_pair: right class or its time-reversed twin.\ntotal demo time: {total / 60:.1f} min\n"
    )
    atomic_write_text(out / "demo_results.txt", text)
    atomic_write_json(out / "demo_results.json", {"rows": rows, "total_seconds": total})
    print(text, end="")
    return rows
