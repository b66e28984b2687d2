"""Opening ONNX files in ONNX Runtime (a core dependency), for running them and for reading their metadata.

The one place that creates ``onnxruntime.InferenceSession`` objects: targets, export, calibration and the
metadata reader all go through :func:`create_session` or :func:`open_onnx`, so unreadable models give the
same one-line error everywhere. onnxruntime itself is imported when a session is made.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.runtime.metadata import ArtifactMetadata

if TYPE_CHECKING:
    import onnxruntime as ort

MAKE_HINT = "export it with 'ulffn-deploy export' (int8: 'ulffn-deploy calibrate')"
OPTIMIZATION_LEVELS = {  # name -> ort.GraphOptimizationLevel member
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def graph_optimization_level(name: str) -> ort.GraphOptimizationLevel:
    """ONNX Runtime's level for one of ``OPTIMIZATION_LEVELS``."""
    import onnxruntime as ort

    return getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[name])


def create_session(model: str | os.PathLike[str] | bytes, providers: list[str] | None = None, optimization: str = "all",
                   threads: int | None = None) -> ort.InferenceSession:
    """An InferenceSession (CPU unless ``providers`` say otherwise) with UlffnErrors for unreadable models."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = graph_optimization_level(optimization)
    options.log_severity_level = 3  # errors only: ORT's optimizer notes are not for users
    if threads:
        options.intra_op_num_threads = int(threads)
    source = model if isinstance(model, bytes) else os.fspath(model)
    name = "the in-memory model" if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own exception types for unreadable models
        raise UlffnError(f"{name}: ONNX Runtime cannot load it ({' '.join(str(exc).split())[:300]})") from exc


def open_onnx(path: str | os.PathLike[str]) -> ort.InferenceSession:
    """An ONNX Runtime session of ``path`` for reading it (no graph optimisation, CPU); one-line errors."""
    if not os.path.isfile(path):
        raise UlffnError(f"{path}: no such ONNX file", MAKE_HINT)
    return create_session(path, ["CPUExecutionProvider"], optimization="disable")


def session_metadata(session: ort.InferenceSession, source: str | os.PathLike[str]) -> ArtifactMetadata:
    """The ``ulffn.*`` metadata of an open ONNX Runtime session."""
    return ArtifactMetadata.from_mapping(session.get_modelmeta().custom_metadata_map, source)
