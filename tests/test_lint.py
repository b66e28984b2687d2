"""The built-in op table (the fallback of the TensorRT gate) on hand-built graphs, and the lint-onnx command."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import run_cli
from onnx import TensorProto, helper, numpy_helper

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export.lint import lint_model, op_summary

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])


def _model(nodes, initializers=(), opset=17, inputs=(X,), extra_opsets=()):
    graph = helper.make_graph(nodes, "g", list(inputs), [Y], initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in extra_opsets]]
    return helper.make_model(graph, opset_imports=opsets)


def _weights(name, shape, dtype=np.float32, value=0.1):
    return numpy_helper.from_array(np.full(shape, value, dtype=dtype), name)


def _clean():
    return _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("DepthToSpace", ["c"], ["d"], name="d2s", blocksize=2, mode="CRD"),
         helper.make_node("ReduceMean", ["d"], ["m"], name="mean", axes=[2, 3]),
         helper.make_node("Sub", ["d", "m"], ["y"], name="sub")],
        [_weights("w", [16, 4, 3, 3]), _weights("b", [16])],
    )


def _reasons(issues):
    reasons: dict[str, str] = {}
    for issue in issues:
        reasons[issue.node] = "; ".join(filter(None, [reasons.get(issue.node), issue.reason]))
    return reasons


def test_clean_graph_passes():
    model = _clean()
    onnx.checker.check_model(model, full_check=True)
    assert lint_model(model) == []
    assert op_summary(model) == "ok: 4 nodes, opset 17, ops: Conv x1, DepthToSpace x1, ReduceMean x1, Sub x1"


def test_rejected_nodes_are_listed_by_name_with_reasons():
    axes_in = helper.make_tensor_value_info("axes_in", TensorProto.INT64, [2])
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="plugin_relu", domain="com.example"),
            helper.make_node("Add", ["axes_in", "one"], ["axes"], name="compute_axes"),
            helper.make_node("ReduceMean", ["r", "axes"], ["m"], name="dynamic_mean"),
            helper.make_node("QuantizeLinear", ["m", "scale", "zp"], ["q"], name="asym_quant"),
            helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"], name="asym_dequant"),
            helper.make_node("Unique", ["dq"], ["y"], name="unique"),
        ],
        [numpy_helper.from_array(np.array(1, np.int64), "one"), _weights("scale", [], value=0.5),
         numpy_helper.from_array(np.array(3, np.int8), "zp")],
        opset=18, inputs=(X, axes_in), extra_opsets=("com.example",),
    )
    reasons = _reasons(lint_model(model))
    assert set(reasons) == {"plugin_relu", "dynamic_mean", "asym_quant", "asym_dequant", "unique"}
    assert "custom domain 'com.example'" in reasons["plugin_relu"]
    assert "axes input 'axes' is computed at run time" in reasons["dynamic_mean"]
    assert "zero point is not 0" in reasons["asym_quant"] and "zero point is not 0" in reasons["asym_dequant"]
    assert "not supported" in reasons["unique"]


def test_symmetric_per_channel_qdq_graph_passes():
    weights = numpy_helper.from_array(np.ones((16, 4, 3, 3), np.int8), "w_q")
    model = _model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x"),
            helper.make_node("DequantizeLinear", ["w_q", "ws", "wz"], ["w"], name="dq_w", axis=0),
            helper.make_node("Conv", ["xd", "w"], ["y"], name="conv"),
        ],
        [weights, _weights("s", [], value=0.02), numpy_helper.from_array(np.array(0, np.int8), "z"),
         _weights("ws", [16], value=0.01), numpy_helper.from_array(np.zeros(16, np.int8), "wz")],
        opset=13,
    )
    onnx.checker.check_model(model, full_check=True)
    assert lint_model(model) == []


def test_quantization_tensorrt_cannot_run_is_flagged():
    model = _model(
        [
            helper.make_node("QuantizeLinear", ["x", "s"], ["xq"], name="uint8_quant"),  # no zero point: UINT8
            helper.make_node("DequantizeLinear", ["b_q", "bs", "bz"], ["b"], name="int32_bias"),
            helper.make_node("DequantizeLinear", ["xq", "s"], ["xd"], name="dq"),
            helper.make_node("Conv", ["xd", "w", "b"], ["y"], name="conv"),
        ],
        [_weights("s", [], value=0.1), _weights("w", [16, 4, 3, 3]), _weights("bs", [], value=0.1),
         numpy_helper.from_array(np.zeros(16, np.int32), "b_q"), numpy_helper.from_array(np.array(0, np.int32), "bz")],
    )
    reasons = _reasons(lint_model(model))
    assert set(reasons) == {"uint8_quant", "int32_bias"}
    assert "UINT8" in reasons["uint8_quant"] and "QuantizeBias=False" in reasons["int32_bias"]


def test_conv_weights_must_be_constant_and_resize_modes_supported():
    w_in = helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [4, 4, 1, 1])
    model = _model(
        [
            helper.make_node("Conv", ["x", "w_in"], ["c"], name="runtime_weights"),
            helper.make_node("Resize", ["c", "", "scales"], ["y"], name="cubic", mode="cubic"),
        ],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
        inputs=(X, w_in),
    )
    reasons = _reasons(lint_model(model))
    assert "weights input 'w_in' is computed at run time" in reasons["runtime_weights"]
    assert "mode='cubic'" in reasons["cubic"]


def test_opset_outside_tensorrt_range_is_flagged():
    model = _clean()
    model.opset_import[0].version = 21
    assert [issue.node for issue in lint_model(model)] == ["<model>"]


def test_lint_cli_ok_and_exit_codes(tmp_path):
    clean, bad, junk = tmp_path / "clean.onnx", tmp_path / "bad.onnx", tmp_path / "junk.onnx"
    onnx.save(_clean(), str(clean))
    onnx.save(_model([helper.make_node("Unique", ["x"], ["y"], name="the_unique_node")]), str(bad))
    junk.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)

    ok = run_cli("lint-onnx", str(clean))
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 4 nodes, opset 17, ops: Conv x1")
    assert ok.stdout.splitlines()[1].startswith("checked with ")  # which check ran: tests/test_trt_gate.py

    failed = run_cli("lint-onnx", str(bad))
    assert failed.returncode == 1
    first, *rest = failed.stderr.splitlines()
    assert first.startswith(f"{bad}: 1 problem in 1 nodes, checked with ")
    assert len(rest) == 1 and rest[0].startswith("  node 'the_unique_node' (Unique): ")

    for path in (junk, tmp_path / "missing.onnx"):
        result = run_cli("lint-onnx", str(path))
        assert result.returncode == 2
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_lint_model_rejects_non_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("hello")
    with pytest.raises(UlffnError, match="not"):
        lint_model(path)
