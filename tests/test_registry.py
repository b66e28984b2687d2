"""The registry: targets by suffix, one default-artifact rule for every command, a user's own target."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from helpers import run_cli
from tiny_models import artifacts as quickstart_like_artifacts
from tiny_models import tiny_onnx

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
def archive_target(tmp_path_factory, monkeypatch):
    """tests/example_target.py written into a temporary module of another name and registered, both in this
    process (``registry.register``) and for CLI subprocesses (``ULFFN_DEPLOY_TARGETS``): no project file
    names it."""
    import importlib
    import os
    import uuid

    folder = tmp_path_factory.mktemp("user_targets")
    name = f"throwaway_target_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text((Path(__file__).parent / "example_target.py").read_text())
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(registry.TARGETS_ENV, name)
    monkeypatch.setattr(registry, "_MODULES", list(registry._MODULES))
    registry.register(name)
    module = importlib.import_module(name)
    yield module.TARGET
    module.TARGET.runs = True


def _one_line_error(result):
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


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


def test_a_users_own_building_target_is_one_module(tmp_path, archive_target):
    folder = tmp_path / "artifacts"
    shutil.copytree(quickstart_like_artifacts(), folder)
    assert registry.best_builder() is archive_target  # rank 50, builds and runs here
    built = run_cli("build-engine", "--artifacts", str(folder))  # no --backend: the best builder here
    assert built.returncode == 0, built.stderr
    assert f"wrote {folder / 'model.fp32.npz'}" in built.stdout
    sidecar = json.loads((folder / "model.fp32.npz.json").read_text())
    assert sidecar["source_onnx"]["file"] == "model.fp32.onnx" and sidecar["build_flags"] == {"max_batch": 2}

    # its options are its own: the same name as TensorRT's, validated by its declaration
    assert "above 4" in _one_line_error(run_cli("build-engine", "--artifacts", str(folder), "--backend", "archive",
                                                "--max-batch", "5"))
    assert "do(es) not apply to --backend onnxruntime" in _one_line_error(
        run_cli("build-engine", "--artifacts", str(folder), "--backend", "onnxruntime", "--max-batch", "2"))
    helped = " ".join(run_cli("build-engine", "--help").stdout.split())
    assert "Options of --backend archive: --max-batch INT Largest batch one archive call takes. [default: 2]" in helped
    assert "Largest batch (the runtime splits larger ones)." in helped  # TensorRT's, under TensorRT

    assert registry.default_artifact(folder).name == "model.fp32.npz"
    image = next((folder / "data").rglob("ISIC_*.jpg"))
    predicted = run_cli("predict", str(image), "--artifacts", str(folder), "-o", str(tmp_path / "out"), "--no-progress")
    assert predicted.returncode == 0 and "with model.fp32.npz " in predicted.stdout, predicted.stderr
    assert "--device does not apply to Archive artifacts" in _one_line_error(
        run_cli("predict", str(folder / "model.fp32.npz"), str(image), "--device", "cuda", "-o", str(tmp_path / "x")))
    verified = run_cli("verify", "--artifacts", str(folder), "--iterations", "1", "--warmup", "0")
    assert verified.returncode == 0, verified.stderr
    assert f"Artifact:  {folder / 'model.fp32.npz'} (archive, fp32" in verified.stdout
    benchmarked = run_cli("benchmark", "--artifacts", str(folder), "--quick", "--batch-sizes", "1", "--backends",
                          "archive", "--no-build", "-o", str(tmp_path / "bench"))
    assert benchmarked.returncode == 0, benchmarked.stderr
    rows = json.loads((tmp_path / "bench" / "benchmark.json").read_text())["rows"]
    (row,) = [r for r in rows if r["path"] == "model.fp32.npz"]
    assert row["status"] == "ok" and row["device"] == "archive-cpu" and row["passed"]
    described = json.loads(run_cli("info", str(folder / "model.fp32.npz"), "--json").stdout)
    assert described["runs_here"] == "yes" and described["description"] == archive_target.description


def test_a_target_that_builds_here_for_another_device(tmp_path, archive_target, monkeypatch):
    folder = tmp_path / "artifacts"
    shutil.copytree(quickstart_like_artifacts(), folder)
    monkeypatch.setenv("ARCHIVE_RUNS", "0")
    archive_target.runs = False
    assert registry.best_builder() is not archive_target  # never the default build: it cannot run here
    built = run_cli("build-engine", "--artifacts", str(folder), "--backend", "archive")  # named: it builds
    assert built.returncode == 0, built.stderr
    assert registry.default_artifact(folder).suffix != ".npz"
    image = next((folder / "data").rglob("ISIC_*.jpg"))
    for args in (("predict", str(folder / "model.fp32.npz"), str(image), "-o", str(tmp_path / "out")),
                 ("verify", str(folder / "model.fp32.npz"), "--artifacts", str(folder))):
        line = _one_line_error(run_cli(*args))
        assert "no archive accelerator here; it runs on an archive accelerator (checked here: " in line, line
        assert "sidecar read" in line and "from model.fp32.onnx (unchanged since the build)" in line
    info = registry.candidate(folder / "model.fp32.npz")
    assert info.problem.startswith("no archive accelerator here; it runs on an archive accelerator")

    from ulffn_deploy.benchmark import find_candidates

    rows = {c.path.name: c for c in find_candidates(folder, folder / "run" / "best.pt", backends=["archive"])}
    assert (folder / "model.fp16.npz").is_file()  # benchmark builds it here: its build time and size are measured
    assert "(checked here: " in rows["model.fp16.npz"].problem and " s, from model.fp16.onnx" in rows["model.fp16.npz"].problem


def test_a_stale_artifact_is_skipped_with_a_warning_and_refused_when_named(tmp_path):
    pytest.importorskip("onnx")
    from tiny_models import perturbed_onnx

    from ulffn_deploy.commands.info import describe_artifact
    from ulffn_deploy.triton_export import collect_models, default_artifacts

    shutil.copy(tiny_onnx("fp32"), tmp_path / "model.fp32.onnx")
    built = registry.build("onnxruntime", tmp_path / "model.fp32.onnx")
    assert registry.default_artifact(tmp_path) == built
    perturbed_onnx(tiny_onnx("fp32"), tmp_path / "model.fp32.onnx")  # a new model exported into the folder
    warnings: list[str] = []
    assert registry.default_artifact(tmp_path, log=warnings.append).name == "model.fp32.onnx"
    (warning,) = warnings
    assert warning.startswith("warning (skipped): model.fp32.ort.onnx is stale") and "ulffn-deploy build-engine" in warning
    with pytest.raises(UlffnError, match="model.fp32.ort.onnx is stale: it was built from another model.fp32.onnx"):
        Segmenter.load(built)
    assert describe_artifact(built)["runs_here"].startswith("no: model.fp32.ort.onnx is stale")
    assert built not in default_artifacts(tmp_path, log=warnings.append)
    with pytest.raises(UlffnError, match="is stale"):
        collect_models([built], 8)
    registry.build("onnxruntime", tmp_path / "model.fp32.onnx")  # rebuilt: current again
    assert registry.default_artifact(tmp_path) == built


def test_a_truncated_or_missing_ir_weights_file_is_refused(tmp_path):
    if registry.target_named("openvino").unavailable_reason():
        pytest.skip("openvino is not installed")
    from ulffn_deploy.triton_export import collect_models, default_artifacts

    shutil.copy(tiny_onnx("fp32"), tmp_path / "model.fp32.onnx")
    xml = registry.build("openvino", tmp_path / "model.fp32.onnx")
    weights = xml.with_suffix(".bin")
    assert xml in default_artifacts(tmp_path) and registry.default_artifact(tmp_path) == xml
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(UlffnError, match=r"model.fp32.xml does not match its sidecar: model.fp32.bin has .* \(truncated"):
        collect_models([xml], 8)
    assert xml not in default_artifacts(tmp_path, log=lambda line: None)
    weights.unlink()
    with pytest.raises(UlffnError, match="model.fp32.xml is incomplete: its model.fp32.bin is missing"):
        Segmenter.load(xml)
    assert registry.default_artifact(tmp_path, log=lambda line: None).name == "model.fp32.onnx"


def test_build_options_of_the_same_name_and_another_kind_get_their_own_flags(monkeypatch):
    from ulffn_deploy.targets.registry import BuildOption, Target

    class Flagged(Target):
        name, title, suffixes, build_suffix = "flagged", "Flagged", (".flg",), ".flg"
        build_options = (BuildOption("max_batch", bool, False, "A flag of the same name."),)

    monkeypatch.setattr(registry, "builders", lambda: [registry.target_named("tensorrt"), Flagged()])
    flags = registry.option_flags()
    assert flags[("tensorrt", "max_batch")] == "--tensorrt-max-batch" and flags[("flagged", "max_batch")] == "--flagged-max-batch"
    assert flags[("tensorrt", "min_batch")] == "--min-batch"
    assert Flagged().option_args({"max_batch": True}) == ["--flagged-max-batch"]


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
