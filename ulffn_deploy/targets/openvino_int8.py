"""OpenVINO INT8: how an INT8 IR is made from ``calibrate``'s outputs, and what its runtime model runs.

Three ways (``int8_method``); ``auto`` is chosen by measurement (docs/openvino_int8.md):

- ``nncf``: NNCF's post-training quantisation of ``model.fp32.onnx`` with the calibration images that
  ``calibrate`` used (its report lists them) and the same FP32-keep rules (the model's ``keep_fp32`` metadata,
  else ULFFN's: CAM, input unit, head, softmax) as NNCF's ignored scope. OpenVINO places and fuses its own
  quantisation, so this is the fastest (full model on an AMX Xeon: 10.6x ONNX Runtime FP32, calibrate's file
  7.1x), and as accurate as calibrate's file with histogram activation ranges (NNCF's default min/max ranges
  fail the INT8 row on the 2-epoch quickstart model), on the AMX and the VNNI path alike. Needs the ``nncf``
  package (the ``export`` extra installs it; imported here only, when such an IR is built).
- ``qdq``: calibrate's ``model.int8.onnx`` as it is. Exact where OpenVINO runs its convolutions on signed
  int8 activations (AMX CPUs); where it switches them to unsigned (CPUs without AMX), OpenVINO 2026.4
  computes a signed-int8 Q/DQ that follows a Concat wrongly (docs/openvino_int8.md).
- ``uint8-qdq``: calibrate's file with its int8 (zero point 0) activation Q/DQ re-encoded as uint8 with zero
  point 128: the same grid, exact on every CPU, and the slowest of the three.

``auto`` takes ``nncf`` when NNCF is installed and calibrate's report names its calibration images (as they
are still), else ``qdq`` where OpenVINO runs that file's convolutions on signed int8
(:func:`keeps_signed_activations`); ``plan_method`` decides, else ``uint8-qdq``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ulffn_deploy.errors import UlffnError

INT8_METHODS = ("auto", "nncf", "qdq", "uint8-qdq")
NNCF_HINT = "pip install nncf (or build with --int8-method qdq / uint8-qdq)"
# runtimePrecision of a Convolution in OpenVINO's runtime model -> the label the sidecar counts
PRECISION_LABELS = {"u8": "int8", "i8": "int8", "bf16": "bf16", "f16": "fp16", "f32": "fp32"}


def nncf_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nncf") is not None


def report_path(int8_onnx: Path) -> Path:
    return int8_onnx.with_name(int8_onnx.name.removesuffix(".onnx") + ".report.json")


def calibration_record(int8_onnx: Path) -> tuple[Path, list[Path]] | None:
    """(model.fp32.onnx, calibration images) that ``calibrate`` made ``int8_onnx`` from, as its report records
    them; None when the report, the FP32 model or any image is missing or the FP32 model has changed."""
    from ulffn_deploy.fileio import sha256_file

    report = _read_json(report_path(int8_onnx))
    if not report:
        return None
    calibration = report.get("calibration") or {}
    folder = int8_onnx.parent
    fp32 = _existing([Path(str(report.get("fp32_model", ""))), folder / Path(str(report.get("fp32_model", ""))).name,
                      folder / "model.fp32.onnx"])
    files = calibration.get("files")
    if fp32 is None or not isinstance(files, list) or not files:
        return None
    images = [Path(f) if Path(f).is_absolute() else folder / f for f in files]
    if not all(image.is_file() for image in images):
        return None
    if report.get("fp32_sha256") and report["fp32_sha256"] != sha256_file(fp32):
        return None
    return fp32, images


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _existing(paths: Sequence[Path]) -> Path | None:
    return next((p for p in paths if str(p) not in ("", ".") and p.is_file()), None)


def keeps_signed_activations(int8_onnx: Path) -> bool:
    """Whether OpenVINO, compiling calibrate's file on this CPU, runs every int8 convolution on signed
    activations as the file says (it switches them to unsigned on CPUs without AMX: the buggy path)."""
    from ulffn_deploy.targets.openvino import core

    compiled = core().compile_model(core().read_model(os.fspath(int8_onnx)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return ("Convolution", "u8") not in _convolution_runtime_precisions(compiled)


def _convolution_runtime_precisions(compiled: Any) -> list[tuple[str, str]]:
    """(``layerType``, ``runtimePrecision``: u8, i8, bf16, ...; "?" when absent) of each convolution and group
    convolution the compiled model runs, read from its runtime model."""
    layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer_type = str(info["layerType"].astype(str)) if "layerType" in info else ""
        if layer_type in ("Convolution", "GroupConvolution"):
            layers.append((layer_type, str(info["runtimePrecision"].astype(str)) if "runtimePrecision" in info else "?"))
    return layers


def plan_method(requested: str, int8_onnx: Path) -> tuple[str, tuple[Path, list[Path]] | None]:
    """(the INT8 method a build uses, see the module docstring; for ``nncf`` its ``calibration_record``, read
    once); UlffnError when ``requested`` cannot run."""
    if requested not in INT8_METHODS:
        raise UlffnError(f"unknown INT8 method {requested!r}", f"use one of {', '.join(INT8_METHODS)}")
    record = calibration_record(int8_onnx) if requested in ("nncf", "auto") and nncf_available() else None
    if requested == "nncf" or record is not None:
        if not nncf_available():
            raise UlffnError("--int8-method nncf needs the nncf package, which is not installed", NNCF_HINT)
        if record is None:
            raise UlffnError(f"{report_path(int8_onnx).name} does not name calibration images that exist here "
                             "(or model.fp32.onnx changed since)", "run 'ulffn-deploy calibrate' again")
        return "nncf", record
    if requested == "auto":
        return ("qdq" if keeps_signed_activations(int8_onnx) else "uint8-qdq"), None
    return requested, None


def ignored_names(fp32_onnx: Path) -> list[str]:
    """ONNX node names the model's FP32-keep rules keep (its ``keep_fp32`` metadata, else ULFFN's)."""
    from ulffn_deploy.contract import recorded_keep_rules
    from ulffn_deploy.deps import require
    from ulffn_deploy.keep_fp32 import kept_nodes
    from ulffn_deploy.runtime.metadata import get_metadata

    onnx = require("onnx")
    model = onnx.load(os.fspath(fp32_onnx), load_external_data=False)
    return sorted(kept_nodes(model.graph, recorded_keep_rules(get_metadata(model, fp32_onnx).extra), "int8"))


def nncf_quantize(fp32_onnx: Path, images: Sequence[Path], log: Callable[[str], None] | None = None) -> Any:
    """NNCF's INT8 ``openvino.Model`` of ``fp32_onnx`` calibrated on ``images`` (preprocessed as inference
    does), the FP32-keep nodes in NNCF's ignored scope. Shows progress per calibration image."""
    from ulffn_deploy.imageio import read_rgb
    from ulffn_deploy.preprocess import preprocess
    from ulffn_deploy.progress import Progress
    from ulffn_deploy.runtime.metadata import read_metadata

    try:
        import nncf
    except ImportError as exc:
        raise UlffnError(f"nncf is not importable ({exc})", NNCF_HINT) from exc
    from ulffn_deploy.targets.openvino import core

    metadata = read_metadata(fp32_onnx)
    model = core().read_model(os.fspath(fp32_onnx))
    # OpenVINO names an ONNX node's ops after the node ("<name>", "<name>/WithoutBiases", ...)
    patterns = [re.escape(name) + "(/.*)?" for name in ignored_names(fp32_onnx)]
    progress = Progress(None, "NNCF INT8 quantisation", unit="image pass")

    def transform(path: Path) -> Any:
        batch, _ = preprocess([read_rgb(path)], metadata.input_size, metadata.fit_mode, metadata.normalization)
        progress.update()
        return batch

    dataset = nncf.Dataset(list(images), transform)
    if log:
        log(f"NNCF INT8 quantisation of {fp32_onnx.name} on {len(images)} calibration images "
            f"({len(patterns)} nodes kept FP32)")
    nncf.set_log_level(40)  # its own INFO lines and bars; our Progress reports instead
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # histogram ranges: NNCF's default min/max ranges fail the INT8 row on the 2-epoch model (p99 0.14 > 0.1)
    ranges = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.HISTOGRAM)
    try:
        with progress:
            return nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(images),
                                 ignored_scope=nncf.IgnoredScope(patterns=patterns, validate=False),
                                 advanced_parameters=ranges)
    except Exception as exc:  # NNCF raises its own and internal errors; one line for the user
        raise UlffnError(f"NNCF could not quantize {fp32_onnx.name} ({' '.join(str(exc).split())[:300]})",
                         "build with --int8-method qdq") from exc


def convolution_precisions(compiled: Any) -> dict[str, int]:
    """{precision: number of convolutions} as OpenVINO's compiled model runs them (its runtime model's
    ``layerType``/``runtimePrecision``): int8, bf16, fp16, fp32."""
    counts = Counter(PRECISION_LABELS.get(p, p) for _, p in _convolution_runtime_precisions(compiled))
    return dict(sorted(counts.items()))
