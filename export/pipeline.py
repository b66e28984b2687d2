"""Checkpoint -> model.fp32.onnx + model.fp16.onnx, linted for TensorRT and checked against PyTorch.

Both graphs are built in memory. Each precision's file is written to a temporary name beside its target,
checked there (ONNX checker, TensorRT's parser and builder, the harness's comparison with the PyTorch checkpoint in ONNX
Runtime on realistic images, gated by that precision's row of ``harness.TOLERANCES``) and renamed only if
its own checks pass: a failing FP16 never costs the FP32 model (an older file of a failed precision stays
as it was). ``ExportResult.failed`` names the precisions that were not written, and why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulffn_deploy import __version__
from ulffn_deploy.deps import require
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export.fp16 import convert_to_fp16
from ulffn_deploy.export.graph import slim
from ulffn_deploy.export.lint import op_summary
from ulffn_deploy.export.onnx_export import ExportOptions, WithSoftmax, fp32_scopes, torch_to_onnx
from ulffn_deploy.export.trt_gate import check_onnx
from ulffn_deploy.fileio import atomic_path, sha256_file
from ulffn_deploy.harness import (
    Check,
    Comparison,
    ImageSource,
    check,
    compare,
    failures,
    format_comparisons,
    image_source,
    passed,
    tolerance_for,
)
from ulffn_deploy.runtime.metadata import ArtifactMetadata, set_metadata

if TYPE_CHECKING:
    import onnx

    from ulffn_deploy.runtime import Segmenter

FILE_NAMES = {"fp32": "model.fp32.onnx", "fp16": "model.fp16.onnx"}
PARITY_BATCH = 4  # images per inference call: bounds memory at 512 x 512


@dataclass
class ExportResult:
    paths: dict[str, Path]  # precision -> written file (those that passed their checks)
    comparisons: dict[str, Comparison] = field(default_factory=dict)  # precision -> against PyTorch
    checks: dict[str, list[Check]] = field(default_factory=dict)  # precision -> its tolerance gates
    failed: dict[str, str] = field(default_factory=dict)  # precision -> why its file was not written
    summaries: dict[str, str] = field(default_factory=dict)  # precision -> lint's "ok: ..." line


def metadata_from_checkpoint(info: Mapping[str, Any], checkpoint: str | os.PathLike[str]) -> ArtifactMetadata:
    """The ``ulffn.*`` metadata of the FP32 model exported from ``checkpoint`` (its info dict given)."""
    metadata = ArtifactMetadata.from_checkpoint(info, checkpoint, sha256_file(checkpoint))
    return replace(metadata, toolkit_version=__version__)


def lint_or_fail(model: onnx.ModelProto, path: Path, what: str) -> str:
    """Parse and build the written file ``path`` (of ``model``) with TensorRT (see ``trt_gate``); a one-line
    UlffnError naming the refused node; else lint's "ok: ..." line and which check ran."""
    result = check_onnx(path, what=f"the {what} graph")
    return f"{op_summary(model)}; {result.describe()}"


def prepare_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` or fail in one line before any work is done."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UlffnError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}",
                         "choose another folder with -o") from exc
    if not os.access(out_dir, os.W_OK):
        raise UlffnError(f"the output folder {out_dir} is not writable", "choose another folder with -o")


def build_graphs(model: Any, meta: ArtifactMetadata, options: ExportOptions) -> dict[str, onnx.ModelProto]:
    """The FP32 and FP16 graphs of ``model``, cleaned, with metadata, lint-clean."""
    fp32 = slim(torch_to_onnx(model, meta.input_size, options))
    fp16 = convert_to_fp16(fp32, fp32_scopes(WithSoftmax(model)))
    graphs = {"fp32": fp32, "fp16": fp16}
    for precision, graph in graphs.items():
        set_metadata(graph, meta.with_precision(precision))
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
    require("onnx")
    from ulffn_deploy.checkpoint import load_model
    from ulffn_deploy.runtime import Segmenter

    out = Path(out_dir)
    model, info = load_model(checkpoint)
    prepare_output_dir(out)
    meta = metadata_from_checkpoint(info, checkpoint)
    graphs = build_graphs(model, meta, options or ExportOptions())
    source = image_source(data, images, meta.input_size)
    result = ExportResult({})
    with Segmenter.load(checkpoint, backend="pytorch") as reference:
        for precision, graph in graphs.items():
            _export_one(precision, graph, out / FILE_NAMES[precision], reference, source, result)
    log(format_comparisons({p: (c, result.checks[p]) for p, c in result.comparisons.items()}))
    return result


class _Rejected(Exception):
    """A precision missed its tolerances: raised inside ``atomic_path`` so that nothing is renamed."""


def _export_one(precision: str, graph: onnx.ModelProto, path: Path, reference: Segmenter, source: ImageSource,
                result: ExportResult) -> None:
    """Check one precision's graph and write it to ``path`` if it passes; record the outcome in ``result``."""
    import onnx

    from ulffn_deploy.runtime import Segmenter

    try:
        onnx.checker.check_model(graph, full_check=True)
    except onnx.checker.ValidationError as exc:
        result.failed[precision] = str(exc)
        return
    try:
        with atomic_path(path) as tmp:
            onnx.save(graph, str(tmp))
            try:
                result.summaries[precision] = lint_or_fail(graph, tmp, precision)
            except UlffnError as refused:
                raise _Rejected(str(refused)) from refused
            with Segmenter.load(tmp, backend="onnxruntime") as candidate:
                comparison = compare(reference, candidate, source, batch_size=PARITY_BATCH)
            checks = check(comparison, tolerance_for(precision))
            result.comparisons[precision], result.checks[precision] = comparison, checks
            if not passed(checks):
                raise _Rejected("; ".join(failures(checks)))
    except _Rejected as rejected:  # atomic_path removed the temporary file; an older file stays
        result.failed[precision] = str(rejected)
        return
    except OSError as exc:
        raise UlffnError(f"cannot write {path}: {exc.strerror or exc}", "check free space and permissions") from exc
    result.paths[precision] = path
