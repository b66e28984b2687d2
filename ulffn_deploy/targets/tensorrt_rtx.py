"""TensorRT for RTX: engines built on any machine where ``tensorrt_rtx`` imports (no GPU needed), run on RTX GPUs.

TensorRT-RTX builds ahead of time on the CPU (its default) and compiles kernels just in time on the device at
first load; a runtime cache file keeps those kernels for later starts. The build is NVIDIA's parser and
builder through ``targets/tensorrt_build.py`` (the same path as TensorRT), strongly typed: the ONNX file
decides the precision. The artifact is ``model.<precision>.rtxengine``: its own suffix, which does not end in
``.engine``, so no tool or rule can take it for a TensorRT plan (which it is not: TensorRT cannot load it).
The sidecar records the TensorRT-RTX version, the compute capabilities the engine targets, the shape profile,
the source ONNX's sha256, the build flags, the runtime settings a device should use and the rebuild command.

Running needs an RTX-class GPU (compute capability 7.5 when built for it, else 8.0 and later), cuda-python and
``tensorrt_rtx``; it goes through the same ``TrtSegmenter`` and cuda-python buffers as TensorRT.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.targets.registry import BuildOption, Target
from ulffn_deploy.targets.tensorrt import BUILD_OPTIONS as TENSORRT_OPTIONS
from ulffn_deploy.targets.tensorrt_compat import RTX_DEFAULT_CAPABILITIES

if TYPE_CHECKING:
    from ulffn_deploy.runtime.base import Segmenter
    from ulffn_deploy.targets.onnx_source import OnnxSource

INSTALL_HINT = "pip install 'ulffn-deploy[tensorrt-rtx]' (builds here; runs on an RTX GPU)"
# compute capability -> ComputeCapability member of tensorrt_rtx 1.7
CAPABILITIES = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}
CUDA_GRAPH_STRATEGIES = {"disabled": "DISABLED", "whole-graph": "WHOLE_GRAPH_CAPTURE"}
KERNEL_SPECIALIZATIONS = {"lazy": "LAZY", "eager": "EAGER", "none": "NONE"}
RUNTIME_CACHE_SUFFIX = ".runtime-cache"  # default runtime cache: beside the engine

_SHARED = {"min_batch", "opt_batch", "max_batch", "min_hw", "opt_hw", "max_hw", "workspace", "builder_optimization_level"}
RUNTIME_OPTION_NAMES = ("runtime_cache", "cuda_graph_strategy", "kernel_specialization")
BUILD_OPTIONS = (
    *(option for option in TENSORRT_OPTIONS if option.name in _SHARED),
    BuildOption("compute_capabilities", str, "default", "GPUs the engine runs on: 'default' (NVIDIA's set: 8.0, 8.6, "
                "8.9, 12.0 and later) or a comma list of " + ", ".join(CAPABILITIES) + " (7.5 for Turing)."),
    BuildOption("runtime_cache", str, None, "Runtime cache file the device keeps its JIT-compiled kernels in (recorded "
                "for the device; default: beside the engine, <engine>" + RUNTIME_CACHE_SUFFIX + ")."),
    BuildOption("cuda_graph_strategy", str, "disabled", "Whether TensorRT-RTX captures and replays the engine as a CUDA "
                "graph on the device.", choices=tuple(CUDA_GRAPH_STRATEGIES)),
    BuildOption("kernel_specialization", str, "lazy", "When the device compiles kernels specialised to dynamic "
                "shapes: lazy (in the background), eager (at first use), none.", choices=tuple(KERNEL_SPECIALIZATIONS)),
)


def import_tensorrt_rtx() -> Any:
    """The ``tensorrt_rtx`` module with its builder, or None."""
    from ulffn_deploy.targets.tensorrt_build import import_builder

    return import_builder("tensorrt_rtx")


class TensorRTRTXTarget(Target):
    """TensorRT-RTX engines (``.rtxengine`` plus a JSON sidecar): built on any machine, run on RTX GPUs."""

    name = "tensorrt-rtx"
    title = "TensorRT-RTX"
    description = ("a TensorRT-RTX engine, built ahead of time on any machine; an RTX GPU compiles its kernels at "
                   "first load (its sidecar lists the compute capabilities)")
    runs_on = "an NVIDIA RTX GPU (compute capability 8.0 or later; 7.5 when built for it) with tensorrt_rtx"
    packages = ("tensorrt-rtx",)
    suffixes = (".rtxengine",)
    build_suffix = ".rtxengine"
    build_options = BUILD_OPTIONS
    load_options = tuple(option for option in BUILD_OPTIONS if option.name in RUNTIME_OPTION_NAMES)
    default_build_precision = "fp16"
    rank = 25
    preferred_precisions = ("fp16", "int8", "fp32")
    install_hint = INSTALL_HINT

    def build_unavailable_reason(self) -> str | None:
        if import_tensorrt_rtx() is None:
            return "tensorrt_rtx is not importable"
        return None

    def unavailable_reason(self) -> str | None:
        from ulffn_deploy.devices import gpu_problem

        problems = [p for p in (self.build_unavailable_reason(), gpu_problem()) if p]
        if problems:
            return "a TensorRT-RTX engine runs on an RTX GPU (compute capability 7.5 to 12.x): " + "; ".join(problems)
        return None

    def artifact_problem(self, path: Path) -> str | None:
        from ulffn_deploy.runtime.metadata import read_sidecar
        from ulffn_deploy.targets.cuda import device_properties
        from ulffn_deploy.targets.tensorrt_compat import rtx_engine_problem

        try:
            sidecar = read_sidecar(path)
        except UlffnError as exc:
            return exc.message
        trt = import_tensorrt_rtx()
        return rtx_engine_problem(sidecar, device_properties(0), str(getattr(trt, "__version__", "?")))

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        options = super().resolve_options(given)
        options["compute_capabilities"] = ",".join(capability_list(options["compute_capabilities"]) or ["default"])
        return options

    def load(self, path: Path, **options: Any) -> Segmenter:
        """A TrtSegmenter on ``tensorrt_rtx``; ``runtime_cache``, ``cuda_graph_strategy`` and
        ``kernel_specialization`` override what the sidecar recorded at build time."""
        from ulffn_deploy.targets.tensorrt_runtime import RtxSegmenter

        return RtxSegmenter(path, **options)

    def build(self, source_onnx: Path, output: Path | None, options: Mapping[str, Any], command: Sequence[str]) -> Path:
        return build_rtx_engine(source_onnx, output, options, command=command)


TARGET = TensorRTRTXTarget()


def capability_list(text: str) -> list[str]:
    """``"8.6, 12.0"`` -> ["8.6", "12.0"]; [] for "default"; UlffnError naming the flag for anything else."""
    if text.strip().lower() == "default":
        return []
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in wanted if part not in CAPABILITIES]
    if not wanted or unknown:
        raise UlffnError(f"--compute-capabilities {text!r}: {', '.join(unknown) or 'none given'} is not a compute "
                         "capability TensorRT-RTX builds for", f"use 'default' or some of {', '.join(CAPABILITIES)}")
    return list(dict.fromkeys(wanted))


def build_rtx_engine(onnx_path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
                     options: Mapping[str, Any] | None = None, precision: str | None = None,
                     command: Sequence[str] | None = None) -> Path:
    """Build ``onnx_path`` into a TensorRT-RTX engine plus sidecar, both written atomically; the engine's path."""
    from ulffn_deploy.fileio import write_bytes_atomic, write_json_atomic
    from ulffn_deploy.runtime.metadata import sidecar_path
    from ulffn_deploy.targets.onnx_source import describe_onnx
    from ulffn_deploy.targets.tensorrt import make_profile
    from ulffn_deploy.targets.tensorrt_build import add_profile, build_plan, parse_onnx

    trt = import_tensorrt_rtx()
    if trt is None:
        raise UlffnError("cannot build a TensorRT-RTX engine: tensorrt_rtx is not importable", INSTALL_HINT)
    source = describe_onnx(onnx_path, precision)
    options = TARGET.resolve_options(options or {})
    output = Path(output) if output else TARGET.default_output(source.path)
    command = command or TARGET.rebuild_command(source.path, output, options)
    profile = make_profile(source, options)
    start = time.perf_counter()
    parsed = parse_onnx(trt, source.path)
    config = parsed.builder.create_builder_config()
    add_profile(parsed, config, {source.input_name: profile})
    _configure(trt, config, options)
    plan = build_plan(parsed, config)
    seconds = time.perf_counter() - start
    write_bytes_atomic(output, plan)
    sidecar = _sidecar(trt, source, profile, options, plan, seconds, command)
    sidecar["files"] = {output.name: len(plan)}
    write_json_atomic(sidecar_path(output), sidecar)
    return output


def _configure(trt: Any, config: Any, options: Mapping[str, Any]) -> None:
    """Compute capabilities, workspace and optimisation level on a TensorRT-RTX builder config."""
    capabilities = capability_list(options["compute_capabilities"])
    if capabilities:
        config.num_compute_capabilities = len(capabilities)
        for index, capability in enumerate(capabilities):
            if not config.set_compute_capability(getattr(trt.ComputeCapability, CAPABILITIES[capability]), index):
                raise UlffnError(f"TensorRT-RTX refused compute capability {capability}")
    if options["workspace"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options["workspace"] << 20)
    if options["builder_optimization_level"] is not None:
        config.builder_optimization_level = options["builder_optimization_level"]


def _sidecar(trt: Any, source: OnnxSource, profile: dict[str, list[int]], options: Mapping[str, Any], plan: bytes,
             seconds: float, command: Sequence[str]) -> dict[str, Any]:
    from ulffn_deploy.targets.onnx_source import sidecar_common

    sidecar = sidecar_common(source, TARGET.name, seconds, command)
    capabilities = capability_list(options["compute_capabilities"])
    sidecar.update({
        "tensorrt_rtx_version": str(trt.__version__),
        "compute_capabilities": capabilities or list(RTX_DEFAULT_CAPABILITIES),
        "profile": {source.input_name: profile},
        "build_flags": {key: value for key, value in options.items() if key not in RUNTIME_OPTION_NAMES}
        | {"strongly_typed": True},
        "runtime": {key: options[key] for key in RUNTIME_OPTION_NAMES},
        "engine_sha256": hashlib.sha256(plan).hexdigest(),
        "engine_bytes": len(plan),
    })
    return sidecar


def runtime_settings(sidecar: Mapping[str, Any], path: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime settings for an engine: ``overrides`` (load options), else the sidecar's, else the defaults;
    validated like the build options. The runtime cache defaults to ``<engine>.runtime-cache``."""
    recorded = sidecar.get("runtime") or {}
    declared = {option.name: option for option in BUILD_OPTIONS if option.name in RUNTIME_OPTION_NAMES}
    settings = {name: option.validate(overrides.get(name, recorded.get(name, option.default)))
                for name, option in declared.items()}
    settings["runtime_cache"] = settings["runtime_cache"] or str(path.with_name(path.name + RUNTIME_CACHE_SUFFIX))
    return settings


def runtime_enums(trt: Any, settings: Mapping[str, Any]) -> tuple[Any, Any]:
    """The ``tensorrt_rtx`` values of the CUDA-graph strategy and dynamic-shape kernel specialisation settings."""
    return (getattr(trt.CudaGraphStrategy, CUDA_GRAPH_STRATEGIES[settings["cuda_graph_strategy"]]),
            getattr(trt.DynamicShapesKernelSpecializationStrategy, KERNEL_SPECIALIZATIONS[settings["kernel_specialization"]]))
