"""The few CUDA runtime calls the TensorRT backend needs, through cuda-python's ``cuda.bindings.runtime``.

Every ``cudart`` call returns ``(error, *results)``; :func:`cuda_call` checks the error and unpacks the
results, so no return code goes unchecked. Buffers, streams, events and graphs are small owning objects
with an idempotent ``free()``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import numpy as np
from cuda.bindings import runtime as cudart

from ulffn_deploy.errors import UlffnError


class CudaError(UlffnError):
    """A CUDA runtime call failed; the message names the call's error (``cudaGetErrorName``)."""


def error_name(error: Any) -> str:
    """``cudaErrorMemoryAllocation``-style name of a ``cudaError_t``."""
    err, name = cudart.cudaGetErrorName(error)
    if err != cudart.cudaError_t.cudaSuccess:
        return f"cudaError {int(error)}"
    return bytes(name).decode() if isinstance(name, (bytes, bytearray)) else str(name)


def cuda_call(result: tuple[Any, ...], what: str = "CUDA call") -> Any:
    """Check the error of a ``cudart`` result tuple; return None, the one result, or the tuple of results."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        raise CudaError(f"{what} failed: {error_name(error)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    """Number of visible CUDA devices; raises CudaError (e.g. cudaErrorNoDevice) when there are none."""
    count = int(cuda_call(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))
    if count < 1:
        raise CudaError("cudaGetDeviceCount found no CUDA device")
    return count


def device_properties(device: int = 0) -> dict[str, Any]:
    """Name, compute capability ("8.6") and memory of one CUDA device."""
    props = cuda_call(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    name = bytes(name).split(b"\0", 1)[0].decode() if isinstance(name, (bytes, bytearray)) else str(name)
    return {
        "name": name.strip(),
        "compute_capability": f"{props.major}.{props.minor}",
        "total_memory_mib": int(props.totalGlobalMem) >> 20,
        "device": device,
    }


class PinnedBuffer:
    """Page-locked host memory (``cudaMallocHost``), readable and writable as a numpy array."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr: int = int(cuda_call(cudart.cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes} bytes)"))
        raw = (ctypes.c_ubyte * self.nbytes).from_address(self.ptr)
        self._bytes: np.ndarray = np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8)

    def view(self, dtype: np.dtype[Any] | type, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy view of the first ``prod(shape)`` elements of ``dtype``."""
        count = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if count > self.nbytes:
            raise UlffnError(f"{shape} of {np.dtype(dtype)} needs {count} bytes; the pinned buffer has {self.nbytes}")
        view: np.ndarray = self._bytes[:count].view(dtype).reshape(shape)
        return view

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self._bytes = np.empty(0, np.uint8)
            cuda_call(cudart.cudaFreeHost(ptr), "cudaFreeHost")


class DeviceBuffer:
    """Device memory (``cudaMalloc``); ``ptr`` is what ``set_tensor_address`` takes."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr: int = int(cuda_call(cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes} bytes)"))

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            cuda_call(cudart.cudaFree(ptr), "cudaFree")


class Stream:
    """One CUDA stream; ``handle`` is the integer ``execute_async_v3`` takes."""

    def __init__(self) -> None:
        self.stream: Any = cuda_call(cudart.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        cuda_call(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def free(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            cuda_call(cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")


def copy_to_device(dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    """Asynchronous host-to-device copy of the first ``nbytes``."""
    _check_size(nbytes, dst.nbytes, src.nbytes)
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    cuda_call(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream.stream), "cudaMemcpyAsync(host to device)")


def copy_to_host(dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    """Asynchronous device-to-host copy of the first ``nbytes``."""
    _check_size(nbytes, dst.nbytes, src.nbytes)
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    cuda_call(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream.stream), "cudaMemcpyAsync(device to host)")


def _check_size(nbytes: int, *capacities: int) -> None:
    if nbytes < 0 or nbytes > min(capacities):
        raise UlffnError(f"copy of {nbytes} bytes does not fit buffers of {min(capacities)} bytes")


class Event:
    """A CUDA event for timing work on a stream."""

    def __init__(self) -> None:
        self.event: Any = cuda_call(cudart.cudaEventCreate(), "cudaEventCreate")

    def record(self, stream: Stream) -> None:
        cuda_call(cudart.cudaEventRecord(self.event, stream.stream), "cudaEventRecord")

    def elapsed_ms(self, start: Event) -> float:
        """Milliseconds from ``start`` to this event (both recorded and complete)."""
        return float(cuda_call(cudart.cudaEventElapsedTime(start.event, self.event), "cudaEventElapsedTime"))

    def free(self) -> None:
        if self.event is not None:
            event, self.event = self.event, None
            cuda_call(cudart.cudaEventDestroy(event), "cudaEventDestroy")


class Graph:
    """A CUDA graph captured from the work ``enqueue(stream)`` puts on a stream, replayed with ``launch``."""

    def __init__(self, stream: Stream, enqueue: Callable[[Stream], None]) -> None:
        self.graph: Any = None
        self.exec: Any = None
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        cuda_call(cudart.cudaStreamBeginCapture(stream.stream, mode), "cudaStreamBeginCapture")
        try:
            enqueue(stream)
        except BaseException:
            # end the capture even when enqueue failed, or the stream stays in capture mode
            self._end_capture(stream)
            self.free()
            raise
        self._end_capture(stream)
        self.exec = cuda_call(cudart.cudaGraphInstantiate(self.graph, 0), "cudaGraphInstantiate")

    def _end_capture(self, stream: Stream) -> None:
        self.graph = cuda_call(cudart.cudaStreamEndCapture(stream.stream), "cudaStreamEndCapture")

    def launch(self, stream: Stream) -> None:
        cuda_call(cudart.cudaGraphLaunch(self.exec, stream.stream), "cudaGraphLaunch")

    def free(self) -> None:
        if self.exec is not None:
            graph_exec, self.exec = self.exec, None
            cuda_call(cudart.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")
        if self.graph is not None:
            graph, self.graph = self.graph, None
            cuda_call(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")


def set_device(device: int) -> None:
    """Make ``device`` current for this thread (``cudaSetDevice``)."""
    cuda_call(cudart.cudaSetDevice(device), f"cudaSetDevice({device})")
