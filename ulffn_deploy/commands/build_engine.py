"""``ulffn-deploy build-engine``: exported ONNX -> a target's deployable artifact plus its JSON sidecar.

The targets and their options come from the registry. Each target declares its options once
(``BuildOption``); each becomes a CLI option here (shown under its backend in ``--help``), a ``build_flags``
entry in the sidecar and part of the recorded rebuild command. Options are per target: a flag that several
targets declare (``--max-batch``) is validated by the chosen ``--backend``'s own declaration, never by
another's (``registry.option_flags``); one that targets declare as a flag and as a value gets a
``--<backend>-<name>`` flag per target.
"""

from __future__ import annotations

from typing import Any

import click

from ulffn_deploy.targets.registry import PRECISIONS, builders, option_flags


class _PerBackendCommand(click.Command):
    """build-engine with the registered targets' options, read from the registry when the command runs (so a
    target registered later is included); ``--help`` shows the common options first, then each backend's own
    options under its name."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        return [*params[:len(self.params)], *_target_params(), *params[len(self.params):]]

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        flags = option_flags()
        owned = set(flags.values())
        common = [p.get_help_record(ctx) for p in self.get_params(ctx)
                  if isinstance(p, click.Option) and not set(p.opts) & owned]
        with formatter.section("Options"):
            formatter.write_dl([record for record in common if record])
        for target in builders():
            rows = []
            for option in target.build_options:
                flag = flags[(target.name, option.name)]
                default = "" if option.default is None or option.kind is bool else f"  [default: {option.default}]"
                choices = f" [{'|'.join(option.choices)}]" if option.choices else ""
                value = "" if option.kind is bool else f" {option.kind.__name__.upper()}"
                rows.append((flag + (choices or value), option.help + default))
            if rows:
                with formatter.section(f"Options of --backend {target.name}"):
                    formatter.write_dl(rows)


def _target_params() -> list[click.Option]:
    """One click option per distinct flag: raw values, validated later by the chosen target's declaration."""
    flags = option_flags()
    declared: dict[str, bool] = {}
    for target in builders():
        for option in target.build_options:
            declared.setdefault(flags[(target.name, option.name)], option.kind is bool)
    return [click.Option([flag, _dest(flag)], is_flag=True, default=None) if is_flag
            else click.Option([flag, _dest(flag)], default=None) for flag, is_flag in declared.items()]


def _dest(flag: str) -> str:
    return "opt__" + flag[2:].replace("-", "_")


def _options_for(target_name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The values given on the command line, by ``target_name``'s option names; a flag that is not one of
    its options keeps its own name, so that ``Target.resolve_options`` refuses it naming the flag."""
    mine = {_dest(flag): name for (target, name), flag in option_flags().items() if target == target_name}
    return {mine.get(dest, dest.removeprefix("opt__")): value for dest, value in given.items() if value is not None}


@click.command(name="build-engine", cls=_PerBackendCommand)
@click.option("--backend", default=None,
              help="Target to build for: one of the backends whose options are listed below.  [default: the best "
                   "one that builds here and whose artifacts run here]")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Which exported ONNX to build: ARTIFACTS/model.<precision>.onnx.  [default: the target's, "
                   + ", ".join(f"{t.name} {t.default_build_precision}" for t in builders()) + "]")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
              help="Build this ONNX file instead (its precision is read from its metadata).")
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(file_okay=False),
              help="Folder holding the exported models.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output file.  [default: model.<precision><target suffix> beside the ONNX]")
def command(backend: str | None, precision: str | None, onnx_path: str | None, artifacts: str, output: str | None,
            **options: Any) -> None:
    """Build the deployable artifact of a target from an exported ONNX model.

    Precision comes from the ONNX file itself (model.fp16.onnx, or the Q/DQ model.int8.onnx); no FP16/INT8
    builder flags are used. Each target writes its artifact plus a JSON sidecar recording its source ONNX's
    sha256 and the command that rebuilds it. Each backend's options are listed under its name below.
    """
    from ulffn_deploy.targets.registry import best_builder, build, default_onnx, target_named

    target = target_named(backend) if backend else best_builder()
    if not target.builds:
        from ulffn_deploy.errors import UlffnError

        raise UlffnError(f"--backend {target.name} does not build artifacts",
                         f"use one of {', '.join(t.name for t in builders())}")
    given = _options_for(target.name, options)
    target.resolve_options(given)  # unknown or invalid options fail before any work
    reason = target.build_unavailable_reason()
    if reason:
        from ulffn_deploy.errors import UlffnError

        raise UlffnError(f"cannot build for {target.name}: {reason}", target.install_hint or None)
    source = onnx_path or str(default_onnx(artifacts, precision or target.default_build_precision))
    built = build(target.name, source, output, given, precision=precision)
    click.echo(f"wrote {built} and {built.name}.json ({target.name})")
