"""ONNX Runtime backend: CPU by default, CUDA when asked for and available.

Plain exported models (``model.fp32.onnx``) are optimised when the session starts. Offline-optimised
models written by ``build-engine --backend onnxruntime`` (``model.fp32.ort.onnx`` with its sidecar) are
already optimised, so their sessions skip graph optimisation ("offline mode" in ONNX Runtime's
graph-optimizations documentation).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.onnx_session import OPTIMIZATION_LEVELS, create_session, session_metadata
from ulffn_deploy.runtime.base import Segmenter, check_declared_input
from ulffn_deploy.runtime.metadata import ArtifactMetadata, read_sidecar, sidecar_path
from ulffn_deploy.targets.registry import BuildOption, Target

if TYPE_CHECKING:  # onnxruntime is imported where used: listing targets, or loading an engine, never needs it
    pass

DEVICES = ("cpu", "cuda")
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def providers_for(device: str) -> list[str]:
    """Execution providers for ``device``; UlffnError when CUDA is asked for but not in this onnxruntime."""
    if device not in DEVICES:
        raise UlffnError(f"unknown ONNX Runtime device {device!r}", f"use one of {', '.join(DEVICES)}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UlffnError("this onnxruntime has no CUDA execution provider",
                         "pip install onnxruntime-gpu, or use device='cpu'")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class OrtSegmenter(Segmenter):
    """A ULFFN ONNX model in an ONNX Runtime session."""

    backend = "onnxruntime"

    def __init__(self, path: Path, fit_mode: str = "full", device: str = "cpu", threads: int | None = None,
                 optimization: str | None = None) -> None:
        providers = providers_for(device)
        self.build_info = read_sidecar(path) if sidecar_path(path).is_file() else None
        if optimization is None:
            # an offline-optimised model still gets the layout passes (NCHWc) at load: they are specific to
            # the CPU that runs it, which is why build-engine saves only the portable "extended" level
            optimization = "all"
        if optimization not in OPTIMIZATION_LEVELS:
            raise UlffnError(f"unknown graph optimisation {optimization!r}", f"use one of {', '.join(OPTIMIZATION_LEVELS)}")
        self.session = create_session(path, providers, optimization, threads)

        super().__init__(path, session_metadata(self.session, path), fit_mode)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UlffnError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        self._check_metadata()
        self._input_type = _NUMPY_TYPES.get(self._input.type, np.float32)
        self.optimization = optimization

    def _check_metadata(self) -> None:
        """The metadata's input size must match the graph's declared input, and a sidecar its model."""
        fixed = [dim if isinstance(dim, int) and dim > 0 else None for dim in self._input.shape[2:4]]
        check_declared_input(self.path, self.input_size, fixed, fixed)
        if self.build_info is not None:
            built = ArtifactMetadata.from_mapping(self.build_info, sidecar_path(self.path))
            if built.input_size != self.input_size:
                raise UlffnError(f"{self.path.name}: its sidecar says input size {built.input_size} and the model "
                                 f"says {self.input_size}", "rebuild it with 'ulffn-deploy build-engine'")

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        self._check_spatial(batch.shape)
        start = time.perf_counter()
        (output,) = self.session.run([self._output.name], {self._input.name: batch.astype(self._input_type, copy=False)})
        self.last_timings = {"compute": (time.perf_counter() - start) * 1e3}
        return np.asarray(output, dtype=np.float32)

    def _check_spatial(self, shape: tuple[int, ...]) -> None:
        fixed = [dim if isinstance(dim, int) else None for dim in self._input.shape[2:]]
        if any(want is not None and want != got for want, got in zip(fixed, shape[2:])):
            raise UlffnError(f"{self.path.name} takes {fixed[0]}x{fixed[1]} inputs, got {shape[2]}x{shape[3]}",
                             f"preprocess to size {self.input_size}")

    def _close_impl(self) -> None:
        del self.session

    def _backend_info(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "onnxruntime_version": ort.__version__,
            "providers": self.session.get_providers() if not self._closed else [],
            "graph_optimization": self.optimization,
            "offline_optimized": self.build_info is not None,
        }


class OnnxRuntimeTarget(Target):
    """ONNX files in ONNX Runtime: exported ``model.<precision>.onnx`` as they are, or offline-optimised
    ``model.<precision>.ort.onnx`` (with a sidecar) built for its CPU provider."""

    name = "onnxruntime"
    title = "ONNX Runtime"
    description = "an ONNX model, run by ONNX Runtime (its CPU provider, or CUDA when asked for)"
    runs_on = "any CPU (or an NVIDIA GPU with onnxruntime-gpu)"
    packages = ("onnxruntime",)
    suffixes = (".onnx", ".ort.onnx")
    build_suffix = ".ort.onnx"
    build_options = (
        BuildOption("ort_optimization", str, "extended", "ONNX Runtime graph optimisation level saved in the model.",
                    choices=("basic", "extended")),
    )
    load_options = (
        BuildOption("device", str, "cpu", "ONNX Runtime execution provider.", choices=DEVICES),
        BuildOption("threads", int, None, "CPU threads (intra-op).", minimum=1),
    )
    default_build_precision = "fp32"
    rank = 10
    # measured on CPUs (README, CPU deployment): FP32 is ONNX Runtime's fastest path for this graph; its INT8 is
    # slower than FP32 (no QLinearConv fusion: ReLU -> BatchNorm sits between each Conv and its Q/DQ), so INT8
    # files are never ONNX Runtime's preferred choice: OpenVINO runs model.int8.onnx on CPUs
    preferred_precisions = ("fp32", "fp16")

    def describe_file(self, path: Path) -> dict[str, Any]:
        from ulffn_deploy.targets.onnx_source import describe_onnx

        source = describe_onnx(path)
        shape = [dim if dim is not None else "dynamic" for dim in source.input_shape]
        return {"metadata": source.metadata.to_dict(),
                "onnx": {"input": source.input_name, "input_shape": shape, "output": source.output_name}}

    def load(self, path: Path, **options: Any) -> Segmenter:
        return OrtSegmenter(path, **options)

    def build(self, source_onnx: Path, output: Path | None, options: Mapping[str, Any], command: Sequence[str]) -> Path:
        from ulffn_deploy.targets.onnxruntime_build import build_ort_model

        return build_ort_model(source_onnx, output, options["ort_optimization"], command=command)


TARGET = OnnxRuntimeTarget()
