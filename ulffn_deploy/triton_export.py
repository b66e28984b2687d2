"""A model repository for the official Triton Inference Server container, from built artifacts.

One model per artifact kind and precision, each ``REPO/<model>/config.pbtxt`` plus ``REPO/<model>/1/<file>``
(Triton's model repository layout): TensorRT plans as ``tensorrt_plan`` (several engines of one precision
become one model with a ``cc_model_filenames`` entry per compute capability), ONNX files as
``onnxruntime_onnx`` (CPU or GPU instances), OpenVINO IR as the ``openvino`` backend (CPU). Inputs,
outputs and dims come from the artifact (``dims`` exclude the batch dimension; -1 where height and width
are dynamic). Each config carries the artifact's ``ulffn.*`` metadata as parameters, which is what
``ulffn_deploy.targets.triton.segment_images`` and the ``triton`` target read to preprocess on the client, so
clients get the same masks as ``predict``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.runtime.metadata import ArtifactMetadata, read_sidecar

DEVICES = ("cpu", "gpu")
_ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}
KIND = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}
SHORT = {"tensorrt": "trt", "onnxruntime": "onnx", "openvino": "openvino"}


@dataclass
class RepoModel:
    """One model of the repository: its name, config fields and the files that go into version 1."""

    name: str
    target: str
    metadata: ArtifactMetadata
    input_name: str
    output_name: str
    spatial: tuple[int, int]  # -1 where dynamic
    max_batch: int
    data_type: str = "TYPE_FP32"
    files: dict[str, Path] = field(default_factory=dict)  # name in 1/ -> source file
    cc_files: dict[str, str] = field(default_factory=dict)  # compute capability -> file name in 1/
    sources: list[Path] = field(default_factory=list)


def _parameters(model: RepoModel) -> dict[str, str]:
    from ulffn_deploy import __version__
    from ulffn_deploy.fileio import sha256_file

    fields = {key: value for key, value in model.metadata.to_dict().items() if value is not None}
    fields.update(artifact=", ".join(p.name for p in model.sources), backend=model.target,
                  sha256=", ".join(sha256_file(p) for p in model.sources), exporter_toolkit_version=__version__)
    return {"ulffn." + key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in fields.items()}


def _quoted(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid protobuf text-format string


def config_text(model: RepoModel, device: str, queue_delay_us: int) -> str:
    """``config.pbtxt`` for ``model`` (Triton's ModelConfig in protobuf text format)."""
    height, width = model.spatial
    lines = [f"name: {_quoted(model.name)}"]
    if model.target == "openvino":
        lines.append('backend: "openvino"')
    else:
        lines.append(f"platform: {_quoted(KIND[model.target])}")
    lines.append(f"max_batch_size: {model.max_batch}")
    batch_dims = [] if model.max_batch else [-1]
    for section, name, channels, data_type in (("input", model.input_name, 3, model.data_type),
                                               ("output", model.output_name, 2, "TYPE_FP32")):
        dims = ", ".join(str(d) for d in (*batch_dims, channels, height, width))
        lines.append(f"{section} [ {{ name: {_quoted(name)} data_type: {data_type} dims: [ {dims} ] }} ]")
    kind = "KIND_GPU" if model.target == "tensorrt" or (device == "gpu" and model.target == "onnxruntime") else "KIND_CPU"
    lines.append(f"instance_group [ {{ count: 1 kind: {kind} }} ]")
    if model.max_batch:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}")
    if model.cc_files:
        entries = ", ".join(f"{{ key: {_quoted(cc)} value: {_quoted(name)} }}" for cc, name in sorted(model.cc_files.items()))
        lines.append(f"cc_model_filenames [ {entries} ]")
    default = next(iter(model.files)) if not model.cc_files else None
    if default:
        lines.append(f"default_model_filename: {_quoted(default)}")
    for key, value in _parameters(model).items():
        lines.append(f"parameters {{ key: {_quoted(key)} value: {{ string_value: {_quoted(value)} }} }}")
    return "\n".join(lines) + "\n"


def _onnx_model(path: Path, max_batch: int) -> RepoModel:
    from ulffn_deploy.targets.onnx_source import describe_onnx

    source = describe_onnx(path)
    batch, height, width = (d if d is not None else -1 for d in (source.input_shape[0], *source.input_shape[2:]))
    model = RepoModel(f"ulffn_onnx_{source.metadata.precision}", "onnxruntime", source.metadata, source.input_name,
                      source.output_name, (height, width), 0 if batch > 0 else max_batch,
                      _ORT_TYPES.get(source.input_type, "TYPE_FP32"))
    model.files["model.onnx"] = path
    model.sources.append(path)
    return model


def _sidecar_model(path: Path, target: str, max_batch: int) -> tuple[RepoModel, dict[str, Any]]:
    sidecar = read_sidecar(path)
    metadata = ArtifactMetadata.from_mapping(sidecar, path)
    input_name, output_name = str(sidecar.get("input_name", "image")), str(sidecar.get("output_name", "probabilities"))
    size = metadata.input_size
    spatial: tuple[int, int] = (size, size)
    profile = (sidecar.get("profile") or {}).get(input_name)
    if profile:
        low, high = profile["min"], profile["max"]
        spatial = (low[2] if low[2] == high[2] else -1, low[3] if low[3] == high[3] else -1)
        max_batch = min(max_batch, int(high[0]))
    model = RepoModel(f"ulffn_{SHORT[target]}_{metadata.precision}", target, metadata, input_name, output_name, spatial,
                      max_batch)
    model.sources.append(path)
    return model, sidecar


def _engine_model(paths: Sequence[Path], max_batch: int) -> RepoModel:
    """One tensorrt_plan model from engines of one precision: one file each, keyed by compute capability."""
    model, _ = _sidecar_model(paths[0], "tensorrt", max_batch)
    if len(paths) == 1:
        model.files["model.plan"] = paths[0]
        return model
    for path in paths:
        other, sidecar = _sidecar_model(path, "tensorrt", max_batch)
        if (other.input_name, other.output_name, other.spatial) != (model.input_name, model.output_name, model.spatial):
            raise UlffnError(f"{path.name} and {paths[0].name} differ in inputs or shapes", "export them separately")
        capability = str((sidecar.get("gpu") or {}).get("compute_capability", ""))
        if not capability or capability in model.cc_files:
            raise UlffnError(f"{path.name}: engines of one precision need distinct recorded compute capabilities",
                             "give one engine per GPU architecture")
        name = f"model_sm{capability.replace('.', '')}.plan"
        model.files[name] = path
        model.cc_files[capability] = name
        model.max_batch = min(model.max_batch, other.max_batch)
        if path is not paths[0]:
            model.sources.append(path)
    return model


def collect_models(artifacts: Sequence[Path], max_batch: int) -> list[RepoModel]:
    """Group ``artifacts`` into repository models (by target and precision)."""
    from ulffn_deploy.targets.registry import target_for_path

    models: dict[str, RepoModel] = {}
    engines: dict[str, list[Path]] = {}
    for path in artifacts:
        if not path.is_file():
            raise UlffnError(f"{path}: no such artifact")
        stale = target_for_path(path).stale_problem(path)
        if stale:
            raise UlffnError(stale)
        target = target_for_path(path).name
        if target == "tensorrt":
            engines.setdefault(ArtifactMetadata.from_mapping(read_sidecar(path), path).precision, []).append(path)
            continue
        if target == "onnxruntime":
            model = _onnx_model(path, max_batch)
        elif target == "openvino":
            model, _ = _sidecar_model(path, "openvino", max_batch)
            xml, weights = target_for_path(path).artifact_files(path)[:2]  # the .xml, then its .bin
            model.files.update({"model.xml": xml, "model.bin": weights})
        else:
            raise UlffnError(f"{path.name}: Triton has no backend for {target} artifacts here",
                             "export ONNX, TensorRT engines or OpenVINO IR")
        if model.name in models:
            model.name = f"{model.name}_{len(models)}"  # e.g. model.fp32.onnx and model.fp32.ort.onnx
        models[model.name] = model
    for paths in engines.values():
        model = _engine_model(paths, max_batch)
        models[model.name] = model
    return list(models.values())


def default_artifacts(folder: Path, log: Callable[[str], None] | None = None) -> list[Path]:
    """Every artifact in ``folder`` that Triton can serve (engines, ONNX files and OpenVINO IR), whether or not
    it runs on this machine; stale or incomplete ones are skipped with a warning (``log``)."""
    from dataclasses import replace

    from ulffn_deploy.targets.registry import candidates, warn_stale

    found = [replace(c, stale=c.target.stale_problem(c.path)) for c in candidates(folder) if c.target.name in KIND]
    warn_stale(found, log)
    return [c.path for c in found if not c.stale]


def export_repository(repo: str | os.PathLike[str], artifacts: Sequence[str | os.PathLike[str]], device: str = "cpu",
                      max_batch: int = 8, queue_delay_us: int = 2000, force: bool = False,
                      log: Callable[[str], None] = lambda message: None) -> list[Path]:
    """Write one model folder per repository model into ``repo``; returns the config.pbtxt paths."""
    if device not in DEVICES:
        raise UlffnError(f"unknown device {device!r}", f"use one of {', '.join(DEVICES)}")
    if max_batch < 1:
        raise UlffnError(f"--max-batch {max_batch} is not positive")
    models = collect_models([Path(a) for a in artifacts], max_batch)
    if not models:
        raise UlffnError("no artifacts to export", "name them, or build some with 'ulffn-deploy build-engine'")
    root = Path(repo)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for model in models:
        final = root / model.name
        if final.exists() and not force:
            raise UlffnError(f"{final} exists", "pass --force to replace it")
        staging = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=root))
        try:
            (staging / "1").mkdir()
            for name, source in model.files.items():
                shutil.copyfile(source, staging / "1" / name)
            (staging / "config.pbtxt").write_text(config_text(model, device, queue_delay_us), encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log(f"{final}: {KIND[model.target]} from {', '.join(p.name for p in model.sources)}")
        written.append(final / "config.pbtxt")
    return written
