"""benchmark: one quick run over the tiny artifacts (CPU), rows from the registry, flagged latency cells, the
report formats and the plot."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_models import artifacts

from ulffn_deploy.benchmark import (
    COLUMNS,
    MIN_CALLS,
    cell_flags,
    find_candidates,
    format_markdown,
    machine_description,
    plot_points,
    run_benchmark,
)
from ulffn_deploy.cli import cli
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.targets import registry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    copy = tmp_path_factory.mktemp("benchmark-artifacts") / "artifacts"
    shutil.copytree(artifacts(), copy)
    return copy


@pytest.fixture(scope="module")
def quick_results(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    results = run_benchmark(folder, out, batch_sizes=(1, 2), quick=True, num_images=2)
    return results, out


def _rows(results):
    return {(row["backend"], row["path"]): row for row in results["rows"]}


def test_rows_come_from_the_registry(quick_results):
    results, _ = quick_results
    rows = _rows(results)
    assert results["rows"][0]["backend"] == "pytorch" and results["rows"][0]["status"] == "ok"
    assert rows[("onnxruntime", "model.fp32.onnx")]["status"] == "ok"
    assert rows[("onnxruntime", "model.fp16.onnx")]["status"] == "ok"
    assert "calibrate" in rows[("onnxruntime", "model.int8.ort.onnx")]["reason"]
    listed = {row["backend"] for row in results["rows"]}
    assert {t.name for t in registry.targets()} <= listed  # every target has a row, run or skipped
    for target in registry.targets():
        reason = target.unavailable_reason()
        if reason and not target.addressed_by_url:
            for row in (r for r in results["rows"] if r["backend"] == target.name):
                # a target that builds here for a device elsewhere is built when its source exists, then skipped
                missing_source = target.builds_here() and "to build it from" in row["reason"]
                assert row["reason"].startswith(reason) or missing_source, row


def test_cpu_targets_are_built_and_measured(quick_results):
    results, _ = quick_results
    rows = _rows(results)
    if registry.target_named("openvino").unavailable_reason() is None:
        openvino = rows[("openvino", "model.fp16.xml")]
        assert openvino["status"] == "ok" and openvino["precision"].startswith("fp16")
        assert rows[("openvino", "model.fp32.xml")]["mask_agreement"] >= 0.999
    assert rows[("onnxruntime", "model.fp32.ort.onnx")]["name"] == "ONNX Runtime (built)"


def test_measured_rows_carry_latency_speedup_accuracy_and_verdict(quick_results):
    results, _ = quick_results
    rows = _rows(results)
    baseline = results["rows"][0]
    assert [cell["batch_size"] for cell in baseline["batches"]] == [1, 2]
    assert all(cell["speedup"] == pytest.approx(1.0) for cell in baseline["batches"])
    onnx32 = rows[("onnxruntime", "model.fp32.onnx")]
    assert onnx32["mask_agreement"] >= 0.999 and onnx32["passed"] is True and onnx32["p99_abs_diff"] < 1e-3
    assert onnx32["label_dice"] is not None and 0 <= onnx32["label_dice"] <= 1
    for cell in onnx32["batches"]:
        assert cell["median_ms"] > 0 and cell["p99_ms"] >= cell["median_ms"]
        assert cell["throughput"] > 0 and cell["gflops_per_s"] > 0 and cell["speedup"] > 0
    assert results["model"]["gflops"] > 0 and results["settings"]["input_size"] == 32


def test_quick_cells_are_always_flagged(quick_results):
    results, _ = quick_results
    cells = [cell for row in results["rows"] for cell in row.get("batches", []) if cell["status"] == "ok"]
    assert cells and all(f"3 calls < {MIN_CALLS}" in cell["flags"] and cell["speedup_flagged"] for cell in cells)


def test_cell_flags():
    def result(calls, seconds, median, p99):
        return {"iterations": calls, "walltime_s": seconds, "series": {"host": {"median": median, "p99": p99}}}

    assert cell_flags(result(50, 5.0, 10.0, 12.0)) == []
    assert cell_flags(result(3, 5.0, 10.0, 12.0)) == ["3 calls < 10"]
    assert cell_flags(result(50, 0.5, 10.0, 12.0)) == ["0.5 s < 2 s"]
    assert cell_flags(result(50, 5.0, 10.0, 20.0)) == ["p99/median 2.00 > 1.5"]


def test_files_are_written(quick_results):
    _, out = quick_results
    data = json.loads((out / "benchmark.json").read_text())
    assert {"date", "machine", "model", "settings", "rows"} <= set(data)
    assert {"numpy", "onnxruntime", "openvino", "torch", "tensorrt"} <= set(data["machine"]["libraries"])
    markdown = (out / "benchmark.md").read_text()
    assert "| " + " | ".join(COLUMNS) + " |" in markdown
    assert "skipped:" in markdown and data["machine"]["cpu"] in markdown and "⚠" in markdown
    features = machine_description()["cpu_features"]
    if features:
        assert "CPU features: " + ", ".join(features) in markdown
    png = (out / "benchmark.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def _results(rows):
    return {"date": "d", "machine": {"cpu": "CPU", "cores": 2, "cpu_features": ["AVX2"], "gpu": None, "platform": "p",
                                     "python": "3", "libraries": {"numpy": "2"}},
            "model": {"variant": "w-ac", "width": 8, "parameters": 1, "input_size": 32, "gflops": 0.1,
                      "flop_convention": "c"},
            "settings": {"data": "d", "fit_mode": "full", "schedule": "s"}, "rows": rows}


def test_markdown_lists_failed_and_skipped_cells():
    row = {"name": "TensorRT", "precision": "fp16", "backend": "tensorrt", "path": "m.engine", "status": "ok",
           "device": "GPU", "size_mb": 1.0, "mask_agreement": 0.999, "p99_abs_diff": 0.001, "label_dice": None,
           "passed": True,
           "batches": [{"batch_size": 1, "status": "ok", "median_ms": 2.0, "p99_ms": 3.0, "throughput": 500.0,
                        "speedup": None, "speedup_flagged": True, "gflops_per_s": 10.0, "flags": ["3 calls < 10"]},
                       {"batch_size": 16, "status": "skipped", "reason": "outside the profile"}]}
    failed = {"name": "ONNX Runtime", "precision": "int8", "backend": "onnxruntime", "path": "m.onnx",
              "status": "failed", "reason": "ONNX Runtime cannot load it"}
    lines = format_markdown(_results([row, failed])).splitlines()
    table = [line for line in lines if line.startswith("| ") and "Backend" not in line]
    assert all(line.count("|") == len(COLUMNS) + 1 for line in table)
    assert any("skipped: outside the profile" in line for line in table)
    assert any("failed: ONNX Runtime cannot load it" in line for line in table)
    assert any("2.00 ⚠" in line and "3 calls < 10" in line for line in table)
    assert plot_points([row, failed]) == [("TensorRT fp16 (GPU)", 2.0, 0.999)]


def test_plot_labels_do_not_overlap(tmp_path):
    """Close points carry only their numbers; the names sit in a legend beside the axes."""
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401

    from ulffn_deploy.benchmark import write_plot

    rows = [{"name": f"Backend {i}", "precision": "fp32", "status": "ok", "device": "cpu", "mask_agreement": 0.999,
             "batches": [{"batch_size": 1, "status": "ok", "median_ms": 10.0 + 0.01 * i}]} for i in range(6)]
    path = tmp_path / "plot.png"
    texts = []
    import matplotlib.figure

    original = matplotlib.figure.Figure.savefig

    def capture(self, *args, **kwargs):
        self.canvas.draw()
        renderer = self.canvas.get_renderer()
        axes = self.axes[0]
        texts.extend(t.get_window_extent(renderer) for t in axes.texts)
        texts.extend(t.get_window_extent(renderer) for t in axes.get_legend().get_texts())
        return original(self, *args, **kwargs)

    matplotlib.figure.Figure.savefig = capture
    try:
        write_plot(_results(rows), path)
    finally:
        matplotlib.figure.Figure.savefig = original
    legend = texts[6:]
    assert len(legend) == 6 and not any(a.overlaps(b) for i, a in enumerate(legend) for b in legend[i + 1:])
    numbers = texts[:6]
    assert sum(a.overlaps(b) for i, a in enumerate(numbers) for b in numbers[i + 1:]) <= 3  # 4 offsets around a point


def test_backend_selection(folder):
    checkpoint = folder / "run" / "best.pt"
    chosen = find_candidates(folder, checkpoint, build=False, backends=("pytorch",))
    assert chosen[0].target.name == "pytorch" and chosen[0].problem is None
    assert all(c.problem for c in chosen[1:])
    with pytest.raises(UlffnError, match="unknown backend"):
        find_candidates(folder, checkpoint, backends=("tflite",))


def test_no_build_lists_missing_artifacts_as_skipped(folder):
    rows = find_candidates(folder / "nonexistent", folder / "run" / "best.pt", build=False)
    assert all(row.problem for row in rows[1:])


def test_bad_batch_sizes_are_a_usage_error():
    result = CliRunner().invoke(cli, ["benchmark", "--batch-sizes", "1,x"])
    assert result.exit_code == 2
    assert "comma-separated" in result.output


def test_program_form_has_the_command_options():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_benchmark.py"), "--help"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "--batch-sizes" in result.stdout and "--quick" in result.stdout and "--threads" in result.stdout
