"""What a run leaves on disk: atomic files, TensorBoard scalars, a JSON-lines history, plots, tables.

Files are written so that a crash (or a kill at the end of a job's time limit) never leaves a
half-written file: the bytes go to a temporary file in the same folder, are flushed and fsync'ed,
and only then replace the target with ``os.replace`` (atomic on POSIX and Windows).
``history.jsonl`` is append-only instead; its reader skips a torn last line.

Matplotlib and TensorBoard are imported lazily: importing this module stays cheap.
"""

from __future__ import annotations

import io
import json
import logging
import math
import numbers
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "RunLogger",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "format_table",
    "plot_confusion_matrix",
    "plot_curves",
    "read_history",
]

_logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not possible on every OS / filesystem, and not fatal there
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Run ``write`` on a temp file next to ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 lets the umask decide the mode, like a plain open() would
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write bytes to ``path`` atomically (temp file + fsync + rename)."""
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically (temp file + fsync + rename)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    # numpy scalars and arrays, without importing numpy here
    for attr in ("tolist", "item"):
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically; tensors, numpy values, paths and sets are converted."""
    # serialise first: an unserialisable object then fails before anything touches the disk
    text = json.dumps(obj, indent=indent, default=_json_default) + "\n"
    return atomic_write_text(path, text)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` that never leaves a truncated checkpoint behind (temp file + fsync + rename)."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def read_history(path: PathLike) -> list[dict]:
    """Records of a JSON-lines history file; unparsable lines (a torn last write) are skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict] = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            _logger.warning("%s: skipping unreadable line %d (interrupted write?)", path, i + 1)
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


class RunLogger:
    """TensorBoard scalars, ``history.jsonl`` and ``metrics.json`` of one run, under ``out_dir``.

    Create it with ``enabled=False`` on non-zero ranks: every writing method is then a no-op, so
    callers need no rank checks. The TensorBoard writer is created on first use (under
    ``out_dir/tb``), so runs that never log scalars leave no empty event file.
    """

    HISTORY = "history.jsonl"
    METRICS = "metrics.json"

    def __init__(self, out_dir: PathLike, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.tensorboard = tensorboard
        self._writer: Any = None
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def history_path(self) -> Path:
        """Path of the JSON-lines history file."""
        return self.out_dir / self.HISTORY

    @property
    def metrics_path(self) -> Path:
        """Path of the final metrics file."""
        return self.out_dir / self.METRICS

    def _tb(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.out_dir / "tb"))
        return self._writer

    def log_scalars(self, tag_prefix: str, values: Mapping[str, float], step: int) -> None:
        """Add ``tag_prefix/name`` scalars at ``step`` to TensorBoard; non-numeric values are skipped."""
        if not (self.enabled and self.tensorboard):
            return
        writer = self._tb()
        prefix = tag_prefix.rstrip("/")
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    continue
                value = value.item()
            # numbers.Real also admits numpy scalars
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            writer.add_scalar(f"{prefix}/{name}" if prefix else name, float(value), int(step))
        # a killed job keeps what was logged up to now
        writer.flush()

    def append_history(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one JSON line to ``history.jsonl`` (flushed and fsync'ed)."""
        if not self.enabled:
            return
        line = json.dumps(dict(record), default=_json_default)
        path = self.history_path
        with open(path, "a+b") as f:
            # after a torn write the file ends mid-line: start a fresh line so this record stays whole
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(line.encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())

    read_history = staticmethod(read_history)

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Atomically (re)write ``metrics.json``."""
        if not self.enabled:
            return
        atomic_write_json(self.metrics_path, dict(metrics))

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- plots

# history keys looked up for each curve, first match wins; the trainer writes the first form
LOSS_KEYS = ("train_loss", "train/loss", "loss")
EVAL_METRICS = ("top1", "top5", "mAP")
EVAL_PREFIXES = ("val_", "val/", "eval_", "eval/", "test_", "test/")


def _first_key(record: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    for k in keys:
        v = record.get(k)
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
            return k
    return None


def _series(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        k = _first_key(r, keys)
        if k is not None:
            xs.append(float(r["epoch"]))
            ys.append(float(r[k]))
    return xs, ys


def _new_figure(figsize: tuple[float, float], dpi: int) -> Any:
    # Figure + Agg canvas instead of pyplot: no global state, no display, safe in worker threads
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, out_png: PathLike, dpi: int) -> Path:
    buf = io.BytesIO()
    # no bbox_inches="tight": the image keeps exactly figsize * dpi pixels
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(out_png, buf.getvalue())


def plot_curves(
    history: Sequence[Mapping[str, Any]] | PathLike,
    out_png: PathLike,
    *,
    figsize: tuple[float, float] = (10.0, 4.0),
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """PNG of training loss (left) and eval top1/top5/mAP (right) against epoch.

    Records need an ``epoch``; the loss is read from ``train_loss`` (or ``train/loss``, ``loss``)
    and metrics from ``val_top1``, ``val_top5``, ``val_mAP`` (or the ``val/``, ``eval_``, ``eval/``,
    ``test_``, ``test/`` prefixes, or the bare names). Records without a key are skipped for that
    curve; when an epoch appears twice (a resumed run) the later record wins.
    """
    records = read_history(history) if isinstance(history, (str, os.PathLike)) else list(history)
    by_epoch: dict[float, Mapping[str, Any]] = {}
    for r in records:
        if isinstance(r.get("epoch"), (int, float)):
            by_epoch[float(r["epoch"])] = r
    records = [by_epoch[e] for e in sorted(by_epoch)]

    fig = _new_figure(figsize, dpi)
    ax_loss, ax_eval = fig.subplots(1, 2)
    xs, ys = _series(records, LOSS_KEYS)
    if xs:
        ax_loss.plot(xs, ys, marker="o", markersize=3, label="train loss")
        ax_loss.legend(loc="best")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    ax_loss.grid(True, alpha=0.3)

    any_eval = False
    for name in EVAL_METRICS:
        keys = [p + name for p in EVAL_PREFIXES] + [name]
        xs, ys = _series(records, keys)
        if xs:
            any_eval = True
            ax_eval.plot(xs, ys, marker="o", markersize=3, label=name)
    if any_eval:
        ax_eval.legend(loc="best")
    ax_eval.set_xlabel("epoch")
    ax_eval.set_ylabel("%")
    ax_eval.set_title("evaluation")
    ax_eval.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save_png(fig, out_png, dpi)


def plot_confusion_matrix(
    matrix: torch.Tensor | Sequence[Sequence[float]],
    class_names: Sequence[str] | None,
    out_png: PathLike,
    normalize: bool = True,
    *,
    figsize: tuple[float, float] = (8.0, 8.0),
    dpi: int = 100,
    max_labels: int = 40,
    annotate_max: int = 20,
) -> Path:
    """PNG heat map of a (K, K) confusion matrix (rows = true class), row-normalised by default.

    Class names label the axes up to ``max_labels`` classes and cells carry their value up to
    ``annotate_max`` classes; beyond that the picture would be unreadable text.
    """
    m = torch.as_tensor(matrix, dtype=torch.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be (K, K), got {tuple(m.shape)}")
    k = m.shape[0]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} classes")
    if normalize:
        # classes absent from the evaluation set keep an all-zero row instead of NaNs
        m = m / m.sum(dim=1, keepdim=True).clamp_min(1)
    values = m.numpy()

    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    if class_names is not None and k <= max_labels:
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels([str(c) for c in class_names], rotation=90, fontsize=7)
        ax.set_yticklabels([str(c) for c in class_names], fontsize=7)
    if k <= annotate_max:
        vmax = values.max() if values.size else 0.0
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                text = f"{v:.2f}" if normalize else f"{int(v)}"
                color = "white" if vmax > 0 and v > 0.5 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return _save_png(fig, out_png, dpi)


# --------------------------------------------------------------------------------------------- tables


def _cell(value: Any, float_fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float):
        return "nan" if math.isnan(value) else float_fmt.format(value)
    return str(value)


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, float_fmt: str = "{:.2f}"
) -> str:
    """Plain aligned text table: numbers right-aligned, text left-aligned, missing cells as '-'."""
    cells = [[_cell(r.get(c), float_fmt) for c in columns] for r in rows]
    numeric = [
        all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) and bool(rows)
        for c in columns
    ]
    widths = [max([len(str(c))] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def line(parts: Sequence[str]) -> str:
        out = [p.rjust(w) if num else p.ljust(w) for p, w, num in zip(parts, widths, numeric, strict=True)]
        return "  ".join(out).rstrip()

    lines = [line([str(c) for c in columns]), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in cells]
    return "\n".join(lines)
