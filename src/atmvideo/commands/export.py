"""``atmvideo export``: a model or checkpoint to ONNX / TorchScript, checked against PyTorch."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from atmvideo.commands.flops import parse_model_kwargs


def _build(args: argparse.Namespace) -> tuple[Any, int, int, str]:
    """The model to export with its clip length, input side and a name for messages."""
    from atmvideo.export import load_checkpoint_model
    from atmvideo.models import create_model

    if args.checkpoint:
        model, info = load_checkpoint_model(args.checkpoint)
        config = info["config"]
        frames = args.frames or int(config.get("model", {}).get("num_frames") or model.num_frames)
        size = args.size or int(config.get("data", {}).get("input_size") or 224)
        return model, frames, size, str(config.get("model", {}).get("name", args.checkpoint))
    kwargs = parse_model_kwargs(args.kwarg)
    kwargs.pop("pretrained", None)
    frames = args.frames or 8
    model = create_model(args.model, num_frames=frames, **kwargs)
    size = args.size or int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    return model, frames, size, args.model


def run(args: argparse.Namespace) -> int:
    """Export, check, and print the largest absolute difference from PyTorch."""
    from atmvideo.export import export_model

    try:
        model, frames, size, name = _build(args)
        result = export_model(
            model,
            args.out,
            args.format,
            frames=frames,
            size=size,
            batch=args.batch,
            check=not args.no_check,
            opset=args.opset,
        )
    except (ImportError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"atmvideo export: error: {err}", file=sys.stderr)
        return 1
    shape = ", ".join(["batch", *map(str, result.input_shape[1:])])
    print(
        f"wrote {result.path} ({result.format}): {name}, "
        f"clips ({shape}) -> logits (batch, {result.output_shape[-1]})"
    )
    if result.max_abs_diff is None:
        print("not checked (--no-check)")
        return 0
    runtime = "onnxruntime" if result.format == "onnx" else "torch.jit.load"
    batches = " and ".join(map(str, result.checked_batches))
    print(
        f"max abs difference ({runtime} vs PyTorch, random clips, batches {batches}): "
        f"{result.max_abs_diff:.3g}"
    )
    if result.max_abs_diff > args.atol:
        print(f"atmvideo export: error: difference exceeds --atol {args.atol:g}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX or TorchScript and check it against PyTorch",
        description=(
            "Export a trained checkpoint or a freshly built model. The file takes clips (B, T, 3, H, W) "
            "with a dynamic batch axis and returns logits; it is then run (onnxruntime / torch.jit.load) "
            "on random clips and compared with PyTorch."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", metavar="CKPT", help="atmvideo training checkpoint (best.pt / last.pt)"
    )
    source.add_argument("--model", metavar="NAME", help="registered model name (random weights)")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"), help="file format")
    parser.add_argument("--out", required=True, metavar="FILE", help="file to write")
    parser.add_argument(
        "--frames", type=int, default=None, metavar="T", help="frames per clip (default 8 / the run's)"
    )
    parser.add_argument(
        "--size", type=int, default=None, metavar="S", help="input side (default: the model's / run's)"
    )
    parser.add_argument(
        "-k",
        dest="kwarg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="model keyword (with --model)",
    )
    parser.add_argument(
        "--batch", type=int, default=2, help="example batch for export and check (>= 2, default 2)"
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument(
        "--atol", type=float, default=1e-4, help="fail if the difference exceeds this (default 1e-4)"
    )
    parser.add_argument("--no-check", action="store_true", help="skip running the exported file")
    parser.set_defaults(func=run)
