"""The FP32 ONNX model that calibration starts from: load it, check it came from ``ulffn-deploy export``,
and read the preprocessing that calibration images must go through."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import sha256_file
from ulffn_deploy.preprocess import Preprocessing
from ulffn_deploy.runtime.metadata import ArtifactMetadata, get_metadata, load_onnx

if TYPE_CHECKING:
    import onnx

EXPORT_HINT = "calibrate the FP32 model written by 'ulffn-deploy export' (model.fp32.onnx)"


@dataclass(frozen=True)
class SourceModel:
    """An FP32 ULFFN ONNX file with its ``ulffn.*`` metadata."""

    path: Path
    sha256: str
    metadata: ArtifactMetadata
    preprocessing: Preprocessing
    input_name: str
    output_name: str


def load_source_model(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, SourceModel]:
    """Load an FP32 model written by ``ulffn-deploy export``; anything else is a UlffnError saying so."""
    path = Path(path)
    model = load_onnx(path, EXPORT_HINT)
    metadata = get_metadata(model, path)
    precision = metadata.precision
    if precision != "fp32":
        raise UlffnError(f"{path}: this is the {precision.upper()} model; calibration starts from the FP32 one", EXPORT_HINT)
    inputs = [i.name for i in model.graph.input if i.name not in {init.name for init in model.graph.initializer}]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UlffnError(f"{path}: expected one input and one output, found {inputs} and "
                         f"{[o.name for o in model.graph.output]}", EXPORT_HINT)
    preprocessing = Preprocessing(metadata.input_size, metadata.fit_mode, metadata.normalization)
    source = SourceModel(path, sha256_file(path), metadata, preprocessing, inputs[0], model.graph.output[0].name)
    return model, source
