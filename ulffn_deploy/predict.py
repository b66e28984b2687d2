"""Predict lesion masks for image files and folders: masks, overlays and a CSV, with any backend.

Used by ``ulffn-deploy predict`` and by the quickstart; needs numpy, Pillow and the artifact's runtime only.
Unreadable files are reported and skipped; the run goes on and the summary counts them.

Outputs: each input gets a unique key in the run, so two inputs never write one mask. predictions.csv has
one row per mask; rows are appended after every batch (an interrupted run keeps the rows of its finished
batches) and the table is compacted to the latest row per mask at the end. A batch's files and rows are
written under a lock on the output folder, so runs sharing a folder keep each other's rows. Images over
NETWORK_MAX_SIDE pixels on a side are decoded at reduced scale; their masks are scaled back to the original
size (their overlays are drawn on the reduced image).

Predict never overwrites a file it did not write, and never reads its outputs as inputs: every file it writes
is recorded (before it is written) in the output folder's MANIFEST_NAME; a run whose output names are taken
by other files stops before it writes anything, and folders are searched without the files their manifests
list (``-o`` may be the input folder, or inside it). A row whose model output is NaN or infinite is marked
in the CSV's ``warning`` column and reported; the run then exits 1 like one with skipped files.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import check_writable_folder, output_errors, write_text_atomic
from ulffn_deploy.imageio import (
    IMAGE_SUFFIXES,
    OUTPUTS_MANIFEST,
    image_files,
    read_rgb_reduced,
    recorded_outputs,
    write_mask,
)
from ulffn_deploy.overlay import OverlayStyle, write_overlay
from ulffn_deploy.preprocess import check_batch_size

CSV_NAME = "predictions.csv"
CSV_COLUMNS = ("file", "mask", "height", "width", "lesion_pixels", "lesion_fraction", "mean_lesion_probability",
               "warning")
MANIFEST_NAME = OUTPUTS_MANIFEST
NETWORK_MAX_SIDE = 2048  # larger images are decoded reduced: the network input is at most 2048 px (512 in the paper)


@dataclass
class PredictSummary:
    """What a predict run did: images written, files skipped with their reasons, where the outputs are."""

    artifact: Path
    out_dir: Path
    info: dict[str, Any]
    predicted: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    non_finite: list[Path] = field(default_factory=list)  # predicted, but the model's output was NaN or infinite

    @property
    def csv_path(self) -> Path:
        return self.out_dir / CSV_NAME

    def line(self) -> str:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        failed += f", {len(self.non_finite)} with non-finite model output" if self.non_finite else ""
        return (f"predicted {len(self.predicted)} image(s){failed} with {self.artifact.name} "
                f"({self.info['backend']}, {self.info['precision']}, fit {self.info['fit_mode']}) -> {self.out_dir}")


def collect_images(inputs: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, Path]]:
    """(image path, output key) for files and folders (searched recursively for IMAGE_SUFFIXES).

    The key is where the outputs go relative to the output folder: the file's stem, or its path inside
    the folder it was found in; inputs whose keys collide keep their suffix in the key, and keys that still
    collide (``a/x.jpg b/x.jpg``; case-insensitively, for such file systems) get ``_2``, ``_3``... A file
    named twice is predicted once.
    """
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = image_files(item, recursive=True)  # without predict's recorded outputs
            found += [(p, p.relative_to(item).with_suffix("")) for p in files]
        elif item.exists():
            found.append((item, Path(item.stem)))
        else:
            raise UlffnError(f"{item}: no such file or folder")
    found = list({path.resolve(): (path, key) for path, key in reversed(found)}.values())[::-1]
    counts: dict[Path, int] = {}
    for _, key in found:
        counts[key] = counts.get(key, 0) + 1
    keyed = [(path, key.with_name(f"{key.name}_{path.suffix.lstrip('.')}") if counts[key] > 1 else key)
             for path, key in found]
    return _unique_keys(keyed)


def _recorded(folder: Path) -> set[str]:
    """The names (relative to ``folder``) that predict recorded writing there; with an older folder that has
    no manifest, the masks its predictions.csv lists and their overlays."""
    names = recorded_outputs(folder)
    if _is_our_csv(folder / CSV_NAME) and CSV_NAME not in names:
        with open(folder / CSV_NAME, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            masks = [row.get("mask") or "" for row in csv.DictReader(handle)]
        names |= {CSV_NAME, *(name for mask in masks if mask.endswith("_mask.png")
                              for name in _output_names(Path(mask.removesuffix("_mask.png"))))}
    return names


def _is_our_csv(path: Path) -> bool:
    """A predictions table of predict's (of any layout it wrote, or left empty by a kill)."""
    if not path.is_file():
        return False
    header = _header(path)
    return header is None or (header[:1] == ["file"] and set(header) <= set(CSV_COLUMNS))


def _output_names(key: Path) -> tuple[str, ...]:
    """Every name the outputs of ``key`` may have (the overlay is a .jpg for large images)."""
    return tuple(f"{key.as_posix()}{suffix}" for suffix in ("_mask.png", "_overlay.png", "_overlay.jpg"))


def _refuse_foreign_files(out: Path, keys: Iterable[Path]) -> None:
    """UlffnError naming the first file at one of the run's output names that predict did not write."""
    recorded = _recorded(out)
    for name in (CSV_NAME, *(name for key in keys for name in _output_names(key))):
        path = out / name
        if name not in recorded and (path.exists() or path.is_symlink()):
            raise UlffnError(f"{path} exists and was not written by predict; predict does not overwrite it",
                             "choose another output folder (-o), or move that file")


def _record(out: Path, names: Iterable[str]) -> None:
    """Add ``names`` to the output folder's manifest (before the files are written: a kill leaves no file
    of predict's unrecorded). Names already there are not added again, so reruns do not grow it."""
    known = recorded_outputs(out)
    lines = "".join(json.dumps(name) + "\n" for name in dict.fromkeys(names) if name not in known)
    if not lines:
        return
    with output_errors(out / MANIFEST_NAME), open(out / MANIFEST_NAME, "a", encoding="utf-8") as handle:
        handle.write(lines)


def _unique_keys(keyed: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    taken = {key.as_posix().casefold() for _, key in keyed}
    seen: set[str] = set()
    unique = []
    for path, key in keyed:
        candidate, number = key, 1
        while candidate.as_posix().casefold() in seen:
            number += 1
            candidate = key.with_name(f"{key.name}_{number}")
            if candidate.as_posix().casefold() in taken:  # another input's own key: never take it
                candidate = key
        seen.add(candidate.as_posix().casefold())
        unique.append((path, candidate))
    return unique


def image_row(name: str, probability: np.ndarray, mask: np.ndarray, mask_name: str = "") -> dict[str, Any]:
    """One CSV row; mean_lesion_probability is over the predicted lesion pixels (empty when there are none).

    ``probability`` may be a reduced-size map of a large image; ``mask`` is at the image's size."""
    pixels = int(mask.sum())
    reduced_mask = probability > 0.5
    non_finite = int(np.count_nonzero(~np.isfinite(probability)))
    return {
        "file": name,
        "mask": mask_name,
        "height": mask.shape[0],
        "width": mask.shape[1],
        "lesion_pixels": pixels,
        "lesion_fraction": f"{pixels / mask.size:.6f}",
        "mean_lesion_probability": f"{float(probability[reduced_mask].mean()):.6f}" if reduced_mask.any() else "",
        "warning": f"model output is NaN or infinite at {non_finite} of {probability.size} pixels" if non_finite else "",
    }


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


def predict_paths(artifact: str | os.PathLike[str] | None, inputs: Sequence[str | os.PathLike[str]],
                  out_dir: str | os.PathLike[str], batch_size: int = 4, fit_mode: str = "full",
                  artifacts_dir: str | os.PathLike[str] = "artifacts", progress: bool = True,
                  report: Callable[[str], None] | None = None, overlay_style: OverlayStyle | None = None,
                  **load_options: Any) -> PredictSummary:
    """Predict every image in ``inputs``; write ``<key>_mask.png``, ``<key>_overlay.png`` and predictions.csv.

    ``artifact`` None picks the registry's default artifact of ``artifacts_dir``. Files that cannot be read are
    passed to ``report`` (a one-line message each) and listed in the summary's ``failed``. ``overlay_style``
    sets what the overlays show (``ulffn_deploy.overlay``; default: contours and a caption).
    """
    from ulffn_deploy.runtime import Segmenter
    from ulffn_deploy.targets.registry import default_artifact

    check_batch_size(batch_size)
    images = collect_images(inputs)
    if not images:
        raise UlffnError(f"no images found in {', '.join(map(str, inputs))}", f"images end in {', '.join(IMAGE_SUFFIXES)}")
    artifact = Path(artifact) if artifact else default_artifact(artifacts_dir)
    out = Path(out_dir)
    with Segmenter.load(artifact, fit_mode=fit_mode, **load_options) as segmenter:
        summary = PredictSummary(artifact, out, segmenter.info)
        drawing = _Drawing(overlay_style or OverlayStyle(), f"{artifact.name} {segmenter.precision}", report)
        check_writable_folder(out)
        with _folder_lock(out):
            _refuse_foreign_files(out, (key for _, key in images))
            if CSV_NAME not in _recorded(out):
                _record(out, [CSV_NAME])
        bar = _progress(len(images), progress)
        for batch in _batches(images, batch_size):
            loaded = _read_batch(batch, summary, report)
            if loaded:
                probabilities = segmenter.predict_probabilities([image for _, _, image, _ in loaded])
                with _folder_lock(out):
                    _record(out, (name for _, key, _, _ in loaded for name in _output_names(key)))
                    rows = [_write_outputs(out, path, key, image, probability, original, drawing)
                            for (path, key, image, original), probability in zip(loaded, probabilities)]
                    _append_rows(summary.csv_path, rows)
                summary.predicted += [path for path, _, _, _ in loaded]
                _report_non_finite(loaded, rows, summary, report)
            bar.update(len(batch))
        bar.close()
    if summary.predicted:
        with _folder_lock(out):
            _compact_csv(summary.csv_path)
    return summary


def _report_non_finite(loaded: Sequence[tuple[Path, Path, np.ndarray, tuple[int, int]]],
                       rows: Sequence[dict[str, Any]], summary: PredictSummary,
                       report: Callable[[str], None] | None) -> None:
    for (path, _, _, _), row in zip(loaded, rows):
        if row["warning"]:
            summary.non_finite.append(path)
            if report:
                report(f"warning: {printable(path)}: {row['warning']}; its mask is background there")


def _read_batch(batch: Sequence[tuple[Path, Path]], summary: PredictSummary,
                report: Callable[[str], None] | None) -> list[tuple[Path, Path, np.ndarray, tuple[int, int]]]:
    """(path, key, image at most NETWORK_MAX_SIDE on a side, the file's (height, width)) of each readable file."""
    loaded = []
    for path, key in batch:
        try:
            loaded.append((path, key, *read_rgb_reduced(path, NETWORK_MAX_SIDE)))
        except UlffnError as exc:
            summary.failed.append((path, str(exc)))
            if report:
                report(f"skipped {path}: {exc}")
    return loaded


@dataclass(frozen=True)
class _Drawing:
    """What every overlay of a run shares: its style, the caption's artifact and precision, the reporter."""

    style: OverlayStyle = OverlayStyle()
    artifact: str = ""
    report: Callable[[str], None] | None = None


def _write_outputs(out: Path, path: Path, key: Path, image: np.ndarray, probability: np.ndarray,
                   original: tuple[int, int] | None = None, drawing: _Drawing = _Drawing()) -> dict[str, Any]:
    mask = probability > 0.5
    full_mask = mask if original is None or original == mask.shape else _scale_mask(probability, original)
    write_mask(out / f"{key}_mask.png", full_mask)
    write_overlay(out / f"{key}_overlay", path, image, probability, drawing.style, drawing.artifact, drawing.report,
                  original)
    return image_row(printable(path), probability, full_mask, printable(Path(f"{key}_mask.png")))


def _scale_mask(probability: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The mask of a reduced probability map at (height, width) ``hw``, interpolated at 8 bits."""
    levels = Image.fromarray(np.clip(probability * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return np.asarray(levels.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)) > 127


def printable(path: Path) -> str:
    """``path`` as text that encodes to UTF-8: bytes of a non-UTF-8 name are written as ``\\xff``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace") if os.name != "nt" else str(path)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` between the processes writing into it (none where flock is missing)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with output_errors(folder):
        fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _append_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append ``rows`` to the CSV in one write; a new, empty or older-layout file gets this header first."""
    if _header(path) != list(CSV_COLUMNS):
        _compact_csv(path)
    text = io.StringIO()
    csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n").writerows(rows)
    with output_errors(path), open(path, "a", encoding="utf-8", newline="") as handle:
        handle.write(text.getvalue())


def _header(path: Path) -> list[str] | None:
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as handle:
            return next(csv.reader(handle), None)
    except FileNotFoundError:
        return None


def _compact_csv(path: Path) -> None:
    """Rewrite the CSV atomically with the latest row per mask (rows cut short by a kill are dropped)."""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if None not in row.values() and None not in row]
    except FileNotFoundError:
        rows = []
    latest = {row.get("mask") or row.get("file"): row for row in rows}
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerows(latest.values())
    write_text_atomic(path, text.getvalue())


def _progress(total: int, enabled: bool) -> Any:
    from ulffn_deploy.progress import Progress

    return Progress(total, "predict", unit="image", enabled=enabled)
