"""``ulffn-deploy train``: train ULFFN; several processes go through torch's own launcher (torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.train.presets import OPTIONS, to_argv


def _training_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """One click option per TrainConfig override (the same table python -m ulffn_deploy.train parses)."""
    for option in reversed(OPTIONS):
        if option.flag:
            decorator = click.option(f"{option.name}/--no-{option.name[2:]}", default=None, help=option.help)
        else:
            kind = click.Choice(option.choices) if option.choices else option.type
            decorator = click.option(option.name, type=kind, default=None, help=option.help)
        func = decorator(func)
    return func


def _launch(values: dict[str, Any], nproc: int) -> dict[str, Any]:
    """Check what can be checked here, then run ``torch.distributed.run`` with ``nproc`` processes."""
    from ulffn_deploy.train.distributed import select_device
    from ulffn_deploy.train.trainer import preflight, resolve

    config = resolve(values)
    preflight(config, nproc)
    select_device(config.device, local_rank=nproc - 1)  # one GPU per process, when on GPUs
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "ulffn_deploy.train", *to_argv(values)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    code = subprocess.run(command, env=env, check=False).returncode
    if code:
        raise UlffnError(f"training failed (torch.distributed.run exit code {code})", "see the messages above")
    summary: dict[str, Any] = json.loads((Path(config.out) / "summary.json").read_text(encoding="utf-8"))
    return summary


@click.command(name="train")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="folder holding the unzipped ISIC folders (or 'ulffn-deploy synth' output)")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="run folder: best.pt, last.pt, metrics.csv")
@_training_options
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="processes on this machine (one per GPU); more than 1 starts them with torch.distributed.run")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last.pt (same epoch, lr, order)")
@click.option("--overwrite", is_flag=True,
              help="start afresh even if --out holds a run (kept in --out/.previous-run until the new run writes "
                   "its first checkpoint, and put back if it fails before)")
@click.option("--quiet", is_flag=True, help="no progress bar and no per-epoch lines")
def command(nproc: int, **values: Any) -> None:
    """Train ULFFN on an ISIC training set with a seeded train/validation split.

    --preset paper (default) is the paper's recipe: Adam 1e-4 x0.9 every 20 epochs, 100 epochs, global
    batch 8, cross-entropy, 512x512 centre crops, width 64, 200 of ISIC 2016's 900 images for validation.
    --preset cpu-demo trains a small model in minutes on a CPU. Every option overrides the preset.
    Validation runs every epoch; best.pt keeps the best validation Jaccard, last.pt the latest state.
    An unreadable training image is skipped with a warning naming the file; the run goes on.

    For several machines, run torchrun yourself on each one:
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29500
    -m ulffn_deploy.train --data DIR --out RUN_DIR
    """
    from ulffn_deploy.deps import require

    require("torch")
    values = {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
    if nproc == 1:
        from ulffn_deploy.train.trainer import train

        summary = train(values)
    else:
        summary = _launch(values, nproc)
    _report(summary)


def _report(summary: dict[str, Any]) -> None:
    if summary.get("stopped_early"):
        click.echo(f"stopped after {summary['global_step']} steps; resume with --resume ({summary['last']})")
        return
    click.echo(f"trained {summary['epochs_completed']} epochs on {summary['world_size']} process(es) "
               f"({summary['device']}); best validation JSI {summary['best_val_jaccard']:.4f} at epoch "
               f"{summary['best_epoch']}: {summary['best']}")
