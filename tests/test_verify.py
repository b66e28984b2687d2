"""verify: tolerances, comparison statistics, inputs, and whole runs on a tiny exported model (CPU)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run_cli
from PIL import Image
from verify_artifacts import artifacts, perturbed_onnx, save_tiny_checkpoint

from ulffn_deploy.cli import cli
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.latency import Schedule
from ulffn_deploy.verify import (
    Tolerance,
    compare_probabilities,
    default_artifact,
    evaluate_checks,
    find_images,
    format_verify_report,
    recorded_checkpoint_sha256,
    summarize_agreement,
    tolerance_for,
    verify_artifact,
)

FAST = Schedule(warmup_iterations=0, iterations=2, duration_s=0.0)
FAST_OPTIONS = ["--warmup", "0", "--iterations", "1"]


# -- tolerances ---------------------------------------------------------------------------------------

def test_default_tolerances_per_precision():
    assert tolerance_for("fp32") == Tolerance(0.999, None)
    assert tolerance_for("fp16") == Tolerance(0.995, None)
    assert tolerance_for("int8") == Tolerance(0.98, 0.01)
    assert tolerance_for("int8", agreement=0.9) == Tolerance(0.9, 0.01)
    assert tolerance_for("fp32", label_dice_drop=0.02) == Tolerance(0.999, 0.02)
    with pytest.raises(UlffnError):
        tolerance_for("bf16")
    with pytest.raises(UlffnError):
        Tolerance(1.5)


def test_agreement_check_at_its_boundary():
    tolerance = tolerance_for("fp16")
    assert evaluate_checks(tolerance, 0.995, None)[0]["passed"] is True
    assert evaluate_checks(tolerance, 0.9949, None)[0]["passed"] is False
    assert len(evaluate_checks(tolerance, 1.0, {"reference": 0.9, "artifact": 0.5})) == 1  # fp16: no label check


def test_int8_label_dice_drop_check():
    tolerance = tolerance_for("int8")
    ok = evaluate_checks(tolerance, 0.99, {"reference": 0.90, "artifact": 0.895})
    assert [c["passed"] for c in ok] == [True, True]
    assert ok[1]["value"] == pytest.approx(0.005)
    dropped = evaluate_checks(tolerance, 0.99, {"reference": 0.90, "artifact": 0.88})
    assert [c["passed"] for c in dropped] == [True, False]
    unlabelled = evaluate_checks(tolerance, 0.99, None)
    assert unlabelled[1]["passed"] is None and "no labels" in unlabelled[1]["note"]


# -- statistics ---------------------------------------------------------------------------------------

def test_compare_probabilities_statistics():
    reference = np.zeros((2, 4, 4), np.float32)
    artifact = reference.copy()
    artifact[0, 0, 0] = 0.5
    artifact[1, :2, :] = 0.25
    stats = compare_probabilities(reference, artifact)
    assert stats["max_abs_diff"] == pytest.approx(0.5)
    assert stats["mean_abs_diff"] == pytest.approx((0.5 + 8 * 0.25) / 32)
    assert stats["median_abs_diff"] == pytest.approx(0.0)
    with pytest.raises(UlffnError):
        compare_probabilities(reference, artifact[:1])


def test_summarize_agreement_names_the_worst_images():
    rows = [{"isic_id": f"ISIC_000000{i}", "max_abs_diff": d, "mean_abs_diff": d / 10, "mask_dice": dice,
             "mask_iou": dice} for i, (d, dice) in enumerate([(0.1, 1.0), (0.4, 0.9), (0.2, 1.0), (0.3, 0.8)])]
    summary = summarize_agreement(rows, worst=2)
    assert [r["isic_id"] for r in summary["worst"]] == ["ISIC_0000003", "ISIC_0000001"]
    assert summary["max_abs_diff"] == 0.4
    assert summary["mask_dice"] == pytest.approx(0.925)
    assert summary["min_mask_dice"] == 0.8


# -- inputs -------------------------------------------------------------------------------------------

def test_find_images_in_isic_layout_and_plain_folders(tmp_path):
    items, description = find_images(artifacts() / "data", limit=2)
    assert [i.isic_id for i in items] == ["ISIC_0000001", "ISIC_0000002"]
    assert all(i.mask_path is not None for i in items) and "with labels" in description
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    items, description = find_images(tmp_path)
    assert [i.isic_id for i in items] == ["a"] and items[0].mask_path is None
    assert "without labels" in description


def test_empty_data_folder_is_an_error(tmp_path):
    with pytest.raises(UlffnError, match="no images"):
        find_images(tmp_path)


def test_default_artifact_precedence(tmp_path):
    with pytest.raises(UlffnError):
        default_artifact(tmp_path)
    for name in ("model.fp32.onnx", "model.fp16.onnx"):
        (tmp_path / name).write_bytes(b"x")
    assert default_artifact(tmp_path).suffix == ".onnx"
    (tmp_path / "model.int8.ort.onnx").write_bytes(b"x")
    assert default_artifact(tmp_path).name == "model.int8.ort.onnx"
    (tmp_path / "model.fp16.engine").write_bytes(b"x")
    assert default_artifact(tmp_path).name == "model.fp16.engine"


def test_engine_checkpoint_sha_is_found_through_its_source_onnx(tmp_path):
    import shutil
    from types import SimpleNamespace

    from ulffn_deploy.fileio import sha256_file

    folder = artifacts()
    onnx_path = shutil.copy(folder / "model.fp32.onnx", tmp_path / "model.fp32.onnx")
    source = {"file": "model.fp32.onnx", "sha256": sha256_file(onnx_path)}
    engine = SimpleNamespace(path=tmp_path / "model.fp32.engine", metadata=SimpleNamespace(extra={"source_onnx": source}))
    assert recorded_checkpoint_sha256(engine) == sha256_file(folder / "run" / "best.pt")
    source["sha256"] = "0" * 64  # the ONNX beside it is not the one the engine was built from
    assert recorded_checkpoint_sha256(engine) is None


# -- whole runs ---------------------------------------------------------------------------------------

def test_faithful_fp32_artifact_passes():
    folder = artifacts()
    report = verify_artifact(folder / "model.fp32.onnx", artifacts_dir=folder, schedule=FAST, batch_size=2)
    assert report["passed"] is True
    assert report["checkpoint_match"]["checked"] is True
    assert report["artifact"]["precision"] == "fp32" and report["artifact"]["backend"] == "onnxruntime"
    assert report["agreement"]["mask_dice"] >= 0.999
    assert report["agreement"]["max_abs_diff"] < 1e-3
    assert len(report["per_image"]) == 3 and report["data"]["labels"] is True
    assert report["metrics"]["artifact"]["dice"] == pytest.approx(report["metrics"]["reference"]["dice"], abs=1e-3)
    assert report["latency"]["batch_size"] == 2 and report["latency"]["iterations"] == 2
    text = format_verify_report(report)
    assert "Result: PASS" in text and "| Host wall time |" in text and "worst: ISIC_" in text


def test_fp16_artifact_passes_its_tolerance():
    folder = artifacts()
    report = verify_artifact(folder / "model.fp16.onnx", artifacts_dir=folder, schedule=FAST)
    assert report["tolerance"]["min_mask_agreement"] == 0.995
    assert report["passed"] is True
    assert 0 < report["agreement"]["max_abs_diff"] < 0.05


def test_perturbed_artifact_fails_with_exit_1(tmp_path):
    folder = artifacts()
    bad = perturbed_onnx(folder / "model.fp32.onnx", tmp_path / "model.fp32.onnx")
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["verify", str(bad), "--artifacts", str(folder), "--json", str(report_path),
                                      *FAST_OPTIONS])
    assert result.exit_code == 1, result.output
    assert "Result: FAIL" in result.stdout and "| FAIL |" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["passed"] is False and report["agreement"]["mask_dice"] < 0.5
    assert {"artifact", "reference", "data", "agreement", "per_image", "metrics", "latency", "checks",
            "tolerance", "passed"} <= set(report)


def test_tolerance_override_on_the_command_line(tmp_path):
    folder = artifacts()
    bad = perturbed_onnx(folder / "model.fp32.onnx", tmp_path / "model.fp32.onnx")
    result = CliRunner().invoke(cli, ["verify", str(bad), "--artifacts", str(folder), "--tolerance-agreement", "0",
                                      *FAST_OPTIONS])
    assert result.exit_code == 0, result.output
    assert "Result: PASS" in result.stdout


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
