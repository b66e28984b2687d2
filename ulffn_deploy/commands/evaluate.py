"""``ulffn-deploy evaluate``: the paper's metrics of a checkpoint on an ISIC split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ulffn_deploy.metrics import format_table
from ulffn_deploy.preprocess import DEFAULT_FIT_MODE, FIT_MODES

PAPER_PROTOCOL = "scored on the centre crops the network sees, against labels cropped the same way (the paper's figures)"


def report(result: dict[str, Any]) -> str:
    """The evaluation as a heading, the protocol line and the paper's table."""
    config = result["model_config"]
    name = f"ULFFN {config['variant']} w={config['width']}"
    rows = {f"{name}, fit {result['fit_mode']}": result["metrics"]}
    lines = [
        f"{name} ({result['checkpoint']}) on ISIC {result['year']} {result['split']}: {result['images']} images"
        + (f", {len(result['skipped'])} unreadable and skipped" if result["skipped"] else ""),
        f"protocol: {result['protocol']}",
    ]
    if result.get("paper_metrics"):
        rows[f"{name}, paper protocol (crops)"] = result["paper_metrics"]
        lines.append(f"paper protocol (crops): {PAPER_PROTOCOL}")
    return "\n".join([*lines, "", format_table(rows)])


@click.command(name="evaluate")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="folder holding the unzipped ISIC folders")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--year", default=2016, show_default=True, type=int, help="ISIC year: 2016 or 2017")
@click.option("--fit", "fit_mode", default=DEFAULT_FIT_MODE, show_default=True, type=click.Choice(FIT_MODES),
              help="How images fit the input, as predict --fit and verify --fit (masks are scored at the original "
                   "image size, as score does); paper also reports the paper's protocol (scored on the crops).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def command(checkpoint: Path, data: Path, split: str, year: int, fit_mode: str, batch_size: int, device: str,
            as_json: bool) -> None:
    """Accuracy, Dice, JSI, sensitivity, specificity and thresholded JSI (means over images) of CHECKPOINT."""
    from ulffn_deploy.deps import require

    require("torch")
    from ulffn_deploy.train.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, data, split=split, year=year, fit_mode=fit_mode,
                                 batch_size=batch_size, device=device)
    click.echo(json.dumps(result, indent=2) if as_json else report(result))
