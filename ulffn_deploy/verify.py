"""Verify a deployed artifact against the PyTorch checkpoint it came from (ARCHITECTURE.md, Checking).

Both run on the same preprocessed images. The report holds: output agreement (absolute probability
differences through Polygraphy's comparator when it is installed, and Dice / IoU between the two lesion
masks at network resolution, per image and mean, worst images by ISIC id); metrics of both against the
labels when the folder has them (masks mapped back to the original image size, as ``evaluate`` scores);
the artifact's latency in the manner of trtexec; and pass/fail against the tolerances of its precision.

Heavy packages (torch through the PyTorch backend, onnxruntime, tensorrt, polygraphy) are imported only
when a runner is opened or a comparison runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ulffn_deploy.config import Normalization
from ulffn_deploy.data import FOLDERS, IsicSegmentation
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import sha256_file
from ulffn_deploy.imageio import image_files, read_mask, read_rgb
from ulffn_deploy.latency import DEVICE_SERIES, Schedule, format_latency_table, measure
from ulffn_deploy.metrics import format_table, image_metrics, mean_metrics
from ulffn_deploy.preprocess import preprocess, probabilities_to_masks
from ulffn_deploy.targets.registry import DEFAULT_ARTIFACTS, default_artifact

if TYPE_CHECKING:
    from ulffn_deploy.runtime import Segmenter

WORST_SHOWN = 3
LABEL_METRICS = ("dice", "jaccard", "accuracy", "sensitivity", "specificity")


@dataclass(frozen=True)
class Tolerance:
    """What an artifact of one precision must reach: mean mask Dice agreement with the reference, and
    at most this drop of label Dice below the reference's (None: not checked)."""

    min_mask_agreement: float
    max_label_dice_drop: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.min_mask_agreement <= 1:
            raise UlffnError(f"mask agreement tolerance {self.min_mask_agreement} is not in [0, 1]")
        if self.max_label_dice_drop is not None and not 0 <= self.max_label_dice_drop <= 1:
            raise UlffnError(f"label Dice tolerance {self.max_label_dice_drop} is not in [0, 1]")


TOLERANCES = {
    "fp32": Tolerance(0.999),
    "fp16": Tolerance(0.995),
    "int8": Tolerance(0.98, max_label_dice_drop=0.01),
}


def tolerance_for(precision: str, agreement: float | None = None, label_dice_drop: float | None = None) -> Tolerance:
    """The default tolerance of ``precision``, with either bound overridden when given."""
    if precision not in TOLERANCES:
        raise UlffnError(f"unknown precision {precision!r}", f"use one of {', '.join(TOLERANCES)}")
    default = TOLERANCES[precision]
    return Tolerance(
        default.min_mask_agreement if agreement is None else agreement,
        default.max_label_dice_drop if label_dice_drop is None else label_dice_drop,
    )


def evaluate_checks(tolerance: Tolerance, agreement: float,
                    label_dice: Mapping[str, float] | None) -> list[dict[str, Any]]:
    """One entry per check: name, value, limit, comparison and ``passed`` (None when it could not run)."""
    checks = [{"name": "mask agreement (mean Dice)", "value": agreement, "op": ">=",
               "limit": tolerance.min_mask_agreement, "passed": agreement >= tolerance.min_mask_agreement}]
    if tolerance.max_label_dice_drop is not None:
        check: dict[str, Any] = {"name": "label Dice drop (reference - artifact)", "op": "<=",
                                 "limit": tolerance.max_label_dice_drop}
        if label_dice is None:
            check.update(value=None, passed=None, note="no labels in the data folder")
        else:
            drop = label_dice["reference"] - label_dice["artifact"]
            check.update(value=drop, passed=drop <= tolerance.max_label_dice_drop)
        checks.append(check)
    return checks


# -- comparison ---------------------------------------------------------------------------------------

def compare_probabilities(reference: np.ndarray, artifact: np.ndarray) -> dict[str, float]:
    """Max, mean and median absolute difference of two probability arrays of the same shape.

    Uses Polygraphy's ``SimpleCompareFunc`` (``CompareFunc.simple`` before 0.53) when Polygraphy is
    installed, the statistics NVIDIA's tools print; numpy otherwise.
    """
    if reference.shape != artifact.shape:
        raise UlffnError(f"artifact output of shape {artifact.shape} against reference output {reference.shape}")
    try:
        from polygraphy.comparator import compare
        from polygraphy.comparator.struct import IterationResult
        from polygraphy.logger import G_LOGGER
    except ImportError:
        diff = np.abs(reference.astype(np.float64) - artifact.astype(np.float64))
        return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                "median_abs_diff": float(np.median(diff))}
    factory = getattr(compare, "SimpleCompareFunc", None) or compare.CompareFunc.simple
    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL  # its per-output lines would bury the report
    try:
        # only its statistics are used (verify's verdict is on masks), so no tolerance can fail here
        results = factory(check_error_stat="max", atol=np.inf, rtol=np.inf)(
            IterationResult({"probabilities": reference}, runner_name="reference"),
            IterationResult({"probabilities": artifact}, runner_name="artifact"),
        )
    finally:
        G_LOGGER.module_severity = severity
    stats = results["probabilities"]
    return {"max_abs_diff": float(stats.max_absdiff), "mean_abs_diff": float(stats.mean_absdiff),
            "median_abs_diff": float(stats.median_absdiff)}


def comparator_name() -> str:
    try:
        from importlib.metadata import version

        return f"polygraphy {version('polygraphy')}"
    except Exception:
        return "numpy"


def mask_agreement(reference_mask: np.ndarray, artifact_mask: np.ndarray) -> dict[str, float]:
    """Dice and IoU between the artifact's and the reference's masks (1 when both are empty)."""
    scores = image_metrics(artifact_mask, reference_mask)
    return {"mask_dice": scores["dice"], "mask_iou": scores["jaccard"]}


# -- inputs -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One image to verify on, and its label when the folder has labels."""

    isic_id: str
    image_path: Path
    mask_path: Path | None

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        image = read_rgb(self.image_path)
        if self.mask_path is None:
            return image, None
        mask = read_mask(self.mask_path)
        if mask.shape != image.shape[:2]:
            raise UlffnError(f"{self.mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is "
                             f"{image.shape[0]}x{image.shape[1]}", "masks must have the size of their image")
        return image, mask


def find_images(data_dir: str | os.PathLike[str], year: int = 2016, split: str = "test",
                limit: int | None = None) -> tuple[list[Item], str]:
    """The images of an ISIC set under ``data_dir`` (with labels when its ground-truth folder exists), or
    else the image files directly in ``data_dir``; and a one-line description."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UlffnError(f"{root}: no such data folder", "pass --data DIR, or make one with 'ulffn-deploy synth DIR'")
    if limit is not None and limit < 1:
        raise UlffnError(f"--num-images {limit} is not positive")
    image_folder, mask_folder = FOLDERS.get((year, split), ("", ""))
    if image_folder and (root / image_folder).is_dir():
        dataset = IsicSegmentation(root, year, split, masks=(root / mask_folder).is_dir())
        items = [Item(s.isic_id, s.image_path, s.mask_path) for s in dataset][:limit]
        labels = "with labels" if dataset.mask_dir else "without labels"
        return items, f"ISIC {year} {split} in {root}, {len(items)} of {len(dataset)} images, {labels}"
    files = image_files(root)
    if not files:
        raise UlffnError(f"{root}: no images (neither ISIC {year} {split} folders nor image files)",
                         "pass --data with an ISIC folder or a folder of images, or make one with 'ulffn-deploy synth DIR'")
    items = [Item(p.stem, p, None) for p in files][:limit]
    return items, f"{len(items)} of {len(files)} images in {root}, without labels"


def open_runner(path: str | os.PathLike[str], **options: Any) -> Segmenter:
    """The runtime's Segmenter for ``path`` (backend chosen by suffix)."""
    from ulffn_deploy.runtime import Segmenter

    return Segmenter.load(path, **options)


def recorded_checkpoint_sha256(artifact: Segmenter) -> str | None:
    """The checkpoint sha256 an artifact records: in its own metadata (ONNX, ONNX Runtime model), or for
    a built engine in the metadata of the source ONNX its sidecar names, when that file is beside it unchanged."""
    extra = artifact.metadata.extra
    if extra.get("checkpoint_sha256"):
        return str(extra["checkpoint_sha256"])
    source = extra.get("source_onnx")
    if not isinstance(source, Mapping) or not source.get("file"):
        return None
    onnx_path = artifact.path.with_name(str(source["file"]))
    if not onnx_path.is_file() or sha256_file(onnx_path) != source.get("sha256"):
        return None
    from ulffn_deploy.onnx_meta import read_metadata

    return str(read_metadata(onnx_path)["checkpoint_sha256"])


def check_same_model(artifact: Segmenter, reference_path: Path) -> dict[str, Any]:
    """The artifact's recorded checkpoint sha256 against the reference file's; UlffnError if they differ."""
    recorded = recorded_checkpoint_sha256(artifact)
    actual = sha256_file(reference_path)
    if recorded and recorded != actual:
        raise UlffnError(
            f"{artifact.path.name} was made from a different checkpoint than {reference_path} "
            f"(sha256 {recorded[:12]}... recorded, {actual[:12]}... given)",
            "pass the checkpoint it was exported from with --reference, or export the artifact again from this one",
        )
    return {"reference_sha256": actual, "recorded_sha256": recorded, "checked": bool(recorded)}


# -- running ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preparation:
    """How images become network input: the artifact's size and normalisation, and the fit mode."""

    size: int
    fit_mode: str
    normalization: Normalization


def iterate_batches(items: Sequence[Item], batch_size: int,
                    prep: Preparation) -> Iterator[tuple[list[Item], np.ndarray, list, list]]:
    """(items, preprocessed batch, placements, labels or Nones), ``batch_size`` images at a time."""
    for first in range(0, len(items), batch_size):
        chunk = list(items[first : first + batch_size])
        loaded = [item.load() for item in chunk]
        batch, placements = preprocess([image for image, _ in loaded], prep.size, prep.fit_mode, prep.normalization)
        yield chunk, batch, placements, [mask for _, mask in loaded]


def _image_row(item: Item, ref_probs: np.ndarray, art_probs: np.ndarray) -> dict[str, Any]:
    row: dict[str, Any] = {"isic_id": item.isic_id}
    row.update(compare_probabilities(ref_probs, art_probs))
    row.update(mask_agreement(ref_probs[1] > 0.5, art_probs[1] > 0.5))
    return row


def compare_on_images(artifact: Segmenter, reference: Segmenter, items: Sequence[Item], prep: Preparation,
                      batch_size: int = 1) -> dict[str, Any]:
    """Per-image agreement rows, and metrics of both against labels where every image has one."""
    rows: list[dict[str, Any]] = []
    scores: dict[str, list[dict[str, float]]] = {"reference": [], "artifact": []}
    for chunk, batch, placements, truths in iterate_batches(items, batch_size, prep):
        ref_probs, art_probs = reference.infer(batch), artifact.infer(batch)
        ref_masks = probabilities_to_masks(ref_probs, placements)
        art_masks = probabilities_to_masks(art_probs, placements)
        for i, item in enumerate(chunk):
            row = _image_row(item, ref_probs[i], art_probs[i])
            if truths[i] is not None:
                scores["reference"].append(image_metrics(ref_masks[i], truths[i]))
                scores["artifact"].append(image_metrics(art_masks[i], truths[i]))
                row.update(label_dice_reference=scores["reference"][-1]["dice"],
                           label_dice_artifact=scores["artifact"][-1]["dice"])
            rows.append(row)
    labelled = len(scores["artifact"]) == len(rows)
    metrics = {name: mean_metrics(values) for name, values in scores.items()} if labelled else None
    return {"per_image": rows, "metrics": metrics}


def summarize_agreement(rows: Sequence[Mapping[str, Any]], worst: int = WORST_SHOWN) -> dict[str, Any]:
    """Max of the per-image max differences, means of the rest, and the ``worst`` images by mask Dice."""
    if not rows:
        raise UlffnError("no images were compared")
    ranked = sorted(rows, key=lambda r: (r["mask_dice"], -r["max_abs_diff"]))
    return {
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "mean_abs_diff": float(np.mean([r["mean_abs_diff"] for r in rows])),
        "mask_dice": float(np.mean([r["mask_dice"] for r in rows])),
        "mask_iou": float(np.mean([r["mask_iou"] for r in rows])),
        "min_mask_dice": ranked[0]["mask_dice"],
        "worst": [dict(r) for r in ranked[:worst]],
    }


def device_timings(runner: Segmenter) -> dict[str, float]:
    """The last call's device timings (ms) under the names of ``latency.DEVICE_SERIES``, when the backend has them."""
    if runner.backend != "tensorrt":  # CPU backends' "compute_ms" is host time, already measured
        return {}
    timings = runner.last_timings
    return {series: float(timings[key]) for series in DEVICE_SERIES for key in (series, f"{series}_ms") if key in timings}


def measure_latency(runner: Segmenter, batch: np.ndarray, schedule: Schedule) -> dict[str, Any]:
    """trtexec-style latency of ``runner.infer(batch)``: host wall time, plus device timings it reports."""

    def step() -> dict[str, float]:
        runner.infer(batch)
        return device_timings(runner)

    return measure(step, len(batch), schedule)


def latency_batch(items: Sequence[Item], batch_size: int, prep: Preparation) -> np.ndarray:
    """``batch_size`` preprocessed images (the first images, repeated when there are fewer)."""
    chosen = [items[i % len(items)] for i in range(batch_size)]
    batch, _ = preprocess([item.load()[0] for item in chosen], prep.size, prep.fit_mode, prep.normalization)
    return batch


# -- the whole check ----------------------------------------------------------------------------------

def _describe_runner(runner: Segmenter, path: Path) -> dict[str, Any]:
    info = runner.info
    described: dict[str, Any] = {key: info[key] for key in ("backend", "precision", "input_size") if key in info}
    described.update(path=str(path), size_mb=path.stat().st_size / 1e6)
    for key in ("device", "providers", "provider", "tensorrt_version", "gpu"):
        if key in info:
            described[key] = info[key]
    return described


def verify_artifact(
    artifact: str | os.PathLike[str] | None = None,
    reference: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    artifacts_dir: str | os.PathLike[str] = DEFAULT_ARTIFACTS,
    year: int = 2016,
    split: str = "test",
    num_images: int | None = None,
    fit_mode: str | None = None,
    batch_size: int = 1,
    schedule: Schedule | None = None,
    tolerance_agreement: float | None = None,
    tolerance_label_dice: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``artifact`` and the PyTorch ``reference`` on the same images; the report as a JSON-ready dict.

    Defaults follow quickstart's layout under ``artifacts_dir``: the registry's default artifact,
    ``run/best.pt``, ``data/``. ``report["passed"]`` is the verdict.
    """
    folder = Path(artifacts_dir)
    artifact_path = Path(artifact) if artifact else default_artifact(folder)
    reference_path = Path(reference) if reference else folder / "run" / "best.pt"
    if not reference_path.is_file():
        raise UlffnError(f"{reference_path}: no such reference checkpoint",
                         "pass --reference CHECKPOINT (the .pt it was exported from)")
    if reference_path.suffix.lower() != ".pt":
        raise UlffnError(f"{reference_path}: the reference must be a PyTorch checkpoint (.pt)",
                         "pass the best.pt the artifact was exported from")
    if batch_size < 1:
        raise UlffnError(f"batch size {batch_size} is not positive")
    items, data_description = find_images(data_dir or folder / "data", year, split, num_images)
    say = log or (lambda message: None)
    with open_runner(artifact_path) as art, open_runner(reference_path) as ref:
        same_model = check_same_model(art, reference_path)
        meta = art.metadata
        prep = Preparation(meta.input_size, fit_mode or meta.fit_mode, meta.normalization)
        tolerance = tolerance_for(meta.precision, tolerance_agreement, tolerance_label_dice)
        say(f"verifying {artifact_path} ({art.backend}, {meta.precision}) against {reference_path} "
            f"on {data_description}")
        compared = compare_on_images(art, ref, items, prep, batch_size)
        agreement = summarize_agreement(compared["per_image"])
        say(f"measuring latency ({(schedule or Schedule()).describe()})")
        latency = measure_latency(art, latency_batch(items, batch_size, prep), schedule or Schedule())
        artifact_info, reference_info = _describe_runner(art, artifact_path), _describe_runner(ref, reference_path)
    metrics = compared["metrics"]
    label_dice = {k: metrics[k]["dice"] for k in ("reference", "artifact")} if metrics else None
    checks = evaluate_checks(tolerance, agreement["mask_dice"], label_dice)
    return {
        "artifact": artifact_info,
        "reference": {**reference_info, "sha256": same_model["reference_sha256"]},
        "checkpoint_match": same_model,
        "data": {"description": data_description, "num_images": len(items), "fit_mode": prep.fit_mode,
                 "input_size": prep.size, "labels": metrics is not None},
        "comparator": comparator_name(),
        "agreement": agreement,
        "per_image": compared["per_image"],
        "metrics": metrics,
        "latency": latency,
        "tolerance": {"precision": meta.precision, "min_mask_agreement": tolerance.min_mask_agreement,
                      "max_label_dice_drop": tolerance.max_label_dice_drop},
        "checks": checks,
        "passed": all(check["passed"] is not False for check in checks),
    }


# -- report -------------------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _agreement_table(agreement: Mapping[str, Any]) -> str:
    lines = ["| images | max abs diff | mean abs diff | mask Dice | mask IoU |", "|---|---|---|---|---|",
             (f"| mean | {agreement['max_abs_diff']:.2e} | {agreement['mean_abs_diff']:.2e} | "
             f"{agreement['mask_dice']:.4f} | {agreement['mask_iou']:.4f} |")]
    for row in agreement["worst"]:
        lines.append(f"| worst: {row['isic_id']} | {row['max_abs_diff']:.2e} | {row['mean_abs_diff']:.2e} | "
                     f"{row['mask_dice']:.4f} | {row['mask_iou']:.4f} |")
    return "\n".join(lines)


def _checks_table(report: Mapping[str, Any]) -> str:
    lines = ["| check | value | required | result |", "|---|---|---|---|"]
    for check in report["checks"]:
        result = {True: "PASS", False: "FAIL", None: f"not run ({check.get('note', '')})"}[check["passed"]]
        lines.append(f"| {check['name']} | {_fmt(check['value'])} | {check['op']} {check['limit']:g} | {result} |")
    return "\n".join(lines)


def format_verify_report(report: Mapping[str, Any]) -> str:
    """The report as the text ``ulffn-deploy verify`` prints: Markdown tables under short headings."""
    art, ref, data = report["artifact"], report["reference"], report["data"]
    match = report["checkpoint_match"]
    lines = [
        f"Artifact:  {art['path']} ({art['backend']}, {art['precision']}, {art['size_mb']:.2f} MB)",
        f"Reference: {ref['path']} ({ref['backend']}, {ref['precision']}; sha256 {ref['sha256'][:12]}..., "
        + ("matches the artifact's record)" if match["checked"] else "the artifact records no checkpoint sha256)"),
        f"Data:      {data['description']}; fit {data['fit_mode']}, {data['input_size']} px",
        "",
        f"Agreement, artifact vs reference ({report['comparator']}; masks at network resolution):",
        _agreement_table(report["agreement"]),
    ]
    if report["metrics"]:
        rows = {f"reference ({ref['backend']} {ref['precision']})": report["metrics"]["reference"],
                f"artifact ({art['backend']} {art['precision']})": report["metrics"]["artifact"]}
        lines += ["", "Metrics against labels (original image size):", format_table(rows, LABEL_METRICS)]
    lines += ["", f"Latency of the artifact (batch {report['latency']['batch_size']}):",
              format_latency_table(report["latency"])]
    lines += ["", f"Checks ({report['tolerance']['precision']} tolerances):", _checks_table(report),
              f"Result: {'PASS' if report['passed'] else 'FAIL'}"]
    return "\n".join(lines)
