"""build-engine: the one-line refusal without TensorRT, the ONNX Runtime artifact, profiles and options."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, run_cli
from tiny_models import SIZE, sample_images, tiny_onnx

from ulffn_deploy.cli import cli
from ulffn_deploy.commands.build_engine import _options_for
from ulffn_deploy.devices import tensorrt_unavailable_reason
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.harness import BUILD_ROW, TOLERANCES
from ulffn_deploy.runtime import Segmenter
from ulffn_deploy.targets import onnxruntime_build as ort_build
from ulffn_deploy.targets import registry
from ulffn_deploy.targets.onnx_source import describe_onnx
from ulffn_deploy.targets.tensorrt import TARGET as TENSORRT
from ulffn_deploy.targets.tensorrt import make_profile


def engine_options(**given):
    return TENSORRT.resolve_options(given)


@pytest.fixture
def artifacts(tmp_path):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    for precision in ("fp32", "fp16"):
        shutil.copy(tiny_onnx(precision), folder / f"model.{precision}.onnx")
    return folder


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT and a GPU are available here")
def test_tensorrt_backend_without_tensorrt_fails_in_one_line(artifacts):
    result = run_cli("build-engine", "--backend", "tensorrt", "--precision", "fp16", "--artifacts", str(artifacts))
    assert assert_one_line_error(result, 2).startswith("error: cannot build for tensorrt")
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
    assert sidecar["check"]["passed"] and sidecar["check"]["tolerance"] == BUILD_ROW and sidecar["cpu"]["name"]
    assert sidecar["check"]["p99_abs_difference"] <= TOLERANCES[BUILD_ROW].max_p99_abs_diff
    assert sidecar["files"] == {"model.fp32.ort.onnx": (artifacts / "model.fp32.ort.onnx").stat().st_size}
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


def test_failed_check_leaves_no_file(artifacts, tmp_path, monkeypatch):
    from tiny_models import perturbed_onnx

    from ulffn_deploy import onnx_session

    wrong = perturbed_onnx(artifacts / "model.fp32.onnx", tmp_path / "negated.onnx")
    create_session = onnx_session.create_session

    def saved_model_swapped(model, *args, **kwargs):  # the saved model (a temporary file) is another model
        return create_session(wrong if str(model).endswith(".tmp") else model, *args, **kwargs)

    monkeypatch.setattr(onnx_session, "create_session", saved_model_swapped)
    with pytest.raises(UlffnError, match="disagrees with model.fp32.onnx: mask agreement"):
        ort_build.build_ort_model(artifacts / "model.fp32.onnx")
    assert sorted(p.name for p in artifacts.iterdir()) == ["model.fp16.onnx", "model.fp32.onnx"]


def test_build_engine_without_backend_builds_for_the_best_target_here(artifacts):
    best = registry.best_builder()
    result = CliRunner().invoke(cli, ["build-engine", "--artifacts", str(artifacts)])
    assert result.exit_code == 0, result.output
    built = artifacts / f"model.{best.default_build_precision}{best.build_suffix}"
    assert built.is_file() and built.with_name(built.name + ".json").is_file()


def test_default_names():
    from pathlib import Path

    assert TENSORRT.default_output(Path("a/model.fp16.onnx")).as_posix() == "a/model.fp16.engine"
    ort = registry.target_named("onnxruntime")
    assert ort.default_output(Path("a/model.fp16.onnx")).as_posix() == "a/model.fp16.ort.onnx"
    with pytest.raises(UlffnError, match="unknown precision"):
        registry.default_onnx("artifacts", "fp8")


def test_an_option_of_another_target_is_refused_before_any_work(artifacts):
    result = run_cli("build-engine", "--backend", "onnxruntime", "--max-batch", "4", "--artifacts", str(artifacts))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--max-batch" in result.stderr and "--backend onnxruntime" in result.stderr
    assert not list(artifacts.glob("*.ort.onnx*"))


def test_profile_of_a_static_size_onnx():
    source = describe_onnx(tiny_onnx("fp32"))
    assert source.input_shape == (None, 3, SIZE, SIZE)
    profile = make_profile(source, engine_options(min_batch=1, opt_batch=4, max_batch=16))
    assert profile == {"min": [1, 3, SIZE, SIZE], "opt": [4, 3, SIZE, SIZE], "max": [16, 3, SIZE, SIZE]}
    with pytest.raises(UlffnError, match="fixed input size of 32x32"):
        make_profile(source, engine_options(max_hw=64))


def test_profile_of_a_dynamic_size_onnx():
    source = describe_onnx(tiny_onnx("fp32", dynamic_hw=True))
    assert source.input_shape == (None, 3, None, None)
    assert make_profile(source, engine_options())["max"] == [8, 3, SIZE, SIZE]  # the model's input size by default
    profile = make_profile(source, engine_options(min_hw=16, opt_hw=32, max_hw=64))
    assert profile["min"] == [1, 3, 16, 16] and profile["max"] == [8, 3, 64, 64]
    with pytest.raises(UlffnError, match="multiples of 8"):
        make_profile(source, engine_options(min_hw=12))
    with pytest.raises(UlffnError, match="min <= opt <= max"):
        make_profile(source, engine_options(min_hw=64, max_hw=32))


@pytest.mark.parametrize("kwargs, message", [
    ({"hardware_compatibility": "turing"}, "--hardware-compatibility 'turing' is not one of"),
    ({"workspace": 0}, "--workspace 0 is below 1"),
    ({"builder_optimization_level": 6}, "--builder-optimization-level 6 is above 5"),
    ({"max_batch": "many"}, "--max-batch 'many' is not a int"),
])
def test_engine_options_are_validated(kwargs, message):
    with pytest.raises(UlffnError, match=message):
        engine_options(**kwargs)


def test_batch_profile_order_is_checked():
    with pytest.raises(UlffnError, match="batch profile 4/2/8"):
        make_profile(describe_onnx(tiny_onnx("fp32")), engine_options(min_batch=4, opt_batch=2))


def test_engine_options_round_trip_through_the_command_line():
    options = engine_options(min_batch=1, opt_batch=2, max_batch=4, min_hw=32, opt_hw=64, max_hw=96, workspace=512,
                             timing_cache="t.cache", builder_optimization_level=4, version_compatible=True,
                             hardware_compatibility="ampere-plus")
    args = TENSORRT.option_args(options)
    assert args[:6] == ["--opt-batch", "2", "--max-batch", "4", "--min-hw", "32"]  # defaults are left out
    assert "--version-compatible" in args and args[-2:] == ["--hardware-compatibility", "ampere-plus"]
    parsed = cli.get_command(None, "build-engine").make_context("build-engine", list(args)).params
    given = _options_for("tensorrt", {name: value for name, value in parsed.items() if name.startswith("opt__")})
    assert TENSORRT.resolve_options(given) == options


def test_int8_qdq_model_builds_for_onnxruntime(tmp_path):
    built = ort_build.build_ort_model(tiny_onnx("int8"), tmp_path / "model.int8.ort.onnx")
    sidecar = json.loads((tmp_path / "model.int8.ort.onnx.json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["check"]["passed"]
    with Segmenter.load(built) as segmenter:
        assert segmenter.precision == "int8" and segmenter.predict(sample_images(1))[0].shape == (40, 56)
