"""Synthetic dermoscopy images with lesion masks, written in the ISIC 2016 folder layout (numpy + Pillow).

Each image is a landscape photo (aspect 1.25-1.55, like ISIC) whose shorter side is ``size``: textured
skin, a round dermatoscope field of view or vignetting, one irregular pigmented lesion (sometimes
multi-lobed, sometimes cut by the image edge) with a pigment network, dots and colour variegation,
and hairs, air bubbles and glare on top. The mask is the lesion only: hairs and bubbles cross it
without changing it; the part of a lesion outside the field of view is not in the mask.

Lesion pixels are ``q < 1`` for a normalised radius ``q`` (distance from the centre over a noisy
polar radius); pigment density fades as ``sigmoid((1 - q) / softness)``, so a blurred border is
half-dark exactly on the mask edge and sharp and fuzzy borders are equally well defined.

Image ``k`` (``ISIC_%07d`` % k) is drawn from ``numpy.random.default_rng([seed, k])``: the same seed
gives byte-identical files. Training images are ids ``0 .. n_train-1``, test images follow them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ulffn_deploy.data import FOLDERS
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import output_errors, remove_stale_temp_files

GENERATOR_VERSION = 1
MIN_SIZE, MAX_SIZE = 32, 4096
JPEG_QUALITY = 92
SUMMARY_NAME = "synth.json"
_BINS = 1024  # samples of a lesion's polar radius function

# skin tones under a dermatoscope's light (linear-ish RGB in [0, 1])
_SKIN_TONES = np.array([
    [0.93, 0.74, 0.66], [0.90, 0.68, 0.60], [0.95, 0.80, 0.72], [0.86, 0.64, 0.52],
    [0.92, 0.72, 0.58], [0.80, 0.58, 0.47], [0.94, 0.76, 0.74], [0.88, 0.70, 0.64],
], dtype=np.float32)
# per-channel absorption: melanin darkens blue most (brown), haemoglobin green and blue (red)
_MELANIN = np.array([0.62, 0.86, 1.0], dtype=np.float32)
_HAEMOGLOBIN = np.array([0.18, 1.05, 0.80], dtype=np.float32)


def default_test_count(n_train: int) -> int:
    """The test set size when none is given: 20% of the training set, rounded, at least 1."""
    return max(1, round(0.2 * n_train))


# ---------------------------------------------------------------- noise and layers

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """HxW float32 noise with unit standard deviation and features about ``cell`` pixels wide."""
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    field = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))).astype(np.float32)


def _layer(h: int, w: int, supersample: int = 2) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    canvas = Image.new("L", (w * supersample, h * supersample), 0)
    return canvas, ImageDraw.Draw(canvas)


def _coverage(canvas: Image.Image, h: int, w: int, blur: float = 0.0) -> np.ndarray:
    small = canvas.resize((w, h), Image.Resampling.BOX)
    if blur > 0:
        small = small.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(small, dtype=np.float32) / 255.0


# ---------------------------------------------------------------- scene parts

def _cells(rng: np.random.Generator, h: int, w: int, cell: float, warp: float = 0.3) -> np.ndarray:
    """Distance from each pixel to the nearest border of a warped random cell pattern (Worley F2 - F1),
    in units of ``cell``: 0 on the lines of a polygonal mesh like skin furrows or a pigment network.
    Computed at half resolution when cells are large enough, then resized (the field is smooth)."""
    scale = 2 if cell >= 6 else 1
    lh, lw = -(-h // scale), -(-w // scale)
    gh, gw = int(lh * scale / cell) + 6, int(lw * scale / cell) + 6
    jitter = rng.random((2, gh, gw), dtype=np.float32)
    py = (np.arange(gh, dtype=np.float32)[:, None] + jitter[0]).ravel()
    px = (np.arange(gw, dtype=np.float32) + jitter[1]).ravel()
    ys, xs = np.mgrid[0:lh, 0:lw].astype(np.float32) * (scale / cell) + 3.0
    ys += warp * _smooth_noise(rng, lh, lw, 3 * cell / scale)
    xs += warp * _smooth_noise(rng, lh, lw, 3 * cell / scale)
    base = np.clip(ys.astype(np.int32), 1, gh - 2) * gw + np.clip(xs.astype(np.int32), 1, gw - 2)
    first = np.full((lh, lw), np.inf, dtype=np.float32)
    second = first.copy()
    for offset in (dy * gw + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
        index = base + offset
        d = (py.take(index) - ys) ** 2 + (px.take(index) - xs) ** 2
        np.minimum(second, np.maximum(first, d), out=second)
        np.minimum(first, d, out=first)
    field = np.sqrt(second) - np.sqrt(first)
    if scale == 1:
        return field
    return np.asarray(Image.fromarray(field).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _skin(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    tone = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.normal(1.0, 0.035, 3).astype(np.float32)
    shade = 1.0 + 0.04 * _smooth_noise(rng, h, w, h / 2.5)
    tint = 0.02 * _smooth_noise(rng, h, w, h / 3)
    skin = tone * shade[..., None]
    skin[..., 0] *= 1.0 + tint
    skin[..., 2] *= 1.0 - tint
    redness = rng.uniform(0.0, 0.12) * _sigmoid(2.0 * _smooth_noise(rng, h, w, h / 2))
    skin *= np.exp(-redness[..., None] * _HAEMOGLOBIN)
    furrows = np.exp(-(_cells(rng, h, w, max(4.0, h / rng.uniform(5, 10)), warp=0.5) / 0.05) ** 2)
    skin *= (1.0 - rng.uniform(0.02, 0.06) * furrows * (0.5 + 0.5 * _smooth_noise(rng, h, w, h / 6)))[..., None]
    grain = _smooth_noise(rng, h, w, max(1.5, h / 120))
    skin *= (1.0 + 0.012 * grain + 0.01 * rng.standard_normal((h, w), dtype=np.float32))[..., None]
    return skin


def _radius_profile(rng: np.random.Generator, irregularity: float) -> np.ndarray:
    """A closed polar radius function, ``_BINS`` samples around the circle, mean about 1."""
    theta = np.linspace(-np.pi, np.pi, _BINS, endpoint=False, dtype=np.float32)
    k = np.arange(2, 14, dtype=np.float32)
    amplitude = irregularity * rng.standard_normal(k.size).astype(np.float32) / (k - 1) ** 1.3
    phase = rng.uniform(0, 2 * np.pi, k.size).astype(np.float32)
    return np.exp((amplitude[:, None] * np.cos(k[:, None] * theta + phase[:, None])).sum(axis=0))


def _lesion_radius(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, float]:
    """Normalised radius ``q`` (lesion where q < 1) and the mean lesion radius in pixels."""
    u = rng.random()
    radius = h * (rng.uniform(0.08, 0.17) if u < 0.2 else rng.uniform(0.17, 0.33) if u < 0.75
                  else rng.uniform(0.33, 0.62))
    spread = 0.28 if rng.random() < 0.2 else 0.1
    cx, cy = w / 2 + rng.normal(0, spread * h), h / 2 + rng.normal(0, spread * 0.8 * h)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    irregularity = rng.uniform(0.05, 0.12) if rng.random() < 0.5 else rng.uniform(0.12, 0.35)
    n_lobes = 1 if rng.random() < 0.65 else int(rng.integers(2, 4))
    q = np.full((h, w), np.inf, dtype=np.float32)
    for lobe in range(n_lobes):
        r, x0, y0 = radius, cx, cy
        if lobe:
            angle = rng.uniform(0, 2 * np.pi)
            offset = radius * rng.uniform(0.35, 0.75)
            r, x0, y0 = radius * rng.uniform(0.45, 0.8), cx + offset * np.cos(angle), cy + offset * np.sin(angle)
        tilt, stretch = rng.uniform(0, np.pi), rng.uniform(1.0, 1.45)
        dx, dy = xs - x0, ys - y0
        u_ax = (dx * np.cos(tilt) + dy * np.sin(tilt)) / stretch
        v_ax = -dx * np.sin(tilt) + dy * np.cos(tilt)
        index = ((np.arctan2(v_ax, u_ax) + np.pi) * (_BINS / (2 * np.pi))).astype(np.int32) % _BINS
        q = np.minimum(q, np.hypot(u_ax, v_ax) / (r * _radius_profile(rng, irregularity)[index]))
    q *= np.exp(rng.uniform(0.02, 0.07) * _smooth_noise(rng, h, w, max(4.0, radius / 2)))
    return q, radius


def _dots(rng: np.random.Generator, q: np.ndarray, radius: float) -> np.ndarray:
    """Dots and globules of varied size inside the lesion (clustered), as an HxW coverage map."""
    h, w = q.shape
    inside = np.flatnonzero(q.ravel() < rng.uniform(0.5, 0.95))
    canvas, draw = _layer(h, w)
    if inside.size:
        centres = rng.choice(inside, size=int(rng.integers(1, 4)))
        for _ in range(int(rng.integers(6, 45))):
            y, x = divmod(int(rng.choice(centres)), w)
            y, x = y + rng.normal(0, 0.3 * radius), x + rng.normal(0, 0.3 * radius)
            r = 2 * max(0.5, rng.gamma(2.0, 0.004) * h)
            draw.ellipse((2 * x - r, 2 * y - r, 2 * x + r, 2 * y + r), fill=int(rng.integers(60, 220)))
    return _coverage(canvas, h, w, blur=max(0.5, radius / 150)) * (q < 1.0)


def _pigment(rng: np.random.Generator, skin: np.ndarray, q: np.ndarray, radius: float) -> np.ndarray:
    """Skin with the lesion's pigment on it (Beer-Lambert style absorption, plus a blue-grey veil)."""
    h, w = q.shape
    softness = rng.uniform(0.01, 0.035) if rng.random() < 0.35 else rng.uniform(0.035, 0.12)
    alpha = _sigmoid((1.0 - q) / softness)
    core = np.clip(1.0 - q, 0.0, 1.0)
    u = rng.random()
    density = rng.uniform(0.35, 0.6) if u < 0.15 else rng.uniform(0.6, 1.2) if u < 0.7 else rng.uniform(1.2, 2.3)
    shape = rng.random()
    profile = 0.6 + 0.9 * core**0.6 if shape < 0.55 else 1.15 - 0.5 * core if shape < 0.75 else np.ones_like(q)
    variegation = np.exp(rng.uniform(0.1, 0.45) * _smooth_noise(rng, h, w, max(4.0, radius / 2.5)))
    amount = profile * variegation
    if rng.random() < 0.6:  # pigment network: dark lines along the borders of a random cell pattern
        mesh = np.exp(-(_cells(rng, h, w, max(2.5, h / rng.uniform(25, 45))) / rng.uniform(0.25, 0.45)) ** 2)
        patchy = _sigmoid(2.5 * _smooth_noise(rng, h, w, max(4.0, radius / 2)) + 1.0) * (0.4 + 0.6 * core**0.3)
        amount = amount + rng.uniform(0.3, 0.8) * mesh * patchy
    if rng.random() < 0.5:
        amount = amount + rng.uniform(0.6, 1.5) * _dots(rng, q, radius)
    amount = amount * (1.0 + 0.12 * _smooth_noise(rng, h, w, max(1.5, h / 80)))
    red = rng.uniform(0.4, 0.7) if rng.random() < 0.12 else rng.uniform(0.0, 0.2)
    density = density * (1.0 - 0.5 * red)
    absorb = (1 - red) * _MELANIN + red * _HAEMOGLOBIN
    depth = (alpha * density * amount)[..., None]
    image = skin * np.exp(-depth * absorb * rng.normal(1.0, 0.05, 3).astype(np.float32))
    if rng.random() < 0.2:  # blue-grey veil over part of the lesion
        veil = alpha * core**0.5 * _sigmoid(3.0 * _smooth_noise(rng, h, w, max(4.0, radius / 2)) - 1.5)
        grey = np.array([0.36, 0.39, 0.48], dtype=np.float32) * rng.uniform(0.6, 1.0)
        image += (grey - image) * (rng.uniform(0.3, 0.65) * veil)[..., None]
    return image


def _field_of_view(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(inside the round field of view, 0..1; vignetting gain) for an HxW image."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.hypot(xs - w / 2 - rng.normal(0, 0.02 * h), ys - h / 2 - rng.normal(0, 0.02 * h))
    half_diagonal = float(np.hypot(h, w)) / 2
    if rng.random() < 0.55:
        rim = rng.uniform(max(0.56 * h, 0.6 * half_diagonal), 0.97 * half_diagonal)
        inside = np.clip((rim - d) / max(1.0, 0.012 * h) + 0.5, 0.0, 1.0)
        return inside, 1.0 - rng.uniform(0.2, 0.45) * (d / rim) ** 3
    return np.ones_like(d), 1.0 - rng.uniform(0.1, 0.4) * (d / half_diagonal) ** 2


def _hairs(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    u = rng.random()
    count = 0 if u < 0.4 else int(rng.integers(1, 5)) if u < 0.72 else int(rng.integers(5, 14)) if u < 0.9 \
        else int(rng.integers(14, 36))
    if not count:
        return image
    canvas, draw = _layer(h, w)
    t = np.linspace(0, 1, 24)[:, None]
    for _ in range(count):
        start = rng.uniform((-0.1 * w, -0.1 * h), (1.1 * w, 1.1 * h))
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.3) * h
        end = start + length * np.array([np.cos(angle), np.sin(angle)])
        bend = (start + end) / 2 + rng.normal(0, 0.25 * length, 2)
        points = 2 * ((1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t**2 * end)
        width, shade = 2 * rng.uniform(0.7, 2.6) * h / 256, int(rng.integers(150, 256))
        for part, taper in ((points[:13], 1.0), (points[12:19], 0.75), (points[18:], 0.5)):  # thinner to the tip
            draw.line([tuple(p) for p in part.tolist()], fill=shade, width=max(1, round(width * taper)), joint="curve")
    cover = _coverage(canvas, h, w)[..., None]
    colour = np.array([0.11, 0.075, 0.06], dtype=np.float32) * rng.uniform(0.4, 1.8)
    return image * (1 - cover) + colour * cover


def _bubbles(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Air bubbles in the immersion fluid (dark rim, bright arc) and specular glare spots."""
    h, w = image.shape[:2]
    dark_canvas, dark = _layer(h, w)
    bright_canvas, bright = _layer(h, w)
    count = 0 if rng.random() < 0.6 else int(rng.integers(1, 9))
    for _ in range(count):
        x, y = 2 * rng.uniform(0, w), 2 * rng.uniform(0, h)
        r = 2 * rng.uniform(0.02, 0.11) * h
        rim = max(1, round(r * rng.uniform(0.03, 0.07)))
        box = (x - r, y - r, x + r, y + r)
        dark.ellipse(box, outline=int(rng.integers(90, 200)), width=rim)
        bright.ellipse((x - 0.9 * r, y - 0.9 * r, x + 0.9 * r, y + 0.9 * r), fill=int(rng.integers(10, 35)))
        start = rng.uniform(0, 360)
        bright.arc((x - 0.85 * r, y - 0.85 * r, x + 0.85 * r, y + 0.85 * r), start, start + rng.uniform(60, 160),
                   fill=int(rng.integers(150, 256)), width=max(1, 2 * rim))
    for _ in range(0 if rng.random() < 0.6 else int(rng.integers(1, 12))):
        x, y, r = 2 * rng.uniform(0, w), 2 * rng.uniform(0, h), 2 * rng.uniform(0.003, 0.012) * h + 1
        bright.ellipse((x - r, y - r * 0.7, x + r, y + r * 0.7), fill=int(rng.integers(180, 256)))
    image = image * (1 - 0.75 * _coverage(dark_canvas, h, w, blur=0.4))[..., None]
    glow = _coverage(bright_canvas, h, w, blur=0.5)[..., None]
    return image + (0.97 - image) * glow


def render_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic dermoscopy image (size x W x 3 uint8, W = 1.25-1.55 x size) and its bool lesion mask."""
    if size < MIN_SIZE:
        raise UlffnError(f"image size must be at least {MIN_SIZE} pixels, got {size}")
    h = int(size)
    w = round(h * rng.uniform(1.25, 1.55))
    inside, vignetting = _field_of_view(rng, h, w)
    for _ in range(50):  # redraw lesions that the field of view cuts down to almost nothing
        q, radius = _lesion_radius(rng, h, w)
        mask = (q < 1.0) & (inside > 0.5)
        if 0.01 <= mask.mean() <= 0.85:
            break
    image = _pigment(rng, _skin(rng, h, w), q, radius)
    image = _bubbles(rng, _hairs(rng, image))
    image *= (vignetting * rng.uniform(0.85, 1.08))[..., None]
    outside = rng.uniform(0.0, 0.05) * (1.0 + 0.3 * rng.standard_normal((h, w), dtype=np.float32))
    image = image * inside[..., None] + (outside * (1 - inside))[..., None]
    pixels = Image.fromarray(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8))
    pixels = pixels.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.5) + 0.4 * h / 512))
    return np.array(pixels), mask


# ---------------------------------------------------------------- dataset on disk

def _check(out_dir: Path, n_train: int, n_test: int, size: int, force: bool) -> None:
    if n_train < 1:
        raise UlffnError(f"the number of training images (--n) must be at least 1, got {n_train}")
    if n_test < 0:
        raise UlffnError(f"the number of test images (--split-test) must be 0 or more, got {n_test}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UlffnError(f"the image size (--size) must be from {MIN_SIZE} to {MAX_SIZE} pixels, got {size}")
    if n_train + n_test > 10_000_000:
        raise UlffnError(f"{n_train + n_test} images do not fit 7-digit ISIC ids", "make fewer images")
    if out_dir.exists() and not out_dir.is_dir():
        raise UlffnError(f"{out_dir} exists and is not a folder", "choose another output folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise UlffnError(f"{out_dir} exists and is not empty",
                             "choose another folder, or pass --force to replace an earlier synth output")
        if not (out_dir / SUMMARY_NAME).is_file():
            raise UlffnError(f"{out_dir} is not empty and holds no {SUMMARY_NAME}, so synth did not write it",
                             "--force replaces only an earlier synth output; choose another folder")


def _write_pair(image_dir: Path, mask_dir: Path, isic_id: str, image: np.ndarray, mask: np.ndarray) -> None:
    Image.fromarray(image).save(image_dir / f"{isic_id}.jpg", format="JPEG", quality=JPEG_QUALITY)
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"{isic_id}_Segmentation.png", format="PNG")


def _replace_folder(built: Path, out_dir: Path) -> None:
    """Move the finished dataset ``built`` to ``out_dir``, replacing what was there."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
    os.replace(built, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate_dataset(out_dir: str | os.PathLike[str], n_train: int, n_test: int | None = None, size: int = 256,
                     seed: int = 0, *, force: bool = False,
                     progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write a synthetic ISIC 2016-layout set to ``out_dir``; return its summary (also saved as synth.json).

    ``n_test=None`` means ``default_test_count(n_train)``. The set is built in a hidden folder beside
    ``out_dir`` and renamed into place when complete, so an interrupted run leaves no partial set.
    An existing non-empty ``out_dir`` is replaced only with ``force=True``, and only if it is an earlier
    synth output (it holds synth.json), so a mistyped path never deletes someone's files. ``progress(1)`` is called
    after each image.
    """
    out = Path(out_dir).resolve()
    n_test = default_test_count(n_train) if n_test is None else int(n_test)
    _check(out, int(n_train), n_test, int(size), force)
    with output_errors(out):  # a full disk, a read-only folder, a file in the way: exit 2 naming OUT
        return _generate(out, n_train, n_test, size, seed, progress) | {"out_dir": str(out_dir)}


def _generate(out: Path, n_train: int, n_test: int, size: int, seed: int,
              progress: Callable[[int], None] | None) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)  # build folders of killed runs
    started = time.perf_counter()
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    lesion_fractions = []
    try:
        for split, ids in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
            image_dir, mask_dir = (build / name for name in FOLDERS[(2016, split)])
            image_dir.mkdir()
            mask_dir.mkdir()
            for k in ids:
                image, mask = render_sample(np.random.default_rng([seed, k]), size)
                _write_pair(image_dir, mask_dir, f"ISIC_{k:07d}", image, mask)
                lesion_fractions.append(float(mask.mean()))
                if progress is not None:
                    progress(1)
        summary: dict[str, Any] = {
            "generator": "ulffn-deploy synth", "generator_version": GENERATOR_VERSION, "layout": "ISIC 2016",
            "n_train": n_train, "n_test": n_test, "size": size, "seed": seed,
            "lesion_fraction_mean": round(float(np.mean(lesion_fractions)), 4),
        }
        (build / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        build.chmod(0o755)  # mkdtemp makes it private; the set is ordinary output
        _replace_folder(build, out)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return {**summary, "seconds": round(time.perf_counter() - started, 3)}


# ---------------------------------------------------------------- preview

def _outline(mask: np.ndarray) -> np.ndarray:
    """A 2-pixel band along the mask's border."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.filter(ImageFilter.MaxFilter(3))) != np.asarray(image.filter(ImageFilter.MinFilter(3)))


def preview_grid(seed: int = 0, size: int = 256, columns: int = 4, rows: int = 3) -> Image.Image:
    """A grid of synthetic images (ids 0, 1, ...) with their mask outlines drawn in green."""
    cell_w, gap = round(size * 1.55), 6
    grid = Image.new("RGB", (columns * (cell_w + gap) + gap, rows * (size + gap) + gap), (255, 255, 255))
    for k in range(columns * rows):
        image, mask = render_sample(np.random.default_rng([seed, k]), size)
        shown = image.copy()
        shown[_outline(mask)] = (0, 230, 0)
        x = gap + (k % columns) * (cell_w + gap) + (cell_w - image.shape[1]) // 2
        grid.paste(Image.fromarray(shown), (x, gap + (k // columns) * (size + gap)))
    return grid
