"""Pre- and post-processing shared by training's evaluation and every runtime backend (numpy + Pillow).

Two ways to fit an image into the square network input (docs/model.md):
- ``paper``: resize the shorter side to ``size``, then centre-crop ``size`` x ``size`` (the paper's
  protocol; the mask outside the crop is background when mapped back);
- ``full``: resize the whole image to ``size`` x ``size`` (the device default: the whole field of view).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ulffn_deploy.config import DEFAULT_SIZE, FIT_MODES, OUTPUT_STRIDE, Normalization
from ulffn_deploy.errors import UlffnError

# every command's default (evaluate, verify, predict, benchmark, the harness): the whole field of view
DEFAULT_FIT_MODE = "full"
# Bounds checked before anything is allocated. A paper fit resizes the shorter side to the input size, so a
# 1 x 400000 image would become 512 x 204800000: the resized image may have at most MAX_RESIZED_PIXELS (64 MP,
# 768 MB as float32 RGB; an aspect ratio of 256 at 512 px). A batch holds at most MAX_BATCH_SIZE images.
MAX_RESIZED_PIXELS = 1 << 26
MAX_BATCH_SIZE = 256


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` when it is in 1..MAX_BATCH_SIZE, else a UlffnError."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise UlffnError(f"batch size {batch_size} is not in 1..{MAX_BATCH_SIZE}",
                         f"use a batch size from 1 to {MAX_BATCH_SIZE}")
    return batch_size


@dataclass(frozen=True)
class Placement:
    """Where a network input came from: original size, resized size, and the crop's top-left corner."""

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    crop_top_left: tuple[int, int]
    size: int


def placement_for(height: int, width: int, size: int = DEFAULT_SIZE, mode: str = "full") -> Placement:
    """How an image of ``height`` x ``width`` maps into a ``size`` x ``size`` input under ``mode``."""
    if mode not in FIT_MODES:
        raise UlffnError(f"unknown fit mode {mode!r}", f"use one of {', '.join(FIT_MODES)}")
    if size <= 0 or size % OUTPUT_STRIDE:
        raise UlffnError(f"input size {size} is not a positive multiple of {OUTPUT_STRIDE}",
                         f"use {max(OUTPUT_STRIDE, size - size % OUTPUT_STRIDE)}")
    if height < 1 or width < 1:
        raise UlffnError(f"image of size {height}x{width} is empty")
    if mode == "full":
        return Placement((height, width), (size, size), (0, 0), size)
    scale = size / min(height, width)
    resized = (max(size, round(height * scale)), max(size, round(width * scale)))
    if resized[0] * resized[1] > MAX_RESIZED_PIXELS:
        raise UlffnError(f"image of size {height}x{width} is too elongated for fit 'paper' at {size} px (it would be "
                         f"resized to {resized[0]}x{resized[1]}, over {MAX_RESIZED_PIXELS >> 20} MP)",
                         "use fit 'full' (--fit full), or crop the image first")
    top_left = ((resized[0] - size) // 2, (resized[1] - size) // 2)
    return Placement((height, width), resized, top_left, size)


def _resize(array: np.ndarray, hw: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if array.shape[:2] == hw:
        return array
    mode = "F" if array.dtype == np.float32 else None
    return np.asarray(Image.fromarray(array, mode=mode).resize((hw[1], hw[0]), resample))


def _crop(array: np.ndarray, placement: Placement) -> np.ndarray:
    top, left = placement.crop_top_left
    return array[top : top + placement.size, left : left + placement.size]


def fit_image(image: np.ndarray, placement: Placement) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 uint8 (bilinear)."""
    return _crop(_resize(image, placement.resized_hw, Image.Resampling.BILINEAR), placement)


def fit_mask(mask: np.ndarray, placement: Placement) -> np.ndarray:
    """HxW bool -> size x size bool (nearest), for labels under the same placement as the image."""
    resized = _resize(mask.astype(np.uint8) * 255, placement.resized_hw, Image.Resampling.NEAREST)
    return _crop(resized, placement) > 127


def normalize(images: np.ndarray, normalization: Normalization = Normalization()) -> np.ndarray:
    """NxHxWx3 uint8 -> Nx3xHxW float32 normalised network input."""
    mean = np.asarray(normalization.mean, dtype=np.float32) * 255.0
    std = np.asarray(normalization.std, dtype=np.float32) * 255.0
    batch = (images.astype(np.float32) - mean) / std
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def preprocess(
    images: Sequence[np.ndarray],
    size: int = DEFAULT_SIZE,
    mode: str = "full",
    normalization: Normalization = Normalization(),
) -> tuple[np.ndarray, list[Placement]]:
    """HxWx3 uint8 RGB images of any sizes -> (Nx3xSxS float32 batch, one Placement per image)."""
    placements = [placement_for(im.shape[0], im.shape[1], size, mode) for im in images]
    if not images:
        return np.zeros((0, 3, size, size), np.float32), []
    fitted = np.stack([fit_image(im, pl) for im, pl in zip(images, placements)])
    return normalize(fitted, normalization), placements


@dataclass(frozen=True)
class Preprocessing:
    """What turns images into a network input: the same for calibration, evaluation and deployment."""

    size: int
    fit_mode: str
    normalization: Normalization

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Placement]]:
        return preprocess(images, self.size, self.fit_mode, self.normalization)

    def to_dict(self) -> dict[str, object]:
        return {"size": self.size, "fit_mode": self.fit_mode, "normalization": self.normalization.to_dict()}


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def lesion_probability_to_original(probability: np.ndarray, placement: Placement) -> np.ndarray:
    """size x size lesion probability -> HxW float32 in the original image (0 outside a paper crop)."""
    canvas = np.zeros(placement.resized_hw, dtype=np.float32)
    top, left = placement.crop_top_left
    canvas[top : top + placement.size, left : left + placement.size] = probability
    return _resize(canvas, placement.original_hw, Image.Resampling.BILINEAR)


def probabilities_to_masks(probabilities: np.ndarray, placements: Sequence[Placement]) -> list[np.ndarray]:
    """Nx2xSxS class probabilities -> one HxW bool lesion mask per image, at its original size."""
    if len(probabilities) != len(placements):
        raise UlffnError(f"{len(probabilities)} probability maps for {len(placements)} images")
    return [lesion_probability_to_original(p[1].astype(np.float32), pl) > 0.5 for p, pl in zip(probabilities, placements)]
