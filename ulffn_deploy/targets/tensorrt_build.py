"""NVIDIA's ONNX parser and builder, one path for ``tensorrt`` and ``tensorrt_rtx``.

Both modules share the API shape this needs: ``Builder``, a strongly typed network, ``OnnxParser``, one
optimisation profile and ``build_serialized_network``. Each step is checked: a parser failure becomes one
UlffnError naming the first failing nodes and the parser's reasons, a build that returns no plan one naming
the builder's last error. TensorRT's log is collected, not printed, so the CLI stays one line.

:func:`parse_and_build` is the whole path for a caller that only wants to know whether NVIDIA's parser and
builder accept a file (a lint gate); targets use :func:`parse_onnx`, :func:`add_profile` and
:func:`build_plan` with their own builder settings in between.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ulffn_deploy.errors import UlffnError

BUILDER_MODULES = ("tensorrt", "tensorrt_rtx")  # modules with an ONNX parser and a builder
DYNAMIC_BATCH = 1  # what parse_and_build gives a dynamic batch axis when no profile is given
DYNAMIC_EXTENT = 64  # ... and any other dynamic axis (a multiple of ULFFN's output stride)
_LOGGERS: dict[str, Any] = {}


def import_builder(module_name: str) -> ModuleType | None:
    """``tensorrt`` or ``tensorrt_rtx`` when it imports with its builder (not only type stubs), else None."""
    if module_name not in BUILDER_MODULES:
        raise UlffnError(f"unknown TensorRT builder module {module_name!r}", f"use one of {', '.join(BUILDER_MODULES)}")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, OSError):  # OSError: a wheel whose shared libraries do not load
        return None
    return module if hasattr(module, "Builder") and hasattr(module, "OnnxParser") else None


def collecting_logger(trt: ModuleType) -> Any:
    """A TensorRT logger (one per module) that keeps warnings and errors in ``messages`` instead of printing."""
    if trt.__name__ not in _LOGGERS:

        class Collecting(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages: list[tuple[Any, str]] = []

            def log(self, severity: Any, message: str) -> None:
                if severity <= trt.ILogger.Severity.WARNING:
                    self.messages.append((severity, message))
                    del self.messages[:-50]

        _LOGGERS[trt.__name__] = Collecting()
    return _LOGGERS[trt.__name__]


def last_errors(trt: ModuleType, limit: int = 2) -> str:
    """The last errors TensorRT logged through :func:`collecting_logger`, as one line."""
    logged = collecting_logger(trt).messages
    errors = [" ".join(text.split()) for severity, text in logged if severity <= trt.ILogger.Severity.ERROR]
    return "; ".join(errors[-limit:])[:400] or "no error logged"


@dataclass
class ParsedNetwork:
    """A parsed ONNX file: the builder, network and parser (the network refers to the parser's weights, so
    the three live together), and the module they come from."""

    trt: ModuleType
    builder: Any
    network: Any
    parser: Any
    path: Path
    keep: list[Any] = field(default_factory=list)

    def input_names(self) -> list[str]:
        return [self.network.get_input(i).name for i in range(self.network.num_inputs)]


def parse_network(trt: ModuleType, source: Path | bytes, name: str) -> tuple[ParsedNetwork, tuple[str, ...]]:
    """Parse an ONNX file (or serialised model) into a strongly typed network (precision comes from the ONNX
    tensors), registering the plugins the module ships; the network and the parser's refusals, one
    ``node 'name' (Op): reason`` per node (empty when it parsed)."""
    logger = collecting_logger(trt)
    logger.messages.clear()  # the errors reported for this file are this file's
    if hasattr(trt, "init_libnvinfer_plugins"):  # the plugins a real build registers (NonZero, DeformConv, ...)
        trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    parsed = bool(parser.parse(source) if isinstance(source, bytes) else parser.parse_from_file(os.fspath(source)))
    problems = parser_problems(parser)
    if not parsed and not problems:
        problems = (f"the parser refused the model: {last_errors(trt)}",)
    return ParsedNetwork(trt, builder, network, parser, Path(name)), problems


def parse_onnx(trt: ModuleType, path: str | os.PathLike[str]) -> ParsedNetwork:
    """:func:`parse_network` of a file; UlffnError naming the failing nodes and the parser's reasons."""
    path = Path(path)
    if not path.is_file():
        raise UlffnError(f"{path}: no such ONNX file")
    parsed, problems = parse_network(trt, path, path.name)
    if problems:
        raise UlffnError(f"{_module_title(trt)}'s ONNX parser rejected {path.name}: {describe_problems(problems)}",
                         f"run 'ulffn-deploy lint-onnx {path}' to find unsupported constructs")
    return parsed


def error_reason(error: Any) -> str:
    """One parser error's reason in one line: an assertion's message, else its text, else code and checker."""
    desc = " ".join(str(error.desc()).split())
    desc = desc.split(" [checkMacros.cpp::catchCudaError")[0]  # a no-GPU note TensorRT appends to some errors
    if desc.startswith("Assertion failed: ") and len(desc.split(": ", 2)) == 3:
        return desc.split(": ", 2)[2]
    quoted = re.findall(r'"([^"]*)"', desc.rsplit("&&", 1)[-1])
    if quoted and "&&" in desc:  # (condition) && "message"
        return "".join(quoted)
    if desc in ("", "false"):
        return f"{error.code().name} ({error.func()})"
    return desc


def parser_problems(parser: Any) -> tuple[str, ...]:
    """Every refusal the parser recorded, once each: ``node 'name' (Op): reason``."""
    problems: list[str] = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        name = error.node_name() or (f"#{error.node()}" if error.node() >= 0 else "<model>")
        problem = f"node {name!r} ({error.node_operator() or '?'}): {error_reason(error)}"
        if problem not in problems:
            problems.append(problem)
    return tuple(problems)


def describe_problems(problems: Sequence[str], limit: int = 3) -> str:
    """The first ``limit`` problems as one line, and how many more there are."""
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more if problems else "no error details"


def add_profile(parsed: ParsedNetwork, config: Any, profile: Mapping[str, Mapping[str, Sequence[int]]]) -> None:
    """One optimisation profile: ``{input: {"min": shape, "opt": shape, "max": shape}}`` for every input."""
    missing = sorted(set(parsed.input_names()) - set(profile))
    if missing:
        raise UlffnError(f"{parsed.path.name}: no shape profile for input(s) {', '.join(missing)}")
    optimization = parsed.builder.create_optimization_profile()
    for name, shapes in profile.items():
        optimization.set_shape(name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    if config.add_optimization_profile(optimization) < 0:
        raise UlffnError(f"{_module_title(parsed.trt)} refused the shape profile {dict(profile)} for "
                         f"{parsed.path.name}: {last_errors(parsed.trt)}")


def build_plan(parsed: ParsedNetwork, config: Any) -> bytes:
    """``build_serialized_network``, checked: the plan's bytes, or UlffnError with the builder's last errors."""
    plan = parsed.builder.build_serialized_network(parsed.network, config)
    if plan is None or plan.nbytes == 0:
        raise UlffnError(f"{_module_title(parsed.trt)} could not build {parsed.path.name}: {last_errors(parsed.trt)}",
                         "'ulffn-deploy lint-onnx' checks the model")
    return bytes(plan)


def static_profile(parsed: ParsedNetwork) -> dict[str, dict[str, list[int]]]:
    """A one-shape profile per input: its static dimensions, ``DYNAMIC_BATCH`` for a dynamic first axis and
    ``DYNAMIC_EXTENT`` for any other dynamic axis."""
    profile = {}
    for i in range(parsed.network.num_inputs):
        tensor = parsed.network.get_input(i)
        shape = [int(d) if int(d) >= 0 else (DYNAMIC_BATCH if axis == 0 else DYNAMIC_EXTENT)
                 for axis, d in enumerate(tensor.shape)]
        profile[tensor.name] = {"min": shape, "opt": shape, "max": shape}
    return profile


def parse_and_build(onnx_path: str | os.PathLike[str], module_name: str = "tensorrt_rtx",
                    profile: Mapping[str, Mapping[str, Sequence[int]]] | None = None) -> bytes:
    """Parse ``onnx_path`` with NVIDIA's parser and build it with NVIDIA's builder (``module_name``: "tensorrt"
    or "tensorrt_rtx"; ``profile`` as :func:`add_profile` takes it, default :func:`static_profile`); the plan.

    Raises UlffnError naming the failing node and the parser's reason, or the builder's error; and one naming
    the module when it is not installed. ``tensorrt_rtx`` builds on a CPU without a GPU; ``tensorrt`` needs one.
    """
    trt = import_builder(module_name)
    if trt is None:
        raise UlffnError(f"{module_name} is not importable", f"pip install 'ulffn-deploy[{module_name.replace('_', '-')}]'")
    parsed = parse_onnx(trt, onnx_path)
    config = parsed.builder.create_builder_config()
    add_profile(parsed, config, profile or static_profile(parsed))
    return build_plan(parsed, config)


def _module_title(trt: ModuleType) -> str:
    return {"tensorrt_rtx": "TensorRT-RTX"}.get(trt.__name__.split(".")[0], "TensorRT")
