"""``ulffn-deploy calibrate``: INT8 post-training calibration -> explicitly quantized (Q/DQ) ONNX for TensorRT."""

from __future__ import annotations

import sys
from pathlib import Path

import click

METHODS = ("minmax", "entropy", "percentile")


@click.command(name="calibrate")
@click.argument("model", required=False, default=str(Path("artifacts") / "model.fp32.onnx"),
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="ISIC folder (calibrates on its --split images) or a plain folder of images.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="INT8 model to write [default: model.int8.onnx beside MODEL].")
@click.option("--method", type=click.Choice(METHODS), default="percentile", show_default=True,
              help="How activation ranges are chosen from the calibration data.")
@click.option("--num-images", type=click.IntRange(min=1), default=64, show_default=True,
              help="Calibration images, spread evenly over the split.")
@click.option("--split", type=click.Choice(("train", "val", "test")), default="train", show_default=True,
              help="ISIC split to calibrate on; accuracy is measured on another split (or on unused images).")
@click.option("--exclude", "exclude", multiple=True, metavar="NODE",
              help="Keep this ONNX node in FP32 too (repeatable; names are in the report).")
@click.option("--num-eval", type=click.IntRange(min=0), default=32, show_default=True,
              help="Held-out images for the INT8-vs-FP32 accuracy report (0: skip).")
@click.option("--sensitivity", is_flag=True, help="Also measure each convolution's INT8 sensitivity.")
def command(model: Path, data: Path, output: Path | None, method: str, num_images: int, split: str,
            exclude: tuple[str, ...], num_eval: int, sensitivity: bool) -> None:
    """Calibrate MODEL (an FP32 ONNX from 'ulffn-deploy export', default artifacts/model.fp32.onnx) to INT8.

    Writes model.int8.onnx (Q/DQ on convolution inputs, symmetric, per-channel weights; the input unit, head,
    softmax and CAM stay FP32), model.int8.ranges.json (reused while model, method, preprocessing and images
    are unchanged) and model.int8.report.json. Exits 1 when INT8 misses the accuracy targets.
    """
    from ulffn_deploy.calib.pipeline import calibrate

    report = calibrate(model, data, output, method=method, num_images=num_images, split=split, exclude=exclude,
                       num_eval=num_eval, sensitivity=sensitivity, log=click.echo)
    if report["accuracy"].get("targets_met") is False:
        others = " or ".join(m for m in METHODS if m != method)
        click.echo(f"INT8 misses the accuracy targets: try --method {others}, or --sensitivity and --exclude "
                   "the most sensitive layers", err=True)
        sys.exit(1)
