"""Predict lesion masks for image files and folders: masks, overlays and a CSV, with any backend.

Used by ``ulffn-deploy predict`` and by the quickstart; needs numpy, Pillow and the artifact's runtime only.
Unreadable files are reported and skipped; the run goes on and the summary counts them.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import write_text_atomic
from ulffn_deploy.imageio import IMAGE_SUFFIXES, image_files, read_rgb, write_mask, write_rgb

CSV_NAME = "predictions.csv"
CSV_COLUMNS = ("file", "height", "width", "lesion_pixels", "lesion_fraction", "mean_lesion_probability")
OUTLINE_RGB = (0, 255, 0)
OUTLINE_WIDTH = 2  # pixels, inside the mask's edge


@dataclass
class PredictSummary:
    """What a predict run did: images written, files skipped with their reasons, where the outputs are."""

    artifact: Path
    out_dir: Path
    info: dict[str, Any]
    predicted: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def csv_path(self) -> Path:
        return self.out_dir / CSV_NAME

    def line(self) -> str:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return (f"predicted {len(self.predicted)} image(s){failed} with {self.artifact.name} "
                f"({self.info['backend']}, {self.info['precision']}, fit {self.info['fit_mode']}) -> {self.out_dir}")


def collect_images(inputs: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, Path]]:
    """(image path, output key) for files and folders (searched recursively for IMAGE_SUFFIXES).

    The key is where the outputs go relative to the output folder: the file's stem, or its path inside
    the folder it was found in; inputs whose keys collide keep their suffix in the key.
    """
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = image_files(item, recursive=True)
            found += [(p, p.relative_to(item).with_suffix("")) for p in files]
        elif item.exists():
            found.append((item, Path(item.stem)))
        else:
            raise UlffnError(f"{item}: no such file or folder")
    counts: dict[Path, int] = {}
    for _, key in found:
        counts[key] = counts.get(key, 0) + 1
    return [(path, key.with_name(f"{key.name}_{path.suffix.lstrip('.')}") if counts[key] > 1 else key)
            for path, key in found]


def outline(mask: np.ndarray, width: int = OUTLINE_WIDTH) -> np.ndarray:
    """The ``width``-pixel band just inside the mask's edge (the mask minus its erosion)."""
    if not mask.any():
        return mask.copy()
    image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    eroded = np.asarray(image.filter(ImageFilter.MinFilter(2 * width + 1))) > 127
    return mask & ~eroded


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = OUTLINE_RGB) -> np.ndarray:
    """The image with the lesion's outline drawn in ``color``."""
    drawn = image.copy()
    drawn[outline(mask)] = color
    return drawn


def image_row(name: str, probability: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """One CSV row; mean_lesion_probability is over the predicted lesion pixels (empty when there are none)."""
    pixels = int(mask.sum())
    return {
        "file": name,
        "height": mask.shape[0],
        "width": mask.shape[1],
        "lesion_pixels": pixels,
        "lesion_fraction": f"{pixels / mask.size:.6f}",
        "mean_lesion_probability": f"{float(probability[mask].mean()):.6f}" if pixels else "",
    }


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


def predict_paths(artifact: str | os.PathLike[str] | None, inputs: Sequence[str | os.PathLike[str]],
                  out_dir: str | os.PathLike[str], batch_size: int = 4, fit_mode: str = "full",
                  artifacts_dir: str | os.PathLike[str] = "artifacts", progress: bool = True,
                  report: Callable[[str], None] | None = None, **load_options: Any) -> PredictSummary:
    """Predict every image in ``inputs``; write ``<key>_mask.png``, ``<key>_overlay.png`` and predictions.csv.

    ``artifact`` None picks the registry's default artifact of ``artifacts_dir``. Files that cannot be read are
    passed to ``report`` (a one-line message each) and listed in the summary's ``failed``.
    """
    from ulffn_deploy.runtime import Segmenter
    from ulffn_deploy.targets.registry import default_artifact

    if batch_size < 1:
        raise UlffnError(f"batch size {batch_size} is not positive")
    images = collect_images(inputs)
    if not images:
        raise UlffnError(f"no images found in {', '.join(map(str, inputs))}", f"images end in {', '.join(IMAGE_SUFFIXES)}")
    artifact = Path(artifact) if artifact else default_artifact(artifacts_dir)
    out = Path(out_dir)
    rows: list[dict[str, Any]] = []
    with Segmenter.load(artifact, fit_mode=fit_mode, **load_options) as segmenter:
        summary = PredictSummary(artifact, out, segmenter.info)
        bar = _progress(len(images), progress)
        for batch in _batches(images, batch_size):
            loaded = _read_batch(batch, summary, report)
            if loaded:
                probabilities = segmenter.predict_probabilities([image for _, _, image in loaded])
                for (path, key, image), probability in zip(loaded, probabilities):
                    rows.append(_write_outputs(out, path, key, image, probability))
                    summary.predicted.append(path)
            bar.update(len(batch))
        bar.close()
    _write_csv(summary.csv_path, rows)
    return summary


def _read_batch(batch: Sequence[tuple[Path, Path]], summary: PredictSummary,
                report: Callable[[str], None] | None) -> list[tuple[Path, Path, np.ndarray]]:
    loaded = []
    for path, key in batch:
        try:
            loaded.append((path, key, read_rgb(path)))
        except UlffnError as exc:
            summary.failed.append((path, str(exc)))
            if report:
                report(f"skipped {path}: {exc}")
    return loaded


def _write_outputs(out: Path, path: Path, key: Path, image: np.ndarray, probability: np.ndarray) -> dict[str, Any]:
    mask = probability > 0.5
    write_mask(out / f"{key}_mask.png", mask)
    write_rgb(out / f"{key}_overlay.png", overlay(image, mask))
    return image_row(os.fspath(path), probability, mask)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="image", desc="predict", leave=False)
