"""Check an ONNX graph against what TensorRT's ONNX parser accepts, before a GPU machine finds out.

The operator table and restrictions follow onnx/onnx-tensorrt ``docs/operators.md`` as of the
"ONNX-TensorRT 10.1 GA release" (commit 96e781103cfc, support matrix headed "TensorRT 10.0 supports
operators in the inclusive range of opset 9 to opset 20"). Only restrictions that a static look at the
graph can decide are checked; the parser itself remains the final word.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from ulffn_deploy.deps import require
from ulffn_deploy.export.graph import constant_tensors, default_opset
from ulffn_deploy.runtime.metadata import load_onnx

if TYPE_CHECKING:
    import onnx

MIN_OPSET, MAX_OPSET = 9, 20  # TensorRT 10.0's parser; 10.15 reads up to 24 and 11.x up to 25

# Operators marked "Y" in the support matrix (all in the default domain).
SUPPORTED_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv", "DepthToSpace", "DequantizeLinear", "Div", "Dropout",
    "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements",
    "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
    "GridSample", "GroupNormalization", "GRU", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "ImageScaler",
    "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean",
    "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot",
    "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike",
    "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu",
    "Reshape", "Resize", "ReverseSequence", "RNN", "RoiAlign", "Round", "ScaledTanh", "Scan", "Scatter",
    "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice",
    "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh",
    "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})

REDUCE_OPS = frozenset(op for op in SUPPORTED_OPS if op.startswith("Reduce"))
# Inputs that must be build-time constants: op -> {input index: what it is}
CONSTANT_INPUTS = {
    "Conv": {1: "weights"},
    "ConvTranspose": {1: "weights"},
    "Pad": {3: "axes"},
    "Slice": {3: "axes"},
    "Squeeze": {1: "axes"},
    "Unsqueeze": {1: "axes"},
    "CumSum": {1: "axis"},
    "OneHot": {1: "depth"},
    "Dropout": {2: "training_mode"},
    **{op: {1: "axes"} for op in REDUCE_OPS},
}
RESIZE_COORDINATE_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
QUANTIZED_TYPES = {"INT8", "INT4", "FLOAT8E4M3FN"}  # TensorRT's quantized types; UINT8 only for network I/O
CAST_TYPES = {"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "UINT8", "BOOL"}

ModelOrPath = Union["onnx.ModelProto", str, "os.PathLike[str]"]


@dataclass(frozen=True)
class LintIssue:
    """One reason TensorRT's ONNX parser would reject (or mis-handle) the graph."""

    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}): {self.reason}"


@dataclass(frozen=True)
class _Context:
    constants: set[str]  # tensors known at build time
    initializers: dict[str, onnx.TensorProto]  # and the values of Constant nodes
    ranks: dict[str, int]  # from shape inference, where known


def _type_name(data_type: int) -> str:
    from onnx import TensorProto

    return str(TensorProto.DataType.Name(data_type))


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _check_constant_inputs(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    reasons = []
    for index, what in CONSTANT_INPUTS.get(node.op_type, {}).items():
        if index < len(node.input) and node.input[index] and node.input[index] not in ctx.constants:
            reasons.append(f"{what} input {node.input[index]!r} is computed at run time; TensorRT needs an initializer")
    return reasons


def _check_quantize(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    """Q/DQ: symmetric (zero point an INT8 constant 0); DequantizeLinear only of INT8/INT4/FP8 data."""
    import numpy as np
    from onnx import numpy_helper

    reasons = []
    data = ctx.initializers.get(node.input[0])
    if node.op_type == "DequantizeLinear" and data is not None and _type_name(data.data_type) not in QUANTIZED_TYPES:
        reasons.append(f"dequantizes {_type_name(data.data_type)} data (a quantized bias?); TensorRT dequantizes "
                       "INT8/INT4/FP8 only (ONNX Runtime: quantize with extra_options QuantizeBias=False)")
    if len(node.input) < 3 or not node.input[2]:
        if node.op_type == "QuantizeLinear":  # without a zero point the output type is UINT8
            reasons.append("no zero point, so the output is UINT8; give an INT8 zero point of 0")
        return reasons
    name = node.input[2]
    if name not in ctx.initializers:
        return reasons + [f"zero point {name!r} is computed at run time; TensorRT needs a constant 0"]
    dtype = _type_name(ctx.initializers[name].data_type)
    if dtype not in QUANTIZED_TYPES and not reasons:
        reasons.append(f"zero point type {dtype}; TensorRT quantizes to INT8 (or INT4/FP8)")
    if np.any(numpy_helper.to_array(ctx.initializers[name]).astype(np.float64) != 0):
        reasons.append("zero point is not 0; TensorRT supports symmetric quantization only")
    return reasons


def _check_resize(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    reasons = []
    checks = [
        ("coordinate_transformation_mode", "half_pixel", RESIZE_COORDINATE_MODES),
        ("mode", "nearest", RESIZE_MODES),
        ("nearest_mode", "round_prefer_floor", RESIZE_NEAREST_MODES),
        ("keep_aspect_ratio_policy", "stretch", {"stretch"}),
    ]
    for name, default, allowed in checks:
        value = _attr(node, name, default)
        if value not in allowed:
            reasons.append(f"{name}={value!r} unsupported (use one of {', '.join(sorted(allowed))})")
    if _attr(node, "antialias", 0):
        reasons.append("antialiasing is not supported")
    return reasons


def _check_pool(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    reasons = []
    if any(d != 1 for d in _attr(node, "dilations", [])):
        reasons.append("dilations must be empty or all ones")
    kernel = _attr(node, "kernel_shape", [])
    if node.op_type in ("AveragePool", "MaxPool") and len(kernel) not in (2, 3):
        reasons.append("only 2D or 3D pooling is supported")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        reasons.append("the Indices output is not supported")
    return reasons


def _check_depth_to_space(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    rank = ctx.ranks.get(node.input[0])
    return [f"input has rank {rank}; TensorRT needs 4D NCHW"] if rank is not None and rank != 4 else []


def _check_cast(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    to = _type_name(int(_attr(node, "to", 0)))
    return [] if to in CAST_TYPES else [f"cast to {to} is not a TensorRT type"]


def _check_constant(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    bad = {a.name for a in node.attribute} & {"sparse_value", "value_string", "value_strings"}
    return [f"attribute {name!r} is not supported" for name in sorted(bad)]


def _check_misc(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    if node.op_type == "TopK" and _attr(node, "sorted", 1) != 1:
        return ["sorted must be 1"]
    if node.op_type == "LayerNormalization" and any(node.output[1:]):
        return ["only the first output Y is supported"]
    return []


NODE_CHECKS: dict[str, Callable[[onnx.NodeProto, _Context], list[str]]] = {
    "QuantizeLinear": _check_quantize,
    "DequantizeLinear": _check_quantize,
    "Resize": _check_resize,
    "AveragePool": _check_pool,
    "MaxPool": _check_pool,
    "LpPool": _check_pool,
    "DepthToSpace": _check_depth_to_space,
    "Cast": _check_cast,
    "Constant": _check_constant,
    "TopK": _check_misc,
    "LayerNormalization": _check_misc,
}


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    onnx = require("onnx")
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    graph = inferred.graph
    infos = list(graph.input) + list(graph.value_info) + list(graph.output)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in infos if v.type.tensor_type.HasField("shape")}


def _node_issues(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    if node.domain not in ("", "ai.onnx"):
        return [f"custom domain {node.domain!r}: TensorRT would need a plugin"]
    if node.op_type not in SUPPORTED_OPS:
        return ["not supported by TensorRT's ONNX parser"]
    reasons = _check_constant_inputs(node, ctx)
    check = NODE_CHECKS.get(node.op_type)
    return reasons + (check(node, ctx) if check else [])


def _lint_graph(graph: onnx.GraphProto, ctx: _Context) -> list[LintIssue]:
    onnx = require("onnx")
    values = {**ctx.initializers, **{i.name: i for i in graph.initializer}}
    for node in graph.node:  # Constant nodes hold values just like initializers (zero points, axes)
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = node.attribute[0].t
    ctx = _Context(constant_tensors(graph, ctx.constants), values, ctx.ranks)
    issues = []
    for index, node in enumerate(graph.node):
        name = node.name or f"<{node.op_type} #{index}>"
        issues += [LintIssue(name, node.op_type, reason) for reason in _node_issues(node, ctx)]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                issues += _lint_graph(attribute.g, ctx)
    return issues


def lint_model(model_or_path: ModelOrPath) -> list[LintIssue]:
    """Every node TensorRT's ONNX parser would refuse, with the reason; empty when the graph is clean."""
    onnx = require("onnx")
    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else load_onnx(model_or_path)
    opset = default_opset(model)
    issues = []
    if not MIN_OPSET <= opset <= MAX_OPSET:
        issues.append(LintIssue("<model>", "opset", f"opset {opset} is outside the {MIN_OPSET}-{MAX_OPSET} "
                                "that TensorRT 10.0's parser reads; export with --opset 17"))
    ctx = _Context(set(), {}, _ranks(model))
    return issues + _lint_graph(model.graph, ctx)


def op_summary(model: onnx.ModelProto) -> str:
    """'ok: N nodes, opset X, ops: Conv x12, ...' for a clean graph."""
    counts = Counter(node.op_type for node in model.graph.node)
    ops = ", ".join(f"{op} x{n}" for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"ok: {len(model.graph.node)} nodes, opset {default_opset(model)}, ops: {ops}"
