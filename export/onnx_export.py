"""PyTorch ULFFN -> ONNX graph: image (N x 3 x H x W float32) -> probabilities (N x 2 x H x W float32).

The TorchScript exporter (``dynamo=False``) is used on purpose: it maps ``nn.PixelShuffle`` to one
``DepthToSpace`` node in CRD mode, keeps reductions as single ``ReduceMean`` nodes with their axes as
an attribute at opset 17, and folds constants, so the graph is small and plain for TensorRT's parser.
Opset 17: TensorRT 10.0's parser reads opsets 9-20 and TensorRT 11's up to 25; from opset 18 on,
ReduceMean takes its axes as an input, which TensorRT requires to be a constant.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ulffn_deploy.deps import require
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export.graph import untie_initializers

if TYPE_CHECKING:
    import onnx

PIXEL_SHUFFLE_MODES = ("d2s", "reshape")
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"


@dataclass(frozen=True)
class ExportOptions:
    """How the graph is shaped: opset, which axes are dynamic, how PixelShuffle is expressed."""

    opset: int = 17
    dynamic_hw: bool = False
    pixel_shuffle: str = "d2s"

    def __post_init__(self) -> None:
        if self.pixel_shuffle not in PIXEL_SHUFFLE_MODES:
            raise UlffnError(f"unknown PixelShuffle export {self.pixel_shuffle!r}",
                             f"use one of {', '.join(PIXEL_SHUFFLE_MODES)}")
        if not 13 <= self.opset <= 20:
            raise UlffnError(f"opset {self.opset} is not supported here", "use 17 (13-20 work with TensorRT 10.0)")


class WithSoftmax(nn.Module):
    """The deployed function: logits of ``model`` turned into class probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.softmax = nn.Softmax(dim=1)

    def forward(self, image: Tensor) -> Tensor:
        return self.softmax(self.model(image))


class ReshapePixelShuffle(nn.Module):
    """PixelShuffle as Reshape/Transpose: N x C*r*r x H x W -> N x C x H*r x W*r (same element order)."""

    def __init__(self, upscale_factor: int) -> None:
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, x: Tensor) -> Tensor:
        r = self.upscale_factor
        _, channels, height, width = x.shape
        x = x.reshape(-1, channels // (r * r), r, r, height, width)
        return x.permute(0, 1, 4, 2, 5, 3).reshape(-1, channels // (r * r), height * r, width * r)


@contextmanager
def pixel_shuffle_as_reshape(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily swap every nn.PixelShuffle in ``model`` for a ReshapePixelShuffle."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.PixelShuffle):
                swapped.append((parent, name, child))
                setattr(parent, name, ReshapePixelShuffle(child.upscale_factor))
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def onnx_scope(module_path: str) -> str:
    """The exporter's node-name scope of a module: ``model.decoder.3.cam`` -> ``model/decoder.3/cam``
    (an indexed child is named ``parent.N``; a ModuleList, never called, has no scope of its own)."""
    parts: list[str] = []
    for part in module_path.split("."):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}.{part}"
        else:
            parts.append(part)
    return "/".join(parts)


def fp32_scopes(wrapper: nn.Module) -> list[str]:
    """ONNX name scopes of the CAM modules (``model/cam``), whose statistics stay FP32 in FP16 graphs."""
    return [onnx_scope(name) for name, module in wrapper.named_modules() if type(module).__name__ == "CAM"]


def _dynamic_axes(dynamic_hw: bool) -> dict[str, dict[int, str]]:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    return {INPUT_NAME: axes, OUTPUT_NAME: axes}


def torch_to_onnx(model: nn.Module, size: int, options: ExportOptions | None = None) -> onnx.ModelProto:
    """Export ``model`` (logits) plus softmax to an in-memory FP32 ONNX model, one initializer per parameter."""
    onnx = require("onnx")
    options = options or ExportOptions()
    wrapper = WithSoftmax(model).eval()
    example = torch.zeros(2, 3, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _maybe_reshape(wrapper, options):
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated, still right here
        torch.onnx.export(
            wrapper, (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
            dynamo=False, opset_version=options.opset, do_constant_folding=True, export_params=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=_dynamic_axes(options.dynamic_hw),
            training=torch.onnx.TrainingMode.EVAL,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    untie_initializers(proto)
    proto.producer_name, proto.doc_string = "ulffn-deploy", "ULFFN skin-lesion segmentation: image -> probabilities"
    return proto


def _maybe_reshape(wrapper: nn.Module, options: ExportOptions) -> AbstractContextManager[nn.Module]:
    return pixel_shuffle_as_reshape(wrapper) if options.pixel_shuffle == "reshape" else nullcontext(wrapper)
