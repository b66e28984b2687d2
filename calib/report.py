"""What calibration did to the graph, and what it did to the masks: INT8 against FP32 on held-out images."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ulffn_deploy.metrics import dice_agreement, image_metrics

from .reader import ImageSet, load_batch, load_labels
from .source import Preprocessing

if TYPE_CHECKING:
    import onnx
    import onnxruntime

TARGET_AGREEMENT = 0.98  # mean Dice between the INT8 and FP32 masks
MAX_DICE_DROP = 0.01  # Dice against labels, FP32 minus INT8
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


def ort_session(model: str | os.PathLike[str] | bytes) -> onnxruntime.InferenceSession:
    from ulffn_deploy.targets.onnxruntime import create_session

    return create_session(model)


def lesion_masks(probabilities: np.ndarray) -> np.ndarray:
    """N x 2 x H x W probabilities -> N x H x W bool argmax masks (lesion = class 1)."""
    return probabilities.argmax(axis=1) == 1


def compare_outputs(fp32: str | os.PathLike[str] | bytes, int8: str | os.PathLike[str] | bytes, images: ImageSet,
                    preprocessing: Preprocessing, input_name: str = "image", batch_size: int = 8) -> dict[str, Any]:
    """INT8 against FP32 on ``images`` (ONNX Runtime CPU): mask Dice agreement, probability differences, and
    Dice against labels for both where labels exist. Masks are compared at the network input resolution."""
    if not len(images):
        return {"images": 0, "source": images.source, "targets_met": None,
                "note": f"accuracy not measured: no held-out images ({images.source})"}
    sessions = ort_session(fp32), ort_session(int8)
    labels = load_labels(images.masks, preprocessing)
    agreement: list[float] = []
    differences: list[np.ndarray] = []
    dice: dict[str, list[float]] = {"fp32": [], "int8": []}
    for start in range(0, len(images), batch_size):
        batch = load_batch(images.images[start : start + batch_size], preprocessing)
        p32, p8 = (s.run(None, {input_name: batch})[0] for s in sessions)
        differences.append(np.abs(p32[:, 1] - p8[:, 1]).reshape(len(batch), -1))
        for m32, m8, label in zip(lesion_masks(p32), lesion_masks(p8), labels[start : start + batch_size]):
            agreement.append(dice_agreement(m32, m8))
            if label is not None:
                dice["fp32"].append(image_metrics(m32, label)["dice"])
                dice["int8"].append(image_metrics(m8, label)["dice"])
    difference = np.concatenate(differences)
    result: dict[str, Any] = {
        "images": len(images), "source": images.source,
        "compared_at": f"network input {preprocessing.size}x{preprocessing.size} (fit mode {preprocessing.fit_mode})",
        "dice_agreement_mean": float(np.mean(agreement)), "dice_agreement_min": float(np.min(agreement)),
        "lesion_probability_abs_diff_mean": float(difference.mean()),
        "lesion_probability_abs_diff_max": float(difference.max()),
    }
    if dice["fp32"] and len(dice["fp32"]) == len(images):
        result.update(dice_fp32=float(np.mean(dice["fp32"])), dice_int8=float(np.mean(dice["int8"])))
        result["dice_drop"] = result["dice_fp32"] - result["dice_int8"]
    result["targets"] = {f"dice_agreement_mean >= {TARGET_AGREEMENT}": result["dice_agreement_mean"] >= TARGET_AGREEMENT}
    if "dice_drop" in result:
        result["targets"][f"dice_drop <= {MAX_DICE_DROP}"] = result["dice_drop"] <= MAX_DICE_DROP
    result["targets_met"] = all(result["targets"].values())
    return result


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
    line = (f"accuracy on {acc['images']} held-out images ({acc['source']}): mask Dice INT8 vs FP32 "
            f"mean {acc['dice_agreement_mean']:.4f}, min {acc['dice_agreement_min']:.4f}")
    if "dice_drop" in acc:
        line += f"; Dice vs labels FP32 {acc['dice_fp32']:.4f}, INT8 {acc['dice_int8']:.4f}"
    lines.append(line)
    missed = [name for name, ok in acc["targets"].items() if not ok]
    lines.append("targets met" if not missed else f"targets MISSED: {', '.join(missed)}")
    return "\n".join(lines)
