"""Tests run on CPU with tiny models; GPU tests are marked ``gpu`` and skip saying why.

Shared test code lives in plain modules that tests import by name: ``tiny_models`` (the session's one tiny
model, its checkpoint, ONNX files and artifacts folder) and ``helpers`` (the command line and fresh
interpreters in subprocesses, the one-line-error assertion, a stand-in built artifact with its sidecar, and
torch on few threads). The two fixtures here are the inputs of the adversarial modules: a copy of the tiny
FP32 model and a folder of images, both in the test's own temporary folder.
"""

import shutil
from pathlib import Path

import pytest
from PIL import Image
from tiny_models import sample_images, tiny_onnx


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A copy of the tiny FP32 ONNX model, where a test may write beside it."""
    path = tmp_path / "model.fp32.onnx"
    shutil.copy(tiny_onnx("fp32"), path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Three synthetic dermoscopy images as ISIC-named PNGs."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(sample_images(3)):
        Image.fromarray(image).save(folder / f"ISIC_000000{i}.png")
    return folder
