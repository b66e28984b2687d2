"""Verify a deployed artifact against the reference it came from (docs/architecture.md, The evaluation harness).

Both run on the same images through the evaluation harness (``ulffn_deploy.harness``): probability
error (max, mean, p99), mask agreement per image with the worst images by id, and metrics of both against
the labels when the folder has them (masks at the original image size, as ``score`` scores ``predict``'s
output). Then the artifact's latency in the manner of trtexec, and pass/fail against its precision's row
of ``harness.TOLERANCES``. The verdict and median latency are recorded beside the artifact
(``registry.record_verification``), so that the default-artifact rule can prefer verified, fast artifacts.

Heavy packages (torch through the PyTorch target, onnxruntime, tensorrt) are imported only when an
artifact is opened.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import sha256_file
from ulffn_deploy.harness import (
    check,
    compare,
    find_images,
    format_agreement,
    format_checks,
    passed,
    preprocessing_of,
    runs_as_row,
    tolerance_for,
)
from ulffn_deploy.latency import Schedule, format_latency_table, measure
from ulffn_deploy.metrics import format_table
from ulffn_deploy.progress import Progress
from ulffn_deploy.runtime.metadata import runs_as_text
from ulffn_deploy.targets.registry import DEFAULT_ARTIFACTS, default_artifact, record_verification, target_for_path

if TYPE_CHECKING:
    from ulffn_deploy.runtime import Segmenter

LABEL_METRICS = ("dice", "jaccard", "accuracy", "sensitivity", "specificity")


def default_reference(folder: Path) -> Path:
    """``run/best.pt`` (ULFFN's checkpoint); without one, ``model.fp32.onnx`` (an imported model's reference)."""
    checkpoint = folder / "run" / "best.pt"
    fp32 = folder / "model.fp32.onnx"
    return fp32 if not checkpoint.is_file() and fp32.is_file() else checkpoint


def check_same_model(artifact: Segmenter, reference_path: Path, reference: Segmenter | None = None) -> dict[str, Any]:
    """The artifact's recorded checkpoint sha256 against the reference's: the file's own for a checkpoint
    (.pt), the one it records for an artifact reference (model.fp32.onnx); UlffnError if they differ."""
    recorded = artifact.metadata.checkpoint_sha256
    actual = sha256_file(reference_path)
    if reference is not None and reference.backend != "pytorch":
        actual = reference.metadata.checkpoint_sha256 or actual
    if recorded and recorded != actual:
        raise UlffnError(
            f"{artifact.path.name} was made from a different checkpoint than {reference_path} "
            f"(sha256 {recorded[:12]}... recorded, {actual[:12]}... given)",
            "pass the checkpoint it was exported from with --reference, or export the artifact again from this one",
        )
    return {"reference_sha256": actual, "recorded_sha256": recorded, "checked": bool(recorded)}


def measure_latency(runner: Segmenter, batch: np.ndarray, schedule: Schedule) -> dict[str, Any]:
    """trtexec-style latency of ``runner.infer(batch)``: host wall time, plus the device timings a GPU
    backend reports (``latency.DEVICE_SERIES``; CPU backends' own timings are host time, already measured)."""

    def step() -> dict[str, float]:
        runner.infer(batch)
        return runner.last_timings

    return measure(step, len(batch), schedule)


def _describe_runner(runner: Segmenter, path: Path) -> dict[str, Any]:
    """The runner's own ``info`` (every key its backend reports), with its path (a server's URL) and the size
    of its model files (0 for a URL: no file here)."""
    info = {key: value for key, value in runner.info.items()
            if key not in ("normalization", "model_config", "fit_mode", "training_fit_mode")}
    size = target_for_path(path).model_bytes(path) if path.is_file() else 0
    return {**info, "path": str(info.get("url", path)), "size_mb": size / 1e6, "runs_as": runner.runs_as}


def _reference_path(reference: str | os.PathLike[str] | None, folder: Path) -> Path:
    path = Path(reference) if reference else default_reference(folder)
    if not path.is_file():
        raise UlffnError(f"{path}: no such reference", "pass --reference: the checkpoint (.pt) the artifact was "
                         "exported from, or an imported model's model.fp32.onnx")
    return path


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
    tolerance_p99: float | None = None,
    tolerance_label_dice: float | None = None,
    record: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``artifact`` and the PyTorch ``reference`` on the same images; the report as a JSON-ready dict.

    Defaults follow quickstart's layout under ``artifacts_dir``: the registry's default artifact,
    ``default_reference``, ``data/``; ``fit_mode`` defaults to ``preprocess.DEFAULT_FIT_MODE``.
    ``report["passed"]`` is the verdict; ``record`` stores it beside the artifact (``verified.json``).
    """
    from ulffn_deploy.devices import machine_key
    from ulffn_deploy.runtime import Segmenter

    folder = Path(artifacts_dir)
    artifact_path = Path(artifact) if artifact else default_artifact(folder, log=log)
    reference_path = _reference_path(reference, folder)
    source = find_images(data_dir or folder / "data", split, year, limit=num_images)
    say = log or (lambda message: None)
    schedule = schedule or Schedule()
    with Segmenter.load(artifact_path) as art, Segmenter.load(reference_path) as ref:
        same_model = check_same_model(art, reference_path, ref)
        tolerance_row = runs_as_row(art)
        tolerance = tolerance_for(tolerance_row, tolerance_agreement, tolerance_p99, tolerance_label_dice)
        say(f"verifying {artifact_path} ({art.backend}, {art.precision}) against {reference_path} on {source.description}")
        with Progress(len(source), "verify", unit="image", enabled=log is not None) as bar:
            comparison = compare(ref, art, source, batch_size, fit_mode, progress=bar.advance_to)
        say(f"measuring latency ({schedule.describe()})")
        latency = measure_latency(art, source.input_batch(batch_size, preprocessing_of(art, fit_mode)), schedule)
        artifact_info, reference_info = _describe_runner(art, artifact_path), _describe_runner(ref, reference_path)
    checks = check(comparison, tolerance)
    verdict = passed(checks)
    if record and artifact_path.is_file():
        try:
            record_verification(artifact_path, verdict, latency["series"]["host"]["median"], machine_key())
        except OSError as exc:  # a read-only folder: the check itself stands
            say(f"could not record the result beside {artifact_path.name}: {exc.strerror or exc}")
    return {
        "artifact": artifact_info,
        "reference": {**reference_info, "sha256": same_model["reference_sha256"]},
        "checkpoint_match": same_model,
        "data": {"description": source.description, "num_images": len(source), "fit_mode": comparison.fit_mode,
                 "input_size": comparison.input_size, "labels": comparison.metrics is not None},
        "comparison": comparison.to_dict(),
        "latency": latency,
        "tolerance": {"precision": tolerance_row, **vars(tolerance)},
        "checks": [c.to_dict() for c in checks],
        "passed": verdict,
    }


# -- report -------------------------------------------------------------------------------------------

def format_verify_report(report: Mapping[str, Any]) -> str:
    """The report as the text ``ulffn-deploy verify`` prints: Markdown tables under short headings."""
    from ulffn_deploy.harness import Check, Comparison, ImageAgreement

    art, ref, data = report["artifact"], report["reference"], report["data"]
    match = report["checkpoint_match"]
    fields = dict(report["comparison"])
    fields.pop("label_dice_drop", None)
    fields["worst"] = [ImageAgreement(**row) for row in fields["worst"]]
    fields["per_image"] = []
    comparison = Comparison(**fields)
    lines = [
        f"Artifact:  {art['path']} ({art['backend']}, {runs_as_text(art['precision'], art.get('runs_as'))}"
        + f", {art['size_mb']:.2f} MB"
        + "".join(f", {count} {name}" for name, count in (art.get("layer_precisions") or {}).items())
        + (" layers)" if art.get("layer_precisions") else ")"),
        f"Reference: {ref['path']} ({ref['backend']}, {ref['precision']}; sha256 {ref['sha256'][:12]}..., "
        + ("matches the artifact's record)" if match["checked"] else "the artifact records no checkpoint sha256)"),
        f"Data:      {data['description']}",
        f"Fit mode:  {data['fit_mode']} ({data['input_size']} px input)",
        "",
        "Agreement, artifact vs reference (lesion probability; masks at network resolution):",
        format_agreement(comparison),
    ]
    if comparison.metrics:
        rows = {f"reference ({ref['backend']} {ref['precision']})": comparison.metrics["reference"],
                f"artifact ({art['backend']} {art['precision']})": comparison.metrics["candidate"]}
        lines += ["", f"Metrics against labels (fit {data['fit_mode']}; masks at the original image size):",
                  format_table(rows, LABEL_METRICS)]
    lines += ["", f"Latency of the artifact (batch {report['latency']['batch_size']}):",
              format_latency_table(report["latency"])]
    checks = [Check(**c) for c in report["checks"]]
    lines += ["", f"Checks ({report['tolerance']['precision']} tolerances; the max error is reported, not gated):",
              format_checks(checks), f"Result: {'PASS' if report['passed'] else 'FAIL'}"]
    return "\n".join(lines)
