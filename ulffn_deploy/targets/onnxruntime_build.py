"""ONNX -> offline-optimised ONNX Runtime model (``model.<prec>.ort.onnx``) plus its JSON sidecar.

The CPU deployment artifact, built where TensorRT is not available. ONNX Runtime applies its graph
optimisations once and saves the result (``SessionOptions.optimized_model_filepath``). Levels "basic"
and "extended" are used, not "all": ONNX Runtime's graph-optimizations documentation warns that models
saved with layout optimisations (ORT_ENABLE_ALL) are specific to the machine that saved them. "extended"
fuses into ONNX Runtime contrib ops (e.g. FusedConv), so the result is for ONNX Runtime's CPU provider.
The saved model is loaded back and compared with the online-optimised source before it is kept.
"""

from __future__ import annotations

import os
import platform
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ulffn_deploy import __version__
from ulffn_deploy.devices import cpu_name
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import atomic_path, sha256_file, write_json_atomic
from ulffn_deploy.runtime.metadata import SIDECAR_FORMAT, SIDECAR_VERSION, ArtifactMetadata, sidecar_path
from ulffn_deploy.targets.onnxruntime import create_session, graph_optimization_level

if TYPE_CHECKING:
    import onnxruntime as ort

ORT_LEVELS = ("basic", "extended")
CHECK_TOLERANCE = 1e-4  # max |probability difference| between the saved model and the source session


@dataclass(frozen=True)
class OnnxSource:
    """What a build needs to know about its source ONNX file."""

    path: Path
    input_name: str
    input_shape: tuple[int | None, ...]  # None for dynamic axes
    output_name: str
    metadata: ArtifactMetadata
    sha256: str

    def example_shape(self, batch: int = 2) -> tuple[int, ...]:
        """A concrete input shape: static axes as they are, dynamic batch ``batch``, dynamic H/W the input size."""
        size = self.metadata.input_size
        return tuple(dim if dim is not None else (batch if axis == 0 else size) for axis, dim in enumerate(self.input_shape))


def describe_onnx(path: str | os.PathLike[str], precision: str | None = None) -> OnnxSource:
    """Input/output names and shapes and the ``ulffn.*`` metadata of an exported model (onnxruntime only)."""
    path = Path(path)
    if not path.is_file():
        raise UlffnError(f"{path}: no such ONNX file", "export it with 'ulffn-deploy export' (int8: 'ulffn-deploy calibrate')")
    session = create_session(path, ["CPUExecutionProvider"], optimization="disable")
    metadata = ArtifactMetadata.from_mapping(session.get_modelmeta().custom_metadata_map, path)
    if precision is not None and precision != metadata.precision:
        raise UlffnError(f"{path.name} is a {metadata.precision} model, not {precision}",
                         f"pass --precision {metadata.precision}, or the {precision} ONNX file")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise UlffnError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
    shape = tuple(dim if isinstance(dim, int) and dim > 0 else None for dim in inputs[0].shape)
    if len(shape) != 4 or shape[1] not in (3, None):
        raise UlffnError(f"{path}: input {inputs[0].name!r} has shape {inputs[0].shape}, expected N x 3 x H x W")
    return OnnxSource(path, inputs[0].name, shape, outputs[0].name, metadata, sha256_file(path))


def sidecar_common(source: OnnxSource, backend: str, seconds: float, command: Sequence[str]) -> dict[str, Any]:
    """Sidecar fields every backend writes: the source's metadata and hash, and how the artifact was built."""
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "backend": backend,
        **source.metadata.to_dict(),
        "input_name": source.input_name,
        "output_name": source.output_name,
        "source_onnx": {"file": source.path.name, "sha256": source.sha256},
        "build_seconds": round(seconds, 3),
        "build_command": shlex.join(command),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "toolkit_version": __version__,
    }


def build_ort_model(onnx_path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
                    optimization: str = "extended", precision: str | None = None,
                    command: Sequence[str] | None = None) -> Path:
    """Optimise ``onnx_path`` offline for ONNX Runtime's CPU provider; write the model and its sidecar atomically."""
    if optimization not in ORT_LEVELS:
        raise UlffnError(f"unknown ONNX Runtime optimisation level {optimization!r}", f"use one of {', '.join(ORT_LEVELS)}")
    source = describe_onnx(onnx_path, precision)
    output = Path(output) if output else source.path.with_name(source.path.name.removesuffix(".onnx") + ".ort.onnx")
    if output.resolve() == source.path.resolve():
        raise UlffnError(f"output {output} would overwrite the source model", "choose another -o")
    command = command or ["ulffn-deploy", "build-engine", "--backend", "onnxruntime", "--onnx", str(onnx_path),
                          "-o", str(output), "--ort-optimization", optimization]
    import onnxruntime as ort

    start = time.perf_counter()
    with atomic_path(output) as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = graph_optimization_level(optimization)
        options.optimized_model_filepath = os.fspath(tmp)
        options.add_session_config_entry("session.save_model_format", "ONNX")  # the temp name has no .onnx suffix
        # every initializer inline, so the artifact never refers to a source's external .data file
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", tmp.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", str(2**62))
        reference = ort.InferenceSession(os.fspath(source.path), options, providers=["CPUExecutionProvider"])
        difference = _compare_saved(tmp, reference, source)
    seconds = time.perf_counter() - start
    sidecar = sidecar_common(source, "onnxruntime", seconds, command)
    sidecar.update({
        "onnxruntime_version": ort.__version__,
        "graph_optimization": optimization,
        "providers": ["CPUExecutionProvider"],
        "cpu": {"name": cpu_name(), "machine": platform.machine(), "system": platform.system()},
        "check": {"max_abs_difference": difference, "input_shape": list(source.example_shape())},
    })
    write_json_atomic(sidecar_path(output), sidecar)
    return output


def _compare_saved(saved: Path, reference: ort.InferenceSession, source: OnnxSource) -> float:
    """Run the saved model and the source session on the same random batch; UlffnError if they disagree."""
    session = create_session(saved, ["CPUExecutionProvider"], optimization="disable")
    batch = np.random.default_rng(0).standard_normal(source.example_shape()).astype(np.float32)
    kind = np.float16 if reference.get_inputs()[0].type == "tensor(float16)" else np.float32
    feed = {source.input_name: batch.astype(kind)}
    expected = np.asarray(reference.run(None, feed)[0], np.float32)
    got = np.asarray(session.run(None, feed)[0], np.float32)
    difference = float(np.max(np.abs(expected - got))) if expected.shape == got.shape else float("inf")
    if not difference <= CHECK_TOLERANCE:
        raise UlffnError(f"the optimised model disagrees with {source.path.name} (max difference {difference:.3g})",
                         "try --ort-optimization basic")
    return difference
