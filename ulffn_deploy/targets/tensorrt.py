"""The ``tensorrt`` target: ONNX -> a TensorRT plan (``model.<precision>.engine``) with its JSON sidecar, built on
a machine with TensorRT and an NVIDIA GPU; loading goes to ``TrtSegmenter`` (targets/tensorrt_runtime.py), and
an ``.onnx`` file with an engine cache folder is built there on first use (targets/tensorrt_cache.py).

TensorRT engines are built with NVIDIA's parser and builder through the path shared with TensorRT-RTX
(``targets/tensorrt_build.py``: a strongly typed network, one optimisation profile, ``build_serialized_network``,
each step checked), with this target's builder settings in between (:func:`configure_builder`). Precision comes
from the ONNX file alone (FP16 tensors, or Q/DQ nodes for INT8); no FP16/INT8 builder flags and no calibrator are
set, since TensorRT 10.12 deprecated weak typing and TensorRT 11 removed it (docs/tensorrt.md, Versions and
typing). The plan is written
as a plain file so that trtexec and other TensorRT tools load it; its metadata lives in the sidecar.

Every build runs with detailed profiling verbosity so that the engine inspector can list each layer's
precision; the counts go into the sidecar (``layer_precisions``), and an FP16 engine without FP16 layers
(or INT8 without INT8 layers) fails the build instead of shipping a silent FP32 engine. A parser failure
names the failing nodes. The batch and H/W profile (:func:`make_profile`) and its options are shared with the
``tensorrt-rtx`` target. A tactic timing cache file is read before the build and replaced atomically, under a
lock, after it (``tensorrt_cache.write_shared_file``).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulffn_deploy.config import MAX_INPUT_SIZE, OUTPUT_STRIDE
from ulffn_deploy.devices import require_tensorrt, tensorrt_unavailable_reason
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import write_bytes_atomic, write_json_atomic
from ulffn_deploy.preprocess import MAX_BATCH_SIZE
from ulffn_deploy.runtime.metadata import sidecar_path
from ulffn_deploy.targets.onnx_source import OnnxSource, describe_onnx, sidecar_common
from ulffn_deploy.targets.registry import BuildOption, Target

if TYPE_CHECKING:  # the stubs type TensorRT's objects; the module itself comes from require_tensorrt()
    import tensorrt

    from ulffn_deploy.runtime.base import Segmenter

NO_TENSORRT_HINT = ("build the CPU artifact with --backend onnxruntime, or install 'ulffn-deploy[tensorrt]' "
                    "on a machine with an NVIDIA GPU")
HARDWARE_COMPATIBILITY = ("none", "ampere-plus")

BUILD_OPTIONS = (
    BuildOption("min_batch", int, 1, "Smallest batch of the engine's profile.", minimum=1, maximum=MAX_BATCH_SIZE),
    BuildOption("opt_batch", int, 1, "Batch TensorRT optimises for.", minimum=1, maximum=MAX_BATCH_SIZE),
    BuildOption("max_batch", int, 8, "Largest batch (the runtime splits larger ones).", minimum=1, maximum=MAX_BATCH_SIZE),
    BuildOption("min_hw", int, None, "Smallest square input size, for ONNX exported with dynamic H/W.", minimum=OUTPUT_STRIDE,
                maximum=MAX_INPUT_SIZE),
    BuildOption("opt_hw", int, None, "Input size TensorRT optimises for (dynamic H/W only).", minimum=OUTPUT_STRIDE,
                maximum=MAX_INPUT_SIZE),
    BuildOption("max_hw", int, None, "Largest input size (dynamic H/W only).", minimum=OUTPUT_STRIDE,
                maximum=MAX_INPUT_SIZE),
    BuildOption("workspace", int, None, "Builder workspace limit in MiB.", minimum=1),
    BuildOption("timing_cache", str, None, "Tactic timing cache file, read if present and updated after the build."),
    BuildOption("builder_optimization_level", int, None, "TensorRT builder optimisation level (default 3; higher builds "
                "longer).", minimum=0, maximum=5),
    BuildOption("version_compatible", bool, False, "Build an engine later TensorRT versions of the same major, and the "
                "lean runtime, can run."),
    BuildOption("hardware_compatibility", str, "none", "ampere-plus: one engine for every GPU from Ampere on (may run "
                "slower).", choices=HARDWARE_COMPATIBILITY),
    BuildOption("exclude_lean_runtime", bool, False, "With --version-compatible: leave the lean runtime out of the plan; "
                "the device runs it with an installed tensorrt_lean of the same TensorRT version."),
    BuildOption("dla_core", int, None, "Run on this DLA core (Jetson AGX Orin), with GPU fallback for layers DLA cannot "
                "run.", minimum=0),
)
# layers TensorRT inserts to convert formats: not counted as layers of a precision
DATA_MOVEMENT_LAYERS = frozenset({"Reformat", "NoOp"})
_DATATYPES = (("BFloat16", "BF16"), ("FP16", "FP16"), ("Half", "FP16"), ("FP32", "FP32"), ("Float", "FP32"),
              ("FP8", "FP8"), ("Int8", "INT8"), ("INT8", "INT8"), ("Int32", "INT32"), ("INT32", "INT32"),
              ("Int64", "INT64"), ("UInt8", "UINT8"), ("BOOL", "BOOL"), ("Bool", "BOOL"))


class TensorRTTarget(Target):
    """TensorRT engines (``.engine``/``.plan`` plus a JSON sidecar) on an NVIDIA GPU."""

    name = "tensorrt"
    title = "TensorRT"
    description = "a TensorRT engine plan for one GPU architecture and TensorRT version (its sidecar says which)"
    runs_on = "an NVIDIA GPU with TensorRT"
    packages = ("tensorrt",)
    suffixes = (".engine", ".plan")
    build_suffix = ".engine"
    build_options = BUILD_OPTIONS
    default_build_precision = "fp16"
    rank = 30
    preferred_precisions = ("fp16", "int8", "fp32")
    install_hint = NO_TENSORRT_HINT

    def unavailable_reason(self) -> str | None:
        return tensorrt_unavailable_reason()

    def artifact_problem(self, path: Path) -> str | None:
        """What the sidecar says against this GPU and TensorRT version, checked without deserializing."""
        from ulffn_deploy.devices import import_tensorrt_runtime, is_lean
        from ulffn_deploy.runtime.metadata import read_sidecar
        from ulffn_deploy.targets.cuda import device_properties
        from ulffn_deploy.targets.tensorrt_compat import engine_compatibility_problem
        from ulffn_deploy.targets.tensorrt_runtime import lean_runtime_problem

        try:
            sidecar = read_sidecar(path)
        except UlffnError as exc:
            return exc.message
        trt = import_tensorrt_runtime()
        version = str(getattr(trt, "__version__", "?"))
        if trt is not None and is_lean(trt):
            problem = lean_runtime_problem(sidecar, version)
            if problem:
                return problem
        return engine_compatibility_problem(sidecar, device_properties(0), version)

    def build_unavailable_reason(self) -> str | None:
        return tensorrt_unavailable_reason(build=True)

    def load(self, path: Path, engine_cache: str | os.PathLike[str] | None = None,
             build_options: Mapping[str, Any] | None = None, **options: Any) -> Segmenter:
        """A TrtSegmenter for an engine; or, for an ``.onnx`` file with ``engine_cache`` (a folder), for the
        engine built from it on first use and reused afterwards (``build_options`` as build-engine's)."""
        from ulffn_deploy.targets.tensorrt_runtime import TrtSegmenter

        if path.name.lower().endswith(".onnx"):
            if engine_cache is None:
                raise UlffnError(f"{path.name} is an ONNX file, not a TensorRT engine",
                                 "pass engine_cache=DIR (CLI: --engine-cache DIR) to build the engine on first use")
            path = engine_from_cache(path, engine_cache, build_options or {}, options.get("gpu", 0),
                                     options.get("runtime", "auto"))
        elif engine_cache is not None or build_options:
            raise UlffnError("engine_cache and build_options apply to an .onnx source, not to a built engine")
        return TrtSegmenter(path, **options)

    def build(self, source_onnx: Path, output: Path | None, options: Mapping[str, Any], command: Sequence[str]) -> Path:
        return build_tensorrt_engine(source_onnx, output, options, command=command)


TARGET = TensorRTTarget()


def make_profile(source: OnnxSource, options: Mapping[str, Any]) -> dict[str, list[int]]:
    """min/opt/max input shapes: the batch range, and H/W from the ONNX (static) or the options (dynamic)."""
    batch, _, height, width = source.input_shape
    batches = (options["min_batch"], options["opt_batch"], options["max_batch"])
    if not 1 <= batches[0] <= batches[1] <= batches[2]:
        raise UlffnError(f"batch profile {batches[0]}/{batches[1]}/{batches[2]} is not 1 <= min <= opt <= max",
                         "e.g. --min-batch 1 --opt-batch 1 --max-batch 8")
    if batch is not None:
        if batches != (batch, batch, batch) and batches != (1, 1, 8):
            raise UlffnError(f"{source.path.name} has a fixed batch of {batch}", "export it with a dynamic batch")
        batches = (batch, batch, batch)
    requested = (options["min_hw"], options["opt_hw"], options["max_hw"])
    if height is not None and width is not None:
        if any(hw is not None and hw != height for hw in requested) or height != width:
            raise UlffnError(f"{source.path.name} has a fixed input size of {height}x{width}; --min/opt/max-hw "
                             "apply to ONNX files exported with dynamic height and width")
        sizes = (height, height, height)
    else:
        size = source.metadata.input_size
        sizes = (requested[0] or size, requested[1] or size, requested[2] or size)
        if not sizes[0] <= sizes[1] <= sizes[2] or any(s < OUTPUT_STRIDE or s % OUTPUT_STRIDE for s in sizes):
            raise UlffnError(f"height/width profile {sizes} is not min <= opt <= max in multiples of {OUTPUT_STRIDE}")
    return {key: [n, 3, hw, hw] for key, n, hw in zip(("min", "opt", "max"), batches, sizes)}


def build_tensorrt_engine(onnx_path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
                          options: Mapping[str, Any] | None = None, precision: str | None = None,
                          command: Sequence[str] | None = None) -> Path:
    """Build ``onnx_path`` into a TensorRT plan plus sidecar, both written atomically; returns the plan's path.

    The built plan is opened once to count its layers' precisions (engine inspector); an FP16/INT8 build
    whose engine runs no layer in that precision fails here, before anything is written.
    """
    trt = require_tensorrt("build a TensorRT engine", NO_TENSORRT_HINT)
    from ulffn_deploy.targets.cuda import device_properties
    from ulffn_deploy.targets.tensorrt_build import add_profile, build_plan, parse_onnx
    from ulffn_deploy.targets.tensorrt_cache import write_shared_file

    source = describe_onnx(onnx_path, precision)
    options = TARGET.resolve_options(options or {})
    _check_option_combination(options)
    output = Path(output) if output else TARGET.default_output(source.path)
    command = command or TARGET.rebuild_command(Path(onnx_path), output, options)
    profile = make_profile(source, options)
    start = time.perf_counter()
    parsed = parse_onnx(trt, source.path)
    builder: tensorrt.Builder = parsed.builder
    _check_dla(builder, options["dla_core"])
    config = builder.create_builder_config()
    add_profile(parsed, config, {source.input_name: profile})
    configure_builder(trt, config, options)
    cache_path = Path(options["timing_cache"]) if options["timing_cache"] else None
    if cache_path is not None:
        _use_timing_cache(config, cache_path)
    plan = build_plan(parsed, config)
    if cache_path is not None:  # the cache started from the old file, so it keeps old and new entries
        write_shared_file(cache_path, bytes(config.get_timing_cache().serialize()))
    seconds = time.perf_counter() - start
    counts = layer_precisions(_engine_information(trt, plan, options["dla_core"]))
    problem = precision_problem(source.metadata.precision, counts)
    if problem:
        raise UlffnError(f"TensorRT build of {source.path.name}: {problem}",
                         "check the ONNX file's tensor types ('ulffn-deploy info'); TensorRT 11 ignores precision flags")
    write_bytes_atomic(output, plan)
    sidecar = _engine_sidecar(trt, source, profile, options, plan, seconds, command, device_properties(0))
    sidecar["layer_precisions"] = counts
    sidecar["files"] = {output.name: len(plan)}
    write_json_atomic(sidecar_path(output), sidecar)
    return output


def configure_builder(trt: Any, config: tensorrt.IBuilderConfig, options: Mapping[str, Any]) -> None:
    """This target's builder settings: detailed profiling (for the inspector), workspace, optimisation level,
    version and hardware compatibility, DLA."""
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if options["workspace"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options["workspace"] << 20)
    if options["builder_optimization_level"] is not None:
        config.builder_optimization_level = options["builder_optimization_level"]
    if options["version_compatible"]:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options["exclude_lean_runtime"]:
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    if options["hardware_compatibility"] == "ampere-plus":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if options["dla_core"] is not None:
        _use_dla(trt, config, options["dla_core"])


def _use_timing_cache(config: tensorrt.IBuilderConfig, path: Path) -> None:
    """Start the build from the timing cache in ``path`` (an empty one when it is absent, or from another GPU
    or TensorRT version, which TensorRT refuses)."""
    from ulffn_deploy.targets.tensorrt_cache import read_shared_file

    cache = config.create_timing_cache(read_shared_file(path) or b"")
    if not config.set_timing_cache(cache, False):
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _check_option_combination(options: Mapping[str, Any]) -> None:
    if options["exclude_lean_runtime"] and not options["version_compatible"]:
        raise UlffnError("--exclude-lean-runtime applies to version-compatible plans", "add --version-compatible")


def _check_dla(builder: tensorrt.Builder, core: int | None) -> None:
    """Refuse ``--dla-core`` on a GPU without DLA (all but Jetson AGX/NX-class), or a core it lacks."""
    if core is None:
        return
    cores = int(builder.num_DLA_cores)
    if cores == 0:
        raise UlffnError("--dla-core: this GPU has no DLA (Deep Learning Accelerator; Jetson AGX Orin has two)",
                         "drop --dla-core to build for the GPU")
    if core >= cores:
        raise UlffnError(f"--dla-core {core}: this device has DLA cores 0-{cores - 1}")


def _use_dla(trt: Any, config: tensorrt.IBuilderConfig, core: int) -> None:
    """DLA as the default device, with GPU fallback for layers DLA cannot run (it runs FP16/INT8 only)."""
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _engine_information(trt: Any, plan: bytes, dla_core: int | None) -> str:
    """The engine inspector's JSON for a plan this process has just built (so its host code is trusted)."""
    runtime: tensorrt.Runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    runtime.engine_host_code_allowed = True  # our own fresh build: see docs/tensorrt.md, version-compatible plans
    if dla_core is not None:
        runtime.DLA_core = dla_core
    engine: tensorrt.ICudaEngine | None = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise UlffnError("TensorRT built a plan it cannot deserialize to inspect (see the TensorRT log above)")
    inspector = engine.create_engine_inspector()
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def tensor_precision(description: str) -> str:
    """The data type in an inspector tensor's "Format/Datatype" ("Channel major FP16 format where channel % 8 == 0"
    -> "FP16", "Half" -> "FP16", "Four wide channel vectorized row major Int8 format" -> "INT8")."""
    words = set(re.split(r"[^A-Za-z0-9]+", description))
    for word, name in _DATATYPES:
        if word in words:
            return name
    return "unknown"


def layer_precisions(engine_information: str) -> dict[str, int]:
    """Layers per precision in ``IEngineInspector.get_engine_information(JSON)``: a layer's precision is that of
    its first input (its first output when it has none), as TensorRT's engine explorer reads it; format
    conversions TensorRT inserts (Reformat, NoOp) are not counted. Needs an engine built with
    ``ProfilingVerbosity.DETAILED`` (otherwise layers are bare names: UlffnError)."""
    try:
        layers = json.loads(engine_information)["Layers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UlffnError(f"unreadable engine inspector output ({exc})") from exc
    if any(not isinstance(layer, dict) for layer in layers):
        raise UlffnError("the engine inspector lists layer names only", "build with ProfilingVerbosity.DETAILED")
    counts: Counter[str] = Counter()
    for layer in layers:
        if {layer.get("LayerType"), layer.get("ParameterType")} & DATA_MOVEMENT_LAYERS:
            continue
        tensors = layer.get("Inputs") or layer.get("Outputs") or [{}]
        counts[tensor_precision(str(tensors[0].get("Format/Datatype", "")))] += 1
    return dict(sorted(counts.items()))


def precision_problem(precision: str, counts: Mapping[str, int]) -> str | None:
    """Why an engine built from a ``precision`` ONNX does not run in it (no layer of that precision), or None."""
    wanted = {"fp16": "FP16", "int8": "INT8"}.get(precision)
    if wanted is None or counts.get(wanted, 0) > 0:
        return None
    found = ", ".join(f"{count} {name}" for name, count in counts.items()) or "no layers"
    return f"the {precision} engine has no {wanted} layers ({found})"


def engine_from_cache(onnx_path: Path, cache_dir: str | os.PathLike[str], build_options: Mapping[str, Any],
                      gpu: int = 0, runtime: str = "auto") -> Path:
    """The engine for ``onnx_path`` in ``cache_dir``, built there on first use (see targets/tensorrt_cache.py)."""
    from ulffn_deploy.devices import import_tensorrt_runtime
    from ulffn_deploy.fileio import sha256_file
    from ulffn_deploy.targets.cuda import device_properties
    from ulffn_deploy.targets.tensorrt_cache import cached_build, engine_cache_key, timing_cache_path

    trt = import_tensorrt_runtime(runtime)
    if trt is None:
        raise UlffnError("no TensorRT runtime (tensorrt or tensorrt_lean) is importable", NO_TENSORRT_HINT)
    version, props = str(trt.__version__), device_properties(gpu)
    options = TARGET.resolve_options(build_options)
    key = engine_cache_key(sha256_file(onnx_path), options, props, version)
    name = TARGET.default_output(onnx_path).name
    final = Path(cache_dir) / key / name
    options["timing_cache"] = options["timing_cache"] or str(timing_cache_path(Path(cache_dir), props, version))
    command = TARGET.rebuild_command(onnx_path, final, options)

    def build(output: Path) -> None:
        build_tensorrt_engine(onnx_path, output, options, command=command)

    path, _ = cached_build(cache_dir, key, name, build, complete=lambda p: p.is_file() and sidecar_path(p).is_file())
    return path


def _engine_sidecar(trt: Any, source: OnnxSource, profile: dict[str, list[int]], options: Mapping[str, Any], plan: bytes,
                    seconds: float, command: Sequence[str], gpu: dict[str, Any]) -> dict[str, Any]:
    import hashlib

    sidecar = sidecar_common(source, "tensorrt", seconds, command)
    sidecar.update({
        "tensorrt_version": str(trt.__version__),
        "gpu": {key: gpu[key] for key in ("name", "compute_capability", "total_memory_mib")},
        "profile": {source.input_name: profile},
        "build_flags": {**options, "strongly_typed": True},
        "engine_sha256": hashlib.sha256(plan).hexdigest(),
    })
    return sidecar
