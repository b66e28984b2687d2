"""Static checks of the TensorRT code that no CPU machine can run: mypy --strict against tensorrt-stubs.

tensorrt-stubs 10.13.0.35.1 installs ``tensorrt/__init__.pyi`` without a ``py.typed`` marker, so mypy
ignores it in site-packages. The test copies the stubs onto a temporary ``mypy_path`` and repairs two
syntax defects there (parameters named ``in``, a Python keyword; a parameter without a default after
defaulted ones); errors inside the stubs are not reported, every error in our modules is. cuda-python
has no stubs, so ``cuda.*`` is the one untyped import allowed (with Polygraphy and onnxruntime, which
are untyped too).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TENSORRT_MODULES = ["ulffn_deploy/targets/tensorrt_runtime.py", "ulffn_deploy/targets/cuda.py",
                    "ulffn_deploy/targets/tensorrt.py", "ulffn_deploy/targets/tensorrt_cache.py", "ulffn_deploy/devices.py",
                    "ulffn_deploy/targets/tensorrt_build.py", "ulffn_deploy/targets/tensorrt_compat.py",
                    "ulffn_deploy/targets/tensorrt_rtx.py"]
MAPPED_SUBPACKAGES = ("train", "export", "calib")  # installed as ulffn_deploy.<name> (pyproject package-dir)
STUB_FIXES = [
    (re.compile(r"\bin: list\["), "in_: list["),
    (re.compile(r"(power: Weights = None, channel_axis: int)\)"), r"\1 = ...)"),
]


def _stub_files() -> list[Path]:
    try:
        dist = metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        pytest.fail("tensorrt-stubs is not installed: pip install --no-deps 'tensorrt-stubs==10.13.0.35.1' "
                    "(the README's test command does)")
    files = [Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".pyi")]
    assert files, "tensorrt-stubs has no .pyi files"
    return files


def _prepare_stubs(target: Path) -> None:
    for stub in _stub_files():
        package = stub.parent.name  # tensorrt or tensorrt_bindings
        text = stub.read_text(encoding="utf-8")
        for pattern, replacement in STUB_FIXES:
            text = pattern.sub(replacement, text)
        (target / package).mkdir(parents=True, exist_ok=True)
        (target / package / stub.name).write_text(text, encoding="utf-8")


def _installed_layout(target: Path) -> Path:
    """A symlink tree of the package as installed, so mypy finds ``ulffn_deploy.export`` (an editable
    install maps it with an import hook that mypy cannot follow)."""
    package = target / "ulffn_deploy"
    package.mkdir(parents=True)
    for item in (ROOT / "ulffn_deploy").iterdir():
        if item.name != "__pycache__":
            (package / item.name).symlink_to(item)
    for name in MAPPED_SUBPACKAGES:
        (package / name).symlink_to(ROOT / name)
    return target


def test_tensorrt_modules_pass_strict_mypy(tmp_path):
    pytest.importorskip("mypy", reason="mypy is part of the [test] extra")
    stubs = tmp_path / "stubs"
    _prepare_stubs(stubs)
    source = _installed_layout(tmp_path / "src")
    config = tmp_path / "mypy.ini"
    config.write_text(textwrap.dedent(f"""
        [mypy]
        python_version = 3.10
        strict = True
        warn_unused_ignores = True
        follow_imports = silent
        mypy_path = {stubs}
        cache_dir = {tmp_path / "cache"}
        [mypy-cuda.*,onnxruntime.*,tensorrt_libs,tensorrt_rtx,tensorrt_rtx.*]
        ignore_missing_imports = True
        [mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
        ignore_errors = True
        """))
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), *TENSORRT_MODULES],
                            cwd=source, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"mypy --strict found problems:\n{result.stdout}{result.stderr}"


def test_the_stub_check_would_catch_a_wrong_tensorrt_call(tmp_path):
    """The check is only worth something if the stubs are really used: a misspelt TensorRT method must fail."""
    pytest.importorskip("mypy", reason="mypy is part of the [test] extra")
    stubs = tmp_path / "stubs"
    _prepare_stubs(stubs)
    wrong = tmp_path / "wrong.py"
    wrong.write_text("import tensorrt as trt\n\n\ndef f(engine: trt.ICudaEngine) -> str:\n"
                     "    return engine.get_tensor_nam(0)\n")
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\nmypy_path = {stubs}\ncache_dir = {tmp_path / 'cache'}\n"
                      "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\nignore_errors = True\n"
                      "[mypy-tensorrt_libs]\nignore_missing_imports = True\n")
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), str(wrong)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1 and '"ICudaEngine" has no attribute "get_tensor_nam"' in result.stdout, result.stdout


def _stub_members() -> dict[str, set[str]]:
    """Top-level names of the tensorrt stubs and, for classes, their members (``{"": top-level, cls: members}``)."""
    import ast

    members: dict[str, set[str]] = {"": set()}
    for stub in _stub_files():
        text = stub.read_text(encoding="utf-8")
        for pattern, replacement in STUB_FIXES:
            text = pattern.sub(replacement, text)
        for node in ast.parse(text).body:
            if isinstance(node, ast.ClassDef):
                members[""].add(node.name)
                names = members.setdefault(node.name, set())
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(item.name)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(item.target.id)
                    elif isinstance(item, ast.Assign):
                        names.update(t.id for t in item.targets if isinstance(t, ast.Name))
            elif isinstance(node, (ast.FunctionDef, ast.ImportFrom)):
                members[""].update([node.name] if isinstance(node, ast.FunctionDef) else [a.asname or a.name for a in node.names])
    return members


def test_module_level_tensorrt_names_of_the_builder_exist_in_the_stubs():
    """The builder takes the module from ``require_tensorrt()`` (typed Any), so mypy cannot see ``trt.X.Y``:
    every such chain in targets/tensorrt.py (enums, flags, classes) is looked up in the stubs here."""
    import ast

    members = _stub_members()
    used = set()
    for node in ast.walk(ast.parse((ROOT / "ulffn_deploy/targets/tensorrt.py").read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "trt":
            used.add((node.value.attr, node.attr))
    assert {("ProfilingVerbosity", "DETAILED"), ("BuilderFlag", "GPU_FALLBACK"), ("DeviceType", "DLA"),
            ("LayerInformationFormat", "JSON")} <= used
    missing = sorted(f"{cls}.{name}" for cls, name in used if name not in members.get(cls, set()))
    assert missing == [], f"not in tensorrt-stubs: {missing}"
