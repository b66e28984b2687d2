"""``ulffn-deploy build-engine``: exported ONNX -> a target's deployable artifact plus its JSON sidecar.

The targets and their options come from the registry: each option is declared once by its target
(``BuildOption``) and becomes a CLI option here, a ``build_flags`` entry in the sidecar and part of the
recorded rebuild command.
"""

from __future__ import annotations

from typing import Any

import click

from ulffn_deploy.targets.registry import PRECISIONS, BuildOption, builders


def _click_option(option: BuildOption, target: str) -> Any:
    help_text = f"[{target}] {option.help}"
    if option.kind is bool:
        return click.option(option.flag, option.name, is_flag=True, default=None, help=help_text)
    kind: Any = click.Choice(option.choices) if option.choices else option.kind
    if option.default is not None:
        help_text += f"  [default: {option.default}]"
    return click.option(option.flag, option.name, type=kind, default=None, help=help_text)


def _with_target_options(function: Any) -> Any:
    seen: set[str] = set()
    for target in reversed(builders()):
        for option in reversed(target.build_options):
            if option.name not in seen:
                seen.add(option.name)
                function = _click_option(option, target.name)(function)
    return function


@click.command(name="build-engine")
@click.option("--backend", type=click.Choice([t.name for t in builders()]), default=None,
              help="Target to build for.  [default: the best one that runs here]")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Which exported ONNX to build: ARTIFACTS/model.<precision>.onnx.  [default: the target's, "
                   + ", ".join(f"{t.name} {t.default_build_precision}" for t in builders()) + "]")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
              help="Build this ONNX file instead (its precision is read from its metadata).")
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(file_okay=False),
              help="Folder holding the exported models.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output file.  [default: model.<precision><target suffix> beside the ONNX]")
@_with_target_options
def command(backend: str | None, precision: str | None, onnx_path: str | None, artifacts: str, output: str | None,
            **options: Any) -> None:
    """Build the deployable artifact of a target from an exported ONNX model.

    Precision comes from the ONNX file itself (model.fp16.onnx, or the Q/DQ model.int8.onnx); no FP16/INT8
    builder flags are used. TensorRT writes a plain engine plan plus a JSON sidecar; ONNX Runtime an
    offline-optimised model (model.fp32.ort.onnx) plus sidecar. Options marked [target] apply to that target.
    """
    from ulffn_deploy.targets.registry import best_builder, build, default_onnx, target_named

    target = target_named(backend) if backend else best_builder()
    given = {name: value for name, value in options.items() if value is not None}
    target.resolve_options(given)  # unknown or invalid options fail before any work
    reason = target.build_unavailable_reason()
    if reason:
        from ulffn_deploy.errors import UlffnError

        raise UlffnError(f"cannot build for {target.name}: {reason}", target.install_hint or None)
    source = onnx_path or str(default_onnx(artifacts, precision or target.default_build_precision))
    built = build(target.name, source, output, given, precision=precision)
    click.echo(f"wrote {built} and {built.name}.json ({target.name})")

