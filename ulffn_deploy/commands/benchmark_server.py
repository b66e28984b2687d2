"""``ulffn-deploy benchmark-server``: a perf_analyzer-style client concurrency sweep against a Triton server."""

from __future__ import annotations

from typing import Any

import click


def _levels(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers", ctx, param) from None
    if not levels or min(levels) < 1 or max(levels) > 64:
        raise click.BadParameter(f"{value!r}: concurrency levels must be 1-64", ctx, param)
    return levels


@click.command(name="benchmark-server")
@click.argument("url")
@click.option("--image", "image_path", type=click.Path(dir_okay=False, exists=True),
              help="Image to send.  [default: a synthetic dermoscopy image, 512 px high]")
@click.option("--endpoint", type=click.Choice(("image", "tensor")), default="image", show_default=True,
              help="image: encoded PNG to the image model (what a device sends); tensor: preprocessed tensor.")
@click.option("--concurrency", "levels", default="1,2,4,8", show_default=True, callback=_levels)
@click.option("--requests", default=200, show_default=True, type=click.IntRange(min=1),
              help="Requests per level, split over its clients.")
@click.option("--artifact", type=click.Path(dir_okay=False, exists=True),
              help="The served artifact, to add its in-process predict latency on the same image.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False),
              help="Write sweep_<endpoint>.md and .json here.")
def command(url: str, image_path: str | None, endpoint: str, levels: tuple[int, ...], requests: int,
            artifact: str | None, out_dir: str | None) -> None:
    """Sweep client concurrency against the server at URL (loopback only): throughput and p50/p90/p99 latency
    per level, each --requests requests; with --artifact, the same image in-process for comparison."""
    from pathlib import Path

    from ulffn_deploy.fileio import write_json_atomic, write_text_atomic
    from ulffn_deploy.load_generator import concurrency_sweep, format_sweep, in_process_latency

    image = _image(image_path)
    result = concurrency_sweep(url, image, levels=levels, requests=requests, endpoint=endpoint)
    if artifact:
        fit = result["served"].get("ulffn.serving_fit_mode", "full")
        result["in_process"] = in_process_latency(artifact, image, fit_mode=fit, endpoint=endpoint)
    table = format_sweep(result)
    click.echo(table)
    if out_dir:
        stem = Path(out_dir) / f"sweep_{endpoint}"
        write_json_atomic(stem.with_suffix(".json"), result)
        write_text_atomic(stem.with_suffix(".md"), table + "\n")
        click.echo(f"written to {stem}.{{md,json}}", err=True)


def _image(path: str | None) -> Any:
    from ulffn_deploy.imageio import read_rgb

    if path:
        return read_rgb(path)
    import numpy as np

    from ulffn_deploy.synth import render_sample

    return render_sample(np.random.default_rng(0), 512)[0]
