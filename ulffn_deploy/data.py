"""ISIC 2016 / 2017 segmentation sets in their official folder layouts (numpy + Pillow only).

``IsicSegmentation(root, year, split)`` finds the set's image and ground-truth folders under ``root``
(the folder holding the unzipped ISIC folders), pairs every image with its mask by the ``ISIC_``
+ 7-digit id, never by list position, and is a sequence of ``Sample`` sorted by id.

Quirks of the official archives that are handled here:
- mask suffix ``_Segmentation.png`` (2016) or ``_segmentation.png`` (2017); file suffixes match in any case;
- 2017 image folders also hold ``*_superpixels.png`` and ``*_metadata.csv``; ground-truth folders may
  hold ``LICENSE.txt`` / ``ATTRIBUTION.txt``: anything that is not an ``ISIC_xxxxxxx`` image or mask is ignored;
- unzipping sometimes nests a folder in itself (``X/X/``);
- images without a mask and masks without an image are kept in ``unpaired_images`` / ``unpaired_masks``,
  reported by ``report()`` and announced with an ``UnpairedWarning``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, overload

import numpy as np

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.imageio import IMAGE_SUFFIXES, read_mask, read_rgb

YEARS = (2016, 2017)
SPLITS = ("train", "val", "test")

# (year, split) -> (images folder, ground-truth folder), as the ISIC archives unzip
FOLDERS: dict[tuple[int, str], tuple[str, str]] = {
    (2016, "train"): ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
    (2016, "test"): ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
    (2017, "train"): ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
    (2017, "val"): ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
    (2017, "test"): ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
}

# ISIC file naming, known here only: images ISIC_0000000.jpg, masks ISIC_0000000_Segmentation.png (2016) or
# _segmentation.png (2017); 2017 image folders also hold ISIC_0000000_superpixels.png
ISIC_ID = re.compile(r"ISIC_\d{7}")
MASK_SUFFIX = "_segmentation"  # any case
_AUXILIARY_SUFFIXES = (MASK_SUFFIX, "_superpixels")
_IMAGE_NAME = re.compile(r"^(ISIC_\d{7})$", re.IGNORECASE)
_MASK_NAME = re.compile(r"^(ISIC_\d{7})" + MASK_SUFFIX + "$", re.IGNORECASE)


def is_isic_auxiliary(name: str) -> bool:
    """An ISIC mask or superpixel map (an image file that is no dermoscopy image), by its file name."""
    return Path(name).stem.lower().endswith(_AUXILIARY_SUFFIXES)


def label_names(stem: str) -> tuple[str, ...]:
    """The file names a ground-truth mask of image ``stem`` may have, in order of preference."""
    return (f"{stem}_Segmentation.png", f"{stem}{MASK_SUFFIX}.png", f"{stem}_mask.png", f"{stem}.png")
_SYNTH_HINT = ("give the folder that holds the unzipped ISIC folders, "
               "or make a synthetic set with 'ulffn-deploy synth DIR'")
_LISTED_IDS = 5


class UnpairedWarning(UserWarning):
    """Some images have no mask, or some masks have no image; they are left out of the set."""


@dataclass(frozen=True)
class Sample:
    """One image and its lesion mask (``None`` when the set is read without masks)."""

    isic_id: str
    image_path: Path
    mask_path: Path | None


def _resolve(root: Path, name: str) -> Path | None:
    """``root/name``, descending into ``name/name/`` when an archive was unzipped into itself."""
    folder = root / name
    if not folder.is_dir():
        return None
    while (folder / name).is_dir():
        folder = folder / name
    return folder


def _scan(folder: Path, pattern: re.Pattern[str], suffixes: tuple[str, ...]) -> dict[str, Path]:
    """``ISIC_xxxxxxx`` id -> file, for the files whose name matches ``pattern``; duplicate ids are an error."""
    found: dict[str, Path] = {}
    for path in folder.iterdir():
        match = pattern.match(path.stem)
        if not match or path.suffix.lower() not in suffixes or path.is_dir():
            continue
        isic_id = "ISIC_" + match.group(1)[5:]
        if isic_id in found:
            raise UlffnError(f"{folder}: two files for {isic_id}: {found[isic_id].name} and {path.name}",
                             "keep one file per ISIC id")
        found[isic_id] = path
    return found


def _id_list(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_LISTED_IDS])
    return shown + (f", ... ({len(ids) - _LISTED_IDS} more)" if len(ids) > _LISTED_IDS else "")


class IsicSegmentation(Sequence[Sample]):
    """The image/mask pairs of one ISIC set: ``year`` 2016 (train, test) or 2017 (train, val, test).

    With ``masks=False`` the ground-truth folder is not read and every sample's ``mask_path`` is ``None``
    (for prediction on an ISIC image folder); ``load`` then refuses, ``load_image`` works.
    """

    def __init__(self, root: str | Path, year: int | str = 2016, split: str = "train", *,
                 masks: bool = True) -> None:
        self.root = Path(root)
        image_name, mask_name = _folder_names(year, split)
        self.year, self.split = int(year), split
        self.image_dir = self._find(image_name, "images")
        images = _scan(self.image_dir, _IMAGE_NAME, IMAGE_SUFFIXES)
        if not images:
            raise UlffnError(f"{self.image_dir}: no ISIC_xxxxxxx images in the ISIC {year} {split} images folder",
                             _SYNTH_HINT)
        self.mask_dir: Path | None = None
        self.unpaired_images: tuple[str, ...] = ()
        self.unpaired_masks: tuple[str, ...] = ()
        if not masks:
            self.samples = tuple(Sample(i, images[i], None) for i in sorted(images))
            return
        self.mask_dir = self._find(mask_name, "ground-truth masks")
        found = _scan(self.mask_dir, _MASK_NAME, (".png",))
        self.samples = tuple(Sample(i, images[i], found[i]) for i in sorted(images.keys() & found.keys()))
        self.unpaired_images = tuple(sorted(images.keys() - found.keys()))
        self.unpaired_masks = tuple(sorted(found.keys() - images.keys()))
        if not self.samples:
            raise UlffnError(f"no image in {self.image_dir} has a mask in {self.mask_dir} "
                             f"({len(images)} images, {len(found)} masks, no common ISIC id)",
                             "masks must be named like ISIC_0000000_Segmentation.png beside images ISIC_0000000.jpg")
        if self.unpaired_images or self.unpaired_masks:
            warnings.warn(self.report(), UnpairedWarning, stacklevel=2)

    def _find(self, name: str, what: str) -> Path:
        folder = _resolve(self.root, name)
        if folder is None:
            raise UlffnError(f"no ISIC {self.year} {self.split} {what} under {self.root}: looked for {name}/ "
                             f"(and {name}/{name}/)", _other_sets_hint(self.root))
        return folder

    def report(self) -> str:
        """One line: how many pairs, and which images or masks could not be paired."""
        line = f"ISIC {self.year} {self.split}: {len(self.samples)} images"
        line += f" with masks in {self.mask_dir}" if self.mask_dir else f" in {self.image_dir} (masks not read)"
        if self.unpaired_images:
            line += f"; {len(self.unpaired_images)} images without a mask, left out: {_id_list(self.unpaired_images)}"
        if self.unpaired_masks:
            line += f"; {len(self.unpaired_masks)} masks without an image, left out: {_id_list(self.unpaired_masks)}"
        return line

    @property
    def ids(self) -> list[str]:
        return [sample.isic_id for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Sample, ...]: ...

    def __getitem__(self, index: int | slice) -> Sample | tuple[Sample, ...]:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def load_image(self, index: int) -> np.ndarray:
        """The image of sample ``index`` as HxWx3 uint8 RGB."""
        return read_rgb(self.samples[index].image_path)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as (HxWx3 uint8 RGB image, HxW bool lesion mask of the same size)."""
        return load_sample(self.samples[index])


def _folder_names(year: int | str, split: str) -> tuple[str, str]:
    if str(year) not in {str(y) for y in YEARS}:  # 2016 and "2016" both work
        raise UlffnError(f"unknown ISIC year {year}", f"use one of {', '.join(map(str, YEARS))}")
    if split not in SPLITS:
        raise UlffnError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    year = int(year)
    if (year, split) not in FOLDERS:
        raise UlffnError(f"ISIC {year} has no {split} split",
                         f"ISIC {year} has {' and '.join(s for y, s in FOLDERS if y == year)} only; hold out part "
                         "of its training set with split_train_val (the paper validates on 200 of the 900 ISIC 2016 "
                         "training images)")
    return FOLDERS[(year, split)]


def _other_sets_hint(root: Path) -> str:
    present = [f"year={year}, split={split}" for (year, split), (images, _) in FOLDERS.items()
               if (root / images).is_dir()]
    return f"{root} holds the ISIC set(s) {'; '.join(present)}" if present else _SYNTH_HINT


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 RGB image, HxW bool lesion mask) of ``sample``; the two must have the same size."""
    if sample.mask_path is None:
        raise UlffnError(f"{sample.isic_id} has no mask", "read the set with masks=True")
    image = read_rgb(sample.image_path)
    mask = read_mask(sample.mask_path)
    if mask.shape != image.shape[:2]:
        raise UlffnError(f"{sample.mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is "
                         f"{image.shape[0]}x{image.shape[1]}", "masks must have the size of their image")
    return image, mask


T = TypeVar("T")


def split_train_val(samples: Sequence[T], n_val: int, seed: int = 0) -> tuple[list[T], list[T]]:
    """A seeded random split of ``samples`` into (train, val) with ``n_val`` in val, both in input order.

    The same samples, ``n_val`` and ``seed`` give the same split on every machine (numpy's PCG64).
    The paper's split of the 900 ISIC 2016 training images is ``split_train_val(train, 200, seed)``.
    """
    if not 0 <= n_val < len(samples):
        raise UlffnError(f"cannot hold out {n_val} of {len(samples)} samples for validation",
                         f"choose a validation size from 0 to {max(len(samples) - 1, 0)}")
    chosen = set(np.random.default_rng(seed).permutation(len(samples))[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in chosen]
    val = [s for i, s in enumerate(samples) if i in chosen]
    return train, val
