"""Per-layer INT8 sensitivity: quantize one convolution at a time and measure how far the output moves.

The layers that move it most are the ones to keep in FP32 (``ulffn-deploy calibrate --exclude NODE``)
when a calibration misses its accuracy targets. Measured on calibration images, not on the held-out
images that the report judges, so choosing exclusions does not tune on the evaluation set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ulffn_deploy.harness import THRESHOLD
from ulffn_deploy.metrics import dice_agreement

from .quantize import QUANTIZED_OP_TYPES, quantize_with_ranges
from .reader import load_batch
from .source import Preprocessing


def candidate_nodes(prepared: str | os.PathLike[str], excluded: Mapping[str, str]) -> list[str]:
    """The convolutions calibration would quantize (all of QUANTIZED_OP_TYPES not excluded), in graph order."""
    from ulffn_deploy.deps import require

    onnx = require("onnx")
    graph = onnx.load(os.fspath(prepared)).graph
    return [n.name for n in graph.node if n.op_type in QUANTIZED_OP_TYPES and n.name not in excluded]


def layer_sensitivity(prepared: Path, ranges: Mapping[str, Sequence[float]], method: str, candidates: Sequence[str],
                      images: Sequence[Path], preprocessing: Preprocessing, input_name: str = "image"
                      ) -> list[dict[str, Any]]:
    """For each node in ``candidates``, the model with only that node quantized against FP32 on ``images``:
    mean mask Dice agreement and mean |lesion probability difference|; worst (largest difference) first."""
    from ulffn_deploy.onnx_session import create_session

    batch = load_batch(images, preprocessing)
    reference = create_session(prepared).run(None, {input_name: batch})[0]
    reference_masks = reference[:, 1] > THRESHOLD
    rows = []
    for name in candidates:
        model = quantize_with_ranges(prepared, ranges, method, excluded=(), nodes_to_quantize=[name])
        probabilities = create_session(model.SerializeToString()).run(None, {input_name: batch})[0]
        agreement = [dice_agreement(a, b) for a, b in zip(reference_masks, probabilities[:, 1] > THRESHOLD)]
        rows.append({"node": name, "dice_agreement_mean": float(np.mean(agreement)),
                     "lesion_probability_abs_diff_mean": float(np.abs(probabilities[:, 1] - reference[:, 1]).mean())})
    return sorted(rows, key=lambda row: -row["lesion_probability_abs_diff_mean"])


def format_sensitivity(rows: Sequence[Mapping[str, Any]], top: int = 10) -> str:
    lines = [f"most sensitive layers (one quantized at a time, {len(rows)} measured):"]
    lines += [f"  {row['lesion_probability_abs_diff_mean']:.5f} mean |dp|, Dice {row['dice_agreement_mean']:.4f}  "
              f"{row['node']}" for row in rows[:top]]
    return "\n".join(lines)
