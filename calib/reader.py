"""Calibration and held-out images: found in an ISIC folder (or a plain folder of images), read through
exactly the inference preprocessing, and fed to ONNX Runtime's calibrators in batches."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ulffn_deploy.data import SPLITS, YEARS, IsicSegmentation
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.imageio import image_files, read_mask, read_rgb
from ulffn_deploy.preprocess import fit_mask, placement_for, preprocess

from .source import Preprocessing

# Files in an image folder that are not dermoscopy images (ISIC masks and 2017 superpixel maps).
_NOT_IMAGES = re.compile(r"_(segmentation|superpixels)$", re.IGNORECASE)
_DATA_HINT = "give an ISIC folder ('ulffn-deploy synth DIR' makes one) or a folder of .jpg/.png images"


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


def _isic_set(root: Path, split: str, masks: bool) -> ImageSet | None:
    for year in YEARS:
        try:
            found = IsicSegmentation(root, year, split, masks=masks)
        except UlffnError:
            continue
        return ImageSet(tuple(s.image_path for s in found), tuple(s.mask_path for s in found),
                        f"ISIC {year} {split} ({found.image_dir})")
    return None


def _plain_folder(root: Path) -> ImageSet:
    images = tuple(p for p in image_files(root) if not _NOT_IMAGES.search(p.stem))
    return ImageSet(images, (None,) * len(images), f"image folder {root}")


def find_images(root: str | os.PathLike[str], split: str = "train") -> ImageSet:
    """The ``split`` images of the ISIC folder ``root`` (2016, else 2017), or else every image in ``root``."""
    root = Path(root)
    if split not in SPLITS:
        raise UlffnError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    if not root.is_dir():
        raise UlffnError(f"calibration data folder {root} does not exist", _DATA_HINT)
    found = _isic_set(root, split, masks=False) or _plain_folder(root)
    if not len(found):
        raise UlffnError(f"no images found in {root} (looked for ISIC {split} folders and image files)", _DATA_HINT)
    return found


def held_out_images(root: str | os.PathLike[str], split: str, used: ImageSet, count: int) -> ImageSet:
    """Up to ``count`` labelled images not used for calibration: another ISIC split of ``root`` if there is one
    (test first), else the images of ``used``'s folder that calibration left out (possibly none)."""
    root = Path(root)
    for other in ("test", "val", "train"):
        if other != split:
            found = _isic_set(root, other, masks=True) or _isic_set(root, other, masks=False)
            if found is not None:
                return found.subset(evenly_spaced(len(found), count))
    everything = _isic_set(root, split, masks=True) or _plain_folder(root)
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


def load_labels(masks: Sequence[Path | None], preprocessing: Preprocessing) -> list[np.ndarray | None]:
    """Each mask brought to the network input as its image is (None where there is no mask)."""
    labels: list[np.ndarray | None] = []
    for mask_path in masks:
        if mask_path is None:
            labels.append(None)
            continue
        mask = read_mask(mask_path)
        placement = placement_for(mask.shape[0], mask.shape[1], preprocessing.size, preprocessing.fit_mode)
        labels.append(fit_mask(mask, placement))
    return labels


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
