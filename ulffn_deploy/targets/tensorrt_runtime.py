"""The TensorRT runtime: a serialized engine plus its JSON sidecar, run with one of three TensorRT modules (the
full ``tensorrt``, the lean runtime ``tensorrt_lean``, or ``tensorrt_rtx`` for TensorRT-RTX engines through
:class:`RtxSegmenter`) and cuda-python only.

One engine, one execution context and one CUDA stream. Pinned host and device buffers are sized once
from the optimization profile's largest shape; each call sets the input shape, copies host to device,
runs ``execute_async_v3`` (or replays a CUDA graph captured for that shape), copies back and
synchronises once. CUDA events time the two copies and the GPU compute separately (``last_timings``).

Neither TensorRT nor cuda-python is imported at module level: the TensorRT module is chosen per engine
(``runtime="auto"``: ``tensorrt`` when installed, else ``tensorrt_lean``), and the GPU is checked through
cuda-python before any TensorRT object exists (a TensorRT runtime created without a CUDA driver is unusable:
touching it crashes the process).
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from ulffn_deploy.devices import import_tensorrt_runtime, is_lean
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.runtime.base import Segmenter, check_declared_input
from ulffn_deploy.runtime.metadata import ArtifactMetadata, read_sidecar, shown_build_command
from ulffn_deploy.targets.tensorrt_compat import engine_compatibility_problem, rtx_engine_problem

if TYPE_CHECKING:  # the stubs type the objects; the module itself comes from tensorrt_module()
    import tensorrt

    from ulffn_deploy.targets import cuda as cu

Shape = tuple[int, ...]
F = TypeVar("F", bound=Callable[..., Any])


class _Resource(Protocol):
    def free(self) -> None: ...


R = TypeVar("R", bound=_Resource)

_LOGGERS: dict[str, Any] = {}  # one logger per TensorRT module, shared by its runtimes


def tensorrt_module(choice: str = "auto") -> ModuleType:
    """The TensorRT module that runs engines: ``tensorrt``, else ``tensorrt_lean`` ("auto"), or exactly "full"/"lean";
    "rtx": ``tensorrt_rtx`` (TensorRT-RTX engines)."""
    if choice == "rtx":
        from ulffn_deploy.targets.tensorrt_build import import_builder

        module = import_builder("tensorrt_rtx")
    else:
        module = import_tensorrt_runtime(choice)
    if module is None:
        wanted = {"full": "tensorrt", "lean": "tensorrt_lean", "rtx": "tensorrt_rtx"}.get(choice, "tensorrt or tensorrt_lean")
        raise UlffnError(f"cannot run a TensorRT engine: {wanted} is not importable",
                         "pip install 'ulffn-deploy[tensorrt]' (or '[tensorrt-lean]' for version-compatible engines)")
    return module


def _logger(trt: ModuleType) -> Any:
    if trt.__name__ not in _LOGGERS:
        _LOGGERS[trt.__name__] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[trt.__name__]


def _numpy_types(trt: ModuleType) -> dict[Any, Any]:
    """I/O types an engine may declare; export keeps I/O float32, but an engine is read, not assumed."""
    return {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16, trt.DataType.INT8: np.int8,
            trt.DataType.INT32: np.int32}


def _cuda() -> ModuleType:
    """``ulffn_deploy.targets.cuda`` (cuda-python), or a one-line UlffnError when cuda-python is missing."""
    try:
        from ulffn_deploy.targets import cuda
    except ImportError as exc:
        raise UlffnError(f"cannot run a TensorRT engine: cuda-python is not importable ({exc})",
                         "pip install 'cuda-python>=12.6,<13' (JetPack 6) or a cuda-python matching the driver") from exc
    return cuda


# -- decisions taken before TensorRT sees the plan (pure functions: unit-tested on CPU) ------------------
def host_code_allowed(sidecar: dict[str, Any], plan_sha256: str) -> bool:
    """Whether to let TensorRT run the host code a version-compatible plan embeds (its copy of the lean runtime):
    only when the sidecar says the plan is version-compatible and names this very plan by sha256. Allowing
    host code from an unverified file would run whatever code it carries (TensorRT developer guide, "Version
    Compatibility": deserialize only trusted plans this way)."""
    flags = sidecar.get("build_flags") or {}
    return bool(flags.get("version_compatible")) and sidecar.get("engine_sha256") == plan_sha256


def lean_runtime_problem(sidecar: dict[str, Any], lean_version: str) -> str | None:
    """Why the lean runtime (``tensorrt_lean`` of ``lean_version``) cannot run the plan a sidecar describes, or None."""
    flags = sidecar.get("build_flags") or {}
    if not flags.get("version_compatible"):
        return "it was not built version-compatible, and the lean runtime runs only version-compatible plans"
    if flags.get("exclude_lean_runtime") and str(sidecar.get("tensorrt_version")) != lean_version:
        return (f"it was built without its lean runtime by TensorRT {sidecar.get('tensorrt_version')}, which needs "
                f"that very version's lean runtime, and this is tensorrt_lean {lean_version}")
    return None


def lean_library(module: ModuleType) -> Path | None:
    """The lean runtime library installed with ``module`` (``libnvinfer_lean.so.<major>`` in tensorrt_lean_libs
    or tensorrt_libs), for plans built with --exclude-lean-runtime; None when none is found."""
    import importlib

    major = str(module.__version__).split(".")[0]
    for package in ("tensorrt_lean_libs", "tensorrt_libs"):
        try:
            folder = Path(importlib.import_module(package).__file__ or "").parent
        except ImportError:
            continue
        candidate = folder / f"libnvinfer_lean.so.{major}"
        if candidate.is_file():
            return candidate
    return None


def serialized(method: F) -> F:
    """Run ``method`` under the instance's ``_lock``: one call at a time per object, callers wait their turn."""

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    locked.__dict__["serialized"] = True
    return locked  # type: ignore[return-value]


def dims_to_shape(dims: tensorrt.Dims) -> Shape:
    return tuple(int(dims[i]) for i in range(len(dims)))


@dataclass(frozen=True)
class Profile:
    """The min/opt/max shapes of an input in the engine's optimization profile 0."""

    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Shape) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def describe(self) -> str:
        def span(axis: int) -> str:
            lo, hi = self.min[axis], self.max[axis]
            return str(lo) if lo == hi else f"{lo}-{hi}"

        return f"batch {span(0)}, height {span(2)}, width {span(3)} (opt {'x'.join(map(str, self.opt))})"


class TrtSegmenter(Segmenter):
    """A TensorRT engine built by ``ulffn-deploy build-engine``; :class:`RtxSegmenter` runs TensorRT-RTX engines
    through the same code, with the module and three hooks (compatibility rule, execution context, close) its own.

    Thread safety: calls are serialised. The engine has one execution context, stream and set of buffers,
    so ``infer``/``predict``/``close`` hold a per-object lock and concurrent callers wait their turn (one
    GPU runs one inference at a time anyway); ``last_timings`` belongs to whichever call finished last.
    For parallel streams, load one TrtSegmenter per thread.

    ``runtime``: "auto" (``tensorrt`` when installed, else the lean ``tensorrt_lean``), "full" or "lean".
    ``lean_library``: the lean runtime library for plans built with --exclude-lean-runtime (default: the one
    installed with the TensorRT package, when it is the plan's TensorRT version).
    """

    backend = "tensorrt"
    module_choice: str | None = None  # a subclass fixes the TensorRT module ("rtx"); else the runtime argument

    def __init__(self, path: Path, fit_mode: str = "full", use_cuda_graph: bool = False, gpu: int = 0,
                 runtime: str = "auto", lean_library: str | None = None) -> None:
        self._lock = threading.RLock()
        sidecar = read_sidecar(path)
        self.sidecar = sidecar
        self.trt = tensorrt_module(self.module_choice or runtime)
        self.lean = is_lean(self.trt)
        if self.lean:
            problem = lean_runtime_problem(sidecar, str(self.trt.__version__))
            if problem:
                raise UlffnError(f"{path.name} cannot run on the lean runtime: {problem}",
                                 _rebuild_hint(path, sidecar, "--version-compatible"))
        cuda = _cuda()
        try:
            self.gpu = cuda.device_properties(gpu)  # before any TensorRT object: see the module docstring
        except UlffnError as exc:
            raise UlffnError(f"cannot run {path.name}: no usable NVIDIA GPU {gpu} ({exc.message})",
                             "a CUDA driver and GPU are needed; run the ONNX file with ONNX Runtime on CPU") from exc
        _check_compatible(path, sidecar, self.gpu, self._compatibility_problem(sidecar, self.gpu))
        plan = path.read_bytes()
        plan_sha256 = hashlib.sha256(plan).hexdigest()
        if sidecar.get("engine_sha256") not in (None, plan_sha256):
            raise UlffnError(f"{path.name} does not match its sidecar (another build's metadata)",
                             _rebuild_hint(path, sidecar))
        self.host_code_allowed = host_code_allowed(sidecar, plan_sha256)
        super().__init__(path, ArtifactMetadata.from_mapping(sidecar, path), fit_mode)
        self.use_cuda_graph = use_cuda_graph
        self._owned: list[_Resource] = []  # CUDA resources, freed in reverse order
        self._graph: cu.Graph | None = None
        self._shape: Shape | None = None
        cuda.set_device(gpu)
        try:
            self._open_engine(plan, lean_library)
            self._allocate()
        except BaseException:
            self._close_impl()
            raise

    # -- setup ----------------------------------------------------------------------------------------
    def _make_runtime(self, lean_library: str | None) -> tensorrt.Runtime:
        """A TensorRT runtime for this plan: host code allowed only for a verified version-compatible plan; the
        separately installed lean runtime for a plan built without one; the DLA core the plan was built for."""
        flags = self.sidecar.get("build_flags") or {}
        trt = self.trt
        runtime: tensorrt.Runtime = trt.Runtime(_logger(trt))
        runtime.engine_host_code_allowed = self.host_code_allowed
        if flags.get("exclude_lean_runtime"):
            library = Path(lean_library) if lean_library else lean_library_for(self.trt, self.sidecar, self.path)
            loaded = runtime.load_runtime(str(library))
            if loaded is None:
                raise UlffnError(f"TensorRT could not load the lean runtime {library} (see the TensorRT log above)")
            self._base_runtime = runtime  # keep the runtime that loaded it alive
            runtime = loaded
            runtime.engine_host_code_allowed = self.host_code_allowed
        if flags.get("dla_core") is not None:
            runtime.DLA_core = int(flags["dla_core"])
        return runtime

    def _open_engine(self, plan: bytes, lean_library: str | None) -> None:
        self._runtime = self._make_runtime(lean_library)
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise UlffnError(f"TensorRT could not deserialize {self.path.name} (see the TensorRT log above)",
                             _rebuild_hint(self.path, self.sidecar))
        self.engine = engine
        trt = self.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UlffnError(f"{self.path.name}: expected one input and one output tensor, found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        types = _numpy_types(trt)
        self.input_dtype = _numpy_type(engine, self.input_name, types)
        self.output_dtype = _numpy_type(engine, self.output_name, types)
        self.profile = Profile(*(dims_to_shape(d) for d in engine.get_tensor_profile_shape(self.input_name, 0)))
        self.max_batch = self.profile.max[0]
        check_declared_input(self.path, self.input_size, self.profile.min[2:], self.profile.max[2:])
        context = self._create_context(engine)
        if context is None:
            raise UlffnError(f"TensorRT could not create an execution context for {self.path.name} (out of GPU memory?)")
        self.context = context

    def _compatibility_problem(self, sidecar: dict[str, Any], gpu: dict[str, Any]) -> str | None:
        return engine_compatibility_problem(sidecar, gpu, str(self.trt.__version__))

    def _create_context(self, engine: tensorrt.ICudaEngine) -> tensorrt.IExecutionContext | None:
        return engine.create_execution_context()

    def _allocate(self) -> None:
        cuda = _cuda()
        largest = self.profile.max
        self._set_shape(largest)
        out_largest = dims_to_shape(self.context.get_tensor_shape(self.output_name))
        in_bytes = _nbytes(largest, self.input_dtype)
        out_bytes = _nbytes(out_largest, self.output_dtype)
        self.stream: cu.Stream = self._own(cuda.Stream())
        self.host_in: cu.PinnedBuffer = self._own(cuda.PinnedBuffer(in_bytes))
        self.device_in: cu.DeviceBuffer = self._own(cuda.DeviceBuffer(in_bytes))
        self.host_out: cu.PinnedBuffer = self._own(cuda.PinnedBuffer(out_bytes))
        self.device_out: cu.DeviceBuffer = self._own(cuda.DeviceBuffer(out_bytes))
        self.events: list[cu.Event] = [self._own(cuda.Event()) for _ in range(4)]
        for name, buffer in ((self.input_name, self.device_in), (self.output_name, self.device_out)):
            if not self.context.set_tensor_address(name, buffer.ptr):
                raise UlffnError(f"TensorRT refused the device address for tensor {name!r}")

    def _own(self, resource: R) -> R:
        self._owned.append(resource)
        return resource

    @serialized
    def infer(self, batch: np.ndarray) -> np.ndarray:
        return super().infer(batch)

    @serialized
    def close(self) -> None:
        super().close()

    # -- inference ------------------------------------------------------------------------------------
    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        shape: Shape = (max(count, self.profile.min[0]), *batch.shape[1:])  # pad up to the profile's min batch
        if not self.profile.contains(shape):
            raise UlffnError(
                f"input shape {batch.shape} is outside {self.path.name}'s profile: {self.profile.describe()}",
                f"preprocess to the engine's size, or rebuild with a wider profile ({_rebuild_hint(self.path, self.sidecar)})",
            )
        if shape != self._shape:
            self._set_shape(shape)
        out_shape = dims_to_shape(self.context.get_tensor_shape(self.output_name))
        host_in = self.host_in.view(self.input_dtype, shape)
        host_in[:count] = batch
        host_in[count:] = 0
        cuda = _cuda()
        start = time.perf_counter()
        h2d_start, h2d_end, compute_end, d2h_end = self.events
        h2d_start.record(self.stream)
        cuda.copy_to_device(self.device_in, self.host_in, host_in.nbytes, self.stream)
        h2d_end.record(self.stream)
        self._enqueue()
        compute_end.record(self.stream)
        cuda.copy_to_host(self.host_out, self.device_out, _nbytes(out_shape, self.output_dtype), self.stream)
        d2h_end.record(self.stream)
        self.stream.synchronize()
        self.last_timings = {
            "h2d": h2d_end.elapsed_ms(h2d_start),
            "gpu_compute": compute_end.elapsed_ms(h2d_end),
            "d2h": d2h_end.elapsed_ms(compute_end),
            "host": (time.perf_counter() - start) * 1e3,
        }
        output: np.ndarray = self.host_out.view(self.output_dtype, out_shape)[:count].astype(np.float32)
        return output

    def _set_shape(self, shape: Shape) -> None:
        if not self.context.set_input_shape(self.input_name, shape):
            raise UlffnError(f"TensorRT rejected input shape {shape} for {self.path.name}; "
                             f"its profile is {self.profile.describe()}")
        self._shape = shape
        self._free_graph()

    def _execute(self, stream: cu.Stream) -> None:
        if not self.context.execute_async_v3(stream.handle):
            raise UlffnError(f"TensorRT execute_async_v3 failed for input shape {self._shape} (see the TensorRT log above)")

    def _enqueue(self) -> None:
        if not self.use_cuda_graph:
            self._execute(self.stream)
            return
        if self._graph is None:
            # TensorRT finishes shape-dependent setup in the first enqueue after a shape change, so run once
            # before capturing (TensorRT developer guide, "CUDA Graphs")
            self._execute(self.stream)
            self._graph = _cuda().Graph(self.stream, self._execute)
        self._graph.launch(self.stream)

    # -- teardown -------------------------------------------------------------------------------------
    def _free_graph(self) -> None:
        if self._graph is not None:
            graph, self._graph = self._graph, None
            graph.free()

    def _close_impl(self) -> None:
        # the CUDA graph replays TensorRT's kernels, so it goes first; buffers and stream outlive the context
        frees: list[Callable[[], None]] = [self._free_graph, self._release_tensorrt, *(r.free for r in reversed(self._owned))]
        self._owned = []
        _run_all(frees)

    def _release_tensorrt(self) -> None:
        for name in ("context", "engine", "_runtime", "_base_runtime"):  # context, engine, then runtimes
            if hasattr(self, name):
                delattr(self, name)

    def _backend_info(self) -> dict[str, Any]:
        return {
            "tensorrt_version": str(self.trt.__version__),
            "tensorrt_runtime": self.trt.__name__,
            "host_code_allowed": self.host_code_allowed,
            "gpu": self.gpu,
            "built_on": self.sidecar.get("gpu"),
            "profile": {"min": self.profile.min, "opt": self.profile.opt, "max": self.profile.max},
            "io_dtypes": [np.dtype(self.input_dtype).name, np.dtype(self.output_dtype).name],
            "use_cuda_graph": self.use_cuda_graph,
            "build_flags": self.sidecar.get("build_flags"),
            "layer_precisions": self.sidecar.get("layer_precisions"),
        }


def _numpy_type(engine: tensorrt.ICudaEngine, name: str, types: dict[Any, Any]) -> Any:
    dtype = engine.get_tensor_dtype(name)
    if dtype not in types:
        raise UlffnError(f"tensor {name!r} has TensorRT type {dtype}, which this runtime does not handle",
                         "export with float32 inputs and outputs (the default)")
    return types[dtype]


def _nbytes(shape: Shape, dtype: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) * int(np.dtype(dtype).itemsize)


def _rebuild_hint(path: Path, sidecar: dict[str, Any], add: str = "") -> str:
    command = shown_build_command(sidecar) or f"ulffn-deploy build-engine --onnx SOURCE.onnx -o {path.name}"
    if add and add not in command.split():
        command = f"{command} {add}"
    return f"rebuild it on this machine: {command}"


def lean_library_for(module: ModuleType, sidecar: dict[str, Any], path: Path) -> Path:
    """The installed lean runtime library for a plan built with --exclude-lean-runtime: it must come from the
    TensorRT version that built the plan (``Runtime.load_runtime``)."""
    built = str(sidecar.get("tensorrt_version"))
    library = lean_library(module)
    if library is None or str(module.__version__) != built:
        found = f"{module.__name__} {module.__version__}" + ("" if library else " without libnvinfer_lean")
        raise UlffnError(f"{path.name} was built without its lean runtime by TensorRT {built}; {found} cannot load it",
                         f"pip install 'tensorrt-lean-cu12=={built}', pass lean_library=PATH, or rebuild without "
                         "--exclude-lean-runtime")
    return library


def _check_compatible(path: Path, sidecar: dict[str, Any], gpu: dict[str, Any], problem: str | None) -> None:
    """Refuse an engine whose sidecar does not fit this GPU and TensorRT before deserializing (plans are not portable)."""
    if problem:
        raise UlffnError(f"{path.name} cannot run here: {problem}", _rebuild_hint(path, sidecar))
    built_name = (sidecar.get("gpu") or {}).get("name")
    if built_name and built_name != gpu["name"]:
        warnings.warn(f"{path.name} was built on {built_name} and runs on {gpu['name']} (same compute capability); "
                      f"rebuild on this GPU for its best kernels", stacklevel=3)


def _run_all(frees: Sequence[Callable[[], None]]) -> None:
    """Call every free function; re-raise the first failure after all have run."""
    first: BaseException | None = None
    for free in frees:
        try:
            free()
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first


class RtxSegmenter(TrtSegmenter):
    """A TensorRT-RTX engine (``.rtxengine``): compiled just in time on this GPU at first use, with the JIT
    kernels kept in a runtime cache file (read at load, saved atomically under a lock at close), and TensorRT-RTX's
    CUDA-graph and dynamic-shape kernel settings from the sidecar unless given here."""

    backend = "tensorrt-rtx"
    module_choice = "rtx"

    def __init__(self, path: Path, fit_mode: str = "full", use_cuda_graph: bool = False, gpu: int = 0,
                 runtime_cache: str | None = None, cuda_graph_strategy: str | None = None,
                 kernel_specialization: str | None = None) -> None:
        from ulffn_deploy.targets.tensorrt_rtx import runtime_settings

        given = {"runtime_cache": runtime_cache, "cuda_graph_strategy": cuda_graph_strategy,
                 "kernel_specialization": kernel_specialization}
        self.settings = runtime_settings(read_sidecar(path), path, {k: v for k, v in given.items() if v is not None})
        if use_cuda_graph and self.settings["cuda_graph_strategy"] != "disabled":
            raise UlffnError("use_cuda_graph and TensorRT-RTX's own CUDA-graph strategy exclude each other",
                             "use one: cuda_graph_strategy='whole-graph' lets TensorRT-RTX capture the graph")
        self._runtime_cache: Any = None
        self.runtime_cache_loaded = False
        super().__init__(path, fit_mode, use_cuda_graph, gpu)

    def _compatibility_problem(self, sidecar: dict[str, Any], gpu: dict[str, Any]) -> str | None:
        return rtx_engine_problem(sidecar, gpu, str(self.trt.__version__))

    def _create_context(self, engine: Any) -> Any:
        from ulffn_deploy.targets.tensorrt_cache import read_shared_file
        from ulffn_deploy.targets.tensorrt_rtx import runtime_enums

        settings = self.settings
        config = engine.create_runtime_config()
        config.cuda_graph_strategy, config.dynamic_shapes_kernel_specialization_strategy = runtime_enums(self.trt, settings)
        cache = config.create_runtime_cache()
        saved = read_shared_file(Path(settings["runtime_cache"]))
        # a cache from another GPU, driver or TensorRT-RTX version is refused (False) and rebuilt by this run
        self.runtime_cache_loaded = bool(saved) and bool(cache.deserialize(saved))
        if not config.set_runtime_cache(cache):
            raise UlffnError("TensorRT-RTX refused the runtime cache (see the TensorRT log above)")
        self._runtime_cache, self._runtime_config = cache, config
        return engine.create_execution_context(config)

    def save_runtime_cache(self) -> None:
        """Write the JIT kernels compiled so far to the runtime cache file (atomic, under a lock)."""
        from ulffn_deploy.targets.tensorrt_cache import write_shared_file

        if self._runtime_cache is not None:
            write_shared_file(Path(self.settings["runtime_cache"]), bytes(self._runtime_cache.serialize()))

    def _close_impl(self) -> None:
        def forget_cache() -> None:
            self._runtime_cache = None

        _run_all([self.save_runtime_cache, forget_cache, super()._close_impl])

    def _release_tensorrt(self) -> None:
        self.__dict__.pop("_runtime_config", None)
        super()._release_tensorrt()

    def _backend_info(self) -> dict[str, Any]:
        return {**super()._backend_info(), "runtime": self.settings, "runtime_cache_loaded": self.runtime_cache_loaded,
                "compute_capabilities": self.sidecar.get("compute_capabilities"),
                "tensorrt_rtx_version": self.sidecar.get("tensorrt_rtx_version")}
