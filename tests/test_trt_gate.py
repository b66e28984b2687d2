"""NVIDIA's ONNX parser and builder as the gate (``export/trt_gate.py``), on CPU with ``tensorrt_rtx``.

Shipped graphs (ULFFN FP32/FP16/INT8, a dynamic-H/W export, an imported ONNX model) must parse and build;
hand-made graphs must get the verdict that TensorRT-RTX 1.7.1's parser and builder gave when these tests
were written, including graphs where the built-in op table (the fallback) says the opposite. The fallback
runs only where no TensorRT package imports, and says so.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import run_cli, run_python
from onnx import TensorProto, helper, numpy_helper
from tiny_models import tiny_onnx

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export.lint import lint_model
from ulffn_deploy.export.trt_gate import check_onnx, inspect_onnx, tensorrt_builder_module

FOUND = tensorrt_builder_module()
needs_tensorrt = pytest.mark.skipif(FOUND is None, reason="no TensorRT package imports (pip install tensorrt-rtx-cu12)")
# The verdicts below were measured with TensorRT-RTX 1.7.1; the full TensorRT is another parser version.
needs_rtx = pytest.mark.skipif(FOUND is None or not FOUND[1].startswith("TensorRT-RTX 1."),
                               reason="verdicts measured with TensorRT-RTX 1.x's parser (pip install tensorrt-rtx-cu12)")

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])


def _model(nodes, initializers=(), opset=17, outputs=("y",), extra_opsets=()):
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs]
    graph = helper.make_graph(nodes, "g", [X], outs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in extra_opsets]]
    return helper.make_model(graph, opset_imports=opsets)


def _const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _resize(**attributes):
    return _model([helper.make_node("Resize", ["x", "roi", "scales"], ["y"], name="resize", **attributes)],
                  [_const("roi", [0, 0, 0, 0, 1, 1, 1, 1]), _const("scales", [1, 1, 2, 2])])


def _qdq(zero_point=None, opset=17):
    inputs = ["x", "s"] + (["z"] if zero_point is not None else [])
    initializers = [_const("s", 0.5)] + ([zero_point] if zero_point is not None else [])
    return _model([helper.make_node("QuantizeLinear", inputs, ["q"], name="quantize"),
                   helper.make_node("DequantizeLinear", ["q", *inputs[1:]], ["y"], name="dequantize")],
                  initializers, opset=opset)


def _runtime_weights(op):
    # the weights are computed from the image at run time: not an initializer
    return _model([helper.make_node("Slice", ["x", "start", "end", "axes"], ["w"], name="weights_from_image"),
                   helper.make_node(op, ["x", "w"], ["y"], name="runtime_weights")],
                  [_const("start", [0, 0, 0], np.int64), _const("end", [4, 1, 1], np.int64),
                   _const("axes", [1, 2, 3], np.int64)])


def _flat(op, **attributes):
    return _model([helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flatten"),
                   helper.make_node(op, ["flat", *attributes.pop("inputs", [])], attributes.pop("outputs", ["y"]),
                                    name="op", **attributes)],
                  [_const("shape", [1, 4, 64], np.int64), _const("k", [3], np.int64)],
                  outputs=("y", "i") if op == "TopK" else ("y",))


# name -> (graph, the refused node and a part of the parser's reason; None: it builds)
REFUSED = {
    "unknown custom-domain op": (
        _model([helper.make_node("AcmeGlow", ["x"], ["y"], name="acme_glow", domain="com.acme")],
               extra_opsets=("com.acme",)),
        ("acme_glow", "Plugin not found")),
    "Unique": (_model([helper.make_node("Unique", ["x"], ["y"], name="unique")]), ("unique", "checkUnique")),
    "Resize tf_crop_and_resize": (
        _resize(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"),
        ("resize", "TensorRT only supports half_pixel, pytorch_half_pixel")),
    "MaxPool with indices": (
        _model([helper.make_node("MaxPool", ["x"], ["y", "indices"], name="pool", kernel_shape=[2, 2])],
               outputs=("y", "indices")),
        ("pool", "support mode than 1 outputs for MaxPool")),  # sic
    "non-zero INT8 zero point": (_qdq(_const("z", 3, np.int8)), ("quantize", "Non-zero zero point is not supported")),
    "ReduceMean axes computed at run time": (
        _model([helper.make_node("Shape", ["x"], ["shape"], name="shape", start=3),
                helper.make_node("Sub", ["shape", "five"], ["axes"], name="axes"),  # [8] - [5] = [3]
                helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")],
               [_const("five", [5], np.int64)], opset=18),
        ("mean", "Axis input must resolve to a build-time constant")),
    "LayerNormalization with its Mean output": (
        _model([helper.make_node("LayerNormalization", ["x", "scale"], ["y", "mean"], name="norm", axis=-1)],
               [_const("scale", np.ones(8))], outputs=("y", "mean")),
        ("norm", "support mode than 1 outputs for LayerNormalization")),
}
# Where the built-in op table (TensorRT 10.0's operator matrix) is wrong for TensorRT-RTX 1.7.1's parser.
TABLE_WRONG = {
    # the table accepts, the parser refuses
    "DeformConv (needs a plugin)": (
        _model([helper.make_node("DeformConv", ["x", "w", "offset"], ["y"], name="deform", kernel_shape=[1, 1])],
               [_const("w", np.ones((4, 4, 1, 1))), _const("offset", np.zeros((1, 2, 8, 8)))], opset=19),
        ("deform", "Plugin not found")),
    "NonZero (needs a plugin)": (
        _model([helper.make_node("NonZero", ["x"], ["nonzero"], name="nonzero"),
                helper.make_node("Cast", ["nonzero"], ["y"], name="cast", to=TensorProto.FLOAT)]),
        ("nonzero", "NonZero plugin creator")),
    # the table refuses, the parser builds
    "opset 21": (_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], opset=21), None),
    "Resize cubic": (_model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode="cubic")],
                            [_const("scales", [1, 1, 2, 2])]), None),
    "Conv weights computed at run time": (_runtime_weights("Conv"), None),
    "UINT8 QuantizeLinear (no zero point)": (_qdq(), None),
    "Cast to DOUBLE and back": (
        _model([helper.make_node("Cast", ["x"], ["double"], name="to_double", to=TensorProto.DOUBLE),
                helper.make_node("Cast", ["double"], ["y"], name="to_float", to=TensorProto.FLOAT)]), None),
    "1-D MaxPool": (_flat("MaxPool", kernel_shape=[2]), None),
    "TopK sorted=0": (_flat("TopK", inputs=["k"], outputs=["y", "i"], sorted=0), None),
}


def _verdict(result):
    return "builds" if result.ok else "refused"


@needs_rtx
@pytest.mark.parametrize("name", [*REFUSED, *TABLE_WRONG])
def test_gate_gives_the_parsers_verdict_naming_the_node(name):
    graph, expected = {**REFUSED, **TABLE_WRONG}[name]
    result = inspect_onnx(graph)
    assert result.fallback_reason is None and result.checker.startswith("TensorRT-RTX 1.")
    if expected is None:
        assert result.ok and result.built and result.engine_bytes > 0, result.problems
        return
    node, reason = expected
    assert not result.built and len(result.problems) >= 1
    assert result.problems[0].startswith(f"node {node!r} (") and reason in result.problems[0], result.problems


@needs_rtx
@pytest.mark.parametrize("name", list(TABLE_WRONG))
def test_the_old_op_table_disagrees_with_the_parser_here(name):
    graph, expected = TABLE_WRONG[name]
    assert bool(lint_model(graph)) == (expected is None)  # the table's verdict is the opposite
    assert _verdict(inspect_onnx(graph)) == ("builds" if expected is None else "refused")


@needs_rtx
def test_lint_onnx_agrees_with_the_parser_both_ways(tmp_path):
    accepted, refused = tmp_path / "opset21.onnx", tmp_path / "deform.onnx"
    onnx.save(TABLE_WRONG["opset 21"][0], str(accepted))
    onnx.save(TABLE_WRONG["DeformConv (needs a plugin)"][0], str(refused))

    ok = run_cli("lint-onnx", str(accepted))
    assert ok.returncode == 0, ok.stderr
    summary, checked = ok.stdout.splitlines()
    assert summary == "ok: 1 nodes, opset 21, ops: Relu x1"
    assert checked.startswith("checked with TensorRT-RTX 1.7") and "ONNX parser and builder (1 layers" in checked

    failed = run_cli("lint-onnx", str(refused))
    assert failed.returncode == 1
    first, *rest = failed.stderr.splitlines()
    assert first.startswith(f"{refused}: 1 problem in 1 nodes, checked with TensorRT-RTX 1.7")
    assert rest == ["  node 'deform' (DeformConv): Plugin not found, are the plugin name, version, and namespace correct?"]


SHIPPED = [("fp32", False), ("fp16", False), ("int8", False), ("fp32", True), ("fp16", True)]


@needs_tensorrt
@pytest.mark.parametrize(("precision", "dynamic_hw"), SHIPPED, ids=[f"{p}{'-dynamic' if d else ''}" for p, d in SHIPPED])
def test_shipped_ulffn_graphs_parse_and_build(precision, dynamic_hw):
    path = tiny_onnx(precision, dynamic_hw)
    result = check_onnx(path)
    assert result.ok and result.built and result.engine_bytes > 0 and result.layers > 10
    assert result.describe().startswith(f"checked with {FOUND[1]}'s ONNX parser and builder (")


@needs_tensorrt
def test_int8_engine_keeps_the_onnx_precision():
    """Strongly typed: the Q/DQ INT8 file's engine holds INT8 weights, so it is smaller than the FP32 one."""
    fp32, int8 = (check_onnx(tiny_onnx(p)).engine_bytes for p in ("fp32", "int8"))
    assert int8 < fp32


@needs_tensorrt
def test_refusal_is_one_line_naming_the_node_and_checker():
    with pytest.raises(UlffnError) as caught:
        check_onnx(REFUSED["Unique"][0], what="the test graph")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the test graph cannot be deployed: node 'unique' (Unique): UNSUPPORTED_NODE (checkUnique); "
                              f"checked with {FOUND[1]}'s ONNX parser and builder")


@needs_tensorrt
def test_export_refuses_a_graph_the_parser_refuses_and_writes_nothing(tmp_path):
    from ulffn_deploy.export.pipeline import ExportResult, _export_one

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])
    unique = helper.make_tensor_value_info("unique", TensorProto.FLOAT, ["count"])
    graph = helper.make_graph([helper.make_node("Unique", ["image"], ["unique"], name="unique")], "g", [image], [unique])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = ExportResult({})
    _export_one("fp32", model, tmp_path / "model.fp32.onnx", None, None, result)  # refused before any parity run
    assert "node 'unique' (Unique)" in result.failed["fp32"] and FOUND[1] in result.failed["fp32"]
    assert list(tmp_path.iterdir()) == []


@needs_tensorrt
def test_calibrate_reports_the_tensorrt_check():
    import json

    report = json.loads(tiny_onnx("int8").with_name("model.int8.report.json").read_text())
    assert report["tensorrt_check"].startswith(f"checked with {FOUND[1]}'s ONNX parser and builder (")


FALLBACK = """
import onnx, sys
from onnx import helper, TensorProto
from ulffn_deploy.cli import main
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
for name, op in (("relu.onnx", "Relu"), ("unique.onnx", "Unique")):
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="node")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {folder!r} + "/" + name)
for name in ("relu.onnx", "unique.onnx"):
    try:
        main(["lint-onnx", {folder!r} + "/" + name])
        print("exit 0", flush=True)
    except SystemExit as exit:
        print("exit", exit.code, flush=True)
"""


def test_the_op_table_checks_only_without_tensorrt_and_says_so(tmp_path):
    run = run_python(FALLBACK.format(folder=str(tmp_path)), absent=("tensorrt", "tensorrt_rtx"))
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert out[:3] == ["ok: 1 nodes, opset 17, ops: Relu x1",
                       "checked with the built-in op table (no TensorRT package installed: neither tensorrt nor "
                       "tensorrt_rtx imports; for NVIDIA's parser: pip install tensorrt-rtx-cu12)", "exit 0"]
    assert out[3] == "exit 1"
    assert "node 'node' (Unique): not supported by TensorRT's ONNX parser" in run.stderr
    assert "built-in op table (no TensorRT package installed" in run.stderr
    if FOUND is not None:  # with a TensorRT package, the same graphs go to NVIDIA's parser
        assert inspect_onnx(tmp_path / "relu.onnx").checker == FOUND[1]
