"""What calibration did to the graph, and what it did to the masks: INT8 against FP32 on held-out images."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulffn_deploy.harness import Check, check, compare, failures, files_source, passed, tolerance_for

from .reader import ImageSet

if TYPE_CHECKING:
    import onnx

    from ulffn_deploy.runtime import Segmenter

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def graph_summary(model: onnx.ModelProto, excluded: Mapping[str, str]) -> dict[str, Any]:
    """Quantized nodes (those fed by a DequantizeLinear) by op type, the Q/DQ count, and the excluded nodes."""
    producers = {output: node for node in model.graph.node for output in node.output}
    op_types = {node.name: node.op_type for node in model.graph.node}
    quantized = [node for node in model.graph.node if node.op_type not in QDQ_OPS
                 and any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)]
    qdq = Counter(node.op_type for node in model.graph.node if node.op_type in QDQ_OPS)
    return {
        "quantized": {"count": len(quantized), "by_op_type": dict(Counter(n.op_type for n in quantized)),
                      "nodes": [n.name for n in quantized]},
        "qdq_nodes": dict(qdq),
        "excluded": [{"node": name, "op_type": op_types.get(name, "?"), "reason": reason}
                     for name, reason in excluded.items()],
    }


def compare_outputs(fp32: str | os.PathLike[str] | bytes, int8: str | os.PathLike[str] | bytes, images: ImageSet,
                    batch_size: int = 8) -> dict[str, Any]:
    """INT8 against FP32 on the held-out ``images`` (ONNX Runtime CPU), through the evaluation harness and
    gated by its INT8 tolerance row. A model is a file (any name) or serialized bytes."""
    if not len(images):
        return {"images": 0, "source": images.source, "targets_met": None,
                "note": f"accuracy not measured: no held-out images ({images.source})"}
    source = files_source(images.images, images.masks, images.source)
    with tempfile.TemporaryDirectory(prefix="ulffn-calib-check-") as tmp, \
            _open(fp32, Path(tmp) / "fp32.onnx") as reference, _open(int8, Path(tmp) / "int8.onnx") as candidate:
        comparison = compare(reference, candidate, source, batch_size)
    checks = check(comparison, tolerance_for("int8"))
    return {"images": len(images), "source": images.source, "comparison": comparison.to_dict(),
            "checks": [c.to_dict() for c in checks], "targets_met": passed(checks)}


def _open(model: str | os.PathLike[str] | bytes, spill: Path) -> Segmenter:
    """An ONNX Runtime Segmenter for a model file, or for serialized bytes written to ``spill``."""
    from ulffn_deploy.runtime import Segmenter

    if isinstance(model, bytes):
        spill.write_bytes(model)
        model = spill
    return Segmenter.load(model, backend="onnxruntime")


def format_report(report: Mapping[str, Any]) -> str:
    """A few lines for the terminal; the full report is the JSON file."""
    cal, graph, acc = report["calibration"], report["graph"], report["accuracy"]
    by_op = ", ".join(f"{op} x{n}" for op, n in graph["quantized"]["by_op_type"].items()) or "none"
    lines = [
        f"INT8 model: {report['int8_model']} (opset {report['opset']})",
        f"calibration: {cal['method']} on {cal['images']} images from {cal['source']}; {cal['ranges']}",
        f"quantized: {graph['quantized']['count']} nodes ({by_op}); Q/DQ nodes: "
        + ", ".join(f"{op} x{n}" for op, n in graph["qdq_nodes"].items()),
        f"kept FP32: {len(graph['excluded'])} nodes: "
        + "; ".join(sorted({e["reason"].split(":")[0] for e in graph["excluded"]})),
    ]
    if not acc["images"]:
        lines.append(f"accuracy: {acc['note']}")
        return "\n".join(lines)
    c = acc["comparison"]
    line = (f"accuracy on {acc['images']} held-out images ({acc['source']}, fit {c['fit_mode']}): INT8 vs FP32 "
            f"mask Dice mean {c['mask_dice']:.4f}, min {c['mask_dice_min']:.4f}; lesion probability error "
            f"p99 {c['p99_abs_diff']:.2e}, max {c['max_abs_diff']:.2e}")
    if c["metrics"]:
        line += f"; Dice vs labels FP32 {c['metrics']['reference']['dice']:.4f}, INT8 {c['metrics']['candidate']['dice']:.4f}"
    lines.append(line)
    checks = [Check(**check) for check in acc["checks"]]
    lines.append("INT8 tolerances met" if passed(checks) else f"INT8 tolerances MISSED: {'; '.join(failures(checks))}")
    return "\n".join(lines)
