"""Shared fixtures. Tests run on CPU with tiny models; GPU tests are marked ``gpu``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BLOCK_HEAVY_IMPORTS = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {blocked!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked in this test")
            return None
    sys.meta_path.insert(0, Block())
    """
)


def run_python_blocking(code: str, blocked: tuple[str, ...] = ("torch", "onnx", "tensorrt")) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which importing any of ``blocked`` fails."""
    program = BLOCK_HEAVY_IMPORTS.format(blocked=set(blocked)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run ``ulffn-deploy ARGS`` as a user would, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "ulffn_deploy", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture
def blocked_python():
    return run_python_blocking
