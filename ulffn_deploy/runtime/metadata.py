"""What an artifact says about its model: configuration, normalisation, input size, fit mode, precision.

The same fields come from three places: an ONNX file's ``ulffn.*`` metadata_props, the JSON sidecar of a
built engine (``model.fp16.engine.json``, ``model.fp32.ort.onnx.json``), or a training checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulffn_deploy.config import ModelConfig, Normalization
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.preprocess import FIT_MODES

PRECISIONS = ("fp32", "fp16", "int8")
SIDECAR_FORMAT = "ulffn-deploy-artifact"
SIDECAR_VERSION = 1
PREFIX = "ulffn."


@dataclass(frozen=True)
class ArtifactMetadata:
    """How to feed an artifact: ``fit_mode`` is the one it was trained with (predict defaults to ``full``)."""

    normalization: Normalization
    input_size: int
    fit_mode: str = "paper"
    precision: str = "fp32"
    model_config: ModelConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str | os.PathLike[str]) -> ArtifactMetadata:
        """Parse ONNX metadata_props (``ulffn.`` keys, JSON strings) or sidecar/checkpoint fields alike."""
        fields = {key.removeprefix(PREFIX): value for key, value in data.items()}
        if "normalization" not in fields or "input_size" not in fields:
            raise UlffnError(
                f"{source}: no ulffn metadata (normalization and input_size are missing)",
                "use an ONNX file written by 'ulffn-deploy export' or an engine built by 'ulffn-deploy build-engine'",
            )
        try:
            normalization = _as(Normalization, fields["normalization"])
            input_size = int(fields["input_size"])
            config = fields.get("model_config")
            model_config = _as(ModelConfig, config) if config else None
        except (TypeError, ValueError, UlffnError) as exc:
            raise UlffnError(f"{source}: unreadable ulffn metadata ({exc})") from exc
        fit_mode = str(fields.get("fit_mode") or "paper")
        precision = str(fields.get("precision") or "fp32")
        if fit_mode not in FIT_MODES or precision not in PRECISIONS:
            raise UlffnError(f"{source}: unknown fit mode {fit_mode!r} or precision {precision!r} in its metadata")
        known = {"normalization", "input_size", "model_config", "fit_mode", "precision"}
        extra = {key: value for key, value in fields.items() if key not in known}
        return cls(normalization, input_size, fit_mode, precision, model_config, extra)

    def to_dict(self) -> dict[str, Any]:
        """The fields a sidecar repeats from its source ONNX."""
        return {
            "normalization": self.normalization.to_dict(),
            "input_size": self.input_size,
            "fit_mode": self.fit_mode,
            "precision": self.precision,
            "model_config": self.model_config.to_dict() if self.model_config else None,
        }


def _as(kind: Any, value: Any) -> Any:
    """``kind`` from an instance, a dict or a JSON string of one."""
    if isinstance(value, kind):
        return value
    return kind.from_dict(json.loads(value) if isinstance(value, str) else value)


def sidecar_path(artifact: str | os.PathLike[str]) -> Path:
    """``model.fp16.engine`` -> ``model.fp16.engine.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def read_sidecar(artifact: str | os.PathLike[str], rebuild_hint: str | None = None) -> dict[str, Any]:
    """The JSON sidecar of a built artifact, checked for its format."""
    path = sidecar_path(artifact)
    hint = rebuild_hint or "rebuild it with 'ulffn-deploy build-engine', which writes the sidecar"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UlffnError(f"{artifact}: its metadata sidecar {path.name} is missing", hint) from exc
    except (OSError, ValueError) as exc:
        raise UlffnError(f"{path}: unreadable sidecar ({exc})", hint) from exc
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise UlffnError(f"{path}: not an ulffn-deploy sidecar", hint)
    if int(data.get("version", 0)) > SIDECAR_VERSION:
        raise UlffnError(f"{path}: sidecar version {data.get('version')} is newer than this ulffn-deploy", "upgrade")
    return data


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def _capability(value: str) -> tuple[int, int]:
    major, _, minor = str(value).partition(".")
    return int(major), int(minor or 0)


def engine_compatibility_problem(sidecar: Mapping[str, Any], gpu: Mapping[str, Any], tensorrt_version: str) -> str | None:
    """Why a TensorRT plan described by ``sidecar`` cannot run on ``gpu`` with ``tensorrt_version``, or None.

    Plans are tied to the TensorRT version and the GPU's compute capability (TENSORRT.md, Compatibility),
    unless built version-compatible (later TensorRT of the same major) or hardware-compatible (any GPU
    from Ampere, compute capability 8.0, on). A different GPU name with the same compute capability runs.
    """
    built = sidecar.get("gpu") or {}
    flags = sidecar.get("build_flags") or {}
    built_trt = str(sidecar.get("tensorrt_version", "?"))
    have, want = _version_tuple(tensorrt_version), _version_tuple(built_trt)
    if flags.get("version_compatible"):
        version_ok = bool(have) and bool(want) and have[0] == want[0] and have >= want
    else:
        version_ok = have == want
    if not version_ok:
        return f"it was built with TensorRT {built_trt} and this is TensorRT {tensorrt_version}"
    here_cc, built_cc = _capability(gpu["compute_capability"]), _capability(built.get("compute_capability", "0.0"))
    if flags.get("hardware_compatibility") == "ampere-plus":
        if here_cc < (8, 0):
            return f"it was built for Ampere and newer GPUs and {gpu['name']} has compute capability {gpu['compute_capability']}"
        return None
    if here_cc != built_cc:
        return (
            f"it was built on {built.get('name', '?')} (compute capability {built.get('compute_capability', '?')}) "
            f"and this GPU is {gpu['name']} (compute capability {gpu['compute_capability']})"
        )
    return None
