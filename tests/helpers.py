"""Subprocess helpers: the command line as a user runs it, and code in a fresh interpreter.

``run_python`` reports which deployment packages the code imported, read from ``sys.modules`` when the
interpreter exits, so a test of "the light path stays light" checks what was really imported rather than
blocking imports (a blocked import that the code catches would pass unnoticed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEAVY = ("torch", "onnx", "tensorrt", "openvino")
WATCHED = (*HEAVY, "onnxruntime")

_PRELUDE = """
import atexit, json, sys
for _name in {absent!r}:
    sys.modules[_name] = None  # import fails and importlib.util.find_spec returns None, as if not installed
def _report():
    with open({report!r}, "w") as stream:
        json.dump(sorted(name for name in {watched!r} if sys.modules.get(name) is not None), stream)
atexit.register(_report)
"""


@dataclass
class PythonRun:
    returncode: int
    stdout: str
    stderr: str
    imported: list[str] | None  # the WATCHED packages in sys.modules at exit; None if it died before exit

    @property
    def heavy(self) -> list[str] | None:
        return None if self.imported is None else [name for name in self.imported if name in HEAVY]


def run_python(code: str, absent: tuple[str, ...] = ()) -> PythonRun:
    """Run ``code`` in a fresh interpreter; the packages in ``absent`` behave as if they were not installed."""
    with tempfile.TemporaryDirectory(prefix="ulffn-run-") as folder:
        report = Path(folder) / "imported.json"
        program = _PRELUDE.format(absent=tuple(absent), report=str(report), watched=WATCHED) + textwrap.dedent(code)
        proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
        imported = json.loads(report.read_text()) if report.is_file() else None
    return PythonRun(proc.returncode, proc.stdout, proc.stderr, imported)


def run_cli(*args: str | os.PathLike[str], cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600, preexec_fn: Any = None) -> subprocess.CompletedProcess:
    """Run ``ulffn-deploy ARGS`` as a user would, in a subprocess (``env`` is added to this environment;
    ``ULFFN_DEBUG`` is dropped unless ``env`` sets it, so errors stay one line)."""
    environment = {key: value for key, value in os.environ.items() if key != "ULFFN_DEBUG"}
    environment.update({"PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "ulffn_deploy", *(os.fspath(arg) for arg in args)],
                          capture_output=True, text=True, errors="replace", timeout=timeout, cwd=cwd,
                          env=environment, preexec_fn=preexec_fn)


def assert_one_line_error(result: subprocess.CompletedProcess | PythonRun, code: int, *fragments: str) -> str:
    """Exit ``code`` with no traceback; for exit 2 exactly one ``error:`` line on stderr, for any other
    code none; every fragment appears on stderr. Returns the error line ("" when there is none)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == (1 if code == 2 else 0), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr[-2000:])
    return errors[0] if errors else ""


def fake_artifact(folder: Path, name: str, backend: str, **sidecar_fields: Any) -> Path:
    """A built artifact's file (bytes that are no real plan or IR) and a valid sidecar naming it, with the
    tiny FP32 model's metadata at the precision named in ``name`` (``model.fp16.engine`` -> fp16); for
    commands that read only the sidecar. ``sidecar_fields`` are added to or replace the sidecar's fields."""
    import hashlib

    from tiny_models import tiny_onnx

    from ulffn_deploy.runtime.metadata import SIDECAR_FORMAT, SIDECAR_VERSION, read_metadata, sidecar_path

    path = Path(folder) / name
    path.write_bytes(b"stand-in for " + name.encode())
    precision = next((part for part in name.split(".") if part in ("fp32", "fp16", "int8")), "fp32")
    meta = read_metadata(tiny_onnx("fp32")).with_precision(precision)
    sidecar = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "backend": backend, **meta.to_dict(),
               "input_name": "image", "output_name": "probabilities",
               "engine_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), **sidecar_fields}
    sidecar_path(path).write_text(json.dumps(sidecar), encoding="utf-8")
    return path


def few_torch_threads() -> Iterator[None]:
    """A generator for a pytest fixture: torch on 2 threads while the fixture is active (the machine's
    cores are shared), restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
