"""verify: whole runs on a tiny exported model (CPU), its report, verdict, exit codes and record."""

import json

import pytest
from click.testing import CliRunner
from helpers import run_cli
from tiny_models import artifacts, perturbed_onnx, save_tiny_checkpoint

from ulffn_deploy.cli import cli
from ulffn_deploy.harness import PRECISION_ROWS, TOLERANCES
from ulffn_deploy.latency import Schedule
from ulffn_deploy.targets.registry import VERIFIED_NAME
from ulffn_deploy.verify import format_verify_report, verify_artifact

FAST = Schedule(warmup_iterations=0, iterations=2, duration_s=0.0)
FAST_OPTIONS = ["--warmup", "0", "--iterations", "1"]


# -- whole runs ---------------------------------------------------------------------------------------

def test_faithful_fp32_artifact_passes_and_is_recorded(tmp_path):
    import shutil

    folder = artifacts()
    artifact = shutil.copy(folder / "model.fp32.onnx", tmp_path / "model.fp32.onnx")
    report = verify_artifact(artifact, folder / "run" / "best.pt", folder / "data", schedule=FAST, batch_size=2)
    assert report["passed"] is True
    assert report["checkpoint_match"]["checked"] is True
    assert report["artifact"]["precision"] == "fp32" and report["artifact"]["backend"] == "onnxruntime"
    comparison = report["comparison"]
    assert comparison["mask_dice"] >= 0.999 and comparison["p99_abs_diff"] <= comparison["max_abs_diff"] < 1e-3
    assert len(comparison["per_image"]) == 3 and report["data"]["labels"] is True
    assert report["data"]["fit_mode"] == "full"  # the default of every command, not the training fit mode
    metrics = comparison["metrics"]
    assert metrics["candidate"]["dice"] == pytest.approx(metrics["reference"]["dice"], abs=1e-3)
    assert report["latency"]["batch_size"] == 2 and report["latency"]["iterations"] == 2
    assert [c["name"] for c in report["checks"]] == ["mask agreement (mean Dice)", "probability error p99"]
    text = format_verify_report(report)
    assert "Result: PASS" in text and "| Host wall time |" in text and "worst: ISIC_" in text
    assert "Fit mode:  full" in text and "Metrics against labels (fit full" in text
    record = json.loads((tmp_path / VERIFIED_NAME).read_text())["model.fp32.onnx"]
    assert record["passed"] is True and record["median_ms"] == report["latency"]["series"]["host"]["median"]


def test_fp16_artifact_passes_its_tolerance():
    folder = artifacts()
    report = verify_artifact(folder / "model.fp16.onnx", artifacts_dir=folder, schedule=FAST, record=False)
    assert report["tolerance"]["min_mask_agreement"] == TOLERANCES["fp16"].min_mask_agreement
    assert report["passed"] is True
    assert 0 < report["comparison"]["max_abs_diff"] < 0.05


def test_perturbed_artifact_fails_with_exit_1_and_is_recorded_as_failed(tmp_path):
    folder = artifacts()
    bad = perturbed_onnx(folder / "model.fp32.onnx", tmp_path / "model.fp32.onnx")
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["verify", str(bad), "--artifacts", str(folder), "--json", str(report_path),
                                      *FAST_OPTIONS])
    assert result.exit_code == 1, result.output
    assert "Result: FAIL" in result.stdout and "| FAIL |" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["passed"] is False and report["comparison"]["mask_dice"] < 0.5
    assert {"artifact", "reference", "data", "comparison", "latency", "checks", "tolerance", "passed"} <= set(report)
    assert json.loads((tmp_path / VERIFIED_NAME).read_text())["model.fp32.onnx"]["passed"] is False


def test_tolerance_override_on_the_command_line(tmp_path):
    folder = artifacts()
    bad = perturbed_onnx(folder / "model.fp32.onnx", tmp_path / "model.fp32.onnx")
    result = CliRunner().invoke(cli, ["verify", str(bad), "--artifacts", str(folder), "--tolerance-agreement", "0",
                                      "--tolerance-p99", "1", *FAST_OPTIONS])
    assert result.exit_code == 0, result.output
    assert "Result: PASS" in result.stdout


def test_help_shows_the_tolerance_table():
    result = CliRunner().invoke(cli, ["verify", "--help"], terminal_width=400)
    text = " ".join(result.output.split())
    for precision in PRECISION_ROWS:  # the rows artifacts are judged by (not the build self-check's)
        tolerance = TOLERANCES[precision]
        assert f"{precision} {tolerance.min_mask_agreement:g}" in text
        assert f"{precision} {tolerance.max_p99_abs_diff:g}" in text


def test_reference_from_another_checkpoint_is_one_line_exit_2(tmp_path):
    folder = artifacts()
    other = save_tiny_checkpoint(tmp_path / "other.pt", seed=1)
    result = run_cli("verify", str(folder / "model.fp32.onnx"), "--reference", str(other),
                     "--data", str(folder / "data"), *FAST_OPTIONS)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "different checkpoint" in result.stderr


def test_empty_data_folder_is_one_line_exit_2(tmp_path):
    folder = artifacts()
    (tmp_path / "empty").mkdir()
    result = run_cli("verify", str(folder / "model.fp32.onnx"), "--artifacts", str(folder),
                     "--data", str(tmp_path / "empty"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "no images" in result.stderr


@pytest.mark.gpu
def test_tensorrt_engine_reports_device_timings(tmp_path):
    from ulffn_deploy.devices import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason:
        pytest.skip(reason)
    import shutil

    from ulffn_deploy.targets.tensorrt import build_tensorrt_engine

    folder = artifacts()
    for name in ("model.fp16.onnx",):
        shutil.copy(folder / name, tmp_path / name)
    engine = build_tensorrt_engine(tmp_path / "model.fp16.onnx")
    report = verify_artifact(engine, folder / "run" / "best.pt", folder / "data", schedule=FAST)
    assert report["passed"] is True and report["checkpoint_match"]["checked"] is True
    assert {"host", "gpu_compute", "h2d", "d2h"} <= set(report["latency"]["series"])


def test_an_ir_is_reported_with_its_weights(tmp_path):
    import shutil

    from ulffn_deploy.targets import registry

    if registry.target_named("openvino").unavailable_reason():
        pytest.skip("openvino is not installed")
    folder = tmp_path / "artifacts"
    shutil.copytree(artifacts(), folder)
    xml = registry.build("openvino", folder / "model.fp32.onnx")
    report = verify_artifact(xml, folder / "run" / "best.pt", folder / "data", schedule=FAST, record=False)
    weights = xml.with_suffix(".bin").stat().st_size
    assert weights > xml.stat().st_size  # the .xml alone is the small part
    assert report["artifact"]["size_mb"] == pytest.approx((xml.stat().st_size + weights) / 1e6)
