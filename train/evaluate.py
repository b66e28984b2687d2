"""Score a checkpoint on an ISIC split with the paper's metrics (mean over images).

The fit mode says how an image enters the network (``preprocess``): ``full`` (the default of every
command) resizes the whole image; ``paper`` resizes the shorter side and centre-crops. Either way the
predicted mask is mapped back to the original image size and scored against the original label, as
``verify`` scores and as ``score`` scores the masks of ``predict --fit <mode>``: one model on one split
gets one Dice per fit mode everywhere. With ``paper``, the paper's own protocol (scored on the crops
against labels cropped the same way, docs/model.md) is reported too, as ``paper_metrics``. Images that
cannot be read are skipped with a warning and listed.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ulffn_deploy.checkpoint import load_model
from ulffn_deploy.config import Normalization
from ulffn_deploy.data import IsicSegmentation
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.metrics import image_metrics, mean_metrics
from ulffn_deploy.preprocess import DEFAULT_FIT_MODE, FIT_MODES, fit_mask, preprocess, probabilities_to_masks, softmax
from ulffn_deploy.train.dataset import SkippedSampleWarning
from ulffn_deploy.train.distributed import select_device


def protocol(fit_mode: str, size: int) -> str:
    """One line saying how the figures were computed."""
    scored = "mask mapped back and scored at the original image size (as verify and score)"
    if fit_mode == "paper":
        return f"fit paper: shorter side resized to {size}, centre crop {size}x{size} (outside it: background); {scored}"
    return f"fit full: whole image resized to {size}x{size}; {scored}"


def _load(dataset: IsicSegmentation, index: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return dataset.load(index)
    except UlffnError as exc:
        warnings.warn(f"skipping {dataset[index].isic_id}: {exc}", SkippedSampleWarning, stacklevel=2)
        return None


@torch.no_grad()
def _predict(model: torch.nn.Module, batch: np.ndarray, device: torch.device) -> np.ndarray:
    logits = model(torch.from_numpy(batch).to(device)).float().cpu().numpy()
    return softmax(logits, axis=1)


def evaluate_checkpoint(path: str | os.PathLike[str], data_dir: str | os.PathLike[str], split: str = "test",
                        year: int = 2016, fit_mode: str = DEFAULT_FIT_MODE, batch_size: int = 8,
                        device: str = "auto") -> dict[str, Any]:
    """Mean metrics of the checkpoint at ``path`` over the ISIC ``year``/``split`` images in ``data_dir``."""
    if fit_mode not in FIT_MODES:
        raise UlffnError(f"unknown fit mode {fit_mode!r}", f"use one of {', '.join(FIT_MODES)}")
    if batch_size < 1:
        raise UlffnError(f"batch size {batch_size} is not positive", "use 1 or more")
    target = select_device(device)
    model, info = load_model(path, map_location=target)
    size = int(info["input_size"])
    normalization = Normalization.from_dict(info["normalization"])
    dataset = IsicSegmentation(Path(data_dir), year=year, split=split)
    rows: list[dict[str, float]] = []
    crop_rows: list[dict[str, float]] = []
    skipped: list[str] = []
    with ThreadPoolExecutor(max_workers=4) as pool:  # Pillow decodes with the GIL released
        for start in range(0, len(dataset), batch_size):
            indices = range(start, min(start + batch_size, len(dataset)))
            loaded = list(pool.map(lambda i: _load(dataset, i), indices))
            skipped += [dataset[i].isic_id for i, item in zip(indices, loaded, strict=True) if item is None]
            pairs = [item for item in loaded if item is not None]
            if pairs:
                scored, on_crops = _score_batch(model, pairs, size, fit_mode, normalization, target)
                rows += scored
                crop_rows += on_crops
    if not rows:
        raise UlffnError(f"none of the {len(dataset)} images of ISIC {year} {split} could be read",
                         "see the warnings above")
    return {
        "checkpoint": str(path),
        "data": str(data_dir),
        "year": year,
        "split": split,
        "fit_mode": fit_mode,
        "protocol": protocol(fit_mode, size),
        "images": len(rows),
        "skipped": skipped,
        "model_config": info["model_config"],
        "input_size": size,
        "metrics": mean_metrics(rows),
        "paper_metrics": mean_metrics(crop_rows) if fit_mode == "paper" else None,
    }


def _score_batch(model: torch.nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]], size: int, fit_mode: str,
                 normalization: Normalization, device: torch.device
                 ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Metrics of each image at its original size; and on the crops (the paper's protocol) in fit mode paper."""
    images = [image for image, _ in pairs]
    batch, placements = preprocess(images, size, fit_mode, normalization)
    probabilities = _predict(model, batch, device)
    masks = probabilities_to_masks(probabilities, placements)
    scored = [image_metrics(p, t) for p, (_, t) in zip(masks, pairs, strict=True)]
    if fit_mode != "paper":
        return scored, []
    truths = [fit_mask(mask, placement) for (_, mask), placement in zip(pairs, placements, strict=True)]
    return scored, [image_metrics(p > 0.5, t) for p, t in zip(probabilities[:, 1], truths, strict=True)]
