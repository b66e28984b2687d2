"""Reading and writing images and masks with Pillow: every odd input becomes HxWx3 uint8 RGB."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ulffn_deploy.errors import UlffnError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_files(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (by suffix, any case), sorted; with ``recursive`` also in sub-folders."""
    candidates = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _open(path: str | os.PathLike[str], max_side: int | None = None) -> Image.Image:
    """The decoded image; with ``max_side`` a JPEG is decoded at the smallest scale (1/2 to 1/8) that keeps
    its longer side at least ``max_side``. Images over Pillow's pixel limit are refused like corrupt ones."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused above the limit instead
            image = Image.open(path)
            if max_side is not None and image.format == "JPEG" and max(image.size) > max_side:
                scale = max_side / max(image.size)
                image.info[_FILE_SIZE] = image.size
                image.draft("RGB", (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale)))
            image.load()
    except FileNotFoundError as exc:
        raise UlffnError(f"{path}: no such file") from exc
    except Image.DecompressionBombError as exc:
        size = "".join(c for c in str(exc).split(" pixels")[0] if c.isdigit()) or "?"
        raise UlffnError(f"{path}: image too large ({size} pixels, over Pillow's limit of "
                         f"{2 * (Image.MAX_IMAGE_PIXELS or 0)})", "downscale the image first") from exc
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
    return _to_rgb(ImageOps.exif_transpose(_open(path)))


def read_rgb_reduced(path: str | os.PathLike[str], max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(HxWx3 uint8 RGB at most ``max_side`` on its longer side, the upright (height, width) of the file).

    A large JPEG is decoded at reduced scale (never at full size in memory); other formats are decoded,
    then reduced. Images already within ``max_side`` come back as ``read_rgb`` reads them.
    """
    image = _open(path, max_side)
    full_w, full_h = image.info.get(_FILE_SIZE, image.size)
    if image.getexif().get(_EXIF_ORIENTATION) in _EXIF_TRANSPOSED:
        full_w, full_h = full_h, full_w
    rgb = _to_rgb(ImageOps.exif_transpose(image))
    if max(rgb.shape[:2]) > max_side:
        reduced = Image.fromarray(rgb)
        reduced.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        rgb = np.asarray(reduced)
    return rgb, (full_h, full_w)


_FILE_SIZE = "ulffn.file_size"  # (width, height) in the file, kept in Image.info when draft() reduces it
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height


def _to_rgb(image: Image.Image) -> np.ndarray:
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
