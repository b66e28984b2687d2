"""Training augmentation in numpy, applied identically to a square image crop and its mask.

Flips, 90-degree rotations (no interpolation, so masks stay exact) and mild colour jitter on the image
only. The random state comes from the caller (seeded by sample index and epoch), never from the process.
"""

from __future__ import annotations

import numpy as np

BRIGHTNESS = 0.2
CONTRAST = 0.2
SATURATION = 0.2
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma


def geometric(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal/vertical flip and rotation by a multiple of 90 degrees (square inputs)."""
    flip_h, flip_v = rng.random(2) < 0.5
    turns = int(rng.integers(4))
    if flip_h:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if flip_v:
        image, mask = image[::-1], mask[::-1]
    return np.rot90(image, turns), np.rot90(mask, turns)


def colour_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation factors drawn from [1 - x, 1 + x], applied in that order."""
    b, c, s = 1.0 + rng.uniform(-1.0, 1.0, 3) * (BRIGHTNESS, CONTRAST, SATURATION)
    out = image.astype(np.float32) * b
    mean = float((out @ _GRAY).mean())
    out = (out - mean) * c + mean
    gray = (out @ _GRAY)[..., None]
    out = (out - gray) * s + gray
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """S x S x 3 uint8 image, S x S bool mask -> both augmented the same way (contiguous copies)."""
    image, mask = geometric(image, mask, rng)
    return colour_jitter(np.ascontiguousarray(image), rng), np.ascontiguousarray(mask)
