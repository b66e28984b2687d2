"""Subprocess helpers: the command line as a user runs it, and code in a fresh interpreter.

``run_python`` reports which deployment packages the code imported, read from ``sys.modules`` when the
interpreter exits, so a test of "the light path stays light" checks what was really imported rather than
blocking imports (a blocked import that the code catches would pass unnoticed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

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


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run ``ulffn-deploy ARGS`` as a user would, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "ulffn_deploy", *args], capture_output=True, text=True, timeout=600)
