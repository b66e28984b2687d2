"""INT8 calibration (calib/): Q/DQ structure for TensorRT, ranges reuse, the report, bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime
import pytest
from helpers import assert_one_line_error, run_cli
from onnx import TensorProto, helper, numpy_helper
from tiny_models import SIZE, tiny_onnx

from ulffn_deploy.calib import pipeline
from ulffn_deploy.calib.pipeline import calibrate
from ulffn_deploy.calib.quantize import default_exclusions
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export.lint import lint_model
from ulffn_deploy.runtime.metadata import get_metadata
from ulffn_deploy.synth import generate_dataset

QUIET = {"log": lambda line: None}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A synthetic ISIC folder and the tiny FP32 model, copied where calibration may write beside it."""
    folder = tmp_path_factory.mktemp("calib")
    generate_dataset(folder / "data", n_train=10, n_test=4, size=SIZE, seed=0)
    shutil.copy(tiny_onnx("fp32"), folder / "model.fp32.onnx")
    return folder


@pytest.fixture(scope="module")
def calibrated(workdir):
    report = calibrate(workdir / "model.fp32.onnx", workdir / "data", num_images=6, num_eval=4, **QUIET)
    return report, onnx.load(str(workdir / "model.int8.onnx")), onnx.load(str(workdir / "model.fp32.onnx"))


def _graph_maps(graph):
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producers, consumers, {init.name: init for init in graph.initializer}


def test_qdq_is_symmetric_per_channel_and_dedicated(calibrated):
    _, int8, _ = calibrated
    _, consumers, inits = _graph_maps(int8.graph)
    qdq = [n for n in int8.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.data_type == onnx.TensorProto.INT8, node.name
        assert not numpy_helper.to_array(zero_point).any(), node.name
    for node in int8.graph.node:
        if node.op_type == "QuantizeLinear":  # one DQ per Q, and that DQ feeds exactly one convolution
            (dq,) = consumers[node.output[0]]
            assert dq.op_type == "DequantizeLinear"
            assert [c.op_type for c in consumers[dq.output[0]]] == ["Conv"]


def test_every_quantized_conv_reads_int8_activations_and_per_channel_weights(calibrated):
    _, int8, _ = calibrated
    producers, _, inits = _graph_maps(int8.graph)
    excluded = default_exclusions(int8.graph)
    convs = [n for n in int8.graph.node if n.op_type == "Conv" and n.name not in excluded]
    assert len(convs) > 20
    for conv in convs:
        activation, weight = producers[conv.input[0]], producers[conv.input[1]]
        assert activation.op_type == "DequantizeLinear" and producers[activation.input[0]].op_type == "QuantizeLinear"
        assert weight.op_type == "DequantizeLinear" and weight.input[0] in inits
        assert inits[weight.input[0]].data_type == onnx.TensorProto.INT8
        out_channels = inits[weight.input[0]].dims[0]
        assert numpy_helper.to_array(inits[weight.input[1]]).shape == (out_channels,)
        assert [a.i for a in weight.attribute if a.name == "axis"] == [0]
        assert conv.input[2] in inits and inits[conv.input[2]].data_type == onnx.TensorProto.FLOAT  # bias FP32


def test_input_unit_head_softmax_and_cam_stay_float(calibrated):
    report, int8, _ = calibrated
    producers, _, _ = _graph_maps(int8.graph)
    excluded = default_exclusions(int8.graph)
    reasons = {reason.split(":")[0] for reason in excluded.values()}
    assert reasons == {"input unit", "head", "softmax", "CAM"}
    cam = [name for name, reason in excluded.items() if reason.startswith("CAM")]
    assert any("ReduceMean" in name for name in cam) and sum("Conv" in name for name in cam) == 2
    for node in int8.graph.node:
        if node.name in excluded:
            fed_by = {producers[i].op_type for i in node.input if i in producers}
            assert not fed_by & {"DequantizeLinear", "QuantizeLinear"}, node.name
    assert {e["node"] for e in report["graph"]["excluded"]} == set(excluded)


def test_int8_model_keeps_opset_metadata_and_passes_the_tensorrt_lint(calibrated):
    report, int8, fp32 = calibrated
    assert [o.version for o in int8.opset_import if o.domain in ("", "ai.onnx")] == [17]
    meta, meta32 = get_metadata(int8), get_metadata(fp32)
    assert meta.precision == "int8" and meta.with_precision("fp32") == meta32
    assert not [p.key for p in int8.metadata_props if not p.key.startswith("ulffn.")]
    assert [str(issue) for issue in lint_model(int8)] == []
    onnx.checker.check_model(int8, full_check=True)
    convs = sum(n.op_type == "Conv" for n in fp32.graph.node)
    assert report["graph"]["quantized"]["by_op_type"] == {"Conv": convs - 4}  # input unit, head, 2 CAM convs


def test_int8_model_runs_in_onnxruntime_with_dynamic_batch(workdir, calibrated):
    session = onnxruntime.InferenceSession(str(workdir / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        probabilities = session.run(None, {"image": rng.standard_normal((batch, 3, SIZE, SIZE), np.float32)})[0]
        assert probabilities.shape == (batch, 2, SIZE, SIZE)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_report_compares_int8_with_fp32_on_held_out_labelled_images(workdir, calibrated):
    report, _, _ = calibrated
    accuracy = report["accuracy"]
    assert accuracy["images"] == 4 and "ISIC 2016 test" in accuracy["source"]
    comparison = accuracy["comparison"]
    assert comparison["reference"].startswith("onnxruntime fp32") and comparison["candidate"].startswith("onnxruntime int8")
    assert 0.5 < comparison["mask_dice_min"] <= comparison["mask_dice"] <= 1.0
    assert 0 < comparison["p99_abs_diff"] <= comparison["max_abs_diff"]
    metrics = comparison["metrics"]
    assert comparison["label_dice_drop"] == pytest.approx(metrics["reference"]["dice"] - metrics["candidate"]["dice"])
    assert [c["name"] for c in accuracy["checks"]] == ["mask agreement (mean Dice)", "probability error p99",
                                                       "label Dice drop (reference - artifact)"]
    assert accuracy["targets_met"] == all(c["passed"] for c in accuracy["checks"])
    assert json.loads((workdir / "model.int8.report.json").read_text()) == json.loads(json.dumps(report))


def test_second_calibration_reuses_ranges_and_gives_the_identical_model(workdir, calibrated, monkeypatch):
    first = (workdir / "model.int8.onnx").read_bytes()

    def fail(*args, **kwargs):
        raise AssertionError("the calibrator ran although the stored ranges match")

    monkeypatch.setattr(pipeline, "compute_ranges", fail)
    report = calibrate(workdir / "model.fp32.onnx", workdir / "data", num_images=6, num_eval=0, **QUIET)
    assert report["calibration"]["ranges"] == "ranges reused from model.int8.ranges.json"
    assert (workdir / "model.int8.onnx").read_bytes() == first


def test_other_images_or_method_recalibrate(workdir, calibrated, tmp_path):
    model = workdir / "model.fp32.onnx"
    shutil.copy(workdir / "model.int8.ranges.json", tmp_path / "x.int8.ranges.json")
    report = calibrate(model, workdir / "data", tmp_path / "x.int8.onnx", num_images=5, num_eval=0, **QUIET)
    assert report["calibration"]["ranges"] == "ranges computed, saved to x.int8.ranges.json"
    report = calibrate(model, workdir / "data", tmp_path / "x.int8.onnx", method="minmax", num_images=5,
                       num_eval=0, **QUIET)
    assert report["calibration"]["ranges"] == "ranges computed, saved to x.int8.ranges.json"
    assert report["graph"]["quantized"]["count"] > 20


def test_exclude_keeps_a_named_layer_float_and_rejects_unknown_names(workdir, calibrated, tmp_path):
    _, int8, _ = calibrated
    name = next(n.name for n in int8.graph.node if n.op_type == "Conv" and "decoder" in n.name)
    out = tmp_path / "x.int8.onnx"
    report = calibrate(workdir / "model.fp32.onnx", workdir / "data", out, num_images=4, num_eval=0,
                       exclude=[name], **QUIET)
    assert {"node": name, "op_type": "Conv", "reason": "excluded by the user (--exclude)"} in report["graph"]["excluded"]
    producers, _, _ = _graph_maps(onnx.load(str(out)).graph)
    conv = next(n for n in onnx.load(str(out)).graph.node if n.name == name)
    assert all(producers[i].op_type != "DequantizeLinear" for i in conv.input if i in producers)
    with pytest.raises(UlffnError, match="did you mean"):
        calibrate(workdir / "model.fp32.onnx", workdir / "data", out, exclude=[name + "x"], **QUIET)


def test_plain_image_folder_holds_out_the_unused_images(workdir, tmp_path):
    images = sorted((workdir / "data" / "ISBI2016_ISIC_Part1_Training_Data").glob("*.jpg"))[:5]
    for image in images:
        shutil.copy(image, tmp_path / image.name)
    report = calibrate(workdir / "model.fp32.onnx", tmp_path, tmp_path / "m.int8.onnx", num_images=3, **QUIET)
    assert report["calibration"]["source"].startswith(f"image folder {tmp_path}")
    assert report["accuracy"]["images"] == 2 and report["accuracy"]["comparison"]["metrics"] is None
    assert [c["passed"] for c in report["accuracy"]["checks"]][2] is None  # no labels: the Dice drop is not run


def test_sensitivity_ranks_single_layer_quantization(workdir, calibrated, tmp_path):
    report = calibrate(workdir / "model.fp32.onnx", workdir / "data", tmp_path / "s.int8.onnx", num_images=4,
                       num_eval=0, sensitivity=True, **QUIET)
    rows = report["sensitivity"]
    assert len(rows) == report["graph"]["quantized"]["count"]
    differences = [row["lesion_probability_abs_diff_mean"] for row in rows]
    assert differences == sorted(differences, reverse=True) and differences[0] > 0


def _foreign_onnx(path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("case, message", [
    ("empty data folder", "no images"),
    ("not onnx", "not an ONNX model"),
    ("foreign onnx", "no ulffn"),
])
def test_bad_inputs_are_one_line_errors_and_leave_no_output(workdir, tmp_path, case, message):
    model, data = tmp_path / "model.fp32.onnx", tmp_path / "data"
    data.mkdir()
    if case == "empty data folder":
        shutil.copy(workdir / "model.fp32.onnx", model)
    elif case == "not onnx":
        model.write_bytes(b"this is not a protobuf \x00\xff" * 10)
        shutil.copytree(workdir / "data", data, dirs_exist_ok=True)
    else:
        _foreign_onnx(model)
        shutil.copytree(workdir / "data", data, dirs_exist_ok=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("calibrate", str(model), "--data", str(data))
    assert_one_line_error(result, 2, message)
    if case == "empty data folder":
        assert str(data) in result.stderr
    if case == "foreign onnx":
        assert "ulffn-deploy export" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_export_with_dynamic_height_and_width_calibrates_and_runs_at_other_sizes(workdir, tmp_path):
    shutil.copy(tiny_onnx("fp32", dynamic_hw=True), tmp_path / "model.fp32.onnx")
    calibrate(tmp_path / "model.fp32.onnx", workdir / "data", num_images=3, num_eval=0, **QUIET)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": np.zeros((2, 3, 48, 64), np.float32)})[0].shape == (2, 2, 48, 64)


@pytest.mark.parametrize("count", [9, 7])
def test_an_image_count_that_does_not_fill_the_last_batch_calibrates(workdir, tmp_path, count):
    """ONNX Runtime's histogram calibrators stack the batches of one pass: 9 images as 8 + 1 once crashed."""
    report = calibrate(workdir / "model.fp32.onnx", workdir / "data", tmp_path / "odd.int8.onnx", num_images=count,
                       num_eval=0, **QUIET)
    assert report["calibration"]["images"] == count and report["calibration"]["method"] == "percentile"
    assert report["graph"]["quantized"]["count"] > 20
