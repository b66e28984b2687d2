"""NVIDIA's ONNX parser and builder as the gate for every ONNX file the toolkit writes.

Where a TensorRT package imports (the full ``tensorrt`` first, else ``tensorrt_rtx``, whose builder needs no
GPU), a file is parsed into a strongly typed network and built into an engine (kept in memory, then
dropped): what TensorRT refuses is named by node with the parser's (or the builder's) own reason. Where
neither imports, the hand-kept op table of :mod:`ulffn_deploy.export.lint` is the fallback, and the result
says so. :func:`check_onnx` picks; :func:`check_with_tensorrt` is the real check alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Union

from ulffn_deploy.errors import UlffnError

if TYPE_CHECKING:
    import onnx

ModelOrPath = Union["onnx.ModelProto", str, "os.PathLike[str]"]

# Packages tried in order: (module, name shown to the user)
PACKAGES = (("tensorrt", "TensorRT"), ("tensorrt_rtx", "TensorRT-RTX"))
INSTALL_HINT = "pip install tensorrt-rtx-cu12"
MAX_BATCH = 8  # the batch range of the build profile is 1..MAX_BATCH for a dynamic batch axis
DEFAULT_SPATIAL = 64  # a dynamic H/W of a file without ``ulffn.input_size``
TABLE_CHECKER = "the built-in op table"


@dataclass(frozen=True)
class GateResult:
    """What checked a graph and what it found (``problems`` empty: accepted)."""

    checker: str  # "TensorRT-RTX 1.7.1", "TensorRT 10.13.3", or "the built-in op table"
    problems: tuple[str, ...] = ()  # "node 'name' (Op): reason", one per refusal
    built: bool = False  # the builder wrote an engine (TensorRT only)
    layers: int = 0  # layers of the parsed network
    engine_bytes: int = 0
    seconds: float = 0.0  # parse + build
    fallback_reason: str | None = None  # why the op table checked instead of TensorRT
    parse_only: bool = False  # asked to parse, not to build

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """"checked with TensorRT-RTX 1.7.1's ONNX parser and builder (31 layers, engine 0.2 MB, 0.41 s)"."""
        if self.fallback_reason is not None:
            return f"checked with {self.checker} ({self.fallback_reason}; for NVIDIA's parser: {INSTALL_HINT})"
        what = "ONNX parser" if self.parse_only else "ONNX parser and builder"
        if not self.built:
            return f"checked with {self.checker}'s {what}"
        return (f"checked with {self.checker}'s {what} ({self.layers} layers, engine "
                f"{self.engine_bytes / 1e6:.2f} MB, {self.seconds:.2f} s)")


def tensorrt_builder_module() -> tuple[ModuleType, str] | None:
    """(module, "TensorRT-RTX 1.7.1") of the first TensorRT package with an ONNX parser and builder, or None."""
    from ulffn_deploy.targets.tensorrt_build import import_builder

    for module_name, label in PACKAGES:
        trt = import_builder(module_name)
        if trt is not None and hasattr(trt, "__version__"):
            return trt, f"{label} {'.'.join(str(trt.__version__).split('.')[:3])}"
    return None


def no_tensorrt_reason() -> str:
    return f"no TensorRT package installed: neither {' nor '.join(module for module, _ in PACKAGES)} imports"


def _serialized(model_or_path: ModelOrPath) -> tuple[bytes | None, Path | None]:
    """(bytes, None) for an in-memory model, (None, path) for a file."""
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path.SerializeToString(), None
    path = Path(model_or_path)
    if not path.is_file():
        raise UlffnError(f"{path}: no such ONNX file")
    return None, path


def _spatial_size(model_or_path: ModelOrPath, default: int | None) -> int:
    """The H/W of a dynamic image input: ``default``, else the file's ``ulffn.input_size``, else 64."""
    if default is not None:
        return default
    import onnx

    from ulffn_deploy.runtime.metadata import load_onnx

    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else load_onnx(model_or_path)
    props = {prop.key: prop.value for prop in model.metadata_props}
    try:
        return int(props.get("ulffn.input_size", DEFAULT_SPATIAL))
    except ValueError:
        return DEFAULT_SPATIAL


def _profile_shapes(shape: tuple[int, ...], size: int) -> tuple[tuple[int, ...], ...]:
    """min/opt/max of one input: batch axis 1/1/MAX_BATCH, other dynamic axes ``size`` (H/W of an image)."""
    def pick(batch: int) -> tuple[int, ...]:
        return tuple(dim if dim >= 0 else (batch if axis == 0 else size) for axis, dim in enumerate(shape))

    return pick(1), pick(1), pick(MAX_BATCH)


def inspect_with_tensorrt(model_or_path: ModelOrPath, *, build: bool = True,
                          input_size: int | None = None) -> GateResult:
    """Parse ``model_or_path`` with TensorRT's ONNX parser into a strongly typed network and (``build``) build
    an engine with one optimisation profile (dynamic batch 1..MAX_BATCH, dynamic H/W ``input_size`` or the
    file's ``ulffn.input_size``). Refusals come back in ``problems``, one per node; a UlffnError only where no
    TensorRT package imports or the file is missing."""
    found = tensorrt_builder_module()
    if found is None:
        raise UlffnError(f"cannot check with TensorRT: {no_tensorrt_reason()}", INSTALL_HINT)
    trt, checker = found
    from ulffn_deploy.targets.tensorrt_build import add_profile, build_plan, parse_network

    data, path = _serialized(model_or_path)
    started = time.perf_counter()
    source: Path | bytes = path if path is not None else data or b""
    parsed, problems = parse_network(trt, source, path.name if path is not None else "the model")
    network = parsed.network
    if problems:
        return GateResult(checker, problems, seconds=time.perf_counter() - started, parse_only=not build)
    if not build:
        return GateResult(checker, layers=network.num_layers, seconds=time.perf_counter() - started, parse_only=True)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shape_inputs = [tensor.name for tensor in inputs if tensor.is_shape_tensor]
    if shape_inputs:
        return GateResult(checker, tuple(f"input {name!r} sets shapes or axes at run time (a shape tensor): the "
                                         "toolkit's build profile gives image inputs only" for name in shape_inputs),
                          layers=network.num_layers, seconds=time.perf_counter() - started)
    config = parsed.builder.create_builder_config()
    try:
        if any(-1 in tuple(tensor.shape) for tensor in inputs):
            size = _spatial_size(model_or_path, input_size)
            add_profile(parsed, config, {tensor.name: dict(zip(("min", "opt", "max"),
                                                               _profile_shapes(tuple(tensor.shape), size)))
                                         for tensor in inputs})
        plan = build_plan(parsed, config)
    except UlffnError as exc:
        return GateResult(checker, (f"the builder failed: {exc.message}",), seconds=time.perf_counter() - started,
                          layers=network.num_layers)
    return GateResult(checker, built=True, layers=network.num_layers, engine_bytes=len(plan),
                      seconds=time.perf_counter() - started)


def inspect_onnx(model_or_path: ModelOrPath, *, build: bool = True, input_size: int | None = None) -> GateResult:
    """TensorRT's verdict (:func:`inspect_with_tensorrt`) where a TensorRT package imports, else the op table's."""
    if tensorrt_builder_module() is not None:
        return inspect_with_tensorrt(model_or_path, build=build, input_size=input_size)
    from ulffn_deploy.export.lint import lint_model

    problems = tuple(f"node {issue.node!r} ({issue.op_type}): {issue.reason}" for issue in lint_model(model_or_path))
    return GateResult(TABLE_CHECKER, problems, fallback_reason=no_tensorrt_reason())


def _refuse(result: GateResult, what: str) -> GateResult:
    if result.ok:
        return result
    more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
    raise UlffnError(f"{what} cannot be deployed: {result.problems[0]}{more}; {result.describe()}",
                     "'ulffn-deploy lint-onnx' lists every problem")


def check_with_tensorrt(model_or_path: ModelOrPath, *, build: bool = True, input_size: int | None = None,
                        what: str = "the model") -> GateResult:
    """:func:`inspect_with_tensorrt`, raising a one-line UlffnError naming the first refused node."""
    return _refuse(inspect_with_tensorrt(model_or_path, build=build, input_size=input_size), what)


def check_onnx(model_or_path: ModelOrPath, *, build: bool = True, input_size: int | None = None,
               what: str = "the model") -> GateResult:
    """:func:`inspect_onnx`, raising a one-line UlffnError naming the first refused node: the gate of export,
    import-model and calibrate."""
    return _refuse(inspect_onnx(model_or_path, build=build, input_size=input_size), what)
