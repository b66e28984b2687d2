"""``ulffn-deploy lint-onnx``: would TensorRT's ONNX parser take this graph? Checked without TensorRT."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ulffn_deploy.deps import require


@click.command(name="lint-onnx")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
def command(model: Path) -> None:
    """Check every node of MODEL (.onnx) against the operators and restrictions of TensorRT's ONNX parser.

    Flags custom-domain and unsupported operators, ReduceMean/Slice/Pad axes computed at run time, Conv
    weights that are not constants, Q/DQ zero points that are not INT8 zeros, unsupported Resize modes.
    Prints "ok: ..." when clean; otherwise lists the offending nodes on stderr and exits with status 1.
    """
    require("onnx")
    from ulffn_deploy.export.lint import lint_model, op_summary
    from ulffn_deploy.runtime.metadata import load_onnx

    graph = load_onnx(model)
    issues = lint_model(graph)
    if issues:
        click.echo(f"{model}: {len(issues)} problem{'s' if len(issues) > 1 else ''} for TensorRT's ONNX parser "
                   f"in {len(graph.graph.node)} nodes", err=True)
        for issue in issues:
            click.echo(f"  {issue}", err=True)
        sys.exit(1)
    click.echo(op_summary(graph))
