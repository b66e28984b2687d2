"""ONNX -> deployable artifact: a TensorRT plan with its JSON sidecar, or the ONNX Runtime CPU model.

TensorRT engines are built through Polygraphy's loaders: ``network_from_onnx_path(strongly_typed=True)``
-> ``CreateConfig`` -> ``engine_bytes_from_network``. Precision comes from the ONNX file alone (FP16
tensors, or Q/DQ nodes for INT8); no FP16/INT8 builder flags and no calibrator are set, since TensorRT 10.12
deprecated weak typing and TensorRT 11 removed it (TENSORRT.md, Versions and typing). The plan is written
as a plain file so that trtexec and other TensorRT tools load it; its metadata lives in the sidecar.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from ulffn_deploy.config import OUTPUT_STRIDE
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export.ort_build import OnnxSource, build_ort_model, default_output, describe_onnx, sidecar_common
from ulffn_deploy.fileio import atomic_path, write_bytes_atomic, write_json_atomic
from ulffn_deploy.runtime.devices import require_tensorrt, tensorrt_unavailable_reason
from ulffn_deploy.runtime.metadata import PRECISIONS, sidecar_path

BACKENDS = ("tensorrt", "onnxruntime")
HARDWARE_COMPATIBILITY = ("none", "ampere-plus")
NO_TENSORRT_HINT = ("build the CPU artifact with --backend onnxruntime, or install 'ulffn-deploy[tensorrt]' "
                    "on a machine with an NVIDIA GPU")


@dataclass(frozen=True)
class EngineOptions:
    """TensorRT build settings: the input profile (batch and, for dynamic-size ONNX, square H/W) and builder knobs."""

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    min_hw: int | None = None
    opt_hw: int | None = None
    max_hw: int | None = None
    workspace_mib: int | None = None
    timing_cache: str | None = None
    builder_optimization_level: int | None = None
    version_compatible: bool = False
    hardware_compatibility: str = "none"

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UlffnError(f"batch profile {self.min_batch}/{self.opt_batch}/{self.max_batch} is not "
                             "1 <= min <= opt <= max", "e.g. --min-batch 1 --opt-batch 1 --max-batch 8")
        if self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise UlffnError(f"unknown hardware compatibility {self.hardware_compatibility!r}",
                             f"use one of {', '.join(HARDWARE_COMPATIBILITY)}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise UlffnError(f"workspace of {self.workspace_mib} MiB is not positive")
        if self.builder_optimization_level is not None and not 0 <= self.builder_optimization_level <= 5:
            raise UlffnError(f"builder optimization level {self.builder_optimization_level} is not in 0-5")

    def command_args(self) -> list[str]:
        """These options as build-engine command-line arguments."""
        args = ["--min-batch", str(self.min_batch), "--opt-batch", str(self.opt_batch), "--max-batch", str(self.max_batch)]
        for flag, value in (("--min-hw", self.min_hw), ("--opt-hw", self.opt_hw), ("--max-hw", self.max_hw),
                            ("--workspace", self.workspace_mib), ("--timing-cache", self.timing_cache),
                            ("--builder-optimization-level", self.builder_optimization_level)):
            if value is not None:
                args += [flag, str(value)]
        if self.version_compatible:
            args.append("--version-compatible")
        if self.hardware_compatibility != "none":
            args += ["--hardware-compatibility", self.hardware_compatibility]
        return args


def make_profile(source: OnnxSource, options: EngineOptions) -> dict[str, list[int]]:
    """min/opt/max input shapes: the batch range, and H/W from the ONNX (static) or the options (dynamic)."""
    batch, _, height, width = source.input_shape
    batches = (options.min_batch, options.opt_batch, options.max_batch)
    if batch is not None:
        if batches != (batch, batch, batch) and batches != (1, 1, 8):
            raise UlffnError(f"{source.path.name} has a fixed batch of {batch}", "export it with a dynamic batch")
        batches = (batch, batch, batch)
    requested = (options.min_hw, options.opt_hw, options.max_hw)
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
                          options: EngineOptions = EngineOptions(), precision: str | None = None,
                          command: Sequence[str] | None = None) -> Path:
    """Build ``onnx_path`` into a TensorRT plan plus sidecar, both written atomically; returns the plan's path."""
    trt = require_tensorrt("build a TensorRT engine", NO_TENSORRT_HINT)
    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network

    from ulffn_deploy.runtime.cuda_utils import device_properties

    source = describe_onnx(onnx_path, precision)
    output = Path(output) if output else default_output(source.path, "tensorrt")
    command = command or ["ulffn-deploy", "build-engine", "--backend", "tensorrt", "--onnx", str(onnx_path),
                          "-o", str(output), *options.command_args()]
    profile = make_profile(source, options)
    network = _parse_onnx(trt, source.path)
    cache_path = Path(options.timing_cache) if options.timing_cache else None
    start = time.perf_counter()
    with _timing_cache_files(cache_path) as (load_cache, save_cache):
        config = CreateConfig(
            profiles=[Profile().add(source.input_name, profile["min"], profile["opt"], profile["max"])],
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: options.workspace_mib << 20} if options.workspace_mib else None,
            builder_optimization_level=options.builder_optimization_level,
            version_compatible=options.version_compatible or None,
            hardware_compatibility_level=(trt.HardwareCompatibilityLevel.AMPERE_PLUS
                                          if options.hardware_compatibility == "ampere-plus" else None),
            load_timing_cache=load_cache,
        )
        plan = bytes(_polygraphy_call(lambda: engine_bytes_from_network(network, config, save_timing_cache=save_cache)))
    seconds = time.perf_counter() - start
    write_bytes_atomic(output, plan)
    write_json_atomic(sidecar_path(output), _engine_sidecar(trt, source, profile, options, plan, seconds, command,
                                                            device_properties(0)))
    return output


def _engine_sidecar(trt: Any, source: OnnxSource, profile: dict[str, list[int]], options: EngineOptions, plan: bytes,
                    seconds: float, command: Sequence[str], gpu: dict[str, Any]) -> dict[str, Any]:
    import hashlib

    import polygraphy

    sidecar = sidecar_common(source, "tensorrt", seconds, command)
    sidecar.update({
        "tensorrt_version": str(trt.__version__),
        "polygraphy_version": str(polygraphy.__version__),
        "gpu": {key: gpu[key] for key in ("name", "compute_capability", "total_memory_mib")},
        "profile": {source.input_name: profile},
        "build_flags": {**asdict(options), "strongly_typed": True},
        "engine_sha256": hashlib.sha256(plan).hexdigest(),
    })
    return sidecar


def _polygraphy_call(call: Any) -> Any:
    """Run a Polygraphy loader; its failures (logged above by Polygraphy) become one-line UlffnErrors."""
    from polygraphy.exception import PolygraphyException

    try:
        return call()
    except PolygraphyException as exc:
        raise UlffnError(f"TensorRT build failed: {' '.join(str(exc).split())[:300]}",
                         "see the TensorRT messages above; 'ulffn-deploy lint-onnx' checks the model") from exc


def _parse_onnx(trt: Any, path: Path) -> Any:
    """(builder, network, parser) for a strongly typed network; parser errors name the failing ONNX nodes."""
    from polygraphy.backend.trt import network_from_onnx_path
    from polygraphy.exception import PolygraphyException

    try:
        return network_from_onnx_path(os.fspath(path), strongly_typed=True)
    except PolygraphyException as exc:
        raise UlffnError(f"TensorRT's ONNX parser rejected {path.name}: {_parser_errors(trt, path)}",
                         f"run 'ulffn-deploy lint-onnx {path}' to find unsupported constructs") from exc


def _parser_errors(trt: Any, path: Path, limit: int = 3) -> str:
    """Parse again with a bare parser to list the errors with their node names (Polygraphy only logs them)."""
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(os.fspath(path)) and parser.num_errors == 0:
        return "it parses on its own; see the messages above"
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    described = [f"node {e.node_name() or e.node()!r} ({e.node_operator() or '?'}): {e.desc()}" for e in errors[:limit]]
    more = f"; and {len(errors) - limit} more" if len(errors) > limit else ""
    return "; ".join(described) + more if described else "no error details"


@contextmanager
def _timing_cache_files(path: Path | None) -> Iterator[tuple[IO[bytes] | None, IO[bytes] | None]]:
    """(old cache to load, temp file to save into) for a timing cache reused across builds.

    Open files rather than paths: Polygraphy locks paths with ``.lock`` files it leaves behind. The new
    cache starts from the old one (loaded into the config), so saving it keeps old and new entries; it
    replaces the old file atomically when the build succeeds.
    """
    if path is None:
        yield None, None
        return
    with ExitStack() as stack:
        old = stack.enter_context(open(path, "rb")) if path.is_file() else None
        tmp = stack.enter_context(atomic_path(path))
        new = stack.enter_context(open(tmp, "w+b"))
        yield old, new


def build_artifact(onnx_path: str | os.PathLike[str], backend: str, output: str | os.PathLike[str] | None = None,
                   options: EngineOptions = EngineOptions(), precision: str | None = None,
                   ort_optimization: str = "extended", command: Sequence[str] | None = None) -> Path:
    """Build the deployment artifact of ``backend`` ("tensorrt" or "onnxruntime") from an exported ONNX file."""
    if backend == "tensorrt":
        return build_tensorrt_engine(onnx_path, output, options, precision, command)
    if backend == "onnxruntime":
        return build_ort_model(onnx_path, output, ort_optimization, precision, command)
    raise UlffnError(f"unknown backend {backend!r}", f"use one of {', '.join(BACKENDS)}")


def default_onnx(artifacts_dir: str | os.PathLike[str], precision: str) -> Path:
    """``artifacts/model.<precision>.onnx``, with a hint on how to make it when it is missing."""
    if precision not in PRECISIONS:
        raise UlffnError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    path = Path(artifacts_dir) / f"model.{precision}.onnx"
    if not path.is_file():
        make = "ulffn-deploy calibrate" if precision == "int8" else "ulffn-deploy export"
        raise UlffnError(f"{path} does not exist", f"make it with '{make}', or pass --onnx PATH")
    return path


def best_backend() -> str:
    """"tensorrt" where TensorRT and an NVIDIA GPU are usable, else "onnxruntime"."""
    return "tensorrt" if tensorrt_unavailable_reason() is None else "onnxruntime"


def build_best_backend(artifacts_dir: str | os.PathLike[str] = "artifacts", precision: str = "fp16",
                       options: EngineOptions = EngineOptions()) -> Path:
    """Build ``artifacts/model.<precision>.onnx`` with TensorRT when possible, else for ONNX Runtime's CPU provider."""
    return build_artifact(default_onnx(artifacts_dir, precision), best_backend(), options=options, precision=precision)
