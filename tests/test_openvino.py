"""OpenVINO target on CPU with the tiny model: build, load, predict, verify, the compatibility check, the
quickstart build stage, and a load/predict path that imports neither torch nor onnx."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed")

from helpers import run_cli, run_python
from tiny_models import artifacts, sample_images, tiny_onnx

from ulffn_deploy.devices import cpu_features
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import sha256_file
from ulffn_deploy.runtime import Segmenter
from ulffn_deploy.targets import openvino as ovt
from ulffn_deploy.targets import registry

PRECISIONS = ("fp32", "fp16", "int8")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A copy of the quickstart-like folder with model.int8.onnx and the three OpenVINO artifacts built."""
    folder = tmp_path_factory.mktemp("openvino") / "artifacts"
    shutil.copytree(artifacts(), folder)
    shutil.copy(tiny_onnx("int8"), folder / "model.int8.onnx")
    for precision in PRECISIONS:
        registry.build("openvino", folder / f"model.{precision}.onnx")
    return folder


def _sidecar(folder, precision):
    return json.loads((folder / f"model.{precision}.xml.json").read_text())


def _expected_int8_remainder():
    return "bf16" if "BF16" in ovt.capabilities("CPU") else "f32"


def _expected_fp16_precision():
    caps = ovt.capabilities("CPU")
    return "bf16" if "BF16" in caps else "f16" if "FP16" in caps else "f32"


def test_build_writes_ir_weights_and_a_sidecar_naming_what_runs(built):
    for precision in PRECISIONS:
        sidecar = _sidecar(built, precision)
        assert (built / f"model.{precision}.bin").stat().st_size == sidecar["ir"]["bin_bytes"] > 0
        assert sidecar["backend"] == "openvino" and sidecar["precision"] == precision
        assert sidecar["openvino_version"] == ovt.openvino_version()
        assert sidecar["source_onnx"] == {"file": f"model.{precision}.onnx",
                                          "sha256": sha256_file(built / f"model.{precision}.onnx")}
        assert sidecar["build_command"].startswith("ulffn-deploy build-engine --backend openvino --onnx ")
        assert sidecar["cpu"]["isa"] == cpu_features() and sidecar["cpu"]["openvino_capabilities"]
        assert sidecar["build_flags"]["inference_precision"] == "auto"
        assert sidecar["build_flags"]["performance_hint"] == "latency"
    assert _sidecar(built, "fp32")["inference_precision"] == "f32"
    assert _sidecar(built, "fp16")["inference_precision"] == _expected_fp16_precision()
    int8 = _sidecar(built, "int8")
    assert int8["runs_as"] == f"int8+{_expected_int8_remainder()}"
    assert int8["check"]["int8_method"] in ("qdq", "uint8-qdq") and int8["layer_precisions"]["int8"] > 0
    assert registry.target_for_path(built / "model.int8.xml").name == "openvino"


def test_build_engine_command_takes_the_options_and_refuses_an_untrue_precision(tmp_path):
    fp16 = shutil.copy(tiny_onnx("fp16"), tmp_path / "model.fp16.onnx")
    result = run_cli("build-engine", "--backend", "openvino", "--onnx", str(fp16), "--inference-precision", "f32",
                     "--performance-hint", "throughput")
    assert result.returncode == 0, result.stderr
    sidecar = _sidecar(tmp_path, "fp16")
    assert sidecar["inference_precision"] == "f32" and sidecar["runs_as"] == "fp32"
    assert "--inference-precision f32 --performance-hint throughput" in sidecar["build_command"]
    fp32 = shutil.copy(tiny_onnx("fp32"), tmp_path / "model.fp32.onnx")
    refused = run_cli("build-engine", "--backend", "openvino", "--onnx", str(fp32), "--inference-precision", "bf16")
    assert refused.returncode == 2 and "would run an fp32 artifact in bf16" in refused.stderr
    assert not (tmp_path / "model.fp32.xml").exists()


def test_fp32_ir_gives_onnx_runtimes_probabilities(built):
    onnx_model = Segmenter.load(built / "model.fp32.onnx")
    batch = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with Segmenter.load(built / "model.fp32.xml") as segmenter:
        assert np.abs(segmenter.infer(batch) - onnx_model.infer(batch)).max() < 1e-4
        info = segmenter.info
        masks = segmenter.predict(sample_images(3))
    assert info["backend"] == "openvino" and info["runs_as"] == "fp32" and info["inference_precision"] == "f32"
    assert [m.shape for m in masks] == [image.shape[:2] for image in sample_images(3)]


def test_info_names_the_precision_that_runs(built):
    with Segmenter.load(built / "model.fp16.xml") as segmenter:
        assert segmenter.precision == "fp16"  # the file's precision: its tolerance row
        assert segmenter.info["inference_precision"] == _expected_fp16_precision()


def test_throughput_hint_and_threads_give_the_same_output(built):
    batch = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with Segmenter.load(built / "model.fp32.xml", threads=1) as latency, \
            Segmenter.load(built / "model.fp32.xml", performance_hint="throughput") as throughput:
        assert throughput.info["performance_hint"] == "throughput"
        assert np.abs(latency.infer(batch) - throughput.infer(batch)).max() < 1e-5


def test_devices_openvino_does_not_find_are_refused(built):
    with pytest.raises(UlffnError, match="unknown OpenVINO device"):
        Segmenter.load(built / "model.fp32.xml", device="tpu")
    missing = [d for d in ("GPU", "NPU") if not any(str(f).startswith(d) for f in ovt.core().available_devices)]
    if missing:
        with pytest.raises(UlffnError, match=f"finds no {missing[0]} device"):
            Segmenter.load(built / "model.fp32.xml", device=missing[0].lower())


def _verify(path, folder):
    from ulffn_deploy.verify import verify_artifact

    report = verify_artifact(path, folder / "run" / "best.pt", folder / "data", schedule=_short_schedule(), record=False)
    return report, {check["name"].split(" (")[0]: check for check in report["checks"]}


def test_verify_passes_fp32(built):
    report, _ = _verify(built / "model.fp32.xml", built)
    assert report["tolerance"]["precision"] == "fp32" and report["passed"], report["checks"]


def test_verify_judges_int8_as_onnx_runtime_on_the_same_file(built):
    """The tiny model's INT8 calibration (4 random images) is poor in any runtime: OpenVINO's verdict and mask
    agreement are ONNX Runtime's on the same file."""
    ours, our_checks = _verify(built / "model.int8.xml", built)
    theirs, their_checks = _verify(built / "model.int8.onnx", built)
    assert ours["tolerance"]["precision"] == "int8" and ours["passed"] == theirs["passed"]
    agreement = "mask agreement"
    assert abs(our_checks[agreement]["value"] - their_checks[agreement]["value"]) <= 0.01


def test_verify_judges_what_runs(built):
    """A model.fp16 file is judged by the row of what it runs as: bf16 (8 mantissa bits to FP16's 11) has its
    own row in the tolerance table, FP16's mask agreement with a wider p99 probability error limit."""
    from ulffn_deploy.harness import TOLERANCES

    report, checks = _verify(built / "model.fp16.xml", built)
    runs = ovt.runs_as("fp16", _expected_fp16_precision())
    assert report["tolerance"]["precision"] == (runs if runs in TOLERANCES else "fp16")
    assert checks["mask agreement"]["passed"]
    assert checks["probability error p99"]["limit"] == TOLERANCES[report["tolerance"]["precision"]].max_p99_abs_diff


def test_int8_runs_the_shipped_file_as_onnx_runtime_does(built, tmp_path):
    """The same Q/DQ file in both runtimes, float remainder f32 in both: their masks agree, so OpenVINO adds
    no INT8 error of its own (the default bf16 remainder is judged by verify on trained models)."""
    from ulffn_deploy.harness import compare, find_images

    xml = registry.build("openvino", built / "model.int8.onnx", tmp_path / "model.int8.xml",
                         options={"inference_precision": "f32"})
    with Segmenter.load(built / "model.int8.onnx") as ort_int8, Segmenter.load(xml) as ov_int8:
        comparison = compare(ort_int8, ov_int8, find_images(built / "data"))
    assert comparison.mask_dice >= 0.98


def _short_schedule():
    from ulffn_deploy.latency import Schedule

    return Schedule(warmup_ms=0, iterations=3, duration_s=0)


def test_an_artifact_for_a_missing_cpu_feature_says_so_with_the_rebuild_command(built, tmp_path, monkeypatch):
    for name in ("model.fp16.xml", "model.fp16.bin", "model.fp16.xml.json", "model.fp16.onnx"):
        shutil.copy(built / name, tmp_path / name)
    sidecar = _sidecar(tmp_path, "fp16")
    sidecar.update(inference_precision="bf16", cpu={**sidecar["cpu"], "name": "Intel Xeon with AMX"})
    (tmp_path / "model.fp16.xml.json").write_text(json.dumps(sidecar))
    monkeypatch.setattr(ovt, "capabilities", lambda device="CPU": ("FP32", "INT8"))
    problem = ovt.TARGET.artifact_problem(tmp_path / "model.fp16.xml")
    assert problem is not None and "\n" not in problem
    assert "built on Intel Xeon with AMX to run bf16" in problem and "no BF16 support" in problem
    assert f"ulffn-deploy build-engine --backend openvino --onnx {tmp_path / 'model.fp16.onnx'}" in problem
    with pytest.raises(UlffnError, match="no BF16 support"):
        Segmenter.load(tmp_path / "model.fp16.xml")
    (tmp_path / "model.fp16.bin").unlink()
    assert "model.fp16.bin" in ovt.TARGET.artifact_problem(tmp_path / "model.fp16.xml")


def test_compatibility_rules():
    sidecar = {"inference_precision": "f32", "openvino_version": "2099.1.0", "ir": {}}
    path = ovt.Path("nowhere/model.fp32.xml")
    assert "missing" in ovt.compatibility_problem(path, sidecar, ("FP32",), "2026.4.0")


def test_resolve_inference_precision():
    assert ovt.resolve_inference_precision("auto", "fp16", ("FP32", "BF16")) == "bf16"
    assert ovt.resolve_inference_precision("auto", "fp16", ("FP32", "FP16")) == "f16"
    assert ovt.resolve_inference_precision("auto", "fp16", ("FP32",)) == "f32"
    assert ovt.resolve_inference_precision("auto", "int8", ("FP32", "BF16")) == "bf16"
    assert ovt.resolve_inference_precision("auto", "int8", ("FP32", "FP16")) == "f32"
    with pytest.raises(UlffnError, match="cannot run bf16"):
        ovt.resolve_inference_precision("bf16", "fp16", ("FP32",))


def test_load_and_predict_import_neither_torch_nor_onnx(built):
    run = run_python(f"""
        import numpy as np
        from ulffn_deploy.runtime import Segmenter
        with Segmenter.load({str(built / 'model.int8.xml')!r}) as segmenter:
            masks = segmenter.predict([np.full((40, 30, 3), 120, np.uint8)])
        print(masks[0].shape)
    """, absent=("torch", "onnx"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(40, 30)" and run.heavy == ["openvino"]


def test_import_and_help_leave_openvino_unimported():
    run = run_python("""
        import ulffn_deploy, ulffn_deploy.targets.openvino
        from ulffn_deploy.cli import main
        try:
            main(["build-engine", "--help"])
        except SystemExit:
            pass
    """)
    assert run.returncode == 0, run.stderr
    assert "--inference-precision" in run.stdout and run.heavy == []


def test_default_artifact_prefers_openvino_until_verify_measures(built, tmp_path):
    folder = tmp_path / "artifacts"
    shutil.copytree(built, folder)
    assert registry.default_artifact(folder).name == "model.int8.xml"  # rank, then OpenVINO's preferred precision
    registry.record_verification(folder / "model.fp32.onnx", True, 0.01, _machine())
    registry.record_verification(folder / "model.int8.xml", True, 5.0, _machine())
    assert registry.default_artifact(folder).name == "model.fp32.onnx"  # verified and faster here


def _machine():
    from ulffn_deploy.devices import machine_key

    return machine_key()


def test_quickstart_builds_every_cpu_artifact_and_picks_a_verified_one(built, tmp_path):
    from ulffn_deploy.quickstart import Quickstart

    folder = tmp_path / "artifacts"
    shutil.copytree(built, folder, ignore=shutil.ignore_patterns("*.xml", "*.bin", "*.xml.json"))
    lines: list[str] = []
    summary = Quickstart(folder, log=lines.append).build({})
    assert {ovt.Path(p).name for p in summary["built"]} == {"model.fp32.xml", "model.fp16.xml", "model.int8.xml",
                                                             "model.fp32.ort.onnx"}
    assert set(summary["verified"]) == {ovt.Path(p).name for p in summary["built"]}
    assert summary["artifact"] == str(registry.default_artifact(folder))
    assert summary["verified"][ovt.Path(summary["artifact"]).name]["passed"]


def test_info_command_names_the_precision_that_runs(built):
    result = run_cli("info", str(built / "model.fp16.xml"))
    assert result.returncode == 0, result.stderr
    runs = ovt.runs_as("fp16", _expected_fp16_precision())
    expected = "fp16" if runs == "fp16" else f"fp16 (runs {runs})"
    assert any(line.split()[:1] == ["precision"] and line.split(None, 1)[1] == expected
               for line in result.stdout.splitlines())
