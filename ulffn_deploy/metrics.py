"""Segmentation metrics as the ISIC challenge scores them (docs/model.md, Metrics; the paper's equations 3-7).

Per image, from its confusion matrix with lesion as the positive class; then the mean over images.
A metric whose denominator is 0 scores 1 (the official scorer's rule: e.g. Jaccard and Dice when both
masks are empty). Thresholded Jaccard (ISIC 2018) counts an image's Jaccard as 0 when below 0.65.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ulffn_deploy.errors import UlffnError

METRICS = ("accuracy", "dice", "jaccard", "sensitivity", "specificity", "thresholded_jaccard")
LABELS = {
    "accuracy": "Accuracy",
    "dice": "Dice",
    "jaccard": "JSI",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "thresholded_jaccard": "Thresholded JSI",
}
JACCARD_THRESHOLD = 0.65


def _ratio(numerator: int, denominator: int) -> float:
    return 1.0 if denominator == 0 else numerator / denominator


def confusion(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) of two bool masks of the same shape."""
    if prediction.shape != truth.shape:
        raise UlffnError(f"prediction of shape {prediction.shape} against truth of shape {truth.shape}",
                         "predicted masks must have the size of their images")
    pred, true = prediction.astype(bool), truth.astype(bool)
    tp = int(np.count_nonzero(pred & true))
    fp = int(np.count_nonzero(pred & ~true))
    fn = int(np.count_nonzero(~pred & true))
    return tp, fp, fn, pred.size - tp - fp - fn


def image_metrics(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """All metrics of one image."""
    tp, fp, fn, tn = confusion(prediction, truth)
    jaccard = _ratio(tp, tp + fp + fn)
    return {
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "jaccard": jaccard,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "thresholded_jaccard": jaccard if jaccard >= JACCARD_THRESHOLD else 0.0,
    }


def mean_metrics(per_image: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over images (the official scorer averages per image)."""
    rows = list(per_image)
    if not rows:
        raise UlffnError("no images to score")
    return {name: float(np.mean([row[name] for row in rows])) for name in METRICS}


def dice_agreement(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Dice between two predicted masks (1.0 when both are empty)."""
    return image_metrics(mask_a, mask_b)["dice"]


def format_table(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = METRICS) -> str:
    """A Markdown table: one row per named result, one column per metric."""
    header = "| | " + " | ".join(LABELS[m] for m in metrics) + " |"
    rule = "|---|" + "---|" * len(metrics)
    lines = [header, rule]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
    return "\n".join(lines)
