"""Checkpoint -> model.fp32.onnx + model.fp16.onnx, linted for TensorRT and checked against PyTorch.

Both files are built in memory, written to temporary names beside their targets, checked there (ONNX
checker, TensorRT lint, parity in ONNX Runtime on realistic images) and renamed only if every check
passes: a failed export leaves neither file behind (an older export of the same name stays as it was).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulffn_deploy import __version__
from ulffn_deploy.config import ModelConfig, Normalization
from ulffn_deploy.deps import require
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export.fp16 import convert_to_fp16
from ulffn_deploy.export.graph import slim
from ulffn_deploy.export.lint import lint_model, op_summary
from ulffn_deploy.export.onnx_export import ExportOptions, WithSoftmax, fp32_scopes, torch_to_onnx
from ulffn_deploy.export.parity import (
    format_parity_table,
    parity_batch,
    parity_images,
    parity_report,
    torch_probabilities,
)
from ulffn_deploy.fileio import atomic_path, sha256_file
from ulffn_deploy.onnx_meta import set_metadata

if TYPE_CHECKING:
    import onnx

FILE_NAMES = {"fp32": "model.fp32.onnx", "fp16": "model.fp16.onnx"}


@dataclass
class ExportResult:
    paths: dict[str, Path]  # precision -> written file
    reports: list[dict[str, Any]]  # parity, one per precision
    summaries: dict[str, str] = field(default_factory=dict)  # precision -> lint's "ok: ..." line


def metadata_from_checkpoint(info: Mapping[str, Any], checkpoint_sha256: str) -> dict[str, Any]:
    """The ``ulffn.*`` metadata (precision left to the caller) from a checkpoint's info dict."""
    return {
        "model_config": ModelConfig.from_dict(info["model_config"]),
        "normalization": Normalization.from_dict(info["normalization"]),
        "input_size": int(info["input_size"]),
        "fit_mode": str(info["fit_mode"]),
        "checkpoint_sha256": checkpoint_sha256,
        "toolkit_version": __version__,
    }


def lint_or_fail(model: onnx.ModelProto, what: str) -> str:
    """Lint ``model`` for TensorRT; a UlffnError listing the offending nodes if it is not clean."""
    issues = lint_model(model)
    if issues:
        listed = "; ".join(str(issue) for issue in issues[:5]) + (" ..." if len(issues) > 5 else "")
        raise UlffnError(f"the {what} graph would not parse in TensorRT: {len(issues)} problems: {listed}")
    return op_summary(model)


def prepare_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` or fail in one line before any work is done."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UlffnError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}",
                         "choose another folder with -o") from exc
    if not os.access(out_dir, os.W_OK):
        raise UlffnError(f"the output folder {out_dir} is not writable", "choose another folder with -o")


def build_graphs(model: Any, meta: Mapping[str, Any], options: ExportOptions) -> dict[str, onnx.ModelProto]:
    """The FP32 and FP16 graphs of ``model``, cleaned, with metadata, lint-clean."""
    fp32 = slim(torch_to_onnx(model, int(meta["input_size"]), options))
    fp16 = convert_to_fp16(fp32, fp32_scopes(WithSoftmax(model)))
    graphs = {"fp32": fp32, "fp16": fp16}
    for precision, graph in graphs.items():
        set_metadata(graph, {**meta, "precision": precision})
    return graphs


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    images: int = 8,
    data: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export ``checkpoint`` to ``out_dir``/model.fp32.onnx and model.fp16.onnx (see the module docstring)."""
    onnx = require("onnx")
    from ulffn_deploy.checkpoint import load_model

    out = Path(out_dir)
    model, info = load_model(checkpoint)
    prepare_output_dir(out)
    meta = metadata_from_checkpoint(info, sha256_file(checkpoint))
    graphs = build_graphs(model, meta, options or ExportOptions())
    summaries = {precision: lint_or_fail(graph, precision) for precision, graph in graphs.items()}
    for graph in graphs.values():
        onnx.checker.check_model(graph, full_check=True)

    size, normalization = int(meta["input_size"]), meta["normalization"]
    batch = parity_batch(parity_images(images, size, data), size, str(meta["fit_mode"]), normalization)
    reference = torch_probabilities(model, batch)
    paths = {precision: out / name for precision, name in FILE_NAMES.items()}
    try:
        with atomic_path(paths["fp32"]) as tmp32, atomic_path(paths["fp16"]) as tmp16:
            temporary = {"fp32": tmp32, "fp16": tmp16}
            for precision, graph in graphs.items():
                onnx.save(graph, str(temporary[precision]))
            reports = [parity_report(temporary[p], reference, batch, p) for p in graphs]
            log(format_parity_table(reports))
            failed = [f"{r['precision']}: {'; '.join(r['failures'])}" for r in reports if not r["passed"]]
            if failed:
                raise UlffnError(f"ONNX parity check failed ({', '.join(failed)}); no ONNX file written",
                                 "check the export options, or report the model and this table")
    except OSError as exc:
        raise UlffnError(f"cannot write to {out}: {exc.strerror or exc}", "check free space and permissions") from exc
    return ExportResult(paths, reports, summaries)
