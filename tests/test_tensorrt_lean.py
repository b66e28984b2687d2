"""The runtime's TensorRT calls against the real lean bindings (``tensorrt_lean``, installed by the test extra),
on CPU: every ``trt.X.Y`` the runtime names, and every method it calls on a runtime, engine or context,
must exist on the real classes, so an API change in TensorRT fails here rather than on a device. The
build API (absent from the lean bindings) is checked by mypy against tensorrt-stubs (test_typecheck.py).

Without a CUDA driver the lean runtime imports but cannot run: loading an engine must stop with one line
before any TensorRT object exists (a ``Runtime`` created without a driver crashes the process when used).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import sys
from pathlib import Path

import pytest
from helpers import run_cli, run_python
from tiny_models import sample_images

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_SOURCE = ROOT / "ulffn_deploy" / "targets" / "tensorrt_runtime.py"
# the variables the runtime keeps TensorRT objects in -> their class in the bindings
OBJECTS = {"runtime": "Runtime", "_runtime": "Runtime", "loaded": "Runtime", "engine": "ICudaEngine",
           "context": "IExecutionContext"}
# what the runtime must call, listed by hand: the AST scan below must find at least these
EXPECTED = {
    ("Runtime",): {"deserialize_cuda_engine", "engine_host_code_allowed", "load_runtime", "DLA_core"},
    ("ICudaEngine",): {"num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype",
                       "get_tensor_profile_shape", "create_execution_context"},
    ("IExecutionContext",): {"set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3"},
    ("module",): {"Runtime", "Logger", "TensorIOMode", "DataType", "Dims", "ICudaEngine"},
}


@pytest.fixture(scope="module")
def lean():
    if sys.platform != "linux":
        pytest.skip("tensorrt-lean-cu12 is installed by the test extra on Linux only")
    try:
        return importlib.import_module("tensorrt_lean")
    except ImportError:
        pytest.fail("tensorrt_lean is not installed: pip install 'tensorrt-lean-cu12' (the [test] extra does)")


def _chain(node: ast.AST) -> list[str] | None:
    """``trt.DataType.HALF`` -> ["trt", "DataType", "HALF"]; ``self.engine.get_tensor_name`` -> ["self", ...]."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def runtime_usages() -> dict[tuple[str, ...], set[str]]:
    """What tensorrt_runtime.py uses: module attributes (``trt.X.Y``, ``tensorrt.X`` in annotations) and the
    attributes of TensorRT objects it holds, keyed by ("module",) or (class name,)."""
    used: dict[tuple[str, ...], set[str]] = {}
    tree = ast.parse(RUNTIME_SOURCE.read_text())
    for node in ast.walk(tree):
        chain = _chain(node) if isinstance(node, ast.Attribute) else None
        if not chain or len(chain) < 2:
            continue
        root, rest = chain[0], chain[1:]
        if root == "self" and rest[0] in OBJECTS and len(rest) > 1:
            root, rest = rest[0], rest[1:]
        if root == "self" and rest[0] == "trt" and len(rest) > 1:
            root, rest = "trt", rest[1:]
        if root in ("trt", "tensorrt"):
            used.setdefault(("module",), set()).add(rest[0])
            if len(rest) > 1:
                used.setdefault(("module", rest[0]), set()).add(rest[1])
        elif root in OBJECTS:
            used.setdefault((OBJECTS[root],), set()).add(rest[0])
    return used


def test_the_scan_finds_every_call_listed_by_hand():
    used = runtime_usages()
    for owner, names in EXPECTED.items():
        assert names <= used.get(owner, set()), f"{owner}: {sorted(names - used.get(owner, set()))} not found in the source"


def test_every_tensorrt_name_the_runtime_uses_exists_in_the_lean_bindings(lean):
    missing = []
    for owner, names in runtime_usages().items():
        holder = lean if owner[0] == "module" else getattr(lean, owner[0])
        if owner[0] == "module" and len(owner) > 1:
            holder = getattr(lean, owner[1])
        for name in sorted(names):
            if name.startswith("__"):
                continue
            if not hasattr(holder, name):
                missing.append(".".join((*owner, name)))
    assert missing == [], f"not in tensorrt_lean {lean.__version__}: {missing}"


def test_calls_take_the_arguments_the_runtime_passes(lean):
    """pybind11 signatures (in the docstrings) of the calls whose arguments could drift."""
    def doc(cls: str, method: str) -> str:
        return getattr(getattr(lean, cls), method).__doc__ or ""

    assert "load_runtime(self: tensorrt_lean_bindings.tensorrt_lean.Runtime, path: str)" in doc("Runtime", "load_runtime")
    assert "name: str, profile_index: typing.SupportsInt) -> list" in doc("ICudaEngine", "get_tensor_profile_shape")
    assert "stream_handle: typing.SupportsInt) -> bool" in doc("IExecutionContext", "execute_async_v3")
    assert "name: str, shape: tuple) -> bool" in doc("IExecutionContext", "set_input_shape")  # the runtime passes tuples
    assert "name: str, memory: typing.SupportsInt) -> bool" in doc("IExecutionContext", "set_tensor_address")


def test_the_runtime_takes_the_lean_module_when_asked(lean):
    from ulffn_deploy.devices import import_tensorrt, is_lean
    from ulffn_deploy.targets.tensorrt_runtime import lean_library, tensorrt_module

    module = tensorrt_module("lean")
    assert module is lean and is_lean(module)
    assert tensorrt_module("auto") is (import_tensorrt() or lean)  # the full package first, when installed
    library = lean_library(lean)
    assert library is not None and library.name == f"libnvinfer_lean.so.{lean.__version__.split('.')[0]}"


def _engine_with_sidecar(folder: Path, lean_version: str, version_compatible: bool = True) -> Path:
    """A plan file that is not a plan, with a valid sidecar that names it: nothing may deserialize it here."""
    from tiny_models import tiny_onnx

    from ulffn_deploy.runtime.metadata import SIDECAR_FORMAT, SIDECAR_VERSION, ArtifactMetadata

    engine = folder / "model.fp16.engine"
    engine.write_bytes(b"not a plan")
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tiny_onnx("fp16")), load_external_data=False).metadata_props}
    meta = ArtifactMetadata.from_mapping(props, "tiny")
    sidecar = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "backend": "tensorrt", **meta.to_dict(),
               "tensorrt_version": lean_version, "gpu": {"name": "NVIDIA A10", "compute_capability": "8.6"},
               "build_flags": {"version_compatible": version_compatible, "strongly_typed": True},
               "engine_sha256": hashlib.sha256(engine.read_bytes()).hexdigest(),
               "build_command": "ulffn-deploy build-engine --backend tensorrt --onnx model.fp16.onnx -o model.fp16.engine"}
    engine.with_name(engine.name + ".json").write_text(json.dumps(sidecar))
    return engine


def test_without_a_cuda_driver_the_lean_runtime_stops_in_one_line(lean, tmp_path):
    engine = _engine_with_sidecar(tmp_path, lean.__version__)
    result = run_python(f"""
        from ulffn_deploy.errors import UlffnError
        from ulffn_deploy.targets.tensorrt_runtime import TrtSegmenter
        try:
            TrtSegmenter(__import__("pathlib").Path({str(engine)!r}), runtime="lean")
        except UlffnError as exc:
            print(exc)
        """, absent=("tensorrt",))
    assert result.returncode == 0, result.stderr  # a Runtime touched without a driver would crash (signal 11)
    line = result.stdout.strip()
    assert "\n" not in line
    # without cuda-python: says so; with it but without a driver: the CUDA error, named
    assert line.startswith("cannot run a TensorRT engine: cuda-python") or "cudaErrorInsufficientDriver" in line, line
    assert "Traceback" not in result.stderr


def test_predict_with_an_engine_and_no_driver_exits_2_in_one_line(lean, tmp_path):
    engine = _engine_with_sidecar(tmp_path, lean.__version__)
    from ulffn_deploy.imageio import write_rgb

    write_rgb(tmp_path / "lesion.png", sample_images(1)[0])
    result = run_cli("predict", str(engine), str(tmp_path / "lesion.png"), "-o", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "model.fp16.engine" in result.stderr and "GPU" in result.stderr


def test_lean_runtime_refuses_a_plan_that_is_not_version_compatible_in_one_line(lean, tmp_path):
    from ulffn_deploy.errors import UlffnError
    from ulffn_deploy.targets.tensorrt_runtime import TrtSegmenter

    engine = _engine_with_sidecar(tmp_path, lean.__version__, version_compatible=False)
    with pytest.raises(UlffnError) as caught:
        TrtSegmenter(engine, runtime="lean")
    assert "cannot run on the lean runtime: it was not built version-compatible" in caught.value.message
    assert caught.value.hint.endswith("-o model.fp16.engine --version-compatible")
    assert "\n" not in str(caught.value)
