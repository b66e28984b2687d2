"""``ulffn-deploy synth``: write a synthetic dermoscopy set in the ISIC 2016 folder layout."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command(name="synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--n", "n_train", type=int, default=200, show_default=True, help="Number of training images.")
@click.option("--size", type=int, default=256, show_default=True,
              help="Shorter image side in pixels; images are landscape, 1.25-1.55 times as wide.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, byte-identical files.")
@click.option("--split-test", "n_test", type=int, default=None,
              help="Number of test images.  [default: 20% of --n, at least 1]")
@click.option("--force", is_flag=True, help="Replace OUT if it holds an earlier synth output.")
def command(out: Path, n_train: int, size: int, seed: int, n_test: int | None, force: bool) -> None:
    """Write synthetic dermoscopy images and lesion masks to OUT in the ISIC 2016 layout.

    OUT gets ISBI2016_ISIC_Part1_{Training,Test}_{Data,GroundTruth}/ with ISIC_xxxxxxx.jpg images,
    ISIC_xxxxxxx_Segmentation.png masks (0/255) and synth.json. The set is built beside OUT and moved
    into place when complete.
    """
    from ulffn_deploy.synth import default_test_count, generate_dataset

    total = n_train + (default_test_count(n_train) if n_test is None else n_test)
    with click.progressbar(length=max(total, 0), label="synth", file=sys.stderr, hidden=not sys.stderr.isatty()) as bar:
        summary = generate_dataset(out, n_train, n_test, size, seed, force=force, progress=bar.update)
    click.echo(f"wrote {summary['n_train']} training and {summary['n_test']} test images "
               f"({size} px shorter side, seed {seed}, lesion fraction {summary['lesion_fraction_mean']:.2f}) "
               f"to {out} in {summary['seconds']:.1f} s (ISIC 2016 layout)")
