"""``ulffn-deploy export-triton``: a model repository for the official Triton Inference Server container."""

from __future__ import annotations

import click

HELP = """Write a Triton model repository REPO from ARTIFACTS (default: every engine, ONNX file and OpenVINO IR
in --artifacts).

TensorRT plans become 'tensorrt_plan' models (several engines of one precision: one 'cc_model_filenames'
entry per compute capability), ONNX files 'onnxruntime_onnx' models (--device cpu or gpu instances),
OpenVINO IR 'openvino' backend models (CPU). Serve it with the official container, e.g.
'docker run --gpus all -p 8000:8000 -p 8001:8001 -v $PWD/REPO:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3
tritonserver --model-repository=/models', and call it with ulffn_deploy.targets.triton.segment_images(URL, images),
which preprocesses on the client exactly as 'predict' does.
"""


@click.command(name="export-triton", help=HELP)
@click.argument("repo", type=click.Path(file_okay=False))
@click.argument("artifacts", nargs=-1, type=click.Path(dir_okay=False, exists=True))
@click.option("--artifacts", "artifacts_dir", default="artifacts", show_default=True, type=click.Path(file_okay=False),
              help="Where to look for artifacts when none are named.")
@click.option("--device", type=click.Choice(("cpu", "gpu")), default="cpu", show_default=True,
              help="Instance kind of ONNX models (engines always run on the GPU, OpenVINO on the CPU).")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="max_batch_size (engines: at most their profile's largest batch).")
@click.option("--queue-delay-us", default=2000, show_default=True, type=click.IntRange(0, 10_000_000),
              help="Dynamic batching's max_queue_delay_microseconds.")
@click.option("--force", is_flag=True, help="Replace model folders that exist in REPO.")
def command(repo: str, artifacts: tuple[str, ...], artifacts_dir: str, device: str, max_batch: int, queue_delay_us: int,
            force: bool) -> None:
    from pathlib import Path

    from ulffn_deploy.triton_export import default_artifacts, export_repository

    chosen = [Path(a) for a in artifacts] or default_artifacts(Path(artifacts_dir), lambda line: click.echo(line, err=True))
    written = export_repository(repo, chosen, device=device, max_batch=max_batch, queue_delay_us=queue_delay_us,
                                force=force, log=lambda message: click.echo(message, err=True))
    click.echo(f"{len(written)} model(s) in {repo}")
