"""Minimal reproduction: OpenVINO's CPU plugin computes a signed-int8 (zero point 0) Q/DQ convolution input
wrongly on CPUs without AMX when the quantized tensor is a Concat, while ONNX Runtime, and OpenVINO on the
same graph with uint8 / zero point 128 (the identical quantization grid), agree. docs/openvino_int8.md.

    python benchmarks/openvino_int8_repro.py                   # this CPU's own kernels
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI python benchmarks/openvino_int8_repro.py   # an AMX CPU as a VNNI one

The graph, 5 nodes: x -> Concat(x, x) -> QuantizeLinear(int8, zp 0) -> DequantizeLinear -> Conv 1x1 whose
weights are int8 behind a DequantizeLinear. ``--no-concat`` feeds x straight into the Q/DQ (same channels).
Needs numpy, onnx, onnxruntime and openvino only; writes the graphs to --out (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np


def build_graph(path: Path, activation: str, concat: bool = True, channels: int = 16, size: int = 16) -> Path:
    """The graph above with int8 (zero point 0) or uint8 (zero point 128) activations; saved to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inputs = 2 * channels
    zero = np.array(0, np.int8) if activation == "int8" else np.array(128, np.uint8)
    weights = rng.standard_normal((channels, inputs, 1, 1)).astype(np.float32)
    weight_scale = (np.abs(weights).reshape(channels, -1).max(1) / 127).astype(np.float32)
    quantized = np.clip(np.round(weights / weight_scale[:, None, None, None]), -127, 127).astype(np.int8)
    initializers = [
        numpy_helper.from_array(np.array(4 / 127, np.float32), "scale"),
        numpy_helper.from_array(zero, "zero_point"),
        numpy_helper.from_array(quantized, "w_int8"),
        numpy_helper.from_array(weight_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(channels, np.int8), "w_zero_point"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "bias"),
    ]
    first = "cat" if concat else "x"
    nodes = [helper.make_node("Concat", ["x", "x"], ["cat"], axis=1)] if concat else []
    nodes += [
        helper.make_node("QuantizeLinear", [first, "scale", "zero_point"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero_point"], ["dq"]),
        helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zero_point"], ["w"], axis=0),
        helper.make_node("Conv", ["dq", "w", "bias"], ["y"]),
    ]
    in_channels = channels if concat else inputs
    graph = helper.make_graph(nodes, "int8_concat_qdq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))
    return path


def relative_error(path: Path) -> float:
    """max |OpenVINO - ONNX Runtime| / max |ONNX Runtime| on one random input (f32 inference precision)."""
    import onnxruntime
    import openvino

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(session.get_inputs()[0].shape).astype(np.float32)
    expected = session.run(None, {"x": x})[0]
    compiled = openvino.Core().compile_model(os.fspath(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled([x])[0]
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-concat", action="store_true", help="quantize x itself (no Concat)")
    parser.add_argument("--out", type=Path, help="keep the ONNX graphs here")
    args = parser.parse_args()
    import openvino

    print(f"OpenVINO {openvino.get_version()}, ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for activation in ("int8", "uint8"):
            path = build_graph(folder / f"concat_qdq_{activation}.onnx", activation, concat=not args.no_concat)
            print(f"{path.name}: max |OpenVINO - ONNX Runtime| / max |ONNX Runtime| = {relative_error(path):.4f}")


if __name__ == "__main__":
    main()
