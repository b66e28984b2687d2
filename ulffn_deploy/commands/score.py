"""``ulffn-deploy score``: score predicted masks against ground truth, paired by ISIC id."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from ulffn_deploy.data import ISIC_ID
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.imageio import read_mask
from ulffn_deploy.metrics import format_table, image_metrics, mean_metrics

_NOT_MASKS = re.compile(r"superpixels|_overlay$", re.IGNORECASE)  # ISIC 2017 superpixels; predict's overlays


def masks_by_id(folder: Path) -> dict[str, Path]:
    """PNG masks in ``folder`` keyed by the ISIC id in their names (predict's ``*_overlay.png`` are not masks)."""
    if not folder.is_dir():
        raise UlffnError(f"{folder} is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        match = ISIC_ID.search(path.name)
        if match and path.suffix.lower() == ".png" and not _NOT_MASKS.search(path.stem):
            if match.group() in found:
                raise UlffnError(f"two masks for {match.group()} in {folder}: {found[match.group()].name}, {path.name}")
            found[match.group()] = path
    if not found:
        raise UlffnError(f"no PNG masks named ISIC_<7 digits>... in {folder}")
    return found


def score_folders(predictions: Path, truths: Path) -> dict[str, Any]:
    """Per-image and mean metrics of the predictions that have a ground-truth mask."""
    predicted, truth = masks_by_id(predictions), masks_by_id(truths)
    paired = sorted(predicted.keys() & truth.keys())
    if not paired:
        raise UlffnError(f"no ISIC id is in both {predictions} and {truths}", "name masks ISIC_xxxxxxx_*.png")
    per_image = {isic_id: image_metrics(read_mask(predicted[isic_id]), read_mask(truth[isic_id])) for isic_id in paired}
    return {
        "images": len(paired),
        "mean": mean_metrics(per_image.values()),
        "per_image": per_image,
        "missing_predictions": sorted(truth.keys() - predicted.keys()),
        "unmatched_predictions": sorted(predicted.keys() - truth.keys()),
    }


@click.command(name="score")
@click.argument("pred_dir", type=click.Path(path_type=Path))
@click.argument("truth_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(pred_dir: Path, truth_dir: Path, as_json: bool) -> None:
    """Score predicted 0/255 PNG masks in PRED_DIR against ground truth in TRUTH_DIR (mean over images)."""
    result = score_folders(pred_dir, truth_dir)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(format_table({f"{result['images']} images": result["mean"]}))
    for key, label in (("missing_predictions", "ground truth without prediction"),
                       ("unmatched_predictions", "predictions without ground truth")):
        ids = result[key]
        if ids:
            click.echo(f"{len(ids)} {label}: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}", err=True)
