"""FP32 ONNX -> FP16 ONNX with the numerically sensitive parts kept in FP32.

Kept in FP32 (docs/model.md asks for the CAM's statistics to stay exact):
- the CAM from its input up to and including its sigmoid: mean pooling, variance pooling as
  mean((x - mean)^2) (squares of activations overflow FP16's 65504 above |x| = 256, and the mean of
  many small squares loses precision), their concatenation, and the two 1x1 convolutions of its
  attention MLP (tensors of N x 2C x 1 x 1: FP32 there costs nothing);
- the final Softmax (probabilities near 0 and 1 decide the mask).
The CAM's gating, x * weights + x, is full resolution and runs in FP16: its weights lie in (0, 1).
Graph inputs and outputs stay FP32, with Cast nodes at the boundary.

These rules are data (``ulffn_deploy.keep_fp32.KeepFp32``): an imported model's contract gives its own.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ulffn_deploy.deps import require
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export.graph import producers, remove_unused, scoped_nodes, slim
from ulffn_deploy.keep_fp32 import ULFFN_CAM, KeepFp32, keep_fp32_nodes

if TYPE_CHECKING:
    import onnx

DEFAULT_FP32_SCOPES = ("model/cam",)  # the CAM's module path inside the exported WithSoftmax wrapper
FP16_MAX = 65504.0  # weights beyond it are clamped (the converter's default, 1e4, would clamp e.g. BN variances)
FP16_TINY = 2.0**-24  # smallest FP16 subnormal; the converter lifts non-zero weights below it to it


def scope_rules(scopes: Iterable[str] = DEFAULT_FP32_SCOPES) -> tuple[KeepFp32, ...]:
    """ULFFN's FP16 rules for CAMs at the module ``scopes``: each up to its Sigmoid; and the Softmax."""
    cams = tuple(KeepFp32(name=f"/{scope.strip('/')}/*", until="Sigmoid", precisions=("fp16",), reason=ULFFN_CAM)
                 for scope in scopes)
    return (*cams, SOFTMAX_RULE)


SOFTMAX_RULE = KeepFp32(op="Softmax", reason="softmax: the output probabilities")


def _cast_to(node: onnx.NodeProto) -> int:
    return next(int(a.i) for a in node.attribute if a.name == "to")


def _softmax_in_fp32(model: onnx.ModelProto, names: set[str] | None = None) -> None:
    """Run every Softmax (or the one-input nodes ``names``) on an FP32 copy of its input; feed a following
    Cast-to-FP32 directly.

    Done here rather than through node_block_list: onnxconverter-common 1.16 fails ("The downstream node
    of the second cast node should be graph output") on a blocked node that feeds a graph output
    with keep_io_types=True.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    nodes, dropped = [], set()
    for node in graph.node:
        if (node.name not in names) if names is not None else node.op_type != "Softmax":
            nodes.append(node)
            continue
        to_fp32 = helper.make_node("Cast", [node.input[0]], [f"{node.name}/input_fp32"], name=f"{node.name}/CastToFp32",
                                   to=TensorProto.FLOAT)
        node.input[0] = to_fp32.output[0]
        nodes += [to_fp32, node]
        after = readers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Cast" and _cast_to(after[0]) == TensorProto.FLOAT:
            node.output[0] = after[0].output[0]
            dropped.add(id(after[0]))
        else:
            fp16_name = node.output[0]
            node.output[0] = f"{node.name}/output_fp32"
            nodes.append(helper.make_node("Cast", [node.output[0]], [fp16_name], name=f"{node.name}/CastToFp16",
                                          to=TensorProto.FLOAT16))
    nodes = [n for n in nodes if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)


def _unshare_initializers(model: onnx.ModelProto, fp32_nodes: set[str]) -> None:
    """Give FP32-block nodes their own copy of initializers that FP16 nodes also read.

    Tools that deduplicate equal tensors (e.g. zero biases) leave such sharing; the converter would then
    feed an FP32 initializer to an FP16 node.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, set[bool]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.name in fp32_nodes)
    shared = {name for name, kinds in readers.items() if name in initializers and kinds == {True, False}}
    for name in sorted(shared):
        copy = graph.initializer.add()
        copy.CopyFrom(initializers[name])
        copy.name = f"{name}/fp32"
    for node in graph.node:
        if node.name in fp32_nodes:
            for index, name in enumerate(node.input):
                if name in shared:
                    node.input[index] = f"{name}/fp32"


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    values = list(graph.input) + list(graph.value_info) + list(graph.output)
    types = {v.name: int(v.type.tensor_type.elem_type) for v in values}
    types.update({init.name: int(init.data_type) for init in graph.initializer})
    return types


def _drop_cast_round_trips(model: onnx.ModelProto) -> None:
    """Cast(a -> b) -> Cast(b -> a): readers of the second cast read the original tensor instead.

    The converter puts an FP32 -> FP16 -> FP32 pair between two blocked nodes; left in place it would
    round the CAM's statistics to FP16 after all.
    """
    graph = model.graph
    made_by = producers(graph)
    types = _tensor_types(model)
    outputs = {out.name for out in graph.output}
    rename = {}
    for node in graph.node:
        first = made_by.get(node.input[0]) if node.op_type == "Cast" else None
        if first is None or first.op_type != "Cast" or node.output[0] in outputs:
            continue
        if types.get(first.input[0]) == _cast_to(node):
            rename[node.output[0]] = first.input[0]
    for node in graph.node:
        for index, name in enumerate(node.input):
            node.input[index] = rename.get(name, name)
    remove_unused(model)


def convert_to_fp16(model: onnx.ModelProto, fp32_scopes: Iterable[str] = DEFAULT_FP32_SCOPES,
                    keep: Sequence[KeepFp32] | None = None) -> onnx.ModelProto:
    """An FP16 copy of ``model`` (FP32 inputs/outputs) with the nodes the ``keep`` rules name in FP32
    (default: ULFFN's, the CAM statistics at ``fp32_scopes`` and the Softmax)."""
    onnx = require("onnx")
    float16 = require("onnxconverter_common.float16")
    scopes = list(fp32_scopes)
    if keep is None and scopes and not scoped_nodes(model.graph, scopes):
        # Do not silently convert a CAM to FP16 because its nodes were renamed.
        raise UlffnError(f"no ONNX nodes found in the FP32 scopes {scopes}", "export with the ULFFN module names")
    kept = keep_fp32_nodes(model.graph, scope_rules(scopes) if keep is None else keep, "fp16")
    outputs = {value.name for value in model.graph.output}
    late = {node.name for node in model.graph.node if node.name in kept and  # made FP32 after conversion, see below
            (node.op_type == "Softmax" or (len(node.input) == 1 and outputs.intersection(node.output)))}
    blocked = sorted(set(kept) - late)
    source = onnx.ModelProto()
    source.CopyFrom(model)
    del source.graph.value_info[:]
    _unshare_initializers(source, set(blocked))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "number will be truncated": tiny weights become FP16 subnormals
        converted = float16.convert_float_to_float16(
            source, keep_io_types=True, node_block_list=blocked, max_finite_val=FP16_MAX, min_positive_val=FP16_TINY)
    _drop_cast_round_trips(converted)
    _softmax_in_fp32(converted, late)
    del converted.graph.value_info[:]  # stale after the rewrites
    converted = slim(converted)
    onnx.checker.check_model(converted, full_check=True)
    return converted
