"""Calibration ranges stored beside the INT8 model (``model.int8.ranges.json``), keyed by tensor name.

The file carries a fingerprint of everything the ranges depend on: the FP32 model's sha256, the method
and calibrator options, the onnxruntime version, the preprocessing, and every calibration image's name,
size and sha256. A recalibration with the same fingerprint reuses the ranges and skips the calibrator.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ulffn_deploy.fileio import sha256_file, write_json_atomic

from .quantize import CALIBRATOR_OPTIONS, CHUNK_ELEMENTS, QUANTIZED_OP_TYPES, Ranges
from .source import SourceModel

FORMAT = "ulffn-deploy-int8-ranges"
VERSION = 1


def ranges_path(int8_path: str | os.PathLike[str]) -> Path:
    """model.int8.onnx -> model.int8.ranges.json."""
    path = Path(int8_path)
    return path.with_name(path.name.removesuffix(".onnx") + ".ranges.json")


def fingerprint(source: SourceModel, images: Sequence[Path], method: str) -> dict[str, Any]:
    import onnxruntime

    return {
        "fp32_sha256": source.sha256,
        "method": method,
        "calibrator": {**CALIBRATOR_OPTIONS, "op_types": list(QUANTIZED_OP_TYPES), "chunk_elements": CHUNK_ELEMENTS},
        "onnxruntime": onnxruntime.__version__,
        "preprocessing": source.preprocessing.to_dict(),
        "images": [{"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in images],
    }


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [key for key in new if old.get(key) != new[key]]


def load_ranges(path: Path, expected: dict[str, Any]) -> tuple[Ranges | None, str]:
    """(ranges, "reused ...") when ``path`` holds ranges for ``expected``; else (None, why they are recomputed)."""
    if not path.is_file():
        return None, "no stored ranges"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        ranges = {name: (float(low), float(high)) for name, (low, high) in stored["ranges"].items()}
        changed = _changes(stored["fingerprint"], expected)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, f"{path.name} is unreadable"
    if stored.get("format") != FORMAT or stored.get("version") != VERSION:
        return None, f"{path.name} has another format"
    if changed:
        return None, f"stored ranges are for another {', '.join(changed)}"
    if not all(math.isfinite(low) and math.isfinite(high) and low <= high for low, high in ranges.values()):
        return None, f"{path.name} holds ranges that are not finite (low <= high)"
    return ranges, f"ranges reused from {path.name}"


def save_ranges(path: Path, expected: dict[str, Any], ranges: Ranges) -> None:
    write_json_atomic(path, {"format": FORMAT, "version": VERSION, "fingerprint": expected,
                             "ranges": {name: [low, high] for name, (low, high) in ranges.items()}})
