"""A Markdown page for a training run (or a folder of runs): configuration, metrics, cost, plots, history.

A run directory is what ``atmvideo train`` leaves: ``config.yaml`` (the resolved configuration),
``metrics.json`` (final evaluation), ``history.jsonl`` (one record per epoch), PNG plots
(``curves.png``, ``confusion_matrix.png``) and checkpoints. Any folder holding ``config.yaml``,
``metrics.json`` or ``history.jsonl`` counts as a run; a folder without them (e.g. the demo's output,
one sub-folder per model) gets one page with a comparison table and a section per run found below it.

Nothing is recomputed from the data: FLOPs and parameters come from ``atmvideo.flops.count_flops``
on the configuration's model (meta device, no weights), throughput from the history.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from atmvideo.engine.outputs import atomic_write_text, format_table, read_history

__all__ = [
    "RUN_FILES",
    "RunSummary",
    "epoch_throughput",
    "find_runs",
    "load_run",
    "render_report",
    "write_report",
]

_logger = logging.getLogger(__name__)

RUN_FILES: tuple[str, ...] = ("config.yaml", "metrics.json", "history.jsonl")
REPORT_NAME = "report.md"
DEMO_SUMMARY = "demo_results.txt"  # what `atmvideo demo` writes beside its run folders
# Final metrics shown first, in this order, when present; every other number follows.
_METRIC_ORDER = ("top1", "top5", "mean_class_acc", "mAP", "num_samples", "views", "epoch", "best_epoch")
_THROUGHPUT_KEYS = ("clips_per_s", "train_clips_per_s", "throughput")
_HISTORY_COLUMNS = ("epoch", "train_loss", "lr", "val_top1", "val_top5", "val_mAP", "clips_per_s")
_PLOT_TITLES = {"curves.png": "Training curves", "confusion_matrix.png": "Confusion matrix"}
_MAX_DEPTH = 3  # how deep below the given folder runs are looked for


@dataclass
class RunSummary:
    """Everything the report shows about one run, read from its folder."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # checkpoints and other outputs worth a link
    gflops: float | None = None
    params: int | None = None
    cost_note: str = ""  # why the cost is missing, or what it assumed
    throughput: list[float | None] = field(default_factory=list)  # training clips/s per history record

    @property
    def name(self) -> str:
        """The run's folder name."""
        return self.path.name

    @property
    def model_name(self) -> str:
        """The configured model, or '?'."""
        return str(self.config.get("model", {}).get("name") or "?")

    @property
    def frames(self) -> int | None:
        """Frames per clip of the configured model."""
        value = self.config.get("model", {}).get("num_frames")
        return int(value) if value else None

    @property
    def size(self) -> int | None:
        """Input side of the configured data pipeline."""
        value = self.config.get("data", {}).get("input_size")
        return int(value) if value else None

    @property
    def mean_throughput(self) -> float | None:
        """Training clips per second over the whole run (total clips / total training time)."""
        pairs = [
            (rate, seconds)
            for rate, seconds in zip(self.throughput, _train_time_deltas(self.history), strict=True)
            if rate is not None
        ]
        if not pairs:
            return None
        total_time = sum(seconds or 0.0 for _, seconds in pairs)
        if all(seconds for _, seconds in pairs) and total_time > 0:
            return sum(rate * seconds for rate, seconds in pairs) / total_time  # total clips / total time
        return sum(rate for rate, _ in pairs) / len(pairs)


def _is_run(folder: Path) -> bool:
    return any((folder / name).is_file() for name in RUN_FILES)


def find_runs(path: str | os.PathLike) -> list[Path]:
    """Run folders at ``path``: itself if it is a run, else the runs in its sub-folders (sorted)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such run directory")
    if _is_run(root):
        return [root]
    runs: list[Path] = []
    frontier = [root]
    for _ in range(_MAX_DEPTH):
        below: list[Path] = []
        for folder in frontier:
            for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                (runs if _is_run(child) else below).append(child)
        frontier = below
    if not runs:
        raise FileNotFoundError(
            f"{root}: no training run found (a run folder holds {', '.join(RUN_FILES)}; "
            f"none of them is in it or in its sub-folders)"
        )
    return sorted(runs)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        _logger.warning("%s: unreadable (%s); left out of the report", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        _logger.warning("%s: unreadable (%s); left out of the report", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _train_time_deltas(history: Sequence[Mapping[str, Any]]) -> list[float | None]:
    """Seconds of training in each record (``train_time`` is cumulative over the run)."""
    out: list[float | None] = []
    previous = 0.0
    for record in history:
        total = _number(record.get("train_time"))
        out.append(total - previous if total is not None and total >= previous else None)
        previous = total if total is not None else previous
    return out


def epoch_throughput(history: Sequence[Mapping[str, Any]], batch_size: int | None) -> list[float | None]:
    """Training clips per second of each epoch record.

    A record's own ``clips_per_s`` (or ``train_clips_per_s``, ``throughput``) wins; otherwise it is
    ``(global_step - previous global_step) * batch_size / (train_time - previous train_time)``, where
    ``train_time`` is the cumulative training time (evaluation excluded) and ``batch_size`` the global
    batch per optimiser step.
    """
    out: list[float | None] = []
    previous_step = 0.0
    times = _train_time_deltas(history)
    for record, seconds in zip(history, times, strict=True):
        explicit = next(
            (v for v in (_number(record.get(k)) for k in _THROUGHPUT_KEYS) if v is not None), None
        )
        step = _number(record.get("global_step"))
        if explicit is not None:
            out.append(explicit)
        elif step is not None and batch_size and seconds and seconds > 0 and step >= previous_step:
            out.append((step - previous_step) * batch_size / seconds)
        else:
            out.append(None)
        previous_step = step if step is not None else previous_step
    return out


def _num_classes(run: Path, config: Mapping[str, Any]) -> int | None:
    """Classifier width: from the configuration, else the per-class report, else a checkpoint."""
    configured = int(
        config.get("model", {}).get("num_classes") or config.get("data", {}).get("num_classes") or 0
    )
    if configured > 0:
        return configured
    per_class = run / "per_class.json"
    if per_class.is_file():
        try:
            rows = json.loads(per_class.read_text(encoding="utf-8"))
            if isinstance(rows, list) and rows:
                return len(rows)
        except (OSError, json.JSONDecodeError):
            pass
    for name in ("best.pt", "last.pt"):
        if (run / name).is_file():
            try:
                import torch

                ckpt = torch.load(run / name, map_location="meta", weights_only=True)
                if isinstance(ckpt, dict) and ckpt.get("num_classes"):
                    return int(ckpt["num_classes"])
            except Exception:  # a foreign or truncated file: the cost simply assumes no classifier size
                continue
    return None


def _cost(run: Path, config: Mapping[str, Any]) -> tuple[float | None, int | None, str]:
    """GFLOPs and parameters of the configured model for one view, or the reason they are missing."""
    model = dict(config.get("model") or {})
    name = model.get("name")
    if not name:
        return None, None, "no model name in config.yaml"
    frames = int(model.get("num_frames") or 8)
    size = config.get("data", {}).get("input_size")
    kwargs: dict[str, Any] = {}
    for key in ("atm_ops", "atm_context", "atm_stage", "atm_block", "atm_style", "atm_extractor", "tconv"):
        if model.get(key) is not None:
            kwargs[key] = model[key]
    kwargs.update(model.get("kwargs") or {})
    num_classes = _num_classes(run, config)
    note = ""
    if num_classes:
        kwargs["num_classes"] = num_classes
    else:
        note = "classifier size unknown: parameters counted with the model's default class count"
    try:
        from atmvideo.flops import count_flops

        result = count_flops(str(name), frames=frames, size=int(size) if size else None, **kwargs)
    except Exception as err:  # an unregistered model or an option the model rejects
        return None, None, f"cost not counted ({type(err).__name__}: {err})"
    return result.gflops, result.params, note


def load_run(path: str | os.PathLike, *, with_cost: bool = True) -> RunSummary:
    """Read one run folder into a :class:`RunSummary` (missing files leave their fields empty)."""
    run = Path(path)
    summary = RunSummary(path=run)
    summary.config = _read_yaml(run / "config.yaml")
    summary.metrics = _read_json(run / "metrics.json")
    records = [r for r in read_history(run / "history.jsonl") if isinstance(r.get("epoch"), (int, float))]
    # A resumed run may log an epoch twice; the later record wins, as in the curves plot.
    by_epoch = {float(r["epoch"]): r for r in records if "event" not in r}
    summary.history = [by_epoch[e] for e in sorted(by_epoch)]
    batch = summary.config.get("train", {}).get("batch_size")
    summary.throughput = epoch_throughput(summary.history, int(batch) if batch else None)
    # The two standard plots first, in a fixed order, then any other PNG the run left.
    pngs = sorted(run.glob("*.png"))
    summary.plots = [run / n for n in _PLOT_TITLES if run / n in pngs]
    summary.plots += [p for p in pngs if p.name not in _PLOT_TITLES]
    summary.files = [
        run / name
        for name in ("best.pt", "last.pt", "per_class.txt", "predictions.csv")
        if (run / name).is_file()
    ]
    if with_cost and summary.config:
        summary.gflops, summary.params, summary.cost_note = _cost(run, summary.config)
    elif not summary.config:
        summary.cost_note = "no config.yaml: cost unknown"
    return summary


# ------------------------------------------------------------------------------------------- markdown


def _link(target: Path, base: Path) -> str:
    """A relative, URL-quoted link from the report's folder to ``target``."""
    relative = os.path.relpath(target.resolve(), base.resolve())
    return quote(Path(relative).as_posix())


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _ordered_metrics(metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
    first = [(k, metrics[k]) for k in _METRIC_ORDER if k in metrics]
    rest = [(k, v) for k, v in metrics.items() if k not in _METRIC_ORDER and not isinstance(v, (dict, list))]
    return first + rest


def _size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{max(size / 2**10, 0.1):.1f} KB"


def _run_section(run: RunSummary, base: Path, level: int, heading: str) -> list[str]:
    """Markdown of one run under a ``heading`` of ``level``; its parts are one level below."""
    h = "#" * level
    lines = [f"{h} {heading}", ""]
    description = run.config.get("description")
    if description:
        lines += [f"_{description}_", ""]
    data = run.config.get("data", {})
    train = run.config.get("train", {})
    optim = run.config.get("optim", {})
    facts = [
        ("folder", f"`{os.path.relpath(run.path.resolve(), base.resolve())}`"),
        ("model", f"`{run.model_name}`"),
        ("input", f"{run.frames or '?'} frames x {run.size or '?'}x{run.size or '?'}"),
        ("data", f"{data.get('format', '?')} at `{data.get('root') or '-'}`" if data else None),
        ("epochs run", f"{len(run.history)} of {train.get('epochs', '?')}" if run.history or train else None),
        (
            "batch / optimiser",
            f"{train.get('batch_size', '?')} / {optim.get('name', '?')}, lr {optim.get('lr', '?')}"
            if train or optim
            else None,
        ),
    ]
    lines += _table(["", ""], [(k, v) for k, v in facts if v is not None]) + [""]

    lines += [f"{h}# Final metrics", ""]
    if run.metrics:
        lines += _table(["metric", "value"], _ordered_metrics(run.metrics)) + [""]
    else:
        lines += ["No `metrics.json`: the run has not finished an evaluation.", ""]

    lines += [f"{h}# Cost and speed", ""]
    throughput = run.mean_throughput
    lines += _table(
        ["GFLOPs (one view)", "parameters", "training throughput"],
        [
            (
                f"{run.gflops:.2f}" if run.gflops is not None else "-",
                f"{run.params / 1e6:.2f} M" if run.params is not None else "-",
                f"{throughput:.1f} clips/s" if throughput is not None else "-",
            )
        ],
    )
    notes = [
        f"GFLOPs count one multiply-add as one FLOP for one {run.frames or '?'}-frame "
        f"{run.size or '?'}x{run.size or '?'} view (`atmvideo flops`)."
    ]
    if throughput is not None:
        notes.append("Throughput: training clips per second of training time (evaluation excluded).")
    if run.cost_note:
        notes.append(run.cost_note[0].upper() + run.cost_note[1:] + ".")
    lines += ["", " ".join(notes), ""]

    for plot in run.plots:
        title = _PLOT_TITLES.get(plot.name, plot.stem.replace("_", " "))
        lines += [f"{h}# {title}", "", f"![{title}]({_link(plot, base)})", ""]

    if run.history:
        lines += [f"{h}# History", ""]
        rows = []
        for record, rate in zip(run.history, run.throughput, strict=True):
            row = {c: record.get(c) for c in _HISTORY_COLUMNS if c != "clips_per_s"}
            row["clips_per_s"] = rate
            rows.append(row)
        columns = [c for c in _HISTORY_COLUMNS if any(r.get(c) is not None for r in rows)]
        lines += ["```text", format_table(rows, columns, float_fmt="{:.4g}"), "```", ""]

    if run.files:
        lines += [f"{h}# Files", ""]
        lines += [f"- [{f.name}]({_link(f, base)}) ({_size(f)})" for f in run.files]
        lines += [""]

    config_file = run.path / "config.yaml"
    if config_file.is_file():
        text = config_file.read_text(encoding="utf-8", errors="replace").rstrip()
        lines += [
            f"{h}# Resolved configuration",
            "",
            "<details><summary>config.yaml</summary>",
            "",
            "```yaml",
            text,
            "```",
            "",
            "</details>",
            "",
        ]
    return lines


def _comparison(runs: Sequence[RunSummary]) -> list[str]:
    rows = []
    for run in runs:
        throughput = run.mean_throughput
        rows.append(
            (
                f"[{run.name}](#{_anchor(run.name)})",
                f"`{run.model_name}`",
                run.frames,
                run.metrics.get("top1"),
                run.metrics.get("top5"),
                run.metrics.get("mAP"),
                f"{run.gflops:.2f}" if run.gflops is not None else None,
                f"{run.params / 1e6:.2f} M" if run.params is not None else None,
                f"{throughput:.1f}" if throughput is not None else None,
            )
        )
    header = ["run", "model", "frames", "top1", "top5", "mAP", "GFLOPs", "params", "clips/s"]
    keep = [i for i, _ in enumerate(header) if any(row[i] is not None for row in rows)]
    return _table([header[i] for i in keep], [[row[i] for i in keep] for row in rows])


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, spaces to dashes, punctuation dropped."""
    text = heading.strip().lower().replace(" ", "-")
    return "".join(c for c in text if c.isalnum() or c in "-_")


def render_report(
    path: str | os.PathLike, out: str | os.PathLike | None = None, *, with_cost: bool = True
) -> str:
    """Markdown of the run(s) at ``path``; links are relative to ``out``'s folder (default ``path``)."""
    root = Path(path)
    runs = [load_run(run, with_cost=with_cost) for run in find_runs(root)]
    base = Path(out).parent if out is not None else root
    if len(runs) == 1 and runs[0].path == root:
        lines = _run_section(runs[0], base, 1, f"Run report: {runs[0].name}")
    else:
        lines = [f"# Runs in {root.name or root}", "", *_comparison(runs), ""]
        summary = root / DEMO_SUMMARY
        if summary.is_file():  # `atmvideo demo` leaves its own comparison (top-1 on motion classes, ...)
            text = summary.read_text(encoding="utf-8", errors="replace").rstrip()
            lines += [f"## Demo summary ({DEMO_SUMMARY})", "", "```text", text, "```", ""]
        for run in runs:
            lines += _run_section(run, base, 2, run.name)
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    path: str | os.PathLike, out: str | os.PathLike | None = None, *, with_cost: bool = True
) -> Path:
    """Write the report of ``path`` to ``out`` (default ``path/report.md``) atomically and return its path."""
    target = Path(out) if out is not None else Path(path) / REPORT_NAME
    text = render_report(path, target, with_cost=with_cost)
    return atomic_write_text(target, text)
