"""Overlays that ``predict`` writes: the predicted contour (green), the label's contour (blue) when a
ground-truth mask is found, optionally the lesion probability shaded in, and a small caption.

Labels come from ``--labels DIR`` (``<stem>_Segmentation.png``, ``<stem>_segmentation.png``, ``<stem>_mask.png``
or ``<stem>.png``) or, for an image inside an ISIC images folder, from its ground-truth folder beside it.
Overlays of images over ``JPEG_ABOVE_PIXELS`` are written as JPEG, the others as PNG.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ulffn_deploy.errors import UlffnError

PREDICTED_RGB = (0, 255, 0)
LABEL_RGB = (40, 140, 255)
PROBABILITY_RGB = (255, 64, 0)
PROBABILITY_ALPHA = 0.55  # opacity of the shading where the lesion probability is 1
OUTLINE_WIDTH = 2  # pixels, inside the mask's edge
JPEG_ABOVE_PIXELS = 4_000_000  # larger overlays are JPEG: a PNG of a 20 MP photo is tens of MB
OVERLAY_MODES = ("contour", "probability")


@dataclass(frozen=True)
class OverlayStyle:
    """How ``predict`` draws overlays: ``mode`` "contour" or "probability" (contour over shading),
    ``labels`` a folder of ground-truth masks (None: ISIC ground truth beside ISIC images), ``caption``
    whether to write the artifact, precision and lesion fraction on the overlay."""

    mode: str = "contour"
    labels: Path | None = None
    caption: bool = True

    def __post_init__(self) -> None:
        if self.mode not in OVERLAY_MODES:
            raise UlffnError(f"unknown overlay {self.mode!r}", f"use one of {', '.join(OVERLAY_MODES)}")
        if self.labels is not None and not Path(self.labels).is_dir():
            raise UlffnError(f"{self.labels}: no such labels folder", "pass the folder holding the ground-truth masks")


def outline(mask: np.ndarray, width: int = OUTLINE_WIDTH) -> np.ndarray:
    """The ``width``-pixel band just inside the mask's edge (the mask minus its erosion)."""
    if not mask.any():
        return mask.copy()
    image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    eroded = np.asarray(image.filter(ImageFilter.MinFilter(2 * width + 1))) > 127
    return mask & ~eroded


def draw_overlay(image: np.ndarray, probability: np.ndarray, label: np.ndarray | None = None,
                 mode: str = "contour", caption: str | None = None) -> np.ndarray:
    """HxWx3 uint8 image with the prediction (``probability`` > 0.5) outlined, the label outlined when
    given, the probability shaded in for ``mode`` "probability", and ``caption`` (plus a legend) on top."""
    drawn = image.copy()
    if mode == "probability":
        alpha = (PROBABILITY_ALPHA * np.clip(probability, 0, 1))[..., None]
        drawn = (drawn * (1 - alpha) + np.asarray(PROBABILITY_RGB, np.float32) * alpha).round().astype(np.uint8)
    if label is not None:
        drawn[outline(label)] = LABEL_RGB
    mask = probability > 0.5
    drawn[outline(mask)] = PREDICTED_RGB
    if caption is not None:
        legend = "green predicted, blue label" if label is not None else "green predicted"
        drawn = _draw_caption(drawn, [f"{caption}, lesion {mask.mean():.1%}", legend])
    return drawn


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable where Pillow has FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _draw_caption(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """``lines`` in white on a dark band at the top left; the lines that do not fit are left out."""
    height, width = image.shape[:2]
    font = _font(max(10, min(48, round(min(height, width) / 32))))
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    pad, y = 3, 0
    for line in lines:
        _, _, right, bottom = (int(v) for v in draw.textbbox((pad, y + pad), line, font=font))
        if right + pad > width or bottom + pad > height // 3:
            break
        draw.rectangle((0, y, right + pad, bottom + pad), fill=(0, 0, 0))
        draw.text((pad, y + pad), line, fill=(255, 255, 255), font=font)
        y = bottom + pad
    return np.asarray(canvas)


def overlay_path(stem: Path, shape: tuple[int, ...]) -> Path:
    """``<stem>.png``, or ``<stem>.jpg`` for an image of ``shape`` (height, width, ...) over JPEG_ABOVE_PIXELS."""
    large = shape[0] * shape[1] > JPEG_ABOVE_PIXELS
    return stem.with_name(stem.name + (".jpg" if large else ".png"))


def find_label(image_path: Path, labels: Path | None = None) -> Path | None:
    """The ground-truth mask of ``image_path``: in ``labels``, or in the ISIC ground-truth folder beside it."""
    if labels is not None:
        return _first_file(labels, image_path.stem)
    from ulffn_deploy.data import FOLDERS

    folder = image_path.parent
    for images_name, truth_name in FOLDERS.values():
        if folder.name != images_name:
            continue
        root = folder.parent.parent if folder.parent.name == images_name else folder.parent  # X/X/ nesting
        truth = root / truth_name
        while (truth / truth_name).is_dir():
            truth = truth / truth_name
        return _first_file(truth, image_path.stem) if truth.is_dir() else None
    return None


def _first_file(folder: Path, stem: str) -> Path | None:
    from ulffn_deploy.data import label_names

    for name in label_names(stem):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def load_label(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The label mask at ``shape`` (nearest-neighbour resized when the image was read at another size)."""
    from ulffn_deploy.imageio import read_mask

    label = read_mask(path)
    if label.shape != shape:
        resized = Image.fromarray(label.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
        label = np.asarray(resized) > 127
    return label


def write_overlay(stem: Path, image_path: Path, image: np.ndarray, probability: np.ndarray, style: OverlayStyle,
                  artifact: str = "", report: Callable[[str], None] | None = None,
                  source_hw: tuple[int, int] | None = None) -> Path:
    """Draw and write the overlay of one image (``stem`` without suffix; ``artifact`` names the model and
    precision in the caption; ``source_hw`` is the file's size when ``image`` was read reduced, and picks
    JPEG for large inputs); an unreadable label is reported and left out. Returns the file written."""
    from ulffn_deploy.imageio import write_rgb

    label = None
    label_path = find_label(image_path, style.labels)
    if label_path is not None:
        try:
            label = load_label(label_path, image.shape[:2])
        except UlffnError as exc:
            if report:
                report(f"label left out of the overlay of {os.fspath(image_path)}: {exc}")
    path = overlay_path(stem, source_hw or image.shape)
    write_rgb(path, draw_overlay(image, probability, label, style.mode, artifact if style.caption else None))
    return path
