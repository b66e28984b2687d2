"""``ulffn-deploy quickstart``: the whole pipeline on synthetic data, on the best backend this machine has."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="quickstart")
@click.option("--artifacts", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts"),
              show_default=True, help="Folder for the data, the training run and every artifact.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Override the cpu-demo preset's number of epochs (for a faster, less accurate run).")
def command(artifacts: Path, epochs: int | None) -> None:
    """Synthetic data -> train -> export -> calibrate -> build -> predict -> verify, printing each stage."""
    from ulffn_deploy.deps import require
    from ulffn_deploy.quickstart import Quickstart

    require("torch")  # training needs it: say so before any stage runs

    Quickstart(artifacts, log=click.echo, epochs=epochs).run()
