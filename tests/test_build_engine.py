"""build-engine: the one-line refusal without TensorRT, the ONNX Runtime artifact, profiles and options."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run_cli
from tiny_models import SIZE, sample_images, tiny_onnx

from ulffn_deploy.cli import cli
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export import ort_build
from ulffn_deploy.targets.tensorrt import (
    EngineOptions,
    _timing_cache_files,
    build_best_backend,
    default_onnx,
    make_profile,
)
from ulffn_deploy.targets.onnxruntime_build import default_output, describe_onnx
from ulffn_deploy.runtime import Segmenter
from ulffn_deploy.devices import tensorrt_unavailable_reason


@pytest.fixture
def artifacts(tmp_path):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    for precision in ("fp32", "fp16"):
        shutil.copy(tiny_onnx(precision), folder / f"model.{precision}.onnx")
    return folder


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT and a GPU are available here")
def test_tensorrt_backend_without_tensorrt_fails_in_one_line(artifacts):
    result = run_cli("build-engine", "--precision", "fp16", "--artifacts", str(artifacts))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: cannot build a TensorRT engine")
    assert "tensorrt package is not importable" in result.stderr and "--backend onnxruntime" in result.stderr
    assert not list(artifacts.glob("*.engine*"))


def test_onnxruntime_backend_builds_a_checked_cpu_model_with_sidecar(artifacts):
    result = CliRunner().invoke(cli, ["build-engine", "--backend", "onnxruntime", "--artifacts", str(artifacts)])
    assert result.exit_code == 0, result.output
    built = artifacts / "model.fp32.ort.onnx"
    assert f"wrote {built}" in result.output
    sidecar = json.loads((artifacts / "model.fp32.ort.onnx.json").read_text())
    assert sidecar["backend"] == "onnxruntime" and sidecar["precision"] == "fp32"
    assert sidecar["graph_optimization"] == "extended" and sidecar["onnxruntime_version"]
    assert sidecar["source_onnx"] == {"file": "model.fp32.onnx", "sha256": describe_onnx(tiny_onnx("fp32")).sha256}
    assert sidecar["input_size"] == SIZE and sidecar["normalization"]["std"][0] == pytest.approx(0.229)
    assert sidecar["check"]["max_abs_difference"] <= ort_build.CHECK_TOLERANCE and sidecar["cpu"]["name"]
    assert "--backend onnxruntime" in sidecar["build_command"]
    assert sorted(p.name for p in artifacts.iterdir()) == [
        "model.fp16.onnx", "model.fp32.onnx", "model.fp32.ort.onnx", "model.fp32.ort.onnx.json"]
    batch = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with Segmenter.load(built) as optimized, Segmenter.load(artifacts / "model.fp32.onnx") as source:
        assert optimized.info["offline_optimized"] and optimized.info["graph_optimization"] == "all"
        np.testing.assert_allclose(optimized.infer(batch), source.infer(batch), atol=1e-5)


def test_onnx_option_precision_must_match_the_file(artifacts, tmp_path):
    result = CliRunner().invoke(cli, ["build-engine", "--backend", "onnxruntime", "--onnx", str(artifacts / "model.fp32.onnx"),
                                      "--precision", "fp16"])
    assert isinstance(result.exception, UlffnError) and "is a fp32 model, not fp16" in str(result.exception)
    output = tmp_path / "out" / "cpu.onnx"
    result = CliRunner().invoke(cli, ["build-engine", "--backend", "onnxruntime", "--onnx", str(artifacts / "model.fp16.onnx"),
                                      "-o", str(output), "--ort-optimization", "basic"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "cpu.onnx.json").read_text())["precision"] == "fp16"


def test_missing_onnx_says_how_to_make_it(tmp_path):
    result = run_cli("build-engine", "--backend", "onnxruntime", "--precision", "int8", "--artifacts", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "model.int8.onnx does not exist" in result.stderr and "ulffn-deploy calibrate" in result.stderr


def test_failed_check_leaves_no_file(artifacts, monkeypatch):
    monkeypatch.setattr(ort_build, "CHECK_TOLERANCE", -1.0)
    with pytest.raises(UlffnError, match="disagrees"):
        ort_build.build_ort_model(artifacts / "model.fp32.onnx")
    assert sorted(p.name for p in artifacts.iterdir()) == ["model.fp16.onnx", "model.fp32.onnx"]


def test_build_best_backend_falls_back_to_onnxruntime(artifacts):
    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT is available: the best backend is tensorrt (covered by the GPU tests)")
    built = build_best_backend(artifacts, "fp16")
    assert built == artifacts / "model.fp16.ort.onnx" and built.with_name(built.name + ".json").is_file()


def test_default_names():
    assert default_output("a/model.fp16.onnx", "tensorrt").as_posix() == "a/model.fp16.engine"
    assert default_output("a/model.fp16.onnx", "onnxruntime").as_posix() == "a/model.fp16.ort.onnx"
    with pytest.raises(UlffnError, match="unknown precision"):
        default_onnx("artifacts", "fp8")


def test_profile_of_a_static_size_onnx():
    source = describe_onnx(tiny_onnx("fp32"))
    assert source.input_shape == (None, 3, SIZE, SIZE)
    profile = make_profile(source, EngineOptions(min_batch=1, opt_batch=4, max_batch=16))
    assert profile == {"min": [1, 3, SIZE, SIZE], "opt": [4, 3, SIZE, SIZE], "max": [16, 3, SIZE, SIZE]}
    with pytest.raises(UlffnError, match="fixed input size of 32x32"):
        make_profile(source, EngineOptions(max_hw=64))


def test_profile_of_a_dynamic_size_onnx():
    source = describe_onnx(tiny_onnx("fp32", dynamic_hw=True))
    assert source.input_shape == (None, 3, None, None)
    assert make_profile(source, EngineOptions())["max"] == [8, 3, SIZE, SIZE]  # the model's input size by default
    profile = make_profile(source, EngineOptions(min_hw=16, opt_hw=32, max_hw=64))
    assert profile["min"] == [1, 3, 16, 16] and profile["max"] == [8, 3, 64, 64]
    with pytest.raises(UlffnError, match="multiples of 8"):
        make_profile(source, EngineOptions(min_hw=12))
    with pytest.raises(UlffnError, match="min <= opt <= max"):
        make_profile(source, EngineOptions(min_hw=64, max_hw=32))


@pytest.mark.parametrize("kwargs, message", [
    ({"min_batch": 4, "opt_batch": 2}, "batch profile"),
    ({"hardware_compatibility": "turing"}, "hardware compatibility"),
    ({"workspace_mib": 0}, "workspace"),
    ({"builder_optimization_level": 6}, "optimization level"),
])
def test_engine_options_are_validated(kwargs, message):
    with pytest.raises(UlffnError, match=message):
        EngineOptions(**kwargs)


def test_engine_options_round_trip_through_the_command_line():
    options = EngineOptions(1, 2, 4, 32, 64, 96, 512, "t.cache", 4, True, "ampere-plus")
    args = options.command_args()
    assert args == ["--min-batch", "1", "--opt-batch", "2", "--max-batch", "4", "--min-hw", "32", "--opt-hw", "64",
                    "--max-hw", "96", "--workspace", "512", "--timing-cache", "t.cache",
                    "--builder-optimization-level", "4", "--version-compatible", "--hardware-compatibility", "ampere-plus"]
    parsed = cli.get_command(None, "build-engine").make_context("build-engine", list(args)).params
    assert EngineOptions(parsed["min_batch"], parsed["opt_batch"], parsed["max_batch"], parsed["min_hw"], parsed["opt_hw"],
                         parsed["max_hw"], parsed["workspace_mib"], parsed["timing_cache"],
                         parsed["builder_optimization_level"], parsed["version_compatible"],
                         parsed["hardware_compatibility"]) == options


def test_timing_cache_is_replaced_atomically_and_only_on_success(tmp_path):
    cache = tmp_path / "timing.cache"
    with _timing_cache_files(cache) as (old, new):
        assert old is None
        new.write(b"first")
    assert cache.read_bytes() == b"first"
    with pytest.raises(RuntimeError), _timing_cache_files(cache) as (old, new):
        assert old.read() == b"first"
        new.write(b"half-written")
        raise RuntimeError("build failed")
    assert cache.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["timing.cache"]
    with _timing_cache_files(None) as files:
        assert files == (None, None)


def test_int8_qdq_model_builds_for_onnxruntime(tmp_path):
    built = ort_build.build_ort_model(tiny_onnx("int8"), tmp_path / "model.int8.ort.onnx")
    sidecar = json.loads((tmp_path / "model.int8.ort.onnx.json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["check"]["max_abs_difference"] <= ort_build.CHECK_TOLERANCE
    with Segmenter.load(built) as segmenter:
        assert segmenter.precision == "int8" and segmenter.predict(sample_images(1))[0].shape == (40, 56)
