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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ulffn_deploy.config import OUTPUT_STRIDE
from ulffn_deploy.devices import require_tensorrt, tensorrt_unavailable_reason
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import atomic_path, write_bytes_atomic, write_json_atomic
from ulffn_deploy.runtime.metadata import sidecar_path
from ulffn_deploy.targets.onnxruntime_build import OnnxSource, describe_onnx, sidecar_common
from ulffn_deploy.targets.registry import BuildOption, Target

if TYPE_CHECKING:
    from ulffn_deploy.runtime.base import Segmenter

NO_TENSORRT_HINT = ("build the CPU artifact with --backend onnxruntime, or install 'ulffn-deploy[tensorrt]' "
                    "on a machine with an NVIDIA GPU")
HARDWARE_COMPATIBILITY = ("none", "ampere-plus")

BUILD_OPTIONS = (
    BuildOption("min_batch", int, 1, "Smallest batch of the engine's profile.", minimum=1),
    BuildOption("opt_batch", int, 1, "Batch TensorRT optimises for.", minimum=1),
    BuildOption("max_batch", int, 8, "Largest batch (the runtime splits larger ones).", minimum=1),
    BuildOption("min_hw", int, None, "Smallest square input size, for ONNX exported with dynamic H/W.", minimum=OUTPUT_STRIDE),
    BuildOption("opt_hw", int, None, "Input size TensorRT optimises for (dynamic H/W only).", minimum=OUTPUT_STRIDE),
    BuildOption("max_hw", int, None, "Largest input size (dynamic H/W only).", minimum=OUTPUT_STRIDE),
    BuildOption("workspace", int, None, "Builder workspace limit in MiB.", minimum=1),
    BuildOption("timing_cache", str, None, "Tactic timing cache file, read if present and updated after the build."),
    BuildOption("builder_optimization_level", int, None, "TensorRT builder optimisation level (default 3; higher builds "
                "longer).", minimum=0, maximum=5),
    BuildOption("version_compatible", bool, False, "Build an engine later TensorRT versions of the same major, and the "
                "lean runtime, can run."),
    BuildOption("hardware_compatibility", str, "none", "ampere-plus: one engine for every GPU from Ampere on (may run "
                "slower).", choices=HARDWARE_COMPATIBILITY),
)


class TensorRTTarget(Target):
    """TensorRT engines (``.engine``/``.plan`` plus a JSON sidecar) on an NVIDIA GPU."""

    name = "tensorrt"
    title = "TensorRT"
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
        from ulffn_deploy.devices import import_tensorrt
        from ulffn_deploy.runtime.metadata import engine_compatibility_problem, read_sidecar
        from ulffn_deploy.targets.cuda import device_properties

        try:
            sidecar = read_sidecar(path)
        except UlffnError as exc:
            return exc.message
        trt = import_tensorrt()
        return engine_compatibility_problem(sidecar, device_properties(0), str(getattr(trt, "__version__", "?")))

    def load(self, path: Path, **options: Any) -> Segmenter:
        from ulffn_deploy.targets.tensorrt_runtime import TrtSegmenter

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
    """Build ``onnx_path`` into a TensorRT plan plus sidecar, both written atomically; returns the plan's path."""
    trt = require_tensorrt("build a TensorRT engine", NO_TENSORRT_HINT)
    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network

    from ulffn_deploy.targets.cuda import device_properties

    source = describe_onnx(onnx_path, precision)
    options = TARGET.resolve_options(options or {})
    output = Path(output) if output else TARGET.default_output(source.path)
    command = command or ["ulffn-deploy", "build-engine", "--backend", "tensorrt", "--onnx", str(onnx_path),
                          "-o", str(output), *TARGET.option_args(options)]
    profile = make_profile(source, options)
    network = _parse_onnx(trt, source.path)
    cache_path = Path(options["timing_cache"]) if options["timing_cache"] else None
    start = time.perf_counter()
    with _timing_cache_files(cache_path) as (load_cache, save_cache):
        config = CreateConfig(
            profiles=[Profile().add(source.input_name, profile["min"], profile["opt"], profile["max"])],
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: options["workspace"] << 20} if options["workspace"] else None,
            builder_optimization_level=options["builder_optimization_level"],
            version_compatible=options["version_compatible"] or None,
            hardware_compatibility_level=(trt.HardwareCompatibilityLevel.AMPERE_PLUS
                                          if options["hardware_compatibility"] == "ampere-plus" else None),
            load_timing_cache=load_cache,
        )
        plan = bytes(_polygraphy_call(lambda: engine_bytes_from_network(network, config, save_timing_cache=save_cache)))
    seconds = time.perf_counter() - start
    write_bytes_atomic(output, plan)
    write_json_atomic(sidecar_path(output), _engine_sidecar(trt, source, profile, options, plan, seconds, command,
                                                            device_properties(0)))
    return output


def _engine_sidecar(trt: Any, source: OnnxSource, profile: dict[str, list[int]], options: Mapping[str, Any], plan: bytes,
                    seconds: float, command: Sequence[str], gpu: dict[str, Any]) -> dict[str, Any]:
    import hashlib

    import polygraphy

    sidecar = sidecar_common(source, "tensorrt", seconds, command)
    sidecar.update({
        "tensorrt_version": str(trt.__version__),
        "polygraphy_version": str(polygraphy.__version__),
        "gpu": {key: gpu[key] for key in ("name", "compute_capability", "total_memory_mib")},
        "profile": {source.input_name: profile},
        "build_flags": {**options, "strongly_typed": True},
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
