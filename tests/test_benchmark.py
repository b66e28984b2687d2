"""benchmark: one quick run over the tiny artifacts (CPU), and the report formats."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_models import artifacts

from ulffn_deploy.benchmark import (
    COLUMNS,
    find_candidates,
    format_markdown,
    machine_description,
    plot_points,
    run_benchmark,
)
from ulffn_deploy.cli import cli
from ulffn_deploy.errors import UlffnError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    results = run_benchmark(artifacts(), out, batch_sizes=(1, 2), quick=True, num_images=2)
    return results, out


def _rows(results):
    return {(row["name"], row["precision"]): row for row in results["rows"]}


def test_every_backend_and_precision_has_a_row(quick_results):
    results, _ = quick_results
    rows = _rows(results)
    assert rows[("PyTorch eager", "fp32")]["status"] == "ok"
    assert rows[("ONNX Runtime", "fp32")]["status"] == "ok"
    assert rows[("ONNX Runtime", "fp16")]["status"] == "ok"
    assert "calibrate" in rows[("ONNX Runtime", "int8")]["reason"]
    trt = [row for row in results["rows"] if row["backend"] == "tensorrt"]
    assert [row["precision"] for row in trt] == ["fp32", "fp16", "int8"]
    if not machine_description()["gpu"]:
        assert all(row["status"] == "skipped" and row["reason"] for row in trt)
        assert rows[("PyTorch eager", "fp16")]["status"] == "skipped"


def test_measured_rows_carry_latency_speedup_and_accuracy(quick_results):
    results, _ = quick_results
    rows = _rows(results)
    baseline = rows[("PyTorch eager", "fp32")]
    assert [cell["batch_size"] for cell in baseline["batches"]] == [1, 2]
    assert all(cell["speedup"] == pytest.approx(1.0) for cell in baseline["batches"])
    assert baseline["mask_agreement"] == 1.0 and 0 <= baseline["label_dice"] <= 1
    onnx32 = rows[("ONNX Runtime", "fp32")]
    assert onnx32["mask_agreement"] >= 0.999
    assert onnx32["label_dice"] == pytest.approx(baseline["label_dice"], abs=1e-3)
    for cell in onnx32["batches"]:
        assert cell["median_ms"] > 0 and cell["p99_ms"] >= cell["median_ms"]
        assert cell["throughput"] > 0 and cell["gflops_per_s"] > 0 and cell["speedup"] > 0
    assert results["model"]["gflops"] > 0 and results["settings"]["input_size"] == 32


def test_files_are_written(quick_results):
    _, out = quick_results
    data = json.loads((out / "benchmark.json").read_text())
    assert {"date", "machine", "model", "settings", "rows"} <= set(data)
    assert {"numpy", "onnxruntime", "torch", "tensorrt"} <= set(data["machine"]["libraries"])
    markdown = (out / "benchmark.md").read_text()
    assert "| " + " | ".join(COLUMNS) + " |" in markdown
    assert "skipped:" in markdown and data["machine"]["cpu"] in markdown
    png = (out / "benchmark.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_markdown_lists_failed_and_skipped_cells():
    row = {"name": "TensorRT", "precision": "fp16", "backend": "tensorrt", "path": "m.engine", "status": "ok",
           "device": "GPU", "size_mb": 1.0, "mask_agreement": 0.999, "label_dice": None,
           "batches": [{"batch_size": 1, "status": "ok", "median_ms": 2.0, "p99_ms": 3.0, "throughput": 500.0,
                        "speedup": None, "gflops_per_s": 10.0},
                       {"batch_size": 16, "status": "skipped", "reason": "outside the profile"}]}
    failed = {"name": "ONNX Runtime", "precision": "int8", "backend": "onnxruntime", "path": "m.onnx",
              "status": "failed", "reason": "ONNX Runtime cannot load it"}
    results = {"date": "d", "machine": {"cpu": "CPU", "cores": 2, "gpu": None, "platform": "p", "python": "3",
                                        "libraries": {"numpy": "2"}},
               "model": {"variant": "w-ac", "width": 8, "parameters": 1, "input_size": 32, "gflops": 0.1,
                         "flop_convention": "c"},
               "settings": {"data": "d", "fit_mode": "paper", "schedule": "s"}, "rows": [row, failed]}
    lines = format_markdown(results).splitlines()
    table = [line for line in lines if line.startswith("| ") and "Backend" not in line]
    assert all(line.count("|") == len(COLUMNS) + 1 for line in table)
    assert any("skipped: outside the profile" in line for line in table)
    assert any("failed: ONNX Runtime cannot load it" in line for line in table)
    assert plot_points(results["rows"]) == [("TensorRT fp16 (GPU)", 2.0, 0.999)]


def test_backend_selection():
    folder = artifacts()
    chosen = find_candidates(folder, folder / "run" / "best.pt", build_engines=False, backends=("pytorch",))
    assert {c.backend for c in chosen} == {"pytorch"} and chosen[0].precision == "fp32" and chosen[0].skip is None
    everything = find_candidates(folder, folder / "run" / "best.pt", build_engines=False)
    assert [c.backend for c in everything].count("onnxruntime") == 3
    with pytest.raises(UlffnError, match="unknown backend"):
        find_candidates(folder, folder / "run" / "best.pt", backends=("openvino",))


def test_bad_batch_sizes_are_a_usage_error():
    result = CliRunner().invoke(cli, ["benchmark", "--batch-sizes", "1,x"])
    assert result.exit_code == 2
    assert "comma-separated" in result.output


def test_program_form_has_the_command_options():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_benchmark.py"), "--help"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "--batch-sizes" in result.stdout and "--quick" in result.stdout
