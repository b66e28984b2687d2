"""TensorRT backend: a plain serialized plan plus its JSON sidecar, run with tensorrt and cuda-python only.

One engine, one execution context and one CUDA stream. Pinned host and device buffers are sized once
from the optimization profile's largest shape; each call sets the input shape, copies host to device,
runs ``execute_async_v3`` (or replays a CUDA graph captured for that shape), copies back and
synchronises once. CUDA events time the two copies and the GPU compute separately (``last_timings``).
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import tensorrt as trt

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.targets import cuda as cu
from ulffn_deploy.runtime.base import Segmenter
from ulffn_deploy.runtime.metadata import ArtifactMetadata, engine_compatibility_problem, read_sidecar

Shape = tuple[int, ...]


class _Resource(Protocol):
    def free(self) -> None: ...


R = TypeVar("R", bound=_Resource)

_LOGGER = trt.Logger(trt.Logger.WARNING)
# I/O types an engine may declare; export keeps I/O float32, but an engine is read, not assumed
_NUMPY_TYPES: dict[trt.DataType, Any] = {
    trt.DataType.FLOAT: np.float32,
    trt.DataType.HALF: np.float16,
    trt.DataType.INT8: np.int8,
    trt.DataType.INT32: np.int32,
}


def dims_to_shape(dims: trt.Dims) -> Shape:
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
    """A TensorRT engine built by ``ulffn-deploy build-engine``."""

    backend = "tensorrt"

    def __init__(self, path: Path, fit_mode: str = "full", use_cuda_graph: bool = False, gpu: int = 0) -> None:
        sidecar = read_sidecar(path)
        self.sidecar = sidecar
        self.gpu = cu.device_properties(gpu)
        _check_compatible(path, sidecar, self.gpu)
        plan = path.read_bytes()
        if sidecar.get("engine_sha256") not in (None, hashlib.sha256(plan).hexdigest()):
            raise UlffnError(f"{path.name} does not match its sidecar (another build's metadata)",
                             _rebuild_hint(path, sidecar))
        super().__init__(path, ArtifactMetadata.from_mapping(sidecar, path), fit_mode)
        self.use_cuda_graph = use_cuda_graph
        self._owned: list[_Resource] = []  # CUDA resources, freed in reverse order
        self._graph: cu.Graph | None = None
        self._shape: Shape | None = None
        cu.set_device(gpu)
        try:
            self._open_engine(plan)
            self._allocate()
        except BaseException:
            self._close_impl()
            raise

    # -- setup ----------------------------------------------------------------------------------------
    def _open_engine(self, plan: bytes) -> None:
        self._runtime = trt.Runtime(_LOGGER)
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise UlffnError(f"TensorRT could not deserialize {self.path.name} (see the TensorRT log above)",
                             _rebuild_hint(self.path, self.sidecar))
        self.engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UlffnError(f"{self.path.name}: expected one input and one output tensor, found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _numpy_type(engine, self.input_name)
        self.output_dtype = _numpy_type(engine, self.output_name)
        self.profile = Profile(*(dims_to_shape(d) for d in engine.get_tensor_profile_shape(self.input_name, 0)))
        self.max_batch = self.profile.max[0]
        context = engine.create_execution_context()
        if context is None:
            raise UlffnError(f"TensorRT could not create an execution context for {self.path.name} (out of GPU memory?)")
        self.context = context

    def _allocate(self) -> None:
        largest = self.profile.max
        self._set_shape(largest)
        out_largest = dims_to_shape(self.context.get_tensor_shape(self.output_name))
        in_bytes = _nbytes(largest, self.input_dtype)
        out_bytes = _nbytes(out_largest, self.output_dtype)
        self.stream = self._own(cu.Stream())
        self.host_in, self.device_in = self._own(cu.PinnedBuffer(in_bytes)), self._own(cu.DeviceBuffer(in_bytes))
        self.host_out, self.device_out = self._own(cu.PinnedBuffer(out_bytes)), self._own(cu.DeviceBuffer(out_bytes))
        self.events = [self._own(cu.Event()) for _ in range(4)]
        for name, buffer in ((self.input_name, self.device_in), (self.output_name, self.device_out)):
            if not self.context.set_tensor_address(name, buffer.ptr):
                raise UlffnError(f"TensorRT refused the device address for tensor {name!r}")

    def _own(self, resource: R) -> R:
        self._owned.append(resource)
        return resource

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
        start = time.perf_counter()
        h2d_start, h2d_end, compute_end, d2h_end = self.events
        h2d_start.record(self.stream)
        cu.copy_to_device(self.device_in, self.host_in, host_in.nbytes, self.stream)
        h2d_end.record(self.stream)
        self._enqueue()
        compute_end.record(self.stream)
        cu.copy_to_host(self.host_out, self.device_out, _nbytes(out_shape, self.output_dtype), self.stream)
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
            self._graph = cu.Graph(self.stream, self._execute)
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
        for name in ("context", "engine", "_runtime"):  # context before engine before runtime
            if hasattr(self, name):
                delattr(self, name)

    def _backend_info(self) -> dict[str, Any]:
        return {
            "tensorrt_version": trt.__version__,
            "gpu": self.gpu,
            "built_on": self.sidecar.get("gpu"),
            "profile": {"min": self.profile.min, "opt": self.profile.opt, "max": self.profile.max},
            "io_dtypes": [np.dtype(self.input_dtype).name, np.dtype(self.output_dtype).name],
            "use_cuda_graph": self.use_cuda_graph,
            "build_flags": self.sidecar.get("build_flags"),
        }


def _numpy_type(engine: trt.ICudaEngine, name: str) -> Any:
    dtype = engine.get_tensor_dtype(name)
    if dtype not in _NUMPY_TYPES:
        raise UlffnError(f"tensor {name!r} has TensorRT type {dtype}, which this runtime does not handle",
                         "export with float32 inputs and outputs (the default)")
    return _NUMPY_TYPES[dtype]


def _nbytes(shape: Shape, dtype: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) * int(np.dtype(dtype).itemsize)


def _rebuild_hint(path: Path, sidecar: dict[str, Any]) -> str:
    command = sidecar.get("build_command") or f"ulffn-deploy build-engine --onnx SOURCE.onnx -o {path.name}"
    return f"rebuild it on this machine: {command}"


def _check_compatible(path: Path, sidecar: dict[str, Any], gpu: dict[str, Any]) -> None:
    """Compare the sidecar with this GPU and TensorRT before deserializing (plans are not portable)."""
    problem = engine_compatibility_problem(sidecar, gpu, trt.__version__)
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
