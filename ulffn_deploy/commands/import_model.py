"""``ulffn-deploy import-model``: your own segmentation model (a model contract) -> the toolkit's ONNX artifacts."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ulffn_deploy.deps import require


@click.command(name="import-model")
@click.argument("contract", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--out-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("artifacts"),
              show_default=True, help="Folder for model.fp32.onnx and model.fp16.onnx.")
@click.option("--images", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images for the parity check against the source model.")
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="ISIC 2016 folder (test split) or image folder for the parity check "
                   "[default: synthetic dermoscopy images].")
@click.option("--trust-code", is_flag=True, default=False,
              help="Allow a contract with source.factory to import and run its Python code (it runs with your "
                   "permissions; an ONNX source never runs code).")
def command(contract: Path, out_dir: Path, images: int, data: Path | None, trust_code: bool) -> None:
    """Import the segmentation model a CONTRACT (TOML) describes: an ONNX file, or a PyTorch factory and
    weights, with its input (size, channel order, mean/std, fit) and output (logits or probabilities,
    softmax over C classes or one sigmoid channel, the lesion class).

    Writes model.fp32.onnx and model.fp16.onnx as 'export' does for ULFFN: input `image` (N x 3 x H x W
    float32, normalised RGB), output `probabilities` (N x 2 x H x W, background and lesion), with metadata,
    linted for TensorRT and checked against the source model in ONNX Runtime (mask agreement and p99
    probability error, the tolerances `verify` uses); each file is written when its own checks pass (exit
    status 1 when one fails). calibrate, build-engine, verify, benchmark, predict and serve then work on
    them unchanged. See the README section 'Your own model' for a complete contract.

    A contract with a PyTorch factory is code, like a Python script: import-model says which module it would
    import and call, and runs it only with --trust-code.
    """
    for module in ("onnx", "onnxconverter_common", "onnxslim"):
        require(module)
    from ulffn_deploy.export.import_model import import_model

    result = import_model(contract, out_dir, images=images, data=data, trust_code=trust_code, log=click.echo)
    for precision, path in result.paths.items():
        size_mb = path.stat().st_size / 1e6
        click.echo(f"wrote {path} ({size_mb:.1f} MB; {result.summaries[precision]})")
    for precision, reason in result.failed.items():
        click.echo(f"error: {precision.upper()} failed its checks against the source model and was not written: "
                   f"{reason} (check the contract's input and output fields)", err=True)
    if result.failed:
        sys.exit(1)
