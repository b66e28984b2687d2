"""The ``ulffn-deploy`` command line. Each command lives in ``ulffn_deploy.commands.<name>`` and is
imported only when it runs (or when ``--help`` lists it), so the CLI starts without torch or TensorRT.

Exit codes: 0 success, 1 a check failed (verify, predict with failed files), 2 a usage or input error
(one line on stderr), 3 an unexpected internal error, 130 interrupted.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import TextIO

import click

from ulffn_deploy import __version__
from ulffn_deploy.errors import UlffnError

# command name -> module in ulffn_deploy.commands, in the order of the pipeline
COMMANDS = {
    "quickstart": "quickstart",
    "synth": "synth",
    "info": "info",
    "score": "score",
    "train": "train",
    "evaluate": "evaluate",
    "export": "export",
    "import-model": "import_model",
    "lint-onnx": "lint_onnx",
    "calibrate": "calibrate",
    "build-engine": "build_engine",
    "predict": "predict",
    "verify": "verify",
    "benchmark": "benchmark",
    "serve": "serve",
    "benchmark-server": "benchmark_server",
    "export-triton": "export_triton",
}

EXIT_USAGE = 2
EXIT_INTERNAL = 3


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(f"ulffn_deploy.commands.{COMMANDS[cmd_name]}")
        command: click.Command = module.command
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ulffn-deploy")
def cli() -> None:
    """ULFFN skin-lesion segmentation: synthetic data, training, ONNX export, INT8 calibration,
    TensorRT / ONNX Runtime engines, prediction, verification and benchmarks."""


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    try:
        print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr closed: warnings are not worth failing for


def install_warning_format() -> None:
    """Print Python warnings as one ``warning: ...`` line, without source paths."""
    warnings.showwarning = _show_warning


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every error becomes one line on stderr and a non-zero exit code."""
    install_warning_format()
    try:
        code = cli.main(args=argv, prog_name="ulffn-deploy", standalone_mode=False)
    except UlffnError as exc:
        _fail(str(exc), EXIT_USAGE)
    except click.exceptions.Abort:
        _fail("interrupted", 130)
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _fail(exc.format_message() + where, exc.exit_code if exc.exit_code else EXIT_USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        if os.environ.get("ULFFN_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set ULFFN_DEBUG=1 for the traceback)", EXIT_INTERNAL)
    else:
        if isinstance(code, int) and code:
            sys.exit(code)


if __name__ == "__main__":
    main()
