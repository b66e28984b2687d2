"""The tiny ULFFN artifacts every test uses: width 8, 32 x 32 input, one model, made once per test session.

Everything comes from :func:`tiny_model` through the project's own checkpoint, export and calibration
code, in a temporary folder removed at exit:

- :func:`tiny_checkpoint`: ``best.pt``;
- :func:`tiny_onnx`: ``model.<precision>.onnx`` (static or dynamic H/W) recording that checkpoint's sha256;
- :func:`artifacts`: a quickstart-like folder for verify, benchmark and registry tests: ``run/best.pt``,
  ``model.fp32.onnx`` and ``model.fp16.onnx`` written by ``export_checkpoint``, and ``data/`` with three
  synthetic ISIC 2016 test images and labels.
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
def tiny_model(seed: int = 0):
    """A width-8 ULFFN with non-trivial BatchNorm statistics, so outputs vary across pixels and images."""
    from ulffn_deploy.model import random_model

    return random_model(WIDTH, seed)


def save_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """The checkpoint of ``tiny_model(seed)`` as training writes it."""
    from ulffn_deploy.checkpoint import save_checkpoint
    from ulffn_deploy.config import Normalization

    model = tiny_model(seed)
    save_checkpoint(path, {"model_config": model.config.to_dict(), "normalization": Normalization().to_dict(),
                           "input_size": SIZE, "fit_mode": "paper", "state_dict": model.state_dict(), "epoch": 1})
    return path


@functools.cache
def tiny_checkpoint() -> Path:
    return save_tiny_checkpoint(workdir() / "best.pt")


@functools.cache
def tiny_onnx(precision: str = "fp32", dynamic_hw: bool = False) -> Path:
    """model.<precision>.onnx exported (fp32, fp16) or calibrated (int8) by the project's own code."""
    import onnx

    if precision == "int8":
        return _tiny_int8(dynamic_hw)
    from ulffn_deploy.checkpoint import load_model
    from ulffn_deploy.export.onnx_export import ExportOptions
    from ulffn_deploy.export.pipeline import build_graphs, metadata_from_checkpoint

    folder = workdir() / ("dynamic" if dynamic_hw else "static")
    folder.mkdir(exist_ok=True)
    model, info = load_model(tiny_checkpoint())
    graphs = build_graphs(model, metadata_from_checkpoint(info, tiny_checkpoint()), ExportOptions(dynamic_hw=dynamic_hw))
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


@functools.cache
def artifacts() -> Path:
    """The quickstart-like folder (see the module docstring); tests copy it before changing anything in it."""
    from ulffn_deploy.export.pipeline import export_checkpoint
    from ulffn_deploy.synth import generate_dataset

    folder = workdir() / "artifacts"
    (folder / "run").mkdir(parents=True)
    checkpoint = shutil.copy(tiny_checkpoint(), folder / "run" / "best.pt")
    generate_dataset(folder / "data", n_train=1, n_test=3, size=48, seed=0)
    export_checkpoint(checkpoint, folder, images=2, data=folder / "data", log=lambda message: None)
    return folder


def perturbed_onnx(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose head convolution is negated: its masks are the reference's complement."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    head = [node for node in model.graph.node if node.op_type == "Conv"][-1]
    initializers = {init.name: init for init in model.graph.initializer}
    for name in head.input[1:]:
        tensor = initializers[name]
        tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), name))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


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
