"""``ulffn-deploy benchmark``: every backend x precision x batch size this machine can run, in one table."""

from __future__ import annotations

import click


def _backends(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    from ulffn_deploy.targets.registry import names

    chosen = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    known = names()
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise click.BadParameter(f"{value!r}: choose from {', '.join(known)}", ctx, param)
    return chosen


def _batch_sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers", ctx, param) from None
    from ulffn_deploy.preprocess import MAX_BATCH_SIZE

    if not sizes or min(sizes) < 1 or max(sizes) > MAX_BATCH_SIZE:
        raise click.BadParameter(f"{value!r}: batch sizes must be from 1 to {MAX_BATCH_SIZE}", ctx, param)
    return tuple(dict.fromkeys(sizes))


@click.command(name="benchmark")
@click.option("--artifacts", "artifacts_dir", default="artifacts", show_default=True, type=click.Path(file_okay=False),
              help="Folder with run/best.pt, model.<precision>.onnx / .engine and data/.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False),
              help="Where benchmark.md, .json and .png go.  [default: ARTIFACTS/benchmark]")
@click.option("--batch-sizes", default="1,4,8", show_default=True, callback=_batch_sizes)
@click.option("--quick", is_flag=True, help="100 ms warm-up and 3 timed calls per cell, 4 images for accuracy "
              "(every latency cell is then flagged as untrusted).")
@click.option("--num-images", type=click.IntRange(min=1), help="Images for accuracy.  [default: all; 4 with --quick]")
@click.option("--warmup-ms", type=click.FloatRange(min=0), help="Warm-up per cell.  [default: 200]")
@click.option("--iterations", type=click.IntRange(min=1), help="Timed calls per cell (at least).  [default: 10]")
@click.option("--duration", type=click.FloatRange(min=0), help="Timed seconds per cell (at least).  [default: 3]")
@click.option("--reference", type=click.Path(dir_okay=False),
              help="The reference (first row): a checkpoint, or an imported model's model.fp32.onnx.  "
                   "[default: ARTIFACTS/run/best.pt, else ARTIFACTS/model.fp32.onnx]")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Images.  [default: ARTIFACTS/data]")
@click.option("--backends", default=None, callback=_backends,
              help="Comma-separated targets to run (PyTorch FP32 always runs: it is the baseline).  [default: every "
                   "registered target]")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads of every CPU backend.  [default: each "
              "backend's own (all cores)]")
@click.option("--no-build", is_flag=True, help="Do not build missing artifacts (TensorRT engines, OpenVINO IR, ONNX "
              "Runtime models) from the ONNX files.")
def command(artifacts_dir: str, out_dir: str | None, batch_sizes: tuple[int, ...], quick: bool,
            num_images: int | None, warmup_ms: float | None, iterations: int | None, duration: float | None,
            reference: str | None, data_dir: str | None, backends: tuple[str, ...] | None, threads: int | None,
            no_build: bool) -> None:
    """Benchmark every registered target (PyTorch, ONNX Runtime, OpenVINO, TensorRT, ...) at every precision
    in ARTIFACTS: latency (median, p99), throughput, speed-up over PyTorch FP32, GFLOP/s, agreement with
    PyTorch FP32 and the verdict of the tolerance table. Rows that cannot run here are listed as skipped, with
    the reason; latency cells with too few calls or a wide spread are flagged."""
    from pathlib import Path

    from ulffn_deploy.benchmark import format_markdown, run_benchmark
    from ulffn_deploy.deps import require
    from ulffn_deploy.latency import Schedule

    require("torch")  # PyTorch FP32 is every table's baseline

    timing_given = any(v is not None for v in (warmup_ms, iterations, duration))
    schedule = Schedule.from_options(None, warmup_ms, iterations, duration) if timing_given else None
    results = run_benchmark(
        artifacts_dir, out_dir, batch_sizes=batch_sizes, quick=quick, schedule=schedule, num_images=num_images,
        reference=reference, data_dir=data_dir, build=not no_build, backends=backends, threads=threads,
        log=lambda message: click.echo(message, err=True),
    )
    click.echo(format_markdown(results))
    click.echo(f"written to {Path(out_dir) if out_dir else Path(artifacts_dir) / 'benchmark'}/benchmark.{{md,json,png}}",
               err=True)
