"""``ulffn-deploy predict``: lesion masks, outlines and a CSV for image files and folders."""

from __future__ import annotations

import sys

import click

from ulffn_deploy.preprocess import MAX_BATCH_SIZE
from ulffn_deploy.targets.registry import DEFAULT_RULE

HELP = f"""Segment images: predict [MODEL] IMAGES_OR_FOLDERS... -o OUT.

MODEL is any artifact the registry knows (.engine TensorRT, .onnx ONNX Runtime, .pt PyTorch, ...). Without
it, --artifacts' default artifact is used: {DEFAULT_RULE}. Folders are searched recursively. Files that
cannot be read are reported and skipped; images whose model output is NaN or infinite are reported and
their rows marked in predictions.csv; the exit code is then 1. Predict never overwrites a file it did not write.

"""


@click.command(name="predict", help=HELP)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "out_dir", default="predictions", show_default=True, type=click.Path(file_okay=False),
              help="Folder for <name>_mask.png, <name>_overlay.png (.jpg for images over 4 MP) and predictions.csv.")
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(file_okay=False),
              help="Where to look for a model when none is named.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1, MAX_BATCH_SIZE),
              help="Images per inference call.")
@click.option("--fit", "fit_mode", type=click.Choice(("full", "paper")), default="full", show_default=True,
              help="full: resize the whole image to the model's input; paper: resize the shorter side and centre-crop "
                   "(outside the crop is background).")
@click.option("--device", default=None,
              help="Device to run on (e.g. cpu, cuda), for a target that declares a device option; its choices are "
                   "the target's own. [default: the target's]")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@click.option("--engine-cache", type=click.Path(file_okay=False),
              help="Run an .onnx MODEL on TensorRT: build its engine into this folder on first use (per GPU and TensorRT "
                   "version), reuse it afterwards.")
@click.option("--labels", type=click.Path(file_okay=False), default=None,
              help="Folder of ground-truth masks (<name>_segmentation.png, <name>_mask.png or <name>.png) whose contour "
                   "the overlays draw in blue. [default: the ISIC ground truth beside ISIC images]")
@click.option("--overlay", "overlay_mode", type=click.Choice(("contour", "probability")), default="contour",
              show_default=True, help="probability: shade the lesion probability under the contours.")
@click.option("--caption/--no-caption", default=True, show_default=True,
              help="Write the model, precision and lesion fraction on each overlay.")
def command(paths: tuple[str, ...], out_dir: str, artifacts: str, batch_size: int, fit_mode: str,
            device: str | None, progress: bool, labels: str | None, overlay_mode: str, caption: bool,
            engine_cache: str | None) -> None:
    from pathlib import Path

    from ulffn_deploy.errors import UlffnError
    from ulffn_deploy.overlay import OverlayStyle
    from ulffn_deploy.predict import predict_paths
    from ulffn_deploy.targets.registry import default_artifact, is_artifact, target_for_path

    named = is_artifact(paths[0])
    inputs = paths[1:] if named else paths
    if not inputs:
        raise click.UsageError("no images given after the model")
    artifact = paths[0] if named else str(default_artifact(artifacts, log=lambda line: click.echo(line, err=True)))
    options = {}
    if device:
        target = target_for_path(artifact)
        declared = target.load_option("device")
        if declared is None:
            raise UlffnError(f"--device does not apply to {target.title} artifacts: they run on {target.runs_on}")
        options["device"] = declared.validate(device.lower())
    if engine_cache:
        if not artifact.lower().endswith(".onnx") or device:
            raise UlffnError("--engine-cache applies to an .onnx model run on TensorRT (without --device)")
        options.update(backend="tensorrt", engine_cache=engine_cache)
    style = OverlayStyle(overlay_mode, Path(labels) if labels else None, caption)
    summary = predict_paths(artifact, inputs, out_dir, batch_size=batch_size, fit_mode=fit_mode, progress=progress,
                            report=lambda line: click.echo(line, err=True), overlay_style=style, **options)
    click.echo(f"{summary.line()}; table: {summary.csv_path}")
    if summary.failed or summary.non_finite:
        sys.exit(1)
