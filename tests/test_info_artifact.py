"""``ulffn-deploy info MODEL`` (issue 12, "what a new user hit"): describe any artifact or checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, fake_artifact, run_cli, run_python
from tiny_models import tiny_onnx

from ulffn_deploy.cli import cli
from ulffn_deploy.commands.info import layer_counts
from ulffn_deploy.fileio import sha256_file


def _info(*args: str):
    return CliRunner().invoke(cli, ["info", *args])


def _rows(output: str) -> dict[str, str]:
    return {name.strip(): value.strip() for name, value in (line.split("  ", 1) for line in output.strip().splitlines())}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from ulffn_deploy.targets.onnxruntime_build import build_ort_model

    folder = tmp_path_factory.mktemp("artifacts")
    shutil.copy(tiny_onnx("fp32"), folder / "model.fp32.onnx")
    build_ort_model(folder / "model.fp32.onnx")
    return folder


def _engine_with_sidecar(tmp_path, **fields):
    """An engine file and a TensorRT-style sidecar (info reads only the sidecar, so no TensorRT is needed)."""
    return fake_artifact(tmp_path, "model.fp16.engine", "tensorrt", tensorrt_version="10.9.0",
                         gpu={"name": "NVIDIA H200", "compute_capability": "9.0"},
                         build_flags={"max_batch": 8}, **fields)


def test_onnx_table_names_backend_precision_size_and_hash(artifacts):
    path = artifacts / "model.fp32.onnx"
    result = _info(str(path))
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert rows["backend"] == "ONNX Runtime" and rows["precision"] == "fp32"
    assert rows["input size"].startswith("32x32") and rows["sha256"] == sha256_file(path)
    assert rows["model"] == "ULFFN w-ac, base width 8" and rows["runs here"] == "yes"
    assert f"{path.stat().st_size:,} bytes" in rows["file size"]


def test_built_artifact_json_links_its_source_onnx(artifacts):
    result = _info(str(artifacts / "model.fp32.ort.onnx"), "--json")
    assert result.exit_code == 0, result.output
    described = json.loads(result.output)
    assert described["sidecar"]["source_onnx"]["sha256"] == sha256_file(artifacts / "model.fp32.onnx")
    assert described["metadata"]["input_size"] == 32 and described["onnx"]["input_shape"][1:] == [3, 32, 32]
    assert described["sidecar"]["build_command"].startswith("ulffn-deploy build-engine")


def test_engine_is_described_from_its_sidecar_with_layer_counts(tmp_path):
    engine = _engine_with_sidecar(tmp_path, layer_precisions={"fp16": 2, "fp32": 1},
                                  build_command="ulffn-deploy build-engine \x1b[31m--onnx x.onnx")
    rows = _rows(_info(str(engine)).output)
    assert rows["backend"] == "TensorRT" and rows["precision"] == "fp16"
    assert rows["layers by precision"] == "fp16 2, fp32 1" and rows["build flags"] == "max_batch 8"
    assert "tensorrt 10.9.0" in rows["built with versions"] and "built with" not in rows  # escape codes are never echoed


def test_onnx_info_needs_neither_torch_nor_onnx(artifacts):
    proc = run_python(f"""
        from ulffn_deploy.cli import main
        main(["info", {str(artifacts / "model.fp32.onnx")!r}])
        """, absent=("torch", "onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "ONNX Runtime" in proc.stdout and proc.heavy == []


def test_checkpoint_shows_its_epoch():
    pytest.importorskip("torch")
    from tiny_models import tiny_checkpoint

    rows = _rows(_info(str(tiny_checkpoint())).output)
    assert rows["backend"] == "PyTorch" and rows["checkpoint"].startswith("epoch 1,")


@pytest.mark.parametrize("case", ["unknown suffix", "missing file", "engine without sidecar", "with --width"])
def test_bad_models_fail_with_one_line(tmp_path, artifacts, case):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "model.fp16.engine").write_bytes(b"plan")
    args = {"unknown suffix": [str(tmp_path / "notes.txt")], "missing file": [str(tmp_path / "model.fp32.onnx")],
            "engine without sidecar": [str(tmp_path / "model.fp16.engine")],
            "with --width": [str(artifacts / "model.fp32.onnx"), "--width", "8"]}[case]
    proc = run_cli("info", *args)
    assert_one_line_error(proc, 2)
    assert proc.stdout == ""


def test_layer_counts_read_the_one_shape_a_build_writes():
    assert layer_counts({"fp16": 40, "int8": 12}) == {"fp16": 40, "int8": 12}
    assert layer_counts({"a": "int8"}) is None and layer_counts([{"precision": "fp32"}]) is None
    assert layer_counts(None) is None and layer_counts({"fp16": True}) is None and layer_counts({}) is None
