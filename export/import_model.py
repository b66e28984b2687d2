"""A model contract -> model.fp32.onnx + model.fp16.onnx in the toolkit's I/O contract (``ulffn-deploy import-model``).

Any 2-D segmentation network that fits a contract (``ulffn_deploy.contract``) is turned into the files
``export`` writes for ULFFN, so every later command works on it unchanged:

- input ``image``: N x 3 x H x W float32, RGB, normalised with the metadata's mean/std (a BGR model
  gets a channel flip, a Gather, in front of its own first node);
- output ``probabilities``: N x 2 x H x W float32, (background, lesion) = (1 - p, p), where p is the
  lesion probability: the sigmoid channel, or the lesion class of the softmax (logits get their
  sigmoid/softmax first). These head nodes run in FP32 in the FP16 file too.

Fit checks (one input, one 4-D image output of the declared channels, every op one TensorRT's parser
reads) run on the model as given, before any conversion. Parity is checked against the source itself:
the PyTorch module, or the source ONNX in ONNX Runtime, with the head computed in numpy.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ulffn_deploy import __version__
from ulffn_deploy.contract import ModelContract, OutputSpec, load_contract
from ulffn_deploy.deps import require
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export.fp16 import SOFTMAX_RULE, convert_to_fp16
from ulffn_deploy.export.graph import default_opset, slim, untie_initializers
from ulffn_deploy.export.onnx_export import INPUT_NAME, OUTPUT_NAME
from ulffn_deploy.export.pipeline import FILE_NAMES, ExportResult, _export_one, prepare_output_dir
from ulffn_deploy.export.trt_gate import check_onnx
from ulffn_deploy.fileio import sha256_file
from ulffn_deploy.harness import format_comparisons, image_source
from ulffn_deploy.keep_fp32 import rule_nodes, rules_to_json
from ulffn_deploy.runtime.base import Segmenter
from ulffn_deploy.runtime.metadata import ArtifactMetadata, set_metadata

if TYPE_CHECKING:
    import onnx
    import torch

OPSET = 17  # what export uses; sources below opset 13 are converted (Softmax over one axis needs 13)
MIN_SOURCE_OPSET = 13
GENERIC_KEEP = (SOFTMAX_RULE,)  # kept FP32 in every imported model, after the contract's own rules
HEAD = "toolkit_head"  # name prefix of the nodes added around the model


@dataclass
class SourceModel:
    """The model as given: its ONNX graph (a PyTorch source exported once), and the module when there is one."""

    model: onnx.ModelProto
    module: torch.nn.Module | None = None


# -- loading the source ---------------------------------------------------------------------------------

def load_source(contract: ModelContract, trust_code: bool = False) -> SourceModel:
    """The source model of ``contract`` as an ONNX graph (and its PyTorch module for a factory source).
    A factory source is Python code: it runs only with ``trust_code``."""
    if contract.source.onnx is not None:
        from ulffn_deploy.runtime.metadata import load_onnx

        return SourceModel(_at_opset(load_onnx(contract.source.onnx, "source.onnx must be an ONNX model file")))
    check_code_consent(contract, trust_code, log=lambda line: None)
    module = load_module(contract)
    return SourceModel(torch_export(module, contract), module)


def check_code_consent(contract: ModelContract, trust_code: bool, log: Callable[[str], None] = print) -> None:
    """For a factory source: say what code it runs, and refuse unless ``trust_code`` (an ONNX source runs none)."""
    if not contract.source.runs_code:
        return
    log(f"import-model: {code_to_run(contract)}")
    if not trust_code:
        raise UlffnError(f"source.factory {contract.source.factory!r} is Python code, and running it needs your "
                         "consent", "if you trust this contract and its code, run import-model with --trust-code")


def code_to_run(contract: ModelContract) -> str:
    """What a factory source runs, in words: the module it imports (and from where) and the call."""
    source = contract.source
    module_name, _, function = str(source.factory).partition(":")
    where = f"from {source.python_path} or sys.path" if source.python_path else "from sys.path"
    arguments = ", ".join(f"{key}={value!r}" for key, value in source.args.items())
    return f"the contract's factory imports Python module {module_name!r} ({where}) and calls {function}({arguments})"


def _at_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` as it is, or converted to opset 17 when it is older than 13."""
    onnx = require("onnx")
    opset = default_opset(model)
    if opset >= MIN_SOURCE_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, OPSET)
    except Exception as exc:  # the converter raises several exception types
        raise UlffnError(f"source.onnx: opset {opset} could not be converted to {OPSET} ({_line(exc)})",
                         f"export the model at opset {MIN_SOURCE_OPSET}-20") from exc


@contextlib.contextmanager
def _on_path(folder: Path | None) -> Iterator[None]:
    if folder is None:
        yield
        return
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def load_module(contract: ModelContract) -> torch.nn.Module:
    """Call the contract's factory and load its weights (``torch.load(weights_only=True)``, strict)."""
    torch = require("torch")
    source = contract.source
    module_name, _, function = str(source.factory).partition(":")
    with _on_path(source.python_path):
        try:
            factory = getattr(importlib.import_module(module_name), function)
        except (ImportError, AttributeError) as exc:
            raise UlffnError(f"source.factory {source.factory!r} cannot be imported ({_line(exc)})",
                             "set source.python_path to the folder holding its package") from exc
    try:
        model = factory(**source.args)
    except Exception as exc:  # whatever the user's factory raises
        raise UlffnError(f"source.factory {source.factory!r} failed with source.args {source.args} ({_line(exc)})") from exc
    if not isinstance(model, torch.nn.Module):
        raise UlffnError(f"source.factory {source.factory!r} returned a {type(model).__name__}, not a torch.nn.Module")
    _load_weights(model, Path(str(source.weights)))
    return model.eval()


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    import pickle

    torch = require("torch")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise UlffnError(f"source.weights: {path.name} is not a weights-only PyTorch file ({_line(exc)})",
                         "save it with torch.save(model.state_dict(), path)") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UlffnError(f"source.weights: {path.name} holds a {type(state).__name__}, not a state_dict")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of other shapes
        detail = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)  # the first mismatch
        raise UlffnError(f"source.weights: {path.name} does not fit the factory's model ({' '.join(detail.split())[:200]})",
                         "check source.args") from exc
    wrong = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
    if wrong:
        raise UlffnError(f"source.weights: {path.name} does not fit the factory's model ({len(wrong)} keys: {wrong[0]}, ...)")


def torch_export(module: torch.nn.Module, contract: ModelContract) -> onnx.ModelProto:
    """The module as an in-memory ONNX graph (TorchScript exporter, as for ULFFN), batch and maybe H/W dynamic."""
    onnx, torch = require("onnx"), require("torch")
    size = contract.input.size
    axes = {0: "batch", 2: "height", 3: "width"} if contract.input.dynamic else {0: "batch"}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(2, 3, size, size),), buffer,  # type: ignore[arg-type]
                              dynamo=False, opset_version=OPSET, do_constant_folding=True, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": axes, "output": axes},
                              training=torch.onnx.TrainingMode.EVAL)
    except Exception as exc:  # the exporter raises many types for unsupported modules
        raise UlffnError(f"source.factory: the module does not export to ONNX ({_line(exc)})") from exc
    model = onnx.load_from_string(buffer.getvalue())
    untie_initializers(model)
    return model


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# -- does it fit? ---------------------------------------------------------------------------------------

def _dims(value: Any) -> list[int | None]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _real_inputs(graph: onnx.GraphProto) -> list[Any]:
    initializers = {init.name for init in graph.initializer}
    return [value for value in graph.input if value.name not in initializers]


def check_fits(model: onnx.ModelProto, contract: ModelContract) -> None:
    """A one-line UlffnError naming the field or node when ``model`` cannot be deployed as the contract says."""
    onnx = require("onnx")
    _check_input(_real_inputs(model.graph), contract)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort here; the parity run is the final check
        inferred = model
    _check_output(list(inferred.graph.output), contract.output, _dims(_real_inputs(model.graph)[0]))
    check_onnx(model, build=False, input_size=contract.input.size, what="the model")  # parse only: the files built


def _check_input(inputs: list[Any], contract: ModelContract) -> None:
    from onnx import TensorProto

    if len(inputs) != 1:
        names = ", ".join(repr(value.name) for value in inputs) or "none"
        raise UlffnError(f"the model has {len(inputs)} inputs ({names}); the toolkit feeds one image, N x 3 x H x W")
    value = inputs[0]
    dims = _dims(value)
    if value.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1] not in (3, None):
        raise UlffnError(f"input {value.name!r} is {_shape(value)}, not a float32 N x 3 x H x W image")
    size = contract.input.size
    fixed = [d for d in dims[2:] if d is not None]
    if fixed and (fixed != [size] * len(fixed) or contract.input.dynamic):
        want = f"dynamic height/width for input.dynamic {list(contract.input.dynamic)}" if contract.input.dynamic \
            else f"{size}x{size} (input.size)"
        raise UlffnError(f"input {value.name!r} is {_shape(value)} but the contract says {want}")


def _check_output(outputs: list[Any], spec: OutputSpec, input_dims: list[int | None]) -> None:
    if len(outputs) != 1:
        names = ", ".join(repr(value.name) for value in outputs)
        raise UlffnError(f"the model has {len(outputs)} outputs ({names}); the toolkit takes one N x C x H x W map")
    value = outputs[0]
    dims = _dims(value)
    if not value.type.tensor_type.HasField("shape"):
        return  # unknown until it runs: the parity check decides
    if len(dims) != 4:
        raise UlffnError(f"output {value.name!r} is {_shape(value)}, not an N x C x H x W segmentation map")
    field = "output.classes" if spec.activation == "softmax" else "output.activation"
    if dims[1] is not None and dims[1] != spec.channels:
        raise UlffnError(f"output {value.name!r} has {dims[1]} channels but {field} says {spec.channels}")
    if any(o is not None and i is not None and o != i for o, i in zip(dims[2:], input_dims[2:])):
        given = " x ".join("?" if d is None else str(d) for d in input_dims)
        raise UlffnError(f"output {value.name!r} is {_shape(value)} for a {given} input: the toolkit "
                         "needs full-resolution maps", "upsample inside the model to the input size")


def _shape(value: Any) -> str:
    return " x ".join("?" if d is None else str(d) for d in _dims(value)) or "a scalar"


def check_rules(model: onnx.ModelProto, contract: ModelContract) -> None:
    """Each of the contract's FP32-keep rules must match a node: a typo would silently keep nothing."""
    import difflib

    names = [node.name for node in model.graph.node]
    for index, rule in enumerate(contract.keep_fp32):
        if not rule_nodes(model.graph, rule):
            close = difflib.get_close_matches(rule.name or "", names, n=1, cutoff=0.5)
            raise UlffnError(f"precision.keep_fp32[{index}] ({rule.describe()}) matches no node of the model",
                             f"did you mean {close[0]!r}?" if close else "use the node names and op types of its ONNX graph")


# -- the toolkit's I/O contract --------------------------------------------------------------------------

def with_toolkit_input(model: onnx.ModelProto, contract: ModelContract) -> onnx.ModelProto:
    """A copy of ``model`` reading ``image`` (RGB, dynamic batch), its output named ``model_output``."""
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    original = _real_inputs(graph)[0].name
    _free_names(graph, {INPUT_NAME, OUTPUT_NAME, "model_output"} - {original})
    feed = INPUT_NAME
    nodes = list(graph.node)
    if contract.input.channels == "BGR":
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), f"{HEAD}/bgr_order"))
        nodes.insert(0, helper.make_node("Gather", [INPUT_NAME, f"{HEAD}/bgr_order"], [f"{HEAD}/bgr"],
                                         name=f"{HEAD}/ToBgr", axis=1))
        feed = f"{HEAD}/bgr"
    for node in nodes:
        for index, name in enumerate(node.input):
            if name == original and node.name != f"{HEAD}/ToBgr":
                node.input[index] = feed
    del graph.node[:]
    graph.node.extend(nodes)
    hw: list[Any] = ["height", "width"] if contract.input.dynamic else [contract.input.size] * 2
    kept = [value for value in graph.input if value.name != original]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, *hw]), *kept])
    _rename_output(graph, "model_output")
    del graph.value_info[:]  # shapes recorded for a fixed batch would contradict the dynamic one
    return result


def _free_names(graph: onnx.GraphProto, names: set[str]) -> None:
    """Rename the model's own tensors that carry one of ``names``, which the toolkit's graph uses, or the
    head's prefix (a model that import-model wrote before, imported again), and nodes with that prefix."""
    taken = {name for node in graph.node for name in node.output} | {value.name for value in graph.input}
    taken |= {init.name for init in graph.initializer}
    rename = {name: f"{name}_source" for name in taken if name in names or name.startswith(f"{HEAD}/")}
    for node in graph.node:
        if node.name.startswith(f"{HEAD}/"):
            node.name = f"{node.name}_source"
    if not rename:
        return
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        node.output[:] = [rename.get(name, name) for name in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.name = rename.get(value.name, value.name)


def _rename_output(graph: onnx.GraphProto, name: str) -> None:
    from onnx import TensorProto, helper

    old = graph.output[0].name
    for node in graph.node:
        for index, output in enumerate(node.output):
            if output == old:
                node.output[index] = name
        for index, value in enumerate(node.input):
            if value == old:
                node.input[index] = name
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))


def with_toolkit_output(model: onnx.ModelProto, spec: OutputSpec) -> onnx.ModelProto:
    """``model`` (output ``model_output``, FP32) followed by the head that makes (1 - p, p) ``probabilities``."""
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    nodes, current = [], "model_output"
    if spec.values == "logits":
        activation = "Sigmoid" if spec.activation == "sigmoid" else "Softmax"
        node = helper.make_node(activation, [current], [f"{HEAD}/scores"], name=f"{HEAD}/{activation}")
        if activation == "Softmax":
            node.attribute.append(helper.make_attribute("axis", 1))
        nodes.append(node)
        current = f"{HEAD}/scores"
    if spec.activation == "softmax":
        k = spec.lesion_class
        for name, value in (("starts", k), ("ends", k + 1), ("axes", 1)):
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), f"{HEAD}/{name}"))
        nodes.append(helper.make_node("Slice", [current, f"{HEAD}/starts", f"{HEAD}/ends", f"{HEAD}/axes"],
                                      [f"{HEAD}/lesion"], name=f"{HEAD}/LesionClass"))
        current = f"{HEAD}/lesion"
    graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), f"{HEAD}/one"))
    nodes.append(helper.make_node("Sub", [f"{HEAD}/one", current], [f"{HEAD}/background"], name=f"{HEAD}/Background"))
    nodes.append(helper.make_node("Concat", [f"{HEAD}/background", current], [OUTPUT_NAME], name=f"{HEAD}/Concat", axis=1))
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 2, None, None]))
    result.producer_name = "ulffn-deploy"
    onnx.checker.check_model(result)
    return result


def smoke_test(model: onnx.ModelProto, contract: ModelContract) -> None:
    """Run a batch of two in ONNX Runtime: a graph that only runs at batch 1, or whose output is not the
    input's size, fails here in one line rather than deep inside the parity check."""
    from ulffn_deploy.onnx_session import create_session

    size = contract.input.size
    session = create_session(model.SerializeToString())
    try:
        (output,) = session.run(None, {INPUT_NAME: np.zeros((2, 3, size, size), np.float32)})
    except Exception as exc:  # ONNX Runtime's own exception types
        raise UlffnError(f"the model does not run on a batch of 2 {size}x{size} images ({_line(exc)})",
                         "export it with a dynamic batch axis") from exc
    if output.shape != (2, 2, size, size):
        raise UlffnError(f"the model's output became {output.shape} for 2 x 3 x {size} x {size} input; the toolkit "
                         f"needs one map per image at the input size", "upsample inside the model to the input size")


def build_graphs(source: SourceModel, contract: ModelContract) -> dict[str, onnx.ModelProto]:
    """The FP32 and FP16 graphs in the toolkit's I/O contract, with their metadata."""
    body = slim(with_toolkit_input(source.model, contract))
    smoke_test(with_toolkit_output(body, contract.output), contract)
    check_rules(body, contract)
    keep = (*contract.keep_fp32, *GENERIC_KEEP)
    graphs = {"fp32": with_toolkit_output(body, contract.output),
              "fp16": with_toolkit_output(convert_to_fp16(body, keep=keep), contract.output)}
    meta = metadata_for(contract)
    for precision, graph in graphs.items():
        set_metadata(graph, meta.with_precision(precision))
    return graphs


def metadata_for(contract: ModelContract) -> ArtifactMetadata:
    """The FP32 metadata of an imported model: how to feed it, and what it is (no ULFFN model_config)."""
    keep = (*contract.keep_fp32, *GENERIC_KEEP)
    return ArtifactMetadata(
        normalization=contract.input.normalization(), input_size=contract.input.size, fit_mode=contract.input.fit,
        precision="fp32", model_config=None, checkpoint_sha256=sha256_file(contract.source.file),
        toolkit_version=__version__,
        extra={"model": contract.name, "keep_fp32": json.dumps(rules_to_json(keep)),
               "model_contract": json.dumps(contract.describe(), sort_keys=True)},
    )


# -- the reference: the source itself ------------------------------------------------------------------

def head_probabilities(output: np.ndarray, spec: OutputSpec) -> np.ndarray:
    """The model's raw output -> N x 2 x H x W (1 - p, p), in numpy (the head's reference)."""
    output = output.astype(np.float64)
    if spec.values == "logits" and spec.activation == "sigmoid":
        output = 1.0 / (1.0 + np.exp(-output))
    elif spec.values == "logits":
        shifted = np.exp(output - output.max(axis=1, keepdims=True))
        output = shifted / shifted.sum(axis=1, keepdims=True)
    lesion = output[:, spec.lesion_class : spec.lesion_class + 1]
    return np.concatenate([1.0 - lesion, lesion], axis=1).astype(np.float32)


def reference_probabilities(source: SourceModel, contract: ModelContract, batch: np.ndarray) -> np.ndarray:
    """What the source model says on ``batch`` (toolkit input: normalised RGB), one image at a time."""
    model_input = batch[:, ::-1] if contract.input.channels == "BGR" else batch
    model_input = np.ascontiguousarray(model_input, dtype=np.float32)
    if source.module is not None:
        torch = require("torch")
        with torch.no_grad():
            raw = [source.module(torch.from_numpy(model_input[i : i + 1])).float().numpy() for i in range(len(batch))]
    else:
        from ulffn_deploy.onnx_session import create_session

        session = create_session(source.model.SerializeToString())
        name = _real_inputs(source.model.graph)[0].name
        raw = [np.asarray(session.run(None, {name: model_input[i : i + 1]})[0]) for i in range(len(batch))]
    return head_probabilities(np.concatenate(raw), contract.output)


# -- the whole import -------------------------------------------------------------------------------------

def _refuse_overwriting_the_source(contract: ModelContract, out: Path) -> None:
    """The files import-model writes must not be the contract's own source (ONNX file or weights)."""
    written = {(out / name).resolve() for name in FILE_NAMES.values()}
    if contract.source.file.resolve() in written:
        raise UlffnError(f"{contract.source.file}: the source model is one of the files import-model writes in {out}",
                         "choose another -o folder")


class SourceSegmenter(Segmenter):
    """The source model as a Segmenter (toolkit input and output): the reference of the parity check."""

    def __init__(self, source: SourceModel, contract: ModelContract, metadata: ArtifactMetadata) -> None:
        super().__init__(contract.source.file, metadata)
        self.backend = "pytorch" if source.module is not None else "onnxruntime"  # type: ignore[misc]
        self.source, self.contract = source, contract

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        return reference_probabilities(self.source, self.contract, batch)


def import_model(
    contract_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    images: int = 8,
    data: str | os.PathLike[str] | None = None,
    trust_code: bool = False,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Write ``out_dir``/model.fp32.onnx and model.fp16.onnx for the contract's model (module docstring).
    As in ``export``, each file is written only if its own checks pass; ``result.failed`` says why not.
    A contract with a PyTorch factory runs its code only with ``trust_code`` (``load_source``)."""
    contract = load_contract(contract_path)
    out = Path(out_dir)
    _refuse_overwriting_the_source(contract, out)
    check_code_consent(contract, trust_code, log)
    prepare_output_dir(out)
    source = load_source(contract, trust_code)
    check_fits(source.model, contract)
    graphs = build_graphs(source, contract)
    meta = metadata_for(contract)
    images_source = image_source(data, images, meta.input_size)
    result = ExportResult({})
    with SourceSegmenter(source, contract, meta) as reference:
        for precision, graph in graphs.items():
            _export_one(precision, graph, out / FILE_NAMES[precision], reference, images_source, result)
    log(format_comparisons({p: (c, result.checks[p]) for p, c in result.comparisons.items()}))
    return result
