"""``ulffn-deploy serve``: an artifact behind NVIDIA Triton Inference Server (through PyTriton)."""

from __future__ import annotations

import click

from ulffn_deploy.targets.registry import DEFAULT_RULE

HELP = f"""Serve ARTIFACT with Triton Inference Server: HTTP, gRPC and Prometheus metrics, dynamic batching.

Model 'ulffn' takes encoded images (input 'image', BYTES: JPEG/PNG) and returns 'mask' (BOOL, the image's
original size), pre- and post-processed as 'predict' does; model 'ulffn_tensor' takes preprocessed
N x 3 x S x S float32 ('input') and returns 'probabilities'. Both report the artifact, precision, sha256
and toolkit version as ulffn.* parameters of GET /v2/models/<model>/config. Ctrl-C or SIGTERM stops it.

ARTIFACT defaults to the default artifact of --artifacts: {DEFAULT_RULE}. Needs the 'serve' extra and
an interpreter whose libpython PyTriton's stub can load (a shared-library build such as the system python3).
"""


@click.command(name="serve", help=HELP)
@click.argument("artifact", required=False, type=click.Path(dir_okay=False))
@click.option("--artifacts", "artifacts_dir", default="artifacts", show_default=True, type=click.Path(file_okay=False),
              help="Where to look for a model when none is named.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface: put it behind your network's access control).")
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(1, 65535))
@click.option("--metrics-port", default=8002, show_default=True, type=click.IntRange(1, 65535))
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="Largest batch Triton's dynamic batcher forms.")
@click.option("--queue-delay-us", default=2000, show_default=True, type=click.IntRange(0, 10_000_000),
              help="How long a request may wait for others to batch with (microseconds).")
@click.option("--fit", "fit_mode", type=click.Choice(("full", "paper")), default="full", show_default=True,
              help="How the image model fits images to the input (as predict's --fit).")
@click.option("--max-image-mb", default=20.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Largest encoded image accepted.")
@click.option("--max-image-megapixels", default=40.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Largest decoded image accepted.")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads.  [default: all cores]")
def command(artifact: str | None, artifacts_dir: str, host: str, http_port: int, grpc_port: int, metrics_port: int,
            max_batch: int, queue_delay_us: int, fit_mode: str, max_image_mb: float, max_image_megapixels: float,
            threads: int | None) -> None:
    from ulffn_deploy.serve import ServeOptions, serve
    from ulffn_deploy.targets.registry import default_artifact

    options = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                           max_batch=max_batch, queue_delay_us=queue_delay_us, fit_mode=fit_mode,
                           max_image_bytes=int(max_image_mb * 1e6), max_image_pixels=int(max_image_megapixels * 1e6),
                           threads=threads)
    chosen = artifact or str(default_artifact(artifacts_dir))
    serve(chosen, options, log=lambda message: click.echo(message, err=True))
