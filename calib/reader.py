"""Calibration and held-out images: found by the evaluation harness in an ISIC folder (or a plain folder of
images), read through exactly the inference preprocessing, and fed to ONNX Runtime's calibrators in batches."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ulffn_deploy import harness
from ulffn_deploy.data import SPLITS
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.harness import ImageSource
from ulffn_deploy.imageio import read_rgb
from ulffn_deploy.preprocess import preprocess

from .source import Preprocessing


@dataclass(frozen=True)
class ImageSet:
    """Image files (and their mask files where labels exist) with a one-line description of their origin."""

    images: tuple[Path, ...]
    masks: tuple[Path | None, ...]
    source: str

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int], source: str | None = None) -> ImageSet:
        return ImageSet(tuple(self.images[i] for i in indices), tuple(self.masks[i] for i in indices),
                        source or self.source)

    @property
    def labelled(self) -> bool:
        return len(self) > 0 and all(mask is not None for mask in self.masks)


def evenly_spaced(count: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``range(count)`` (all of them when there are fewer)."""
    if wanted >= count:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, wanted).round()})


def _as_set(source: ImageSource) -> ImageSet:
    return ImageSet(tuple(item.image_path for item in source.items if item.image_path is not None),
                    tuple(item.mask_path for item in source.items), source.description)


def find_images(root: str | os.PathLike[str], split: str = "train") -> ImageSet:
    """The ``split`` images of the ISIC folder ``root`` (2016, else 2017), or else every image in ``root``
    (the evaluation harness's image finder; labels are not read for calibration)."""
    if split not in SPLITS:
        raise UlffnError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    return _as_set(harness.find_images(root, split, labels=False))


def held_out_images(root: str | os.PathLike[str], split: str, used: ImageSet, count: int) -> ImageSet:
    """Up to ``count`` images not used for calibration, with labels where they exist: another ISIC split of
    ``root`` if there is one (test first), else the images of ``used``'s folder that calibration left out."""
    root = Path(root)
    for other in ("test", "val", "train"):
        found = harness.isic_source(root, split=other) if other != split else None
        if found is not None:
            return _as_set(found).subset(evenly_spaced(len(found), count))
    everything = _as_set(harness.isic_source(root, split=split) or harness.folder_source(root))
    used_paths = set(used.images)
    left = [i for i, path in enumerate(everything.images) if path not in used_paths]
    chosen = [left[i] for i in evenly_spaced(len(left), count)]
    source = f"{everything.source}, images not used for calibration" if left else "every image was used for calibration"
    return everything.subset(chosen, source)


def load_batch(paths: Sequence[Path], preprocessing: Preprocessing) -> np.ndarray:
    """Read images and preprocess them exactly as inference does: N x 3 x S x S float32."""
    batch, _ = preprocess([read_rgb(p) for p in paths], preprocessing.size, preprocessing.fit_mode,
                          preprocessing.normalization)
    return batch


class ImageBatchReader:
    """An ONNX Runtime ``CalibrationDataReader``: ``get_next()`` returns ``{input_name: batch}``, then None."""

    def __init__(self, paths: Sequence[Path], preprocessing: Preprocessing, input_name: str = "image",
                 batch_size: int = 8) -> None:
        self.paths = list(paths)
        self.preprocessing = preprocessing
        self.input_name = input_name
        self.batch_size = max(1, batch_size)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.paths):
            return None
        chunk = self.paths[self._next : self._next + self.batch_size]
        self._next += len(chunk)
        return {self.input_name: load_batch(chunk, self.preprocessing)}

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def rewind(self) -> None:
        self._next = 0
