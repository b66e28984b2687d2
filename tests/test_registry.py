"""The registry: targets by suffix, one default-artifact rule for every command, a user's own target."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from helpers import run_cli
from tiny_models import artifacts as quickstart_like_artifacts
from tiny_models import sample_images, tiny_onnx

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.runtime import Segmenter
from ulffn_deploy.targets import registry


@pytest.fixture
def folder(tmp_path):
    """An artifacts folder as quickstart leaves it on a CPU machine, plus an engine this machine cannot run."""
    for precision in ("fp32", "fp16"):
        shutil.copy(tiny_onnx(precision), tmp_path / f"model.{precision}.onnx")
    (tmp_path / "model.fp16.engine").write_bytes(b"not a plan this machine can run")
    return tmp_path


@pytest.fixture
def constant_target(monkeypatch):
    monkeypatch.setattr(registry, "_MODULES", ["example_target", *registry._MODULES])
    import example_target

    yield example_target.TARGET
    example_target.TARGET.available = True


def test_targets_by_suffix():
    assert registry.target_for_path("a/model.fp16.engine").name == "tensorrt"
    assert registry.target_for_path("model.fp32.ort.onnx").name == "onnxruntime"
    assert registry.target_for_path("MODEL.FP32.ONNX").name == "onnxruntime"
    assert registry.target_for_path("run/best.pt").name == "pytorch"
    with pytest.raises(UlffnError, match="unknown model type"):
        registry.target_for_path("model.fp32.tflite")
    assert not registry.is_artifact("lesion.jpg")


def test_default_artifact_skips_what_cannot_run_here(folder):
    tensorrt = registry.target_named("tensorrt")
    if tensorrt.unavailable_reason() is None:
        pytest.skip("TensorRT runs here: the engine would be a valid choice")
    assert registry.default_artifact(folder).name == "model.fp32.onnx"
    (folder / "model.fp32.ort.onnx").write_bytes(b"x")
    assert registry.default_artifact(folder).name == "model.fp32.ort.onnx"  # the built CPU model before the export


def test_no_runnable_artifact_says_why(tmp_path):
    with pytest.raises(UlffnError, match="no model.<precision>.* artifact"):
        registry.default_artifact(tmp_path)
    if registry.target_named("tensorrt").unavailable_reason() is None:
        return
    (tmp_path / "model.fp16.engine").write_bytes(b"x")
    with pytest.raises(UlffnError, match="no artifact in .* runs on this machine .*model.fp16.engine"):
        registry.default_artifact(tmp_path)


def test_a_verified_faster_artifact_wins_until_it_changes(folder):
    fp32, fp16 = folder / "model.fp32.onnx", folder / "model.fp16.onnx"
    machine = "this machine"
    registry.record_verification(fp16, True, 3.0, machine)
    registry.record_verification(fp32, True, 5.0, machine)
    from ulffn_deploy import devices

    original = devices.machine_key
    devices.machine_key = lambda: machine
    try:
        assert registry.default_artifact(folder) == fp16
        registry.record_verification(fp16, False, 1.0, machine)  # failed verify: not preferred
        assert registry.default_artifact(folder) == fp32
        registry.record_verification(fp16, True, 3.0, machine)
        time.sleep(0.01)
        fp16.write_bytes(fp16.read_bytes())  # rewritten: the record no longer describes this file
        assert registry.default_artifact(folder) == fp32
    finally:
        devices.machine_key = original
    assert registry.default_artifact(folder).name == "model.fp32.onnx"  # recorded on another machine: ignored


def test_a_users_own_target_is_one_module(tmp_path, constant_target):
    np.savez(tmp_path / "model.fp32.npz", lesion=np.float32(0.75))
    shutil.copy(tiny_onnx("fp32"), tmp_path / "model.fp32.onnx")
    assert registry.default_artifact(tmp_path).name == "model.fp32.npz"  # rank 50 beats ONNX Runtime
    with Segmenter.load(tmp_path / "model.fp32.npz") as segmenter:
        (mask,) = segmenter.predict(sample_images(1))
        assert mask.all() and segmenter.info["backend"] == "constant"
    constant_target.available = False
    assert registry.default_artifact(tmp_path).name == "model.fp32.onnx"
    with pytest.raises(UlffnError, match="cannot run model.fp32.npz with constant: switched off by the test"):
        Segmenter.load(tmp_path / "model.fp32.npz")


def test_predict_and_verify_pick_the_same_default_artifact(tmp_path):
    folder = tmp_path / "artifacts"
    shutil.copytree(quickstart_like_artifacts(), folder)
    (folder / "model.fp16.engine").write_bytes(b"not a plan this machine can run")
    expected = registry.default_artifact(folder)
    image = next((folder / "data").rglob("ISIC_*.jpg"))
    predicted = run_cli("predict", str(image), "--artifacts", str(folder), "-o", str(tmp_path / "out"), "--no-progress")
    assert predicted.returncode == 0, predicted.stderr
    assert f"with {expected.name} " in predicted.stdout
    verified = run_cli("verify", "--artifacts", str(folder), "--iterations", "2")
    assert verified.returncode == 0, verified.stderr
    assert f"Artifact:  {expected}" in verified.stdout
    expected = registry.default_artifact(folder)  # verify recorded its pass: the rule now prefers it
    benchmarked = run_cli("benchmark", "--artifacts", str(folder), "--quick", "--batch-sizes", "1",
                          "--backends", "onnxruntime", "--no-build", "-o", str(tmp_path / "bench"))
    assert benchmarked.returncode == 0, benchmarked.stderr
    results = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert results["default_artifact"] == expected.name
    assert f"Default artifact of the folder (what predict and verify use when no model is named): {expected.name}" \
        in (tmp_path / "bench" / "benchmark.md").read_text()
