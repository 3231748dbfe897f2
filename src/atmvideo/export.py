"""Export a video model to ONNX or TorchScript and check the file against PyTorch on random clips.

The exported model takes the same input as the PyTorch one, ``clips`` of shape ``(B, T, 3, H, W)``,
and returns ``logits`` ``(B, num_classes)``. The batch axis is dynamic; T, H and W are fixed at
export time (the ATM's context and the ViT's position embeddings are built for them).

- **ONNX** uses ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript). The legacy
  TorchScript-based exporter (``dynamo=False``) cannot export ATM: it cannot convert the custom
  autograd Function of ``ops.local_correlation`` ("IndexError: Argument passed to at() was not in
  the map"), and without it its symbolic for ``aten::unfold`` needs static input sizes, which
  ``ops.span_context`` (``F.pad`` + ``Tensor.unfold`` over time) does not give it ("Unsupported: ONNX
  export of operator Unfold, input size not accessible"). The dynamo exporter traces through that
  Function and turns ``unfold`` and its ``as_strided`` band into plain ONNX ops: no export-specific
  code path is needed. Checked with onnxruntime.
- **TorchScript** uses ``torch.jit.trace`` (``torch.jit.script`` cannot compile timm models) inside
  :func:`traceable_correlation`, because the trace cannot save the custom autograd Function of
  ``ops.local_correlation``. The trace is checked on a batch size other than the one it was traced
  with, so a batch size baked into the graph would show up as an error. ``torch.jit`` is deprecated
  in recent PyTorch: prefer ONNX.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atmvideo import ops

__all__ = [
    "FORMATS",
    "ExportResult",
    "check_export",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "load_checkpoint_model",
    "random_clips",
    "traceable_correlation",
]

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
INPUT_NAME = "clips"
OUTPUT_NAME = "logits"
# ONNX protobuf files cannot exceed 2 GiB: bigger models keep their weights in FILE.data beside it.
_EXTERNAL_DATA_BYTES = 1_800_000_000
_INSTALL_HINT = "pip install 'atmvideo[onnx]'"


@dataclass(frozen=True)
class ExportResult:
    """What was written and how closely it reproduces PyTorch."""

    path: Path
    format: str
    input_shape: tuple[int, ...]  # (B, T, 3, H, W) of the example; B is dynamic in the file
    output_shape: tuple[int, ...]
    max_abs_diff: float | None  # largest |exported - PyTorch| over the checked batches; None if unchecked
    checked_batches: tuple[int, ...]


def load_checkpoint_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of an atmvideo training checkpoint (eval mode) and return it with its metadata.

    The metadata dict holds ``config`` (the resolved run configuration as a dict), ``class_names``,
    ``num_classes`` and ``metrics``. The weights are the checkpoint's ``model`` state dict.
    """
    from atmvideo.engine.builders import build_model
    from atmvideo.engine.checkpoint import load_checkpoint
    from atmvideo.engine.config import config_from_dict

    ckpt = load_checkpoint(path)
    config = dict(ckpt.get("config") or {})
    cfg = config_from_dict(config, source=str(path))
    class_names = list(ckpt.get("class_names") or [])
    num_classes = int(ckpt.get("num_classes") or cfg.model.num_classes or len(class_names))
    if num_classes < 1:
        raise ValueError(f"{path}: the checkpoint does not say how many classes its model has")
    model = build_model(cfg.model, num_classes, pretrained=False)
    model.load_state_dict(ckpt["model"])
    model.eval()
    info = {
        "config": config,
        "class_names": class_names,
        "num_classes": num_classes,
        "metrics": dict(ckpt.get("metrics") or {}),
    }
    return model, info


def random_clips(batch: int, frames: int, size: int, *, seed: int = 0) -> torch.Tensor:
    """A reproducible batch of random clips ``(batch, frames, 3, size, size)``, roughly normalised pixels."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 3, size, size, generator=generator)


def _require(module: str, purpose: str) -> None:
    """Fail with an install hint when an optional package is missing."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{purpose} needs the optional package {module!r}: {_INSTALL_HINT}")


def _parameter_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def export_onnx(
    model: nn.Module, example: torch.Tensor, out: str | os.PathLike, *, opset: int | None = None
) -> Path:
    """Write ``model`` as ONNX (dynamo exporter) with a dynamic batch axis; ``example`` needs batch >= 2."""
    _require("onnxscript", "ONNX export (torch.onnx.export with dynamo=True)")
    _require("onnx", "ONNX export")
    if example.shape[0] < 2:
        # torch.export specialises sizes 0 and 1: a batch-1 example would fix the batch axis to 1
        raise ValueError("the example batch must hold at least 2 clips for a dynamic batch axis")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    external = _parameter_bytes(model) > _EXTERNAL_DATA_BYTES
    # The exporter prints its progress to stdout; keep the command's output to what it reports itself.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(out),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            external_data=external,
            verbose=False,
        )
    return out


@contextlib.contextmanager
def traceable_correlation() -> Iterator[None]:
    """Compute ATM's local correlation with plain tensor ops, which ``torch.jit.trace`` can save.

    ``ops.local_correlation`` runs through ``_BandCorrelation``, a ``torch.autograd.Function`` that a
    trace records as a Python call and ``torch.jit.save`` refuses ("Could not export Python function
    call '_BandCorrelation'"). Inside this context it takes the textbook path of
    ``ops.architectural_cost()`` instead: one channel contraction per displacement, the same numbers
    up to float rounding. The ONNX exporter (``torch.export``) traces through the Function and
    needs no switch.
    """
    with ops.architectural_cost():
        yield


def export_torchscript(model: nn.Module, example: torch.Tensor, out: str | os.PathLike) -> Path:
    """Write ``model`` as a traced TorchScript module (``torch.jit.load`` reads it back)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    # Tracing warns about every Python-level shape check in the models (they are constant for a
    # fixed clip length and size) and about torch.jit's deprecation; the check below is the real test.
    with warnings.catch_warnings(), torch.no_grad(), traceable_correlation():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(out))
    return out


def _run_exported(path: Path, fmt: str) -> Any:
    """A callable ``numpy clips -> numpy logits`` running the exported file outside PyTorch's model code."""
    if fmt == "onnx":
        _require("onnxruntime", "checking an ONNX file")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        options.intra_op_num_threads = torch.get_num_threads()  # as many threads as PyTorch is allowed
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda clips: session.run([OUTPUT_NAME], {INPUT_NAME: clips})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()

    def run(clips: np.ndarray) -> np.ndarray:
        # The graph executor spends its first runs profiling and re-optimising for each new input
        # shape (seconds on CPU); the check is about the graph, so run it without that.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            return module(torch.from_numpy(clips)).numpy()

    return run


@torch.no_grad()
def check_export(
    path: str | os.PathLike, fmt: str, model: nn.Module, inputs: Sequence[torch.Tensor]
) -> float:
    """Largest absolute difference between the exported file's logits and ``model``'s over ``inputs``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    run = _run_exported(Path(path), fmt)
    model.eval()
    worst = 0.0
    for clips in inputs:
        expected = model(clips).float().numpy()
        got = np.asarray(run(clips.float().numpy().copy()))
        if got.shape != expected.shape:
            raise RuntimeError(
                f"{path}: output shape {got.shape} for input {tuple(clips.shape)}, expected {expected.shape}"
            )
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_model(
    model: nn.Module,
    out: str | os.PathLike,
    fmt: str,
    *,
    frames: int,
    size: int,
    batch: int = 2,
    check: bool = True,
    opset: int | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` for ``(B, frames, 3, size, size)`` clips and, if ``check``, compare it with PyTorch.

    The check runs the exported file on random clips of ``batch`` and ``batch + 1`` clips (the second
    size proves the batch axis is not baked in) and returns the largest absolute difference.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    model = model.float().eval()
    example = random_clips(batch, frames, size, seed=seed)
    with torch.no_grad():
        output_shape = tuple(model(example).shape)
    if fmt == "onnx":
        path = export_onnx(model, example, out, opset=opset)
    else:
        path = export_torchscript(model, example, out)
    diff = None
    batches: tuple[int, ...] = ()
    if check:
        batches = (batch, batch + 1)
        inputs = [random_clips(b, frames, size, seed=seed + 1 + i) for i, b in enumerate(batches)]
        diff = check_export(path, fmt, model, inputs)
    return ExportResult(
        path=path,
        format=fmt,
        input_shape=tuple(example.shape),
        output_shape=output_shape,
        max_abs_diff=diff,
        checked_batches=batches,
    )
