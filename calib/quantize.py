"""FP32 ONNX -> explicitly quantized (Q/DQ) INT8 ONNX for TensorRT, with ONNX Runtime's quantization tools.

TensorRT (10 and later) builds INT8 only from Q/DQ nodes in the ONNX ("explicit quantization"; implicit
INT8 calibrators are deprecated and gone in TensorRT 11). The options below follow what its ONNX parser
and its Q/DQ fusions expect (NVIDIA TensorRT developer guide, "Explicit Quantization" and
"Q/DQ Layer-Placement Recommendations"; onnx/onnx-tensorrt docs/operators.md):

- symmetric INT8 everywhere: the parser requires QuantizeLinear/DequantizeLinear zero points of 0;
- Q/DQ on the inputs of convolutions (activation and weight), not on their outputs (the guide's
  placement advice: quantize the inputs of weighted operations; TensorRT fuses the pointwise layers after
  a convolution into it and requantizes where the next convolution's Q/DQ sits);
- weights per output channel (axis 0), stored as INT8 initializers behind a DequantizeLinear;
- biases stay FP32: the parser's DequantizeLinear takes INT8/FP8/INT4 input, not the INT32 bias that
  ONNX Runtime would otherwise produce;
- one Q/DQ pair per consumer (DedicatedQDQPair), so each convolution fuses its own pair.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ulffn_deploy.deps import require
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.keep_fp32 import KeepFp32, kept_nodes

from .reader import ImageBatchReader
from .source import Preprocessing

if TYPE_CHECKING:
    import onnx

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
QUANTIZED_OP_TYPES = ("Conv",)
PERCENTILE = 99.999  # ONNX Runtime's default for CalibrationMethod.Percentile
EXTRA_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "DedicatedQDQPair": True,
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0},
    "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),
    "QuantizeBias": False,
}
# Calibrator options (the keys ONNX Runtime's create_calibrator reads): symmetric ranges, as TensorRT uses them.
# Entropy with ONNX Runtime's default 128 bins for 128 quantized bins has a single candidate threshold (the
# maximum, i.e. minmax); 2048 bins, as TensorRT's entropy calibrator uses, give it room to clip outliers.
CALIBRATOR_OPTIONS = {"symmetric": True, "percentile": PERCENTILE, "num_bins": 2048, "num_quantized_bins": 128}
CALIBRATION_CACHE_ORT = "1.27"  # first onnxruntime whose quantize_static takes calibration_cache_path
# Images x width x pixels per calibrator pass: it holds every calibrated tensor of a pass (about 30 x width
# x pixels floats per image), so this bounds memory to about 1 GB, or one image at 512 x 512 and width 64.
CHUNK_ELEMENTS = 1 << 22

Ranges = dict[str, tuple[float, float]]
Log = Callable[[str], None]


def check_onnxruntime() -> None:
    """Raise a UlffnError unless this onnxruntime can quantize from stored calibration ranges."""
    import onnxruntime
    from onnxruntime.quantization import quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise UlffnError(f"onnxruntime {onnxruntime.__version__} cannot quantize from stored calibration ranges",
                         f"pip install 'onnxruntime>={CALIBRATION_CACHE_ORT}'")


def _method(name: str):  # -> onnxruntime.quantization.CalibrationMethod
    from onnxruntime.quantization import CalibrationMethod

    if name not in METHODS:
        raise UlffnError(f"unknown calibration method {name!r}", f"use one of {', '.join(METHODS)}")
    return CalibrationMethod[METHODS[name]]


def prepare_model(source: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """ONNX Runtime's quantization pre-processing reduced to ONNX shape inference: no graph optimisation, so
    node names stay those of the export (the CAM scope included), and no symbolic shape inference, which
    gives up on exports with dynamic height and width."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = Path(folder) / "prepared.onnx"
    quant_pre_process(str(source), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
    return prepared


def chunk_size(preprocessing: Preprocessing, width: int) -> int:
    """Images per calibrator pass: every calibrated tensor of a pass is held in memory at once."""
    return max(1, CHUNK_ELEMENTS // (preprocessing.size * preprocessing.size * width))


def _quiet() -> contextlib.AbstractContextManager[object]:
    """ONNX Runtime's histogram calibrators print progress to stdout; our log callback reports it instead."""
    return contextlib.redirect_stdout(io.StringIO())


def compute_ranges(prepared: Path, images: Sequence[Path], preprocessing: Preprocessing, input_name: str,
                   method: str, width: int, log: Log = print) -> Ranges:
    """Run the calibrator over ``images``: {tensor name: (low, high)} for every convolution input and output."""
    import numpy as np
    from onnxruntime.quantization import create_calibrator

    chunk = chunk_size(preprocessing, width)
    with tempfile.TemporaryDirectory(prefix="ulffn-calib-") as tmp:
        with _quiet():
            calibrator = create_calibrator(prepared, list(QUANTIZED_OP_TYPES), str(Path(tmp) / "augmented.onnx"),
                                           _method(method), extra_options=CALIBRATOR_OPTIONS)
        for start in range(0, len(images), chunk):
            part = images[start : start + chunk]
            with _quiet():
                calibrator.collect_data(ImageBatchReader(part, preprocessing, input_name, batch_size=even_batch(len(part))))
            log(f"  calibrated {start + len(part)}/{len(images)} images")
        if method != "minmax":
            log(f"  choosing {method} thresholds from the histograms")
        with _quiet():
            tensors = calibrator.compute_data()
    return {name: (float(np.asarray(data.range_value[0]).item()), float(np.asarray(data.range_value[1]).item()))
            for name, data in sorted(tensors.items())}


def even_batch(count: int, largest: int = 8) -> int:
    """The largest batch size up to ``largest`` that divides ``count`` images evenly: ONNX Runtime's histogram
    calibrators stack every batch of one ``collect_data`` call, so the batches must all have one shape."""
    return next(size for size in range(min(largest, count), 0, -1) if count % size == 0)


def quantize_with_ranges(prepared: Path, ranges: Mapping[str, Sequence[float]], method: str,
                         excluded: Iterable[str], nodes_to_quantize: Sequence[str] | None = None) -> onnx.ModelProto:
    """The Q/DQ model of ``prepared`` with activation scales from ``ranges`` (no calibration run)."""
    import numpy as np
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    onnx = require("onnx")
    tensors = TensorsData(_method(method), {
        name: TensorData(lowest=np.float32(low), highest=np.float32(high)) for name, (low, high) in ranges.items()
    })
    with tempfile.TemporaryDirectory(prefix="ulffn-quant-") as tmp:
        cache, output = Path(tmp) / "ranges.json", Path(tmp) / "model.int8.onnx"
        save_tensors_data(tensors, cache)
        quantize_static(
            str(prepared), str(output), calibration_data_reader=None, calibration_cache_path=str(cache),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True,
            reduce_range=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=list(nodes_to_quantize or []), nodes_to_exclude=sorted(excluded),
            calibrate_method=_method(method), extra_options=EXTRA_OPTIONS,
        )
        model = onnx.load(str(output))
    keep_float_consumers_float(model.graph)
    return model


def keep_float_consumers_float(graph: onnx.GraphProto) -> None:
    """Feed every node but the quantized convolutions the float tensor, not its Q/DQ copy.

    ONNX Runtime gives a tensor with a single quantized consumer one Q/DQ pair and routes *all* its consumers
    through it, so skip connections into AveragePool/Concat would be quantized too. TensorRT's recommendation
    (and ULFFN's accuracy) wants Q/DQ only where a convolution reads its input.
    """
    producers = {output: node for node in graph.node for output in node.output}
    for node in graph.node:
        weight = producers.get(node.input[1]) if node.op_type in QUANTIZED_OP_TYPES else None
        if weight is not None and weight.op_type == "DequantizeLinear":
            continue  # a quantized convolution
        for index, name in enumerate(node.input):
            dq = producers.get(name)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]


def default_exclusions(graph: onnx.GraphProto, rules: Sequence[KeepFp32] | None = None) -> dict[str, str]:
    """Nodes kept in FP32, with the reason, by the ``rules`` (an imported model's contract) or ULFFN's:
    the input unit, the head, the softmax and the whole CAM."""
    return kept_nodes(graph, rules, "int8")


def plan_exclusions(graph: onnx.GraphProto, user: Iterable[str] = (),
                    rules: Sequence[KeepFp32] | None = None) -> dict[str, str]:
    """``default_exclusions`` plus the nodes a user named (each must exist in the graph)."""
    excluded = default_exclusions(graph, rules)
    names = [node.name for node in graph.node]
    for name in user:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
            raise UlffnError(f"--exclude {name}: the model has no node of that name",
                             f"did you mean {close[0]}?" if close else "node names are listed in the calibration report")
        excluded.setdefault(name, "excluded by the user (--exclude)")
    return excluded
