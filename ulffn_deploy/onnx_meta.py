"""The ``ulffn.*`` metadata_props that make an exported ONNX file self-describing.

Writing needs the ``onnx`` package (imported inside the functions); ``read_metadata`` needs only
ONNX Runtime, so runtimes can read a model's configuration without onnx installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ulffn_deploy.config import ModelConfig, Normalization
from ulffn_deploy.errors import UlffnError

if TYPE_CHECKING:
    import onnx

PREFIX = "ulffn."
KEYS = ("model_config", "normalization", "input_size", "fit_mode", "checkpoint_sha256", "toolkit_version", "precision")
PRECISIONS = ("fp32", "fp16", "int8")


def encode(meta: Mapping[str, Any]) -> dict[str, str]:
    """{model_config: ModelConfig, normalization: Normalization, input_size: int, ...} -> {'ulffn.<key>': str}."""
    missing = [key for key in KEYS if key not in meta]
    if missing:
        raise UlffnError(f"ONNX metadata lacks {', '.join(missing)}")
    if meta["precision"] not in PRECISIONS:
        raise UlffnError(f"unknown precision {meta['precision']!r}", f"use one of {', '.join(PRECISIONS)}")
    props = {}
    for key in KEYS:
        value = meta[key]
        if isinstance(value, (ModelConfig, Normalization)):
            value = json.dumps(value.to_dict(), sort_keys=True)
        elif isinstance(value, Mapping):
            value = json.dumps(dict(value), sort_keys=True)
        props[PREFIX + key] = str(value)
    return props


def decode(props: Mapping[str, str], source: str = "model") -> dict[str, Any]:
    """{'ulffn.<key>': str} (other keys ignored) -> {key: typed value}; UlffnError if ours are absent."""
    missing = [key for key in KEYS if PREFIX + key not in props]
    if len(missing) == len(KEYS):
        raise UlffnError(f"{source}: no ulffn.* metadata, so not exported by ulffn-deploy",
                         "export it with 'ulffn-deploy export'")
    if missing:
        raise UlffnError(f"{source}: ONNX metadata lacks {', '.join(PREFIX + k for k in missing)}")
    try:
        return {
            "model_config": ModelConfig.from_dict(json.loads(props[PREFIX + "model_config"])),
            "normalization": Normalization.from_dict(json.loads(props[PREFIX + "normalization"])),
            "input_size": int(props[PREFIX + "input_size"]),
            "fit_mode": props[PREFIX + "fit_mode"],
            "checkpoint_sha256": props[PREFIX + "checkpoint_sha256"],
            "toolkit_version": props[PREFIX + "toolkit_version"],
            "precision": props[PREFIX + "precision"],
        }
    except (ValueError, TypeError) as exc:
        raise UlffnError(f"{source}: malformed ulffn.* metadata ({exc})") from exc


def load_onnx(path: str | os.PathLike[str], hint: str | None = None) -> onnx.ModelProto:
    """Read an ONNX model; a missing, unreadable or non-ONNX file is a one-line UlffnError."""
    from pathlib import Path

    from google.protobuf.message import DecodeError

    from ulffn_deploy.deps import require

    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise UlffnError(f"{path}: no such ONNX file", "run 'ulffn-deploy export' first or check the path")
    try:
        model = onnx.load(str(path))
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise UlffnError(f"{path}: not an ONNX model, or unreadable ({type(exc).__name__})", hint) from exc
    if model.ir_version == 0 or not model.graph.node or not model.opset_import:
        raise UlffnError(f"{path}: not an ONNX model (no graph or opset in the file)", hint)
    return model


def set_metadata(model: onnx.ModelProto, meta: Mapping[str, Any]) -> None:
    """Replace the model's ``ulffn.*`` metadata_props with ``meta`` (other entries are kept)."""
    props = encode(meta)
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in kept + sorted(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def get_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """Decoded ``ulffn.*`` metadata of an in-memory ONNX model."""
    return decode({p.key: p.value for p in model.metadata_props})


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Decoded ``ulffn.*`` metadata of an ONNX file, read through ONNX Runtime (no onnx package needed)."""
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise UlffnError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for unreadable models
        raise UlffnError(f"{path}: ONNX Runtime cannot load it ({' '.join(str(exc).split())[:200]})") from exc
    return decode(session.get_modelmeta().custom_metadata_map, source=os.fspath(path))
