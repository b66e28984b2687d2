"""What an artifact says about its model: configuration, normalisation, input size, fit mode, precision.

One type, :class:`ArtifactMetadata`, with one parser for its three sources: an ONNX file's ``ulffn.*``
metadata_props, the JSON sidecar of a built artifact (``model.fp16.engine.json``, ``model.fp32.ort.onnx.json``)
or a training checkpoint. Reading and writing ONNX files here imports onnx or onnxruntime inside the
function that needs it, so importing this module stays light (docs/architecture.md).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulffn_deploy.config import FIT_MODES, MAX_INPUT_SIZE, OUTPUT_STRIDE, PRECISIONS, ModelConfig, Normalization
from ulffn_deploy.errors import UlffnError

if TYPE_CHECKING:
    import onnx

SIDECAR_FORMAT = "ulffn-deploy-artifact"
SIDECAR_VERSION = 1
PREFIX = "ulffn."
REQUIRED = ("normalization", "input_size", "fit_mode", "precision")
KEYS = (*REQUIRED, "model_config", "checkpoint_sha256", "toolkit_version")
# A model that is not ULFFN (``ulffn-deploy import-model``) has no model_config; these ``extra`` entries describe
# it and travel with it into every artifact: its name, its FP32-keep rules (JSON), its contract (JSON).
MODEL_KEYS = ("model", "keep_fp32", "model_contract")


@dataclass(frozen=True)
class ArtifactMetadata:
    """How to feed an artifact, and where it came from.

    ``fit_mode`` is the one the model was trained with (predict defaults to ``full``); ``checkpoint_sha256``
    and ``toolkit_version`` are None where the source does not record them (a checkpoint read directly).
    """

    normalization: Normalization
    input_size: int
    fit_mode: str
    precision: str
    model_config: ModelConfig | None
    checkpoint_sha256: str | None = None
    toolkit_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str | os.PathLike[str]) -> ArtifactMetadata:
        """The one parser: ONNX metadata_props (``ulffn.*`` keys, JSON strings; other keys ignored), or the
        plain fields of a sidecar or checkpoint (values as objects, dicts or JSON strings alike)."""
        fields = _our_fields(data, source)
        try:
            normalization = _as(Normalization, fields["normalization"])
            input_size = int(fields["input_size"])
            model_config = _as(ModelConfig, fields["model_config"]) if fields.get("model_config") else None
        except (TypeError, ValueError, UlffnError) as exc:
            raise UlffnError(f"{source}: unreadable ulffn metadata ({exc})") from exc
        _check_finite(normalization, source)
        check_input_size(input_size, source)
        fit_mode, precision = str(fields["fit_mode"]), str(fields["precision"])
        if fit_mode not in FIT_MODES or precision not in PRECISIONS:
            raise UlffnError(f"{source}: unknown fit mode {fit_mode!r} or precision {precision!r} in its metadata")
        optional = {key: None if fields.get(key) is None else str(fields[key])
                    for key in ("checkpoint_sha256", "toolkit_version")}
        extra = {key: value for key, value in fields.items() if key not in KEYS}
        return cls(normalization, input_size, fit_mode, precision, model_config, extra=extra, **optional)

    @classmethod
    def from_checkpoint(cls, info: Mapping[str, Any], source: str | os.PathLike[str],
                        checkpoint_sha256: str | None = None) -> ArtifactMetadata:
        """The FP32 metadata of a training checkpoint's info dict (``ulffn_deploy.checkpoint``)."""
        fields = {key: info.get(key) for key in ("model_config", "normalization", "input_size", "fit_mode")}
        return cls.from_mapping({**fields, "precision": "fp32", "checkpoint_sha256": checkpoint_sha256}, source)

    def with_precision(self, precision: str) -> ArtifactMetadata:
        """The same model's metadata for its ``precision`` variant."""
        if precision not in PRECISIONS:
            raise UlffnError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
        return replace(self, precision=precision)

    def to_dict(self) -> dict[str, Any]:
        """The typed fields as JSON values (a sidecar repeats them from its source ONNX)."""
        return {
            "normalization": self.normalization.to_dict(),
            "input_size": self.input_size,
            "fit_mode": self.fit_mode,
            "precision": self.precision,
            "model_config": self.model_config.to_dict() if self.model_config else None,
            "checkpoint_sha256": self.checkpoint_sha256,
            "toolkit_version": self.toolkit_version,
            **{key: self.extra[key] for key in MODEL_KEYS if self.extra.get(key) is not None},
        }

    def to_props(self) -> dict[str, str]:
        """``{'ulffn.<key>': str}`` for an exported ONNX file, which must record every field."""
        values = self.to_dict()
        missing = [key for key in KEYS if values[key] is None and key != "model_config"]
        if missing:
            raise UlffnError(f"ONNX metadata lacks {', '.join(missing)}")
        return {PREFIX + key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                for key, value in values.items() if value is not None}

    @property
    def model_name(self) -> str:
        """"ULFFN w-ac/64" for ULFFN, else the name an imported model's contract gives."""
        if self.model_config is not None:
            return f"ULFFN {self.model_config.variant}/{self.model_config.width}"
        return str(self.extra.get("model") or "model")


def _our_fields(data: Mapping[str, Any], source: str | os.PathLike[str]) -> dict[str, Any]:
    """``data`` without the ``ulffn.`` prefix (only prefixed keys when there are any: ONNX metadata_props
    mix ours with other tools' entries); UlffnError when a required field is missing."""
    prefixed = any(str(key).startswith(PREFIX) for key in data)
    fields = {key.removeprefix(PREFIX): value for key, value in data.items() if not prefixed or key.startswith(PREFIX)}
    missing = [key for key in REQUIRED if fields.get(key) is None]
    if len(missing) == len(REQUIRED):
        raise UlffnError(f"{source}: no ulffn metadata, so not written by ulffn-deploy",
                         "use an ONNX file from 'ulffn-deploy export' or an artifact from 'ulffn-deploy build-engine'; "
                         "for a model of your own, 'ulffn-deploy import-model' (README, Your own model)")
    if missing:
        raise UlffnError(f"{source}: its ulffn metadata lacks {', '.join(missing)}",
                         "re-export the model with 'ulffn-deploy export'")
    return fields


def _check_finite(normalization: Normalization, source: str | os.PathLike[str]) -> None:
    """Refuse NaN or infinite normalisation (JSON lets ``NaN`` and ``Infinity`` through), naming the field."""
    for name in ("mean", "std"):
        values = getattr(normalization, name)
        if not all(math.isfinite(value) for value in values):
            raise UlffnError(f"{source}: normalization {name} {list(values)} in its metadata is not finite",
                             "the file was altered or not written by ulffn-deploy; use the original or export it again")


def check_input_size(size: Any, source: str | os.PathLike[str]) -> int:
    """``size`` as an int; refuses one no ULFFN model has, before anything is allocated for it (crafted metadata)."""
    try:
        value = int(size)
    except (TypeError, ValueError) as exc:
        raise UlffnError(f"{source}: input size {size!r} in its metadata is not a number") from exc
    if not OUTPUT_STRIDE <= value <= MAX_INPUT_SIZE or value % OUTPUT_STRIDE:
        raise UlffnError(f"{source}: input size {value} in its metadata is out of range (a multiple of "
                         f"{OUTPUT_STRIDE} from {OUTPUT_STRIDE} to {MAX_INPUT_SIZE})",
                         "the file was altered or not written by ulffn-deploy; use the original or export it again")
    return value


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
    problem = _sidecar_field_problem(data)
    if problem:
        raise UlffnError(f"{path}: {problem}", hint)
    if data["version"] > SIDECAR_VERSION:
        raise UlffnError(f"{path}: sidecar version {data['version']} is newer than this ulffn-deploy", "upgrade")
    return data


_CAPABILITY = re.compile(r"\d{1,3}(\.\d{1,3})?")


def _sidecar_field_problem(data: Mapping[str, Any]) -> str | None:
    """What is wrong with the sidecar fields code relies on (type and form), or None."""
    version, gpu, flags = data.get("version"), data.get("gpu"), data.get("build_flags")
    if type(version) is not int:  # noqa: E721 - bool and float are not versions
        return f"sidecar version {_short(version)} is not an integer"
    objects = {"gpu": gpu, "build_flags": flags, **{key: data.get(key) for key in ("ir", "cpu", "source_onnx")}}
    for name, value in objects.items():
        if value is not None and not isinstance(value, dict):
            return f"sidecar field {name} is {_short(value)}, not an object"
    capability = (gpu or {}).get("compute_capability")
    if capability is not None and not (isinstance(capability, str) and _CAPABILITY.fullmatch(capability)):
        return f"sidecar compute_capability {_short(capability)} is not a number like '8.9'"
    for name in ("tensorrt_version", "build_command"):
        if data.get(name) is not None and not isinstance(data[name], str):
            return f"sidecar field {name} is {_short(data[name])}, not a string"
    return None


def _short(value: Any) -> str:
    """A value for a one-line message: repr, control characters escaped, at most 40 characters."""
    text = repr(value).encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= 40 else text[:37] + "..."


def shown_build_command(sidecar: Mapping[str, Any]) -> str | None:
    """The sidecar's ``build_command`` when it is safe to show and paste: a plain ``ulffn-deploy ...`` command
    line of printable characters, quoted exactly as ``shlex.join`` quotes it (so no shell syntax); else None."""
    command = sidecar.get("build_command")
    if not isinstance(command, str) or not command.isprintable() or len(command) > 2000:
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if len(words) < 2 or words[0] != "ulffn-deploy" or shlex.join(words) != command:
        return None
    return command


def load_onnx(path: str | os.PathLike[str], hint: str | None = None) -> onnx.ModelProto:
    """Read an ONNX model (needs the onnx package); a missing, unreadable or non-ONNX file is a one-line UlffnError."""
    from google.protobuf.message import DecodeError

    from ulffn_deploy.deps import require

    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise UlffnError(f"{path}: no such ONNX file", "run 'ulffn-deploy export' first or check the path")
    try:
        model = onnx.load(str(path))
    except onnx.checker.ValidationError as exc:  # external data that is missing or outside the model's folder
        raise UlffnError(f"{path}: its external data is missing or outside its folder ({' '.join(str(exc).split())[:300]})",
                         "keep the model's .data file(s) beside it, under the name the model records") from exc
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise UlffnError(f"{path}: not an ONNX model, or unreadable ({type(exc).__name__})", hint) from exc
    if model.ir_version == 0 or not model.graph.node or not model.opset_import:
        raise UlffnError(f"{path}: not an ONNX model (no graph or opset in the file)", hint)
    return model


def set_metadata(model: onnx.ModelProto, metadata: ArtifactMetadata) -> None:
    """Replace an in-memory ONNX model's ``ulffn.*`` metadata_props (other entries are kept)."""
    props = metadata.to_props()
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in kept + sorted(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def get_metadata(model: onnx.ModelProto, source: str | os.PathLike[str] = "model") -> ArtifactMetadata:
    """The metadata of an in-memory ONNX model."""
    return ArtifactMetadata.from_mapping({p.key: p.value for p in model.metadata_props}, source)


def read_metadata(path: str | os.PathLike[str]) -> ArtifactMetadata:
    """The metadata of an ONNX file, read through ONNX Runtime (the onnx package is not needed)."""
    from ulffn_deploy.onnx_session import open_onnx, session_metadata

    return session_metadata(open_onnx(path), path)


def runs_as_text(precision: str, runs_as: str | None) -> str:
    """The file's precision, and what really computes (``runs_as``) when that differs: ``fp16 (runs bf16)``."""
    return precision if not runs_as or runs_as == precision else f"{precision} (runs {runs_as})"
