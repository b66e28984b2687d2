"""A tiny quickstart-like artifacts folder for the verify and benchmark tests (width 8, 32 px input).

``run/best.pt`` (a checkpoint with non-trivial BatchNorm statistics), ``model.fp32.onnx`` and
``model.fp16.onnx`` made by the project's export pipeline (so they record the checkpoint's sha256), and
``data/`` with three synthetic ISIC 2016 test images and labels. Made once per test session.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

SIZE = 32
WIDTH = 8


def save_tiny_checkpoint(path: Path, seed: int) -> Path:
    import torch

    from ulffn_deploy.config import Normalization
    from ulffn_deploy.model import ULFFN
    from ulffn_deploy.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = ULFFN(width=WIDTH).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # so that outputs vary across pixels and images
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    save_checkpoint(path, {"model_config": model.config.to_dict(), "normalization": Normalization().to_dict(),
                           "input_size": SIZE, "fit_mode": "paper", "state_dict": model.state_dict(), "epoch": 1})
    return path


@functools.cache
def artifacts() -> Path:
    import torch

    from ulffn_deploy.export.pipeline import export_checkpoint
    from ulffn_deploy.synth import generate_dataset

    torch.set_num_threads(2)
    folder = Path(tempfile.mkdtemp(prefix="ulffn-verify-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "run").mkdir()
    checkpoint = save_tiny_checkpoint(folder / "run" / "best.pt", seed=0)
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
