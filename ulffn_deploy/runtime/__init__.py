"""Run a ULFFN artifact (.pt, .onnx or .engine) on images: ``Segmenter.load(path).predict(images)``.

Importing this package needs numpy and Pillow only; a backend's own packages are imported when a model of
that kind is loaded (onnxruntime, torch, or tensorrt with cuda-python).
"""

from __future__ import annotations

from ulffn_deploy.runtime.base import Segmenter
from ulffn_deploy.runtime.metadata import ArtifactMetadata

__all__ = ["ArtifactMetadata", "Segmenter"]
