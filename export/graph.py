"""Small ONNX graph utilities shared by export, FP16 conversion, lint and parity (needs ``onnx``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ulffn_deploy.deps import require
from ulffn_deploy.errors import UlffnError

if TYPE_CHECKING:
    import onnx

# Nodes whose output is a build-time constant when all their inputs are (TensorRT folds these chains,
# e.g. DequantizeLinear of an int8 weight initializer in a Q/DQ graph, or a Cast of an FP16 weight).
CONSTANT_PRESERVING_OPS = frozenset({"Identity", "Cast", "QuantizeLinear", "DequantizeLinear"})


def default_opset(model: onnx.ModelProto) -> int:
    """The opset of the default ("" / "ai.onnx") domain."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise UlffnError("the ONNX model imports no ai.onnx opset")


def constant_tensors(graph: onnx.GraphProto, outer: Iterable[str] = ()) -> set[str]:
    """Names of tensors known at build time: initializers, Constant outputs and constant-preserving chains."""
    constants = set(outer) | {init.name for init in graph.initializer}
    for node in graph.node:
        folds = node.op_type in CONSTANT_PRESERVING_OPS and all(not i or i in constants for i in node.input)
        if node.op_type == "Constant" or folds:
            constants.update(node.output)
    return constants


def remove_unused(model: onnx.ModelProto) -> int:
    """Drop nodes that do not feed a graph output and initializers nobody reads; return how many went."""
    graph = model.graph
    needed = {out.name for out in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    removed = len(graph.node) - len(keep)
    if removed:
        kept = list(reversed(keep))
        del graph.node[:]
        graph.node.extend(kept)
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)
    return removed + len(unused)


def untie_initializers(model: onnx.ModelProto) -> int:
    """Replace Identity(initializer) nodes by a copy of the initializer under the Identity's output name.

    The TorchScript exporter deduplicates equal parameters (say, every zero-initialised bias) into one
    initializer read through Identity nodes; restoring one initializer per parameter keeps the graph a
    1:1 image of the state_dict, which FP16 conversion and INT8 quantization tools handle reliably.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    tied = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers]
    outputs = {out.name for out in graph.output}
    tied = [n for n in tied if n.output[0] not in outputs]
    for node in tied:
        copy = graph.initializer.add()
        copy.CopyFrom(initializers[node.input[0]])
        copy.name = node.output[0]
        graph.node.remove(node)
    remove_unused(model)
    return len(tied)


def slim(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim's constant folding, dead-node and common-subexpression elimination and fusions, without
    its weight tying (see ``untie_initializers``). Numerics are checked afterwards by the parity check."""
    onnxslim = require("onnxslim")
    return onnxslim.slim(model, skip_optimizations=["weight_tying"])


def scoped_nodes(graph: onnx.GraphProto, scopes: Iterable[str]) -> list[onnx.NodeProto]:
    """Nodes whose name lies in one of the module scopes (exporter names look like ``/model/cam/Mul``)."""
    prefixes = tuple("/" + scope.strip("/") + "/" for scope in scopes)
    return [node for node in graph.node if prefixes and node.name.startswith(prefixes)]


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}
