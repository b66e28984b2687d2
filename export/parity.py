"""Does an ONNX file compute what the PyTorch model computes? ONNX Runtime (CPU) against reference probabilities.

Reported per file: max and mean absolute difference of the class probabilities, and the Dice agreement
of the argmax masks (mean and worst image). Tolerances per precision are in ``TOLERANCES``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ulffn_deploy.config import Normalization
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.metrics import dice_agreement

if TYPE_CHECKING:
    import onnxruntime
    import torch

# precision -> limits: max_abs_diff is an upper bound, dice_mean a lower bound
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_diff": 1e-4},
    "fp16": {"max_abs_diff": 1e-2, "dice_mean": 0.995},
}
CHUNK = 4  # images per inference call: bounds memory at 512 x 512


def ort_session(path: str | os.PathLike[str]) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session with all graph optimizations; a bad file is a one-line UlffnError."""
    from ulffn_deploy.targets.onnxruntime import create_session

    return create_session(path)


def run_session(session: onnxruntime.InferenceSession, batch: np.ndarray) -> np.ndarray:
    """Run the single-input, single-output session on ``batch`` in chunks; returns float32."""
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: batch[i : i + CHUNK]})[0] for i in range(0, len(batch), CHUNK)]
    return np.concatenate(outputs).astype(np.float32)


def torch_probabilities(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """Softmax of the PyTorch model's logits on ``batch`` (N x 3 x H x W float32), computed in FP32 on CPU."""
    import torch

    model = model.eval()
    outputs = []
    with torch.no_grad():
        for i in range(0, len(batch), CHUNK):
            logits = model(torch.from_numpy(np.ascontiguousarray(batch[i : i + CHUNK])))
            outputs.append(torch.softmax(logits.float(), dim=1).numpy())
    return np.concatenate(outputs)


def compare(probabilities: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Agreement of two N x 2 x H x W probability arrays."""
    if probabilities.shape != reference.shape:
        raise UlffnError(f"output shape {probabilities.shape} differs from the reference {reference.shape}")
    diff = np.abs(probabilities.astype(np.float64) - reference.astype(np.float64))
    dice = [dice_agreement(p.argmax(axis=0) == 1, r.argmax(axis=0) == 1) for p, r in zip(probabilities, reference)]
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "dice_mean": float(np.mean(dice)),
        "dice_min": float(np.min(dice)),
        "images": len(reference),
    }


def failures(report: Mapping[str, Any], tolerances: Mapping[str, float]) -> list[str]:
    """Which tolerances ``report`` misses, as readable phrases (empty: it passes)."""
    missed = []
    if "max_abs_diff" in tolerances and not report["max_abs_diff"] <= tolerances["max_abs_diff"]:
        missed.append(f"max abs diff {report['max_abs_diff']:.3g} > {tolerances['max_abs_diff']:g}")
    if "dice_mean" in tolerances and not report["dice_mean"] >= tolerances["dice_mean"]:
        missed.append(f"mean mask Dice agreement {report['dice_mean']:.4f} < {tolerances['dice_mean']:g}")
    return missed


def parity_report(
    onnx_path: str | os.PathLike[str],
    model: torch.nn.Module | np.ndarray,
    batch: np.ndarray,
    precision: str | None = None,
    tolerances: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Run ``onnx_path`` in ONNX Runtime on ``batch`` and compare with ``model`` (a torch module giving logits,
    or reference probabilities already computed). Adds ``passed`` and ``failures`` when tolerances apply
    (given, or ``TOLERANCES[precision]``)."""
    reference = model if isinstance(model, np.ndarray) else torch_probabilities(model, batch)
    report: dict[str, Any] = {"precision": precision or Path(onnx_path).name}
    report.update(compare(run_session(ort_session(onnx_path), batch), reference))
    limits = tolerances if tolerances is not None else TOLERANCES.get(precision or "")
    if limits is not None:
        report["failures"] = failures(report, limits)
        report["passed"] = not report["failures"]
    return report


def format_parity_table(reports: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table, one row per report."""
    lines = [
        "| precision | images | max abs diff | mean abs diff | mask Dice mean | mask Dice min | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        result = "-" if "passed" not in r else ("pass" if r["passed"] else "FAIL: " + "; ".join(r["failures"]))
        lines.append(f"| {r['precision']} | {r['images']} | {r['max_abs_diff']:.2e} | {r['mean_abs_diff']:.2e} "
                     f"| {r['dice_mean']:.4f} | {r['dice_min']:.4f} | {result} |")
    return "\n".join(lines)


def parity_images(count: int, size: int, data: str | os.PathLike[str] | None = None, seed: int = 0) -> list[np.ndarray]:
    """``count`` realistic RGB images: synthetic dermoscopy renders, or the first images of ``data``.

    ``data`` is an ISIC 2016 folder (its test split is used) or any folder of images.
    """
    if count < 1:
        raise UlffnError(f"parity needs at least one image, got {count}")
    if data is None:
        from ulffn_deploy.synth import render_sample

        rng = np.random.default_rng(seed)
        return [render_sample(rng, size)[0] for _ in range(count)]
    return _folder_images(Path(data), count)


def _folder_images(folder: Path, count: int) -> list[np.ndarray]:
    from ulffn_deploy.data import IsicSegmentation
    from ulffn_deploy.imageio import image_files, read_rgb

    if not folder.is_dir():
        raise UlffnError(f"{folder}: no such folder of parity images")
    try:
        isic = IsicSegmentation(folder, 2016, "test", masks=False)
        paths = [sample.image_path for sample in isic][:count]
    except UlffnError:
        paths = image_files(folder)[:count]
    if not paths:
        raise UlffnError(f"{folder}: no images for the parity check", "give an ISIC folder or a folder of images")
    return [read_rgb(path) for path in paths]


def parity_batch(
    images: Sequence[np.ndarray], size: int, fit_mode: str = "full", normalization: Normalization | None = None
) -> np.ndarray:
    """The network input for ``images``, preprocessed exactly as deployment does."""
    from ulffn_deploy.preprocess import preprocess

    return preprocess(images, size, fit_mode, normalization or Normalization())[0]
