"""``ulffn-deploy lint-onnx``: does TensorRT's ONNX parser take this graph, and does its builder build it?"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ulffn_deploy.deps import require


@click.command(name="lint-onnx")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
def command(model: Path) -> None:
    """Parse MODEL (.onnx) with NVIDIA's ONNX parser and build it with NVIDIA's builder.

    Uses the full TensorRT where it imports, else TensorRT for RTX (pip install tensorrt-rtx-cu12, which
    builds without a GPU): a strongly typed network, dynamic batch 1..8, dynamic H/W at the file's input size.
    Where neither package imports, the built-in table of the parser's operators and restrictions checks
    instead, and the output says so. Prints "ok: ..." and the checker when the graph builds; otherwise lists
    the refused nodes with the parser's (or the builder's) reasons on stderr and exits with status 1.
    """
    require("onnx")
    from ulffn_deploy.export.lint import op_summary
    from ulffn_deploy.export.trt_gate import inspect_onnx
    from ulffn_deploy.runtime.metadata import load_onnx

    graph = load_onnx(model)
    result = inspect_onnx(model)
    if result.problems:
        count = len(result.problems)
        click.echo(f"{model}: {count} problem{'s' if count > 1 else ''} in {len(graph.graph.node)} nodes, "
                   f"{result.describe()}", err=True)
        for problem in result.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    click.echo(op_summary(graph))
    click.echo(result.describe())
