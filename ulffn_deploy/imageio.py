"""Reading and writing images and masks with Pillow: every odd input becomes HxWx3 uint8 RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ulffn_deploy.errors import UlffnError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_files(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (by suffix, any case), sorted; with ``recursive`` also in sub-folders."""
    candidates = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _open(path: str | os.PathLike[str]) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError as exc:
        raise UlffnError(f"{path}: no such file") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UlffnError(f"{path}: not a readable image ({exc})", "check the file is a complete JPEG or PNG") from exc
    return image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):  # 16-bit PNG and TIFF
        return (array.astype(np.float64) / max(float(np.iinfo(array.dtype).max), 1.0) * 255 + 0.5).astype(np.uint8)
    return np.clip(array.astype(np.float64) * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """HxWx3 uint8 RGB, upright (EXIF orientation applied), alpha composited on black."""
    image = ImageOps.exif_transpose(_open(path))
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_uint8(np.asarray(image))
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """HxW bool lesion mask from a 0/255 PNG; a two-valued mask such as 0/1 is accepted too."""
    array = np.asarray(_open(path))
    if array.ndim == 3:
        array = array[..., 0]
    values = np.unique(array)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        raise UlffnError(
            f"{path}: mask has values {values[:6].tolist()}{'...' if values.size > 6 else ''}",
            "masks must be two-valued, 0 for background and 255 (or 1) for lesion",
        )
    return array > 0


def write_mask(path: str | os.PathLike[str], mask: np.ndarray) -> None:
    """Write a bool mask as an 8-bit 0/255 PNG, atomically."""
    from ulffn_deploy.fileio import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")


def write_rgb(path: str | os.PathLike[str], image: np.ndarray, quality: int = 95) -> None:
    """Write HxWx3 uint8 as PNG or JPEG (chosen by suffix), atomically."""
    from ulffn_deploy.fileio import atomic_path

    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        Image.fromarray(image, mode="RGB").save(tmp, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
