"""ONNX -> offline-optimised ONNX Runtime model (``model.<prec>.ort.onnx``) plus its JSON sidecar.

The CPU deployment artifact, built where TensorRT is not available. ONNX Runtime applies its graph
optimisations once and saves the result (``SessionOptions.optimized_model_filepath``). Levels "basic"
and "extended" are used, not "all": ONNX Runtime's graph-optimizations documentation warns that models
saved with layout optimisations (ORT_ENABLE_ALL) are specific to the machine that saved them. "extended"
fuses into ONNX Runtime contrib ops (e.g. FusedConv), so the result is for ONNX Runtime's CPU provider.
The saved model is loaded back and compared with the online-optimised source through the harness
(``onnx_source.check_build``, the tolerance table's ``built`` row) before it is kept.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ulffn_deploy.devices import cpu_name
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import atomic_path, write_json_atomic
from ulffn_deploy.onnx_session import graph_optimization_level
from ulffn_deploy.runtime.metadata import sidecar_path
from ulffn_deploy.targets.onnx_source import OnnxSource, describe_onnx, files_record, sidecar_common

ORT_LEVELS = ("basic", "extended")


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
        check = _check_saved(tmp, reference, source)
    seconds = time.perf_counter() - start
    sidecar = sidecar_common(source, "onnxruntime", seconds, command)
    sidecar.update({
        "onnxruntime_version": ort.__version__,
        "graph_optimization": optimization,
        "providers": ["CPUExecutionProvider"],
        "cpu": {"name": cpu_name(), "machine": platform.machine(), "system": platform.system()},
        "check": check,
        "files": files_record([output]),
    })
    write_json_atomic(sidecar_path(output), sidecar)
    return output


def _check_saved(saved: Path, reference: Any, source: OnnxSource) -> dict[str, Any]:
    """The saved model against the online-optimised source session, through the harness (``check_build``);
    UlffnError if they disagree."""
    from ulffn_deploy.onnx_session import create_session
    from ulffn_deploy.targets.onnx_source import check_build

    session = create_session(saved, ["CPUExecutionProvider"], optimization="disable")

    def run(ort_session: Any) -> Any:
        import numpy as np

        kind = np.float16 if source.input_type == "tensor(float16)" else np.float32
        return lambda batch: np.asarray(ort_session.run(None, {source.input_name: batch.astype(kind)})[0], np.float32)

    return check_build(run(reference), run(session), source, f"the optimised model of {source.path.name}",
                       hint="try --ort-optimization basic")
