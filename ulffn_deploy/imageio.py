"""Reading and writing images and masks with Pillow: every odd input becomes HxWx3 uint8 RGB."""

from __future__ import annotations

import json
import math
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ulffn_deploy.errors import UlffnError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
OUTPUTS_MANIFEST = ".ulffn-predict-outputs"  # in a folder predict wrote to: one JSON string per line, a file it wrote

# Pillow's warnings about the files it decodes (a damaged EXIF block, a large image below the refusal limit) are
# silenced once, for Pillow's modules only: warnings.catch_warnings() around each decode would swap the
# process-wide filters while other threads decode or warn, and lose their warnings.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", module=r"PIL\.")


def image_files(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (by suffix, any case), sorted; with ``recursive`` also in sub-folders.

    Broken symbolic links, FIFOs and devices with an image suffix are listed too, so that reading them reports
    them. Files that predict wrote (its masks and overlays, listed in OUTPUTS_MANIFEST beside them) are no input and left out."""
    folder = Path(folder)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    manifests = folder.rglob(OUTPUTS_MANIFEST) if recursive else [folder / OUTPUTS_MANIFEST]
    outputs = {manifest.parent / name for manifest in manifests for name in recorded_outputs(manifest.parent)}
    return sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir() and p not in outputs)


def recorded_outputs(folder: Path) -> set[str]:
    """The names (relative to ``folder``) that predict recorded in its OUTPUTS_MANIFEST there."""
    names: set[str] = set()
    try:
        with open(folder / OUTPUTS_MANIFEST, encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.readlines()
    except OSError:
        return names
    for line in lines:
        try:
            name = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if isinstance(name, str):
            names.add(name)
    return names


def is_broken_link(path: Path) -> bool:
    """A symbolic link whose target does not exist."""
    return path.is_symlink() and not path.exists()


def _check_regular(path: str | os.PathLike[str]) -> None:
    """Refuse what is not a regular file (a FIFO would block the read forever, a device never ends)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as exc:
        broken = is_broken_link(Path(path))
        raise UlffnError(f"{path}: {'broken symbolic link' if broken else 'no such file'}") from exc
    except OSError as exc:
        raise UlffnError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(mode):
        raise UlffnError(f"{path}: not a regular file", "name an image file")


def _open(path: str | os.PathLike[str], max_side: int | None = None) -> Image.Image:
    """The decoded image; with ``max_side`` a JPEG is decoded at the smallest scale (1/2 to 1/8) that keeps
    its longer side at least ``max_side``. Images over Pillow's pixel limit are refused like corrupt ones.
    ``path`` may also be a binary file object (the server's request bodies)."""
    if isinstance(path, (str, os.PathLike)):
        _check_regular(path)
    try:
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
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises on a hostile file means "unreadable"
        raise _unreadable(path, exc) from exc
    return image


def _unreadable(path: object, exc: BaseException) -> UlffnError:
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return UlffnError(f"{path}: not a readable image ({reason})", "check the file is a complete JPEG or PNG")


def _gray_to_uint8(array: np.ndarray) -> np.ndarray:
    """One channel of more than 8 bits -> uint8, as a viewer shows it: 16-bit samples (``I;16*``, and mode ``I``,
    where Pillow puts 16-bit PGM and most 32-bit-integer TIFFs) span 0..65535; ``I`` values beyond that span
    0..their maximum; floats span 0..1 (0..255 when any exceeds 1). Negative values and NaN are black."""
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    values = np.maximum(values, 0.0)
    top = float(values.max(initial=0.0))
    if np.issubdtype(array.dtype, np.floating):
        full_scale = 1.0 if top <= 1.0 else 255.0
    else:
        full_scale = 65535.0 if top <= 65535 else top
    return (np.minimum(values / full_scale, 1.0) * 255 + 0.5).astype(np.uint8)


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """HxWx3 uint8 RGB, upright (EXIF orientation applied; a malformed EXIF block is ignored), alpha composited
    on black. Every mode Pillow opens gives what a viewer shows (16-bit and 32-bit grayscale included)."""
    image = _open(path)
    return _decoded(path, lambda: _to_rgb(_upright(image)))


def read_rgb_reduced(path: str | os.PathLike[str], max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(HxWx3 uint8 RGB at most ``max_side`` on its longer side, the upright (height, width) of the file).

    A large JPEG is decoded at reduced scale (never at full size in memory); other formats are decoded,
    then reduced. Images already within ``max_side`` come back as ``read_rgb`` reads them.
    """
    image = _open(path, max_side)
    full_w, full_h = image.info.get(_FILE_SIZE, image.size)
    if _orientation(image) in _EXIF_TRANSPOSED:
        full_w, full_h = full_h, full_w
    rgb = _decoded(path, lambda: _to_rgb(_upright(image)))
    if max(rgb.shape[:2]) > max_side:
        reduced = Image.fromarray(rgb)
        reduced.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        rgb = np.asarray(reduced)
    return rgb, (full_h, full_w)


_FILE_SIZE = "ulffn.file_size"  # (width, height) in the file, kept in Image.info when draft() reduces it
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height


_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                   5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                   8: Image.Transpose.ROTATE_90}


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1: upright); 1 also when the EXIF block is malformed (the pixels are still fine)."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many kinds of error on hostile blocks
        return 1
    return value if isinstance(value, int) and value in _EXIF_TRANSPOSE else 1


def _upright(image: Image.Image) -> Image.Image:
    method = _EXIF_TRANSPOSE.get(_orientation(image))
    return image.transpose(method) if method is not None else image


def _decoded(path: object, decode: Callable[[], np.ndarray]) -> np.ndarray:
    """``decode()``; an error converting a hostile file's pixels is an unreadable image, not a crash."""
    try:
        return decode()
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(path, exc) from exc


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _gray_to_uint8(np.asarray(image))
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    elif image.mode in ("LAB", "HSV"):  # Pillow converts these to RGB only through a colour transform
        image = _converted(image)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _converted(image: Image.Image) -> Image.Image:
    if image.mode == "HSV":
        return image.convert("RGB")
    from PIL import ImageCms

    transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    return ImageCms.applyTransform(image, transform) or image


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """HxW bool lesion mask from a 0/255 PNG; a two-valued mask such as 0/1 is accepted too. A mask drawn in
    colour is lesion wherever any channel is non-zero (transparent pixels are background; a palette image is
    read by its colours, not its indices)."""
    image = _open(path)
    array = _decoded(path, lambda: _mask_levels(image))
    values = np.unique(array)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        raise UlffnError(
            f"{path}: mask has values {values[:6].tolist()}{'...' if values.size > 6 else ''}",
            "masks must be two-valued, 0 for background and 255 (or 1) for lesion",
        )
    return array > 0


def _mask_levels(image: Image.Image) -> np.ndarray:
    """HxW: the largest channel value of each pixel (alpha composited on black first)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F", "1", "L"):
        return np.asarray(image)
    array = _to_rgb(image)
    return array.max(axis=2)


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
