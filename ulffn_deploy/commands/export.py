"""``ulffn-deploy export``: checkpoint -> model.fp32.onnx and model.fp16.onnx, linted and parity-checked."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ulffn_deploy.deps import require


@click.command(name="export")
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False), default=Path("artifacts/run/best.pt"))
@click.option("-o", "--out-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("artifacts"),
              show_default=True, help="Folder for model.fp32.onnx and model.fp16.onnx.")
@click.option("--dynamic-hw", is_flag=True, help="Make height and width dynamic too (default: batch only).")
@click.option("--pixel-shuffle", type=click.Choice(["d2s", "reshape"]), default="d2s", show_default=True,
              help="Export PixelShuffle as one DepthToSpace (CRD) node, or as Reshape/Transpose.")
@click.option("--opset", type=click.IntRange(13, 20), default=17, show_default=True,
              help="ONNX opset (TensorRT 10.0 parses 9-20; 17 keeps ReduceMean axes an attribute).")
@click.option("--images", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images for the parity check against PyTorch.")
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="ISIC 2016 folder (test split) or image folder for the parity check "
                   "[default: synthetic dermoscopy images].")
def command(checkpoint: Path, out_dir: Path, dynamic_hw: bool, pixel_shuffle: str, opset: int, images: int,
            data: Path | None) -> None:
    """Export CHECKPOINT [default: artifacts/run/best.pt] to ONNX in FP32 and FP16.

    The graph takes `image` (N x 3 x H x W float32, normalised) and returns `probabilities`
    (N x 2 x H x W float32, softmax over background/lesion), with a dynamic batch axis. Each file is
    checked for TensorRT's ONNX parser and against PyTorch in ONNX Runtime on realistic images (mask
    agreement and p99 probability error, the tolerances `verify` uses), and written when its own checks
    pass. Exit status 1 when a precision fails (the others are still written).
    """
    for module in ("torch", "onnx", "onnxconverter_common", "onnxslim"):
        require(module)
    from ulffn_deploy.export.onnx_export import ExportOptions
    from ulffn_deploy.export.pipeline import export_checkpoint

    options = ExportOptions(opset=opset, dynamic_hw=dynamic_hw, pixel_shuffle=pixel_shuffle)
    result = export_checkpoint(checkpoint, out_dir, options, images=images, data=data, log=click.echo)
    for precision, path in result.paths.items():
        size_mb = path.stat().st_size / 1e6
        click.echo(f"wrote {path} ({size_mb:.1f} MB; {result.summaries[precision]})")
    for precision, reason in result.failed.items():
        click.echo(f"error: {precision.upper()} failed its checks and was not written: {reason}", err=True)
    if result.failed:
        sys.exit(1)
