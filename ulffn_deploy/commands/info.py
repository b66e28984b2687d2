"""``ulffn-deploy info``: describe an artifact or checkpoint, or a ULFFN configuration's size and cost.

With a file: backend (its target's description), precision, input size, metadata, the size of its model
files and SHA-256, the sidecar's fields (source model, build flags, versions, per-precision layer counts
where recorded) and whether it runs here (the registry's verdict, stale artifacts included). ONNX files
are read with ONNX Runtime and engines from their sidecars only, so neither needs torch (nor TensorRT).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from ulffn_deploy.config import DEFAULT_SIZE, VARIANTS, ModelConfig
from ulffn_deploy.deps import require
from ulffn_deploy.errors import UlffnError

# sidecar fields shown elsewhere (the metadata, the build command checked before it is shown) or not for people
SIDECAR_HIDDEN = frozenset({"format", "version", "build_command", "layer_precisions", "source_onnx", "input_name",
                            "output_name", "normalization", "input_size", "fit_mode", "precision", "model_config",
                            "checkpoint_sha256", "model", "keep_fp32", "model_contract"})


def format_info(info: dict[str, Any]) -> str:
    """The human-readable table printed by ``info`` for a configuration."""
    size = info["input_size"]
    rows = [
        ("model", f"ULFFN {info['variant']}, base width {info['width']}"),
        ("parameters", f"{info['parameters']:,}"),
        (f"GFLOPs / {size}x{size} image", f"{info['gflops']:.2f} ({info['flop_convention']})"),
        ("output stride", str(info["output_stride"])),
    ]
    return _table(rows)


def _table(rows: list[tuple[str, str]]) -> str:
    pad = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{pad}}  {value}" for name, value in rows)


# -- describing a file --------------------------------------------------------------------------------
def describe_artifact(path: str | Path) -> dict[str, Any]:
    """What ``path`` is, JSON-ready: any artifact the registry knows, or a training checkpoint."""
    from ulffn_deploy.fileio import sha256_file
    from ulffn_deploy.runtime.metadata import sidecar_path
    from ulffn_deploy.targets.registry import target_for_path

    path = Path(path)
    target = target_for_path(path)
    if not path.is_file():
        raise UlffnError(f"{path}: no such model file", "pass an artifact (model.<precision>.*) or a checkpoint (best.pt)")
    described: dict[str, Any] = {"path": str(path), "backend": target.name, "backend_title": target.title,
                                 "description": target.description, "runs_on": target.runs_on,
                                 "file_bytes": target.model_bytes(path), "sha256": sha256_file(path),
                                 "files": [p.name for p in target.artifact_files(path)],
                                 "versions_here": target.versions()}
    described.update(target.describe_file(path))
    if sidecar_path(path).is_file():
        described["sidecar"] = _describe_sidecar(path)
        described.setdefault("metadata", described["sidecar"].pop("metadata"))
    if "metadata" not in described:
        raise UlffnError(f"{path}: its metadata sidecar {sidecar_path(path).name} is missing",
                         "rebuild it with 'ulffn-deploy build-engine', which writes the sidecar")
    problem = _problem(target, path)
    if problem and target.unavailable_reason():
        problem += f"; it runs on {target.runs_on} (checked here: {target.checked_here(path)})"
    described["runs_here"] = f"no: {problem}" if problem else "yes"
    return described


def _describe_sidecar(path: Path) -> dict[str, Any]:
    from ulffn_deploy.runtime.metadata import ArtifactMetadata, read_sidecar, shown_build_command, sidecar_path

    sidecar = read_sidecar(path)
    described = {key: value for key, value in sidecar.items() if key not in SIDECAR_HIDDEN and value is not None}
    described["file"] = sidecar_path(path).name
    described["metadata"] = ArtifactMetadata.from_mapping(sidecar, sidecar_path(path)).to_dict()
    if isinstance(sidecar.get("source_onnx"), Mapping):
        described["source_onnx"] = dict(sidecar["source_onnx"])
    command = shown_build_command(sidecar)
    if command:
        described["build_command"] = command
    counts = layer_counts(sidecar.get("layer_precisions"))
    if counts:
        described["layer_counts"] = counts
    return described


def layer_counts(value: Any) -> dict[str, int] | None:
    """Layers per precision from a sidecar's ``layer_precisions`` ({precision: count}, as a build writes it);
    None when absent or not of that shape."""
    if isinstance(value, Mapping) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        return {str(k): int(v) for k, v in value.items()}
    return None


def _problem(target: Any, path: Path) -> str | None:
    try:
        return target.problem_here(path)  # type: ignore[no-any-return]
    except UlffnError as exc:
        return str(exc)


def _precision(meta: Mapping[str, Any], described: Mapping[str, Any]) -> str:
    from ulffn_deploy.runtime.metadata import runs_as_text

    return runs_as_text(meta["precision"], (described.get("sidecar") or {}).get("runs_as"))


def format_artifact(described: Mapping[str, Any]) -> str:
    """The table ``info FILE`` prints."""
    meta = described["metadata"]
    config = meta.get("model_config") or {}
    rows = [("file", described["path"]), ("backend", described["backend_title"]),
            *([("artifact", described["description"])] if described.get("description") else []),
            ("precision", _precision(meta, described)),
            ("input size", f"{meta['input_size']}x{meta['input_size']} (trained with fit {meta['fit_mode']})"),
            ("model", f"ULFFN {config['variant']}, base width {config['width']}" if config
             else f"{meta['model']} (imported with 'ulffn-deploy import-model')" if meta.get("model") else "not recorded"),
            ("normalization", f"mean {meta['normalization']['mean']}, std {meta['normalization']['std']}"),
            ("file size", f"{described['file_bytes'] / 1e6:.2f} MB ({described['file_bytes']:,} bytes"
                          + (f"; files {', '.join(described['files'])})" if len(described.get("files", [])) > 1 else ")")),
            ("sha256", described["sha256"])]
    rows += _optional_rows(described)
    rows.append(("runs here", described["runs_here"]))
    return _table(rows)


def _optional_rows(described: Mapping[str, Any]) -> list[tuple[str, str]]:
    meta, sidecar = described["metadata"], described.get("sidecar") or {}
    rows = []
    if "onnx" in described:
        onnx = described["onnx"]
        rows.append(("ONNX input", f"{onnx['input']} {' x '.join(map(str, onnx['input_shape']))}"))
    if "checkpoint" in described:
        ckpt = described["checkpoint"]
        kind = f"{ckpt['kind']}, " if ckpt["kind"] else ""
        rows.append(("checkpoint", f"{kind}epoch {ckpt['epoch']}, {ckpt['tensor_values'] or 0:,} weight and buffer values"
                                   f"{', resumable' if ckpt['resumable'] else ''}"))
    if meta.get("checkpoint_sha256"):
        rows.append(("checkpoint sha256", meta["checkpoint_sha256"]))
    if sidecar.get("source_onnx"):
        source = sidecar["source_onnx"]
        rows.append(("source ONNX", f"{source.get('file')} sha256 {source.get('sha256')}"))
    for key, label in (("build_flags", "build flags"), ("layer_counts", "layers by precision")):
        if sidecar.get(key):
            rows.append((label, ", ".join(f"{k} {v}" for k, v in sidecar[key].items())))
    versions = [f"{key.removesuffix('_version')} {value}" for key, value in sidecar.items()
                if key.endswith("_version") and isinstance(value, str)]
    if versions:
        rows.append(("built with versions", ", ".join(versions)))
    for key, label in (("build_command", "built with"), ("created", "built at")):
        if sidecar.get(key):
            rows.append((label, str(sidecar[key])))
    return rows


# -- the command --------------------------------------------------------------------------------------
@click.command(name="info")
@click.argument("model", required=False, type=click.Path())
@click.option("--variant", type=click.Choice(VARIANTS), default=None, help="Ablation variant. [default: w-ac]")
@click.option("--width", type=click.IntRange(min=8), default=None, help="Base width (multiple of 8). [default: 64]")
@click.option("--size", type=click.IntRange(min=8), default=None,
              help=f"Square input side (multiple of 8). [default: {DEFAULT_SIZE}]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(model: str | None, variant: str | None, width: int | None, size: int | None, as_json: bool) -> None:
    """Describe MODEL (an artifact such as model.fp32.onnx or model.fp16.engine, or a checkpoint such as
    best.pt): backend, precision, sizes, metadata, hashes and build details. Without MODEL, show the
    parameter count, GFLOPs per image and output stride of a ULFFN configuration (--variant, --width, --size)."""
    if model is not None:
        if (variant, width, size) != (None, None, None):
            raise UlffnError("--variant, --width and --size describe a configuration, not a model file",
                             f"use 'ulffn-deploy info {model}' alone")
        described = describe_artifact(model)
        click.echo(json.dumps(described, indent=2) if as_json else format_artifact(described))
        return
    require("torch")
    from ulffn_deploy.model import model_info

    info = model_info(ModelConfig(variant=variant or "w-ac", width=width or 64), size=size or DEFAULT_SIZE)
    click.echo(json.dumps(info, indent=2) if as_json else format_info(info))
