"""``calibrate``: FP32 ONNX + calibration images -> model.int8.onnx, its ranges file and its report."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ulffn_deploy.contract import recorded_keep_rules
from ulffn_deploy.deps import require
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export.trt_gate import check_onnx
from ulffn_deploy.fileio import atomic_path, check_writable_file, output_errors, write_json_atomic
from ulffn_deploy.runtime.metadata import ArtifactMetadata, set_metadata

from .quantize import (
    Log,
    Ranges,
    check_onnxruntime,
    compute_ranges,
    plan_exclusions,
    prepare_model,
    quantize_with_ranges,
)
from .ranges import fingerprint, load_ranges, ranges_path, save_ranges
from .reader import ImageSet, evenly_spaced, find_images, held_out_images
from .report import compare_outputs, format_report, graph_summary
from .sensitivity import candidate_nodes, format_sensitivity, layer_sensitivity
from .source import SourceModel, load_source_model

DEFAULT_MODEL = Path("artifacts") / "model.fp32.onnx"
SENSITIVITY_IMAGES = 16


def default_output(fp32_path: str | os.PathLike[str]) -> Path:
    """model.fp32.onnx -> model.int8.onnx beside it (any other name.onnx -> name.int8.onnx)."""
    path = Path(fp32_path)
    stem = path.name.removesuffix(".onnx").removesuffix(".fp32")
    return path.with_name(f"{stem}.int8.onnx")


def report_path(int8_path: str | os.PathLike[str]) -> Path:
    path = Path(int8_path)
    return path.with_name(path.name.removesuffix(".onnx") + ".report.json")


def _opset(model: Any) -> int:
    return next(int(e.version) for e in model.opset_import if e.domain in ("", "ai.onnx"))


def calibrate(
    model_path: str | os.PathLike[str] = DEFAULT_MODEL,
    data: str | os.PathLike[str] = Path("artifacts") / "data",
    output: str | os.PathLike[str] | None = None,
    *,
    method: str = "percentile",
    num_images: int = 64,
    split: str = "train",
    exclude: Iterable[str] = (),
    num_eval: int = 32,
    sensitivity: bool = False,
    log: Log = print,
) -> dict[str, Any]:
    """Write the Q/DQ INT8 model of ``model_path`` (default: model.int8.onnx beside it), its ranges file and
    its report (model.int8.report.json); return the report. Ranges are reused when the FP32 model, method,
    preprocessing and calibration images are unchanged. ``sensitivity`` adds a per-layer sensitivity table."""
    require("onnx")
    check_onnxruntime()
    if num_images < 1:
        raise UlffnError(f"--num-images {num_images}: need at least one calibration image")
    fp32, source = load_source_model(model_path)
    output = Path(output) if output is not None else default_output(source.path)
    if output.resolve() == source.path.resolve():
        raise UlffnError(f"{output}: the output would overwrite the FP32 model", "choose another -o path")
    check_writable_file(output)  # before the long run, not after it
    found = find_images(data, split)
    images = found.subset(evenly_spaced(len(found), num_images))
    excluded = plan_exclusions(fp32.graph, exclude, recorded_keep_rules(source.metadata.extra))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ulffn-calib-") as tmp, ExitStack() as commit:
        staged = _stage(commit, output)
        prepared = prepare_model(source.path, tmp)
        ranges, status = _ranges(prepared, source, images, method, ranges_path(output), log, staged["ranges"])
        int8 = quantize_with_ranges(prepared, ranges, method, excluded)
        _finish(int8, fp32, source.metadata)
        int8_bytes = int8.SerializeToString()
        with output_errors(output):
            staged["model"].write_bytes(int8_bytes)
        seconds = time.perf_counter() - started
        gate = check_onnx(staged["model"], what=f"the INT8 graph {output.name}")
        held_out = held_out_images(data, split, images, num_eval) if num_eval else ImageSet((), (), "--num-eval 0")
        report = {
            "fp32_model": str(source.path), "int8_model": str(output), "opset": _opset(int8),
            "int8_sha256": hashlib.sha256(int8_bytes).hexdigest(),
            "fp32_sha256": source.sha256,
            "calibration": {"method": method, "images": len(images), "source": images.source, "ranges": status,
                            "ranges_file": str(ranges_path(output)), "seconds": round(seconds, 2),
                            "files": recorded_paths(images.images, output.parent)},
            "graph": graph_summary(int8, excluded),
            "tensorrt_check": gate.describe(),
            "accuracy": compare_outputs(source.path, int8_bytes, held_out),
        }
        rows = []
        if sensitivity:
            log("measuring per-layer sensitivity (one convolution quantized at a time)")
            probe = [images.images[i] for i in evenly_spaced(len(images), SENSITIVITY_IMAGES)]
            rows = layer_sensitivity(prepared, ranges, method, candidate_nodes(prepared, excluded), probe,
                                     source.preprocessing, source.input_name)
            report["sensitivity"] = rows
        write_json_atomic(staged["report"], report)
    log(format_report(report))
    log(f"{output.name}: {report['tensorrt_check']}")
    if rows:
        log(format_sensitivity(rows))
    return report


def recorded_paths(paths: Iterable[Path], folder: Path) -> list[str]:
    """The calibration images as the report records them (for builds that quantise again, e.g. OpenVINO's):
    relative to the report's folder where they lie under it, else absolute."""
    base = folder.resolve()
    recorded = []
    for path in paths:
        resolved = Path(path).resolve()
        recorded.append(str(resolved.relative_to(base)) if resolved.is_relative_to(base) else str(resolved))
    return recorded


def _stage(commit: ExitStack, output: Path) -> dict[str, Path]:
    """Temporary files beside the report, the model and the ranges file; ``commit`` renames them onto their
    names together (ranges, model, then report), only once every check has passed."""
    return {"report": commit.enter_context(atomic_path(report_path(output))),
            "model": commit.enter_context(atomic_path(output)),
            "ranges": commit.enter_context(atomic_path(ranges_path(output)))}


def _ranges(prepared: Path, source: SourceModel, images: ImageSet, method: str, path: Path, log: Log,
            save_to: Path) -> tuple[Ranges, str]:
    """The ranges stored at ``path`` when their fingerprint matches, else freshly computed ones; either way
    written to ``save_to`` (the ranges file's staged copy)."""
    expected = fingerprint(source, images.images, method)
    ranges, status = load_ranges(path, expected)
    if ranges is not None:
        save_ranges(save_to, expected, ranges)
        return ranges, status
    log(f"calibrating ({method}) on {len(images)} images from {images.source} ({status})")
    ranges = compute_ranges(prepared, images.images, source.preprocessing, source.input_name, method,
                            _width(source.metadata), log)
    save_ranges(save_to, expected, ranges)
    return ranges, f"ranges computed, saved to {path.name}"


def _width(metadata: ArtifactMetadata) -> int:
    """The network width that sizes calibration chunks; 64 (ULFFN's widest) for a model that is not ULFFN."""
    return metadata.model_config.width if metadata.model_config else 64


def _finish(int8: Any, fp32: Any, metadata: ArtifactMetadata) -> None:
    """The FP32 model's metadata_props with precision int8 (not ONNX Runtime's own markers); same opset."""
    del int8.metadata_props[:]
    int8.metadata_props.extend(fp32.metadata_props)
    set_metadata(int8, metadata.with_precision("int8"))
    if _opset(int8) != _opset(fp32):
        raise UlffnError(f"quantization changed the opset from {_opset(fp32)} to {_opset(int8)}",
                         "report this: TensorRT's parser needs the exported opset")
