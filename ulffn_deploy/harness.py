"""The evaluation harness: one image source, one comparison of two Segmenters, one tolerance table
(docs/architecture.md, The evaluation harness).

Every "how good is this artifact" question goes through here: export's parity check, calibrate's INT8
report, ``verify``, ``benchmark`` and ``quickstart``.

>>> source = find_images("artifacts/data", split="test")          # or synthetic_images(8, 512)
>>> with Segmenter.load("run/best.pt") as ref, Segmenter.load("model.fp16.onnx") as art:
...     result = compare(ref, art, source, batch_size=4)
>>> checks = check(result, tolerance_for("fp16"))                  # list of Check; passed(checks) -> bool

- **Images** (``ImageSource``): an ISIC folder (with labels when its ground-truth folder exists), a plain
  folder of images, given files, or synthetic dermoscopy renders (``ulffn_deploy.synth``, with labels).
  Images are read lazily, ``batch_size`` at a time.
- **Comparison** (``compare``): both Segmenters run on the same preprocessed batches. Probability error
  is the absolute difference of the lesion probability, per pixel over all images (max, mean, p99);
  mask agreement is the Dice (and IoU) of the two lesion masks (probability > 0.5) at network
  resolution, per image, with mean and worst images by id; label metrics score each mask mapped back to
  its image's original size, exactly as ``score`` scores ``predict``'s output files. ``compare_many``
  compares several candidates with one reference, which then runs once per batch.
- **Tolerances** (``TOLERANCES``): one row per precision. Only mask agreement, the p99 probability
  error and (INT8, when labels exist) the label Dice drop are gated; the max error is reported, never
  gated: one pixel sitting on the 0.5 boundary says nothing about the masks.

numpy only at import; the Segmenters bring their own backends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ulffn_deploy.data import FOLDERS, YEARS, IsicSegmentation, Sample, is_isic_auxiliary, load_sample
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.imageio import image_files, read_rgb
from ulffn_deploy.metrics import image_metrics, mean_metrics
from ulffn_deploy.preprocess import (
    DEFAULT_FIT_MODE,
    FIT_MODES,
    Placement,
    Preprocessing,
    check_batch_size,
    lesion_probability_to_original,
)

if TYPE_CHECKING:
    from ulffn_deploy.runtime import Segmenter

WORST_SHOWN = 3
THRESHOLD = 0.5  # lesion probability above which a pixel is lesion, everywhere in the toolkit
DATA_HINT = "give an ISIC folder or a folder of .jpg/.png images ('ulffn-deploy synth DIR' makes one)"

# -- images --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One image (a file, or a synthetic render) and its label when there is one."""

    id: str
    image_path: Path | None = None
    mask_path: Path | None = None
    render: tuple[int, int, int] | None = None  # synthetic: (seed, index, size)

    @property
    def labelled(self) -> bool:
        return self.mask_path is not None or self.render is not None

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(HxWx3 uint8 RGB image, HxW bool label or None)."""
        if self.render is not None:
            from ulffn_deploy.synth import render_sample

            seed, index, size = self.render
            return render_sample(np.random.default_rng([seed, index]), size)
        assert self.image_path is not None
        if self.mask_path is None:
            return read_rgb(self.image_path), None
        return load_sample(Sample(self.id, self.image_path, self.mask_path))


@dataclass
class Batch:
    """Images of one batch: the items, the images and labels as read, and the network input."""

    items: list[Item]
    images: list[np.ndarray]
    labels: list[np.ndarray | None]
    input: np.ndarray  # N x 3 x S x S float32
    placements: list[Placement]


@dataclass(frozen=True)
class ImageSource:
    """Images to evaluate on, read lazily; ``description`` says where they come from."""

    items: tuple[Item, ...]
    description: str

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> bool:
        """True when every image has a label (label metrics are reported only then)."""
        return bool(self.items) and all(item.labelled for item in self.items)

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def subset(self, indices: Sequence[int], description: str | None = None) -> ImageSource:
        return ImageSource(tuple(self.items[i] for i in indices), description or self.description)

    def head(self, count: int | None) -> ImageSource:
        """The first ``count`` images (all when None); the description says how many of how many."""
        if count is None or count >= len(self):
            return self
        if count < 1:
            raise UlffnError(f"number of images {count} is not positive")
        return ImageSource(self.items[:count], f"{self.description}; first {count} of {len(self)}")

    def batches(self, batch_size: int, preprocessing: Preprocessing) -> Iterator[Batch]:
        """The images ``batch_size`` at a time, read and preprocessed."""
        check_batch_size(batch_size)
        for first in range(0, len(self.items), batch_size):
            chunk = list(self.items[first : first + batch_size])
            loaded = [item.load() for item in chunk]
            images = [image for image, _ in loaded]
            network_input, placements = preprocessing(images)
            yield Batch(chunk, images, [label for _, label in loaded], network_input, placements)

    def input_batch(self, batch_size: int, preprocessing: Preprocessing) -> np.ndarray:
        """A network input of exactly ``batch_size`` images (the first ones, repeated when there are fewer),
        for latency measurements."""
        if not self.items:
            raise UlffnError(f"no images in {self.description}")
        check_batch_size(batch_size)
        chosen = [self.items[i % len(self.items)] for i in range(batch_size)]
        return preprocessing([item.load()[0] for item in chosen])[0]


def synthetic_images(count: int, size: int, seed: int = 0) -> ImageSource:
    """``count`` synthetic dermoscopy images ``size`` pixels high, with their lesion masks as labels."""
    if count < 1:
        raise UlffnError(f"need at least one image, got {count}")
    items = tuple(Item(f"synthetic_{i:04d}", render=(seed, i, size)) for i in range(count))
    return ImageSource(items, f"{count} synthetic dermoscopy images ({size} px high, seed {seed}), with labels")


def files_source(images: Sequence[Path], masks: Sequence[Path | None] | None = None,
                 description: str = "image files") -> ImageSource:
    """Given image files (and their masks, where they have one)."""
    masks = list(masks) if masks is not None else [None] * len(images)
    if len(masks) != len(images):
        raise UlffnError(f"{len(images)} images but {len(masks)} masks")
    return ImageSource(tuple(Item(Path(p).stem, Path(p), m) for p, m in zip(images, masks)), description)


def isic_source(root: str | os.PathLike[str], year: int | None = None, split: str = "test",
                labels: bool = True) -> ImageSource | None:
    """The ``split`` images of the ISIC folder ``root`` (``year``, or else 2016 then 2017), with labels when
    ``labels`` and its ground-truth folder exists; None when ``root`` holds no such set."""
    root = Path(root)
    for candidate in ([year] if year else YEARS):
        image_folder, mask_folder = FOLDERS.get((int(candidate), split), ("", ""))
        if not image_folder or not (root / image_folder).is_dir():
            continue
        dataset = IsicSegmentation(root, candidate, split, masks=labels and (root / mask_folder).is_dir())
        with_labels = "with labels" if dataset.mask_dir else "without labels"
        items = tuple(Item(s.isic_id, s.image_path, s.mask_path) for s in dataset)
        return ImageSource(items, f"ISIC {candidate} {split} in {root} ({len(items)} images, {with_labels})")
    return None


def folder_source(root: str | os.PathLike[str]) -> ImageSource:
    """Every image file directly in ``root`` (ISIC masks and superpixel maps left out), without labels."""
    root = Path(root)
    files = [p for p in image_files(root) if not is_isic_auxiliary(p.name)]
    return ImageSource(tuple(Item(p.stem, p) for p in files), f"image folder {root} ({len(files)} images, without labels)")


def find_images(root: str | os.PathLike[str], split: str = "test", year: int | None = None,
                limit: int | None = None, labels: bool = True) -> ImageSource:
    """The images of an ISIC set under ``root`` (see ``isic_source``), or else the image files directly in
    ``root``; the first ``limit`` of them. A missing or empty folder is a UlffnError."""
    root = Path(root)
    if not root.is_dir():
        raise UlffnError(f"{root}: no such data folder", DATA_HINT)
    found = isic_source(root, year, split, labels) or folder_source(root)
    if not len(found):
        where = f"ISIC {year or '/'.join(map(str, YEARS))} {split} folders"
        raise UlffnError(f"{root}: no images (neither {where} nor image files)", DATA_HINT)
    return found.head(limit)


def image_source(data: str | os.PathLike[str] | None, count: int, size: int, split: str = "test",
                 seed: int = 0) -> ImageSource:
    """``count`` images: the first of ``data`` (an ISIC folder's ``split``, or a folder of images), or
    synthetic renders ``size`` pixels high when ``data`` is None."""
    if data is None:
        return synthetic_images(count, size, seed)
    return find_images(data, split, limit=count)


# -- comparison ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageAgreement:
    """One image: probability error and mask agreement of candidate vs reference; label Dice of both."""

    id: str
    max_abs_diff: float
    mean_abs_diff: float
    mask_dice: float
    mask_iou: float
    label_dice_reference: float | None = None
    label_dice_candidate: float | None = None


class _ErrorHistogram:
    """Max, mean and quantiles of |a - b| for values in [0, 1], over any number of pixels in fixed memory.

    The q-quantile is the smallest error that a fraction q of the values do not exceed (numpy's
    "inverted_cdf"), rounded up to the edge of its 1/2**20-wide bin: exact to 1e-6, never under."""

    BINS = 1 << 20

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS, np.int64)
        self.total = 0.0
        self.max = 0.0

    def add(self, errors: np.ndarray) -> None:
        flat = errors.ravel().astype(np.float64)
        self.counts += np.bincount(np.minimum((flat * self.BINS).astype(np.int64), self.BINS - 1),
                                   minlength=self.BINS)
        self.total += float(flat.sum())
        self.max = max(self.max, float(flat.max(initial=0.0)))

    def quantile(self, q: float) -> float:
        count = int(self.counts.sum())
        index = int(np.searchsorted(np.cumsum(self.counts), q * count, side="left"))
        return min((index + 1) / self.BINS, self.max)

    @property
    def mean(self) -> float:
        return self.total / max(1, int(self.counts.sum()))


@dataclass
class Comparison:
    """The candidate against the reference on one image source (see the module docstring)."""

    reference: str
    candidate: str
    source: str
    images: int
    fit_mode: str
    input_size: int
    max_abs_diff: float
    mean_abs_diff: float
    p99_abs_diff: float
    mask_dice: float  # mean over images
    mask_dice_min: float
    mask_iou: float
    worst: list[ImageAgreement]
    per_image: list[ImageAgreement] = field(repr=False)
    metrics: dict[str, dict[str, float]] | None  # {"reference": ..., "candidate": ...} when every image has a label
    non_finite: int = 0  # output pixels (of either model) that are NaN or infinite: counted as error 1, never lesion

    @property
    def label_dice_drop(self) -> float | None:
        """Label Dice of the reference minus the candidate's (None without labels)."""
        if self.metrics is None:
            return None
        return self.metrics["reference"]["dice"] - self.metrics["candidate"]["dice"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["label_dice_drop"] = self.label_dice_drop
        return data


def describe(segmenter: Segmenter) -> str:
    """``"onnxruntime fp16 (model.fp16.onnx)"``."""
    return f"{segmenter.backend} {segmenter.precision} ({segmenter.path.name})"


def preprocessing_of(segmenter: Segmenter, fit_mode: str | None = None) -> Preprocessing:
    """The preprocessing ``segmenter`` expects: its input size and normalisation; ``fit_mode`` or the
    toolkit's default fit mode (not the training one: see ``DEFAULT_FIT_MODE``)."""
    mode = fit_mode or DEFAULT_FIT_MODE
    if mode not in FIT_MODES:
        raise UlffnError(f"unknown fit mode {mode!r}", f"use one of {', '.join(FIT_MODES)}")
    return Preprocessing(segmenter.input_size, mode, segmenter.metadata.normalization)


def _same_input(reference: Segmenter, candidate: Segmenter) -> None:
    ref, cand = reference.metadata, candidate.metadata
    if ref.input_size != cand.input_size:
        difference = f"{cand.input_size} px vs {ref.input_size} px"
    elif ref.normalization != cand.normalization:
        difference = f"normalisation {cand.normalization.to_dict()} vs {ref.normalization.to_dict()}"
    else:
        return
    raise UlffnError(f"{candidate.path.name} and {reference.path.name} take different inputs ({difference})",
                     "compare an artifact with the checkpoint it was exported from")


class _Tally:
    """What ``compare`` accumulates for one candidate."""

    def __init__(self) -> None:
        self.errors = _ErrorHistogram()
        self.rows: list[ImageAgreement] = []
        self.scores: dict[str, list[dict[str, float]]] = {"reference": [], "candidate": []}
        self.non_finite = 0

    def add(self, batch: Batch, reference: np.ndarray, candidate: np.ndarray, ref_masks: list | None) -> None:
        invalid = ~(np.isfinite(reference) & np.isfinite(candidate))
        self.non_finite += int(invalid.sum())
        errors = np.where(invalid, 1.0, np.abs(reference.astype(np.float64) - candidate.astype(np.float64)))
        self.errors.add(errors)
        masks = _original_size_masks(candidate, batch) if ref_masks is not None else None
        for i, item in enumerate(batch.items):
            agreement = image_metrics(candidate[i] > THRESHOLD, reference[i] > THRESHOLD)
            label = batch.labels[i]
            dice: tuple[float | None, float | None] = (None, None)
            if label is not None and ref_masks is not None and masks is not None:
                self.scores["reference"].append(image_metrics(ref_masks[i], label))
                self.scores["candidate"].append(image_metrics(masks[i], label))
                dice = (self.scores["reference"][-1]["dice"], self.scores["candidate"][-1]["dice"])
            self.rows.append(ImageAgreement(item.id, float(errors[i].max()), float(errors[i].mean()),
                                            agreement["dice"], agreement["jaccard"], *dice))

    def result(self, reference: str, candidate: str, source: ImageSource, preprocessing: Preprocessing,
               worst: int) -> Comparison:
        rows = self.rows
        ranked = sorted(rows, key=lambda r: (r.mask_dice, -r.max_abs_diff))
        labelled = len(self.scores["candidate"]) == len(rows)
        return Comparison(
            reference=reference, candidate=candidate, source=source.description, images=len(rows),
            fit_mode=preprocessing.fit_mode, input_size=preprocessing.size,
            max_abs_diff=self.errors.max, mean_abs_diff=self.errors.mean, p99_abs_diff=self.errors.quantile(0.99),
            mask_dice=float(np.mean([r.mask_dice for r in rows])), mask_dice_min=ranked[0].mask_dice,
            mask_iou=float(np.mean([r.mask_iou for r in rows])), worst=ranked[:worst], per_image=rows,
            metrics={k: mean_metrics(v) for k, v in self.scores.items()} if labelled else None,
            non_finite=self.non_finite,
        )


def _original_size_masks(lesion: np.ndarray, batch: Batch) -> list[np.ndarray]:
    """Lesion masks at each image's original size (as ``predict`` writes them and ``score`` reads them)."""
    return [lesion_probability_to_original(p, pl) > THRESHOLD for p, pl in zip(lesion, batch.placements)]


def compare_many(reference: Segmenter, candidates: Mapping[str, Segmenter], source: ImageSource,
                 batch_size: int = 4, fit_mode: str | None = None, worst: int = WORST_SHOWN,
                 progress: Callable[[int], None] | None = None) -> dict[str, Comparison]:
    """``compare`` for several candidates at once: the reference runs once per batch."""
    if not len(source):
        raise UlffnError(f"no images to compare on ({source.description})")
    if not candidates:
        raise UlffnError("no candidate to compare with the reference")
    for candidate in candidates.values():
        _same_input(reference, candidate)
    preprocessing = preprocessing_of(next(iter(candidates.values())), fit_mode)
    tallies = {name: _Tally() for name in candidates}
    done = 0
    for batch in source.batches(batch_size, preprocessing):
        ref = reference.infer(batch.input)[:, 1]
        ref_masks = _original_size_masks(ref, batch) if any(label is not None for label in batch.labels) else None
        for name, candidate in candidates.items():
            tallies[name].add(batch, ref, candidate.infer(batch.input)[:, 1], ref_masks)
        done += len(batch.items)
        if progress:
            progress(done)
    return {name: tallies[name].result(describe(reference), describe(candidates[name]), source, preprocessing, worst)
            for name in candidates}


def compare(reference: Segmenter, candidate: Segmenter, source: ImageSource, batch_size: int = 4,
            fit_mode: str | None = None, worst: int = WORST_SHOWN,
            progress: Callable[[int], None] | None = None) -> Comparison:
    """Run both Segmenters on every image of ``source`` and compare (see the module docstring).

    ``fit_mode`` defaults to ``DEFAULT_FIT_MODE``; ``progress`` is called with the number of images done;
    ``worst`` is how many of the least agreeing images the result names."""
    return compare_many(reference, {"candidate": candidate}, source, batch_size, fit_mode, worst, progress)["candidate"]


# -- tolerances ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """What an artifact of one precision must reach against its reference.

    ``min_mask_agreement``: mean mask Dice agreement; ``max_p99_abs_diff``: 99th percentile of the lesion
    probability error; ``max_label_dice_drop``: label Dice of the reference minus the artifact's, checked
    when the images have labels (None: not checked)."""

    min_mask_agreement: float
    max_p99_abs_diff: float
    max_label_dice_drop: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not 0 <= value <= 1:
                raise UlffnError(f"tolerance {name} = {value} is not in [0, 1]")


# Measured with this harness (ONNX Runtime CPU against PyTorch FP32; INT8 against PyTorch too; fit full):
#
#                                   max err   p99 err   mask Dice mean (min)   label Dice drop
#   quickstart's model (cpu-demo preset: width 8, 96 px, 30 epochs), its 40 synthetic test images:
#     fp32                          3.2e-6    1.0e-6    1.0000 (1.0000)        0.0000 (label Dice 0.9455)
#     fp16                          5.6e-3    9.5e-4    0.9999 (0.9993)        0.0000
#     int8 (calibrate's defaults)   0.212     0.048     0.9928 (0.9387)        0.0004
#   full-size model (width 64, 512 px, random weights, BatchNorm statistics perturbed), 8 synthetic images:
#     fp32                          1.7e-4    5.3e-5    1.0000 (1.0000)        0.0000
#     fp16                          1.3e-2    3.7e-3    0.9997 (0.9997)        0.0000
#     int8 (4 calibration images)   0.992     0.380     0.9741 (0.9696)       -0.0007
#   (random weights are no INT8 model: its probabilities hover near 0.5, and both INT8 gates reject it)
#
# Why these limits: FP16's max error reaches 1.3e-2 on the full-size model while its masks agree to 0.9997,
# so a max gate fails good models on the few pixels nearest 0.5; the max is reported, never gated. The p99
# limits sit well above the worst measurement (FP16 2.7x, INT8 2.1x) yet below what a broken graph gives (a
# negated head, as in tests/test_verify.py, leaves mask agreement under 0.5). FP32's p99 limit is FP16-like
# because TensorRT runs FP32 engines with TF32 (10-bit mantissa) by default; ONNX Runtime FP32 is at 5e-5.
# Mask agreement limits sit below the lowest measured mean (FP16 0.9997 vs 0.995, INT8 0.9928 vs 0.98); the
# INT8 label Dice drop limit is 0.01 of Dice (measured 0.0004).
#
# bf16 (what OpenVINO runs a model.fp16 file as on CPUs with AVX512-BF16 or AMX) keeps 8 mantissa bits to
# FP16's 11, so its probability error is about 8x FP16's and it gets its own row, judged by what runs:
#     quickstart's model, OpenVINO bf16     8.1e-2    1.03e-2   0.9988 (0.9864)        -0.0003
#     trained width 8, 32 px, 4 epochs      -         7.5e-3    0.9994                 -
#     full-size random model                -         5.2e-2    0.9962                 -0.004
# FP16's mask agreement limit, a p99 limit 2.9x the quickstart measurement, and INT8's label Dice budget.
#
# "built": a build's self-check (targets/onnx_source.check_build): the built artifact against the very ONNX
# file it was built from, computing in the same precision (graph rewrites only, such as ONNX Runtime's offline
# optimisation or an f32 OpenVINO IR), on synthetic images. ONNX Runtime's offline model of the tiny test
# models differs by under 1e-6; the limits leave room for reordered float sums, not for a changed graph.
BUILD_ROW = "built"
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(min_mask_agreement=0.999, max_p99_abs_diff=1e-3),
    "fp16": Tolerance(min_mask_agreement=0.995, max_p99_abs_diff=1e-2),
    "bf16": Tolerance(min_mask_agreement=0.995, max_p99_abs_diff=3e-2, max_label_dice_drop=0.01),
    "int8": Tolerance(min_mask_agreement=0.98, max_p99_abs_diff=0.1, max_label_dice_drop=0.01),
    BUILD_ROW: Tolerance(min_mask_agreement=0.999, max_p99_abs_diff=1e-4),
}
PRECISION_ROWS = ("fp32", "fp16", "bf16", "int8")  # the rows an artifact is judged by (its runs_as)


def runs_as_row(segmenter: Any) -> str:
    """The tolerance row for a Segmenter: the precision it runs as (``Segmenter.runs_as``) when the table has
    that row (an OpenVINO fp16 file running bf16), else its file's precision."""
    runs_as = str(segmenter.runs_as)
    return runs_as if runs_as in PRECISION_ROWS else str(segmenter.precision)


def tolerance_for(precision: str, agreement: float | None = None, p99: float | None = None,
                  label_dice_drop: float | None = None) -> Tolerance:
    """The tolerance row of ``precision``, with any bound overridden when given."""
    if precision not in TOLERANCES:
        raise UlffnError(f"unknown precision {precision!r}", f"use one of {', '.join(TOLERANCES)}")
    row = TOLERANCES[precision]
    changes = {"min_mask_agreement": agreement, "max_p99_abs_diff": p99, "max_label_dice_drop": label_dice_drop}
    return replace(row, **{key: value for key, value in changes.items() if value is not None})


def tolerance_defaults(name: str) -> str:
    """``"fp32 0.999, fp16 0.995, int8 0.98"``: one field of the table, for help texts."""
    values = {p: getattr(TOLERANCES[p], name) for p in PRECISION_ROWS}
    shown = [f"{p} {v:g}" for p, v in values.items() if v is not None]
    unchecked = [p for p, v in values.items() if v is None]
    return ", ".join(shown) + (f"; not checked for {', '.join(unchecked)}" if unchecked else "")


@dataclass(frozen=True)
class Check:
    """One gate: ``passed`` is None when it could not run (``note`` says why)."""

    name: str
    value: float | None
    op: str
    limit: float
    passed: bool | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(comparison: Comparison, tolerance: Tolerance) -> list[Check]:
    """The gates of ``tolerance`` on ``comparison``: mask agreement, p99 error, label Dice drop."""
    agreement, p99 = comparison.mask_dice, comparison.p99_abs_diff
    checks = [
        Check("mask agreement (mean Dice)", agreement, ">=", tolerance.min_mask_agreement,
              agreement >= tolerance.min_mask_agreement),
        Check("probability error p99", p99, "<=", tolerance.max_p99_abs_diff, p99 <= tolerance.max_p99_abs_diff),
    ]
    if comparison.non_finite:  # a model that outputs NaN or infinity has failed, whatever the other gates say
        checks.append(Check("non-finite outputs (pixels)", comparison.non_finite, "<=", 0, False))
    if tolerance.max_label_dice_drop is not None:
        drop = comparison.label_dice_drop
        limit = tolerance.max_label_dice_drop
        checks.append(Check("label Dice drop (reference - artifact)", drop, "<=", limit,
                            None if drop is None else drop <= limit, "" if drop is not None else "no labels"))
    return checks


def passed(checks: Sequence[Check]) -> bool:
    """No check failed (checks that could not run do not fail)."""
    return all(c.passed is not False for c in checks)


def failures(checks: Sequence[Check]) -> list[str]:
    """The failed checks as short phrases: ``"probability error p99 0.031 > 0.01"``."""
    inverse = {">=": "<", "<=": ">"}
    return [f"{c.name} {_fmt(c.value)} {inverse[c.op]} {c.limit:g}" for c in checks if c.passed is False]


# -- reports ---------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.{digits}f}"


def format_checks(checks: Sequence[Check]) -> str:
    """A Markdown table of the checks."""
    lines = ["| check | value | required | result |", "|---|---|---|---|"]
    for c in checks:
        result = {True: "PASS", False: "FAIL", None: f"not run ({c.note})"}[c.passed]
        lines.append(f"| {c.name} | {_fmt(c.value)} | {c.op} {c.limit:g} | {result} |")
    return "\n".join(lines)


def format_agreement(comparison: Comparison) -> str:
    """A Markdown table: all images, then the worst images by mask Dice."""
    c = comparison
    lines = ["| images | max abs err | mean abs err | p99 abs err | mask Dice | mask IoU |", "|---|---|---|---|---|---|",
             f"| all {c.images} | {c.max_abs_diff:.2e} | {c.mean_abs_diff:.2e} | {c.p99_abs_diff:.2e} | "
             f"{c.mask_dice:.4f} | {c.mask_iou:.4f} |"]
    for row in c.worst:
        lines.append(f"| worst: {row.id} | {row.max_abs_diff:.2e} | {row.mean_abs_diff:.2e} | | "
                     f"{row.mask_dice:.4f} | {row.mask_iou:.4f} |")
    return "\n".join(lines)


def format_comparisons(rows: Mapping[str, tuple[Comparison, Sequence[Check] | None]]) -> str:
    """One Markdown row per named comparison (e.g. per precision), with its verdict when checks are given."""
    lines = ["| | images | max abs err | p99 abs err | mean abs err | mask Dice mean | worst image | label Dice drop "
             "| result |", "|---|---|---|---|---|---|---|---|---|"]
    for name, (c, checks) in rows.items():
        worst = f"{c.mask_dice_min:.4f} ({c.worst[0].id})" if c.worst else "-"
        result = "-" if checks is None else "pass" if passed(checks) else "FAIL: " + "; ".join(failures(checks))
        lines.append(f"| {name} | {c.images} | {c.max_abs_diff:.2e} | {c.p99_abs_diff:.2e} | {c.mean_abs_diff:.2e} "
                     f"| {c.mask_dice:.4f} | {worst} | {_fmt(c.label_dice_drop)} | {result} |")
    return "\n".join(lines)
