"""``ulffn-deploy verify``: check a deployed artifact against its PyTorch checkpoint; exit 1 when it fails."""

from __future__ import annotations

import sys

import click

from ulffn_deploy.harness import tolerance_defaults
from ulffn_deploy.preprocess import DEFAULT_FIT_MODE, FIT_MODES, MAX_BATCH_SIZE
from ulffn_deploy.targets.registry import DEFAULT_RULE

HELP = f"""Run ARTIFACT and its reference (the PyTorch checkpoint; an imported model's FP32 ONNX) on the same
images; report output agreement, metrics against labels, trtexec-style latency, and pass/fail per precision.

ARTIFACT defaults to the default artifact of ARTIFACTS: {DEFAULT_RULE}. Exit status 1 when a check fails.
"""


@click.command(name="verify", help=HELP)
@click.argument("artifact", required=False, type=click.Path(dir_okay=False))
@click.option("--artifacts", "artifacts_dir", default="artifacts", show_default=True, type=click.Path(file_okay=False),
              help="Where quickstart put its outputs; the defaults below are taken from there.")
@click.option("--reference", type=click.Path(dir_okay=False),
              help="What the artifact is checked against: the checkpoint it was exported from, or any artifact of "
                   "the same model (an imported model's model.fp32.onnx).  [default: ARTIFACTS/run/best.pt, else "
                   "ARTIFACTS/model.fp32.onnx]")
@click.option("--data", "data_dir", type=click.Path(file_okay=False),
              help="ISIC folder (labels used when present) or a folder of images.  [default: ARTIFACTS/data]")
@click.option("--year", default=2016, show_default=True, type=click.Choice(["2016", "2017"]), help="ISIC set.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--num-images", type=click.IntRange(min=1), help="Use only the first N images.  [default: all]")
@click.option("--fit", "fit_mode", type=click.Choice(FIT_MODES), default=DEFAULT_FIT_MODE, show_default=True,
              help="How images fit the input (as predict --fit); label metrics are scored at the original size.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1, MAX_BATCH_SIZE))
@click.option("--warmup", type=click.IntRange(min=0), help="Warm-up calls before timing.")
@click.option("--warmup-ms", type=click.FloatRange(min=0), help="Warm-up time before timing.  [default: 200]")
@click.option("--iterations", type=click.IntRange(min=1),
              help="Timed calls (at least; alone: exactly).  [default: 10, with --duration 3]")
@click.option("--duration", type=click.FloatRange(min=0), help="Timed seconds (at least).  [default: 3]")
@click.option("--tolerance-agreement", type=click.FloatRange(0, 1),
              help=f"Minimum mean mask Dice against the reference.  [default: {tolerance_defaults('min_mask_agreement')}]")
@click.option("--tolerance-p99", type=click.FloatRange(0, 1),
              help="Maximum 99th percentile of the lesion probability error.  "
                   f"[default: {tolerance_defaults('max_p99_abs_diff')}]")
@click.option("--tolerance-label-dice", type=click.FloatRange(0, 1),
              help=f"Maximum drop of label Dice below the reference's.  [default: {tolerance_defaults('max_label_dice_drop')}]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the full report as JSON.")
def command(artifact: str | None, artifacts_dir: str, reference: str | None, data_dir: str | None, year: str,
            split: str, num_images: int | None, fit_mode: str, batch_size: int, warmup: int | None,
            warmup_ms: float | None, iterations: int | None, duration: float | None, tolerance_agreement: float | None,
            tolerance_p99: float | None, tolerance_label_dice: float | None, json_path: str | None) -> None:
    from ulffn_deploy.fileio import check_writable_file, write_json_atomic
    from ulffn_deploy.latency import Schedule
    from ulffn_deploy.verify import format_verify_report, verify_artifact

    schedule = Schedule.from_options(warmup, warmup_ms, iterations, duration)
    if json_path:
        check_writable_file(json_path)  # before the run, not after it
    report = verify_artifact(
        artifact, reference, data_dir, artifacts_dir=artifacts_dir, year=int(year), split=split,
        num_images=num_images, fit_mode=fit_mode, batch_size=batch_size, schedule=schedule,
        tolerance_agreement=tolerance_agreement, tolerance_p99=tolerance_p99, tolerance_label_dice=tolerance_label_dice,
        log=lambda message: click.echo(message, err=True),
    )
    click.echo(format_verify_report(report))
    if json_path:
        write_json_atomic(json_path, report)
        click.echo(f"report written to {json_path}", err=True)
    if not report["passed"]:
        sys.exit(1)
