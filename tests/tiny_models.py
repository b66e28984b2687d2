"""Tiny ULFFN artifacts for the runtime, build-engine and predict tests: width 8, 32 x 32 input.

Each is made once per test session, in a temporary folder removed at exit, through the project's own
checkpoint and export code (a checkpoint, and ONNX files with ``ulffn.*`` metadata).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

SIZE = 32
WIDTH = 8


@functools.cache
def workdir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="ulffn-tiny-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def tiny_model():
    """A width-8 ULFFN with non-trivial BatchNorm statistics, so outputs vary across pixels and images."""
    import torch

    from ulffn_deploy.model import ULFFN

    torch.manual_seed(0)
    model = ULFFN(width=WIDTH)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def metadata(precision: str = "fp32") -> dict:
    from ulffn_deploy import __version__
    from ulffn_deploy.config import ModelConfig, Normalization

    return {"model_config": ModelConfig(width=WIDTH), "normalization": Normalization(), "input_size": SIZE,
            "fit_mode": "paper", "checkpoint_sha256": "0" * 64, "toolkit_version": __version__, "precision": precision}


@functools.cache
def tiny_checkpoint() -> Path:
    from ulffn_deploy.config import Normalization
    from ulffn_deploy.checkpoint import save_checkpoint

    path = workdir() / "best.pt"
    save_checkpoint(path, {"model_config": {"variant": "w-ac", "width": WIDTH}, "normalization": Normalization().to_dict(),
                           "input_size": SIZE, "fit_mode": "paper", "state_dict": tiny_model().state_dict(), "epoch": 1})
    return path


@functools.cache
def tiny_onnx(precision: str = "fp32", dynamic_hw: bool = False) -> Path:
    """model.<precision>.onnx exported (fp32, fp16) or calibrated (int8) by the project's own code."""
    import onnx

    if precision == "int8":
        return _tiny_int8(dynamic_hw)
    from ulffn_deploy.export.onnx_export import ExportOptions
    from ulffn_deploy.export.pipeline import build_graphs

    folder = workdir() / ("dynamic" if dynamic_hw else "static")
    folder.mkdir(exist_ok=True)
    graphs = build_graphs(tiny_model(), metadata(), ExportOptions(dynamic_hw=dynamic_hw))
    path = folder / f"model.{precision}.onnx"
    onnx.save(graphs[precision], str(path))
    return path


def _tiny_int8(dynamic_hw: bool) -> Path:
    import pytest
    from PIL import Image

    calib = pytest.importorskip("ulffn_deploy.calib.pipeline", reason="INT8 calibration is not available")
    fp32 = tiny_onnx("fp32", dynamic_hw)
    images = fp32.parent / "calibration-images"
    images.mkdir(exist_ok=True)
    for i, image in enumerate(sample_images(6, seed=1)):
        Image.fromarray(image).save(images / f"image_{i}.png")
    output = fp32.with_name("model.int8.onnx")
    calib.calibrate(fp32, data=images, output=output, num_images=4, num_eval=2, log=lambda line: None)
    return output


def sample_images(count: int = 3, seed: int = 0) -> list[np.ndarray]:
    """RGB images of assorted sizes with a dark blob, uint8 HxWx3."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 56), (32, 32), (23, 71), (64, 48), (9, 13)]
    images = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        image = rng.integers(150, 230, size=(h, w, 3), dtype=np.uint8)
        image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] //= 3
        images.append(image)
    return images
