"""OpenVINO INT8: the signed-int8-after-Concat problem (docs/openvino_int8.md), the INT8 method a build picks,
and what the runtime model runs. The problem shows on CPUs without AMX; an AMX CPU is made to take that
path with ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI, in a subprocess (oneDNN reads it once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("openvino", reason="openvino is not installed")

from tiny_models import artifacts, tiny_onnx

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.targets import openvino_int8, registry

VNNI_WITHOUT_AMX = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}

# Builds calibrate's tiny model with the given INT8 method and compares it through the harness with ONNX
# Runtime on the same Q/DQ file (the exact INT8 arithmetic), on the INT8 row of the tolerance table.
AGREEMENT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from ulffn_deploy import harness
    from ulffn_deploy.runtime import Segmenter
    from ulffn_deploy.targets import openvino_int8, registry

    int8, data, out, method = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    if method == "auto-without-nncf":
        openvino_int8.nncf_available = lambda: False
        method = "auto"
    options = {"int8_method": method, "inference_precision": "f32"}  # the INT8 arithmetic alone
    xml = registry.build("openvino", int8, out / "model.int8.xml", options=options)
    artifact = Segmenter.load(xml)
    result = harness.compare(Segmenter.load(int8), artifact, harness.isic_source(data))
    checks = harness.check(result, harness.tolerance_for(harness.runs_as_row(artifact)))
    sidecar = json.loads((out / "model.int8.xml.json").read_text())
    print(json.dumps({"method": sidecar["check"]["int8_method"], "passed": all(c.passed for c in checks),
                      "mask_dice": result.mask_dice, "convolutions": sidecar["layer_precisions"]}))
""")


def _agreement(tmp_path, method: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", AGREEMENT, str(tiny_onnx("int8")), str(artifacts() / "data"),
                           str(tmp_path), method], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_without_amx_the_fallback_re_encodes_and_agrees_with_the_qdq_arithmetic(tmp_path):
    """ULFFN's bottom block (branches -> Concat -> Q/DQ int8 -> Conv) is the problem pattern: on the VNNI
    path OpenVINO runs calibrate's file at mask Dice 0.80; the build sees the unsigned switch and re-encodes."""
    result = _agreement(tmp_path, "auto-without-nncf", VNNI_WITHOUT_AMX)
    assert result["method"] == "uint8-qdq"
    assert result["passed"], result
    assert result["convolutions"].get("int8", 0) > 0


def test_where_signed_activations_stay_signed_calibrates_file_runs_as_it_is_and_agrees(tmp_path):
    if not openvino_int8.keeps_signed_activations(tiny_onnx("int8")):
        pytest.skip("OpenVINO switches this CPU's int8 convolutions to unsigned activations (no AMX)")
    result = _agreement(tmp_path, "auto-without-nncf", {})
    assert result["method"] == "qdq"
    assert result["passed"], result


def test_the_problem_reproduction_graph_is_wrong_signed_and_right_unsigned_on_the_vnni_path(tmp_path):
    """benchmarks/openvino_int8_repro.py: skipped once an OpenVINO computes the signed form right too."""
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "openvino_int8_repro.py")
    proc = subprocess.run([sys.executable, script, "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **VNNI_WITHOUT_AMX})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("concat_qdq")]
    errors = {line.split(":")[0]: float(line.rsplit("=", 1)[1]) for line in lines}
    assert errors["concat_qdq_uint8.onnx"] < 1e-3
    if errors["concat_qdq_int8.onnx"] < 1e-3:
        pytest.skip("this OpenVINO computes the signed-int8 Concat Q/DQ right on the VNNI path")


def test_default_build_with_nncf_quantizes_outside_the_fp32_keep_rules_and_records_the_precisions(tmp_path):
    """calibrate's report names its images, so the default (auto) build is NNCF's."""
    pytest.importorskip("nncf", reason="nncf is not installed")
    xml = registry.build("openvino", tiny_onnx("int8"), tmp_path / "model.int8.xml")
    sidecar = json.loads((tmp_path / "model.int8.xml.json").read_text())
    assert sidecar["check"]["int8_method"] == "nncf"
    counts = sidecar["layer_precisions"]
    kept = [n for n in openvino_int8.ignored_names(tiny_onnx("fp32")) if n.endswith("Conv")]
    assert counts.get("int8", 0) > 0
    # the convolutions the keep rules name (input unit, head, CAM) run in float, the others in int8
    assert sum(n for p, n in counts.items() if p != "int8") == len(kept)
    assert xml.with_suffix(".bin").is_file()


def test_without_a_calibration_record_auto_does_not_take_nncf_and_nncf_is_refused(tmp_path):
    import shutil

    int8 = shutil.copy(tiny_onnx("int8"), tmp_path / "model.int8.onnx")
    assert openvino_int8.calibration_record(tmp_path / "model.int8.onnx") is None
    assert openvino_int8.plan_method("auto", int8)[0] in ("qdq", "uint8-qdq")
    if openvino_int8.nncf_available():
        with pytest.raises(UlffnError, match="calibration images"):
            openvino_int8.plan_method("nncf", int8)
