"""Run a ULFFN artifact on images: ``Segmenter.load(path).predict(images)``.

Any artifact a registered target loads (``ulffn_deploy.targets.registry``: TensorRT engines, OpenVINO IR,
ONNX files, checkpoints, Triton URLs, and targets registered by users). Importing this package needs numpy
and Pillow only; a target's own packages are imported when one of its artifacts is loaded.
"""

from __future__ import annotations

from ulffn_deploy.runtime.base import Segmenter
from ulffn_deploy.runtime.metadata import ArtifactMetadata

__all__ = ["ArtifactMetadata", "Segmenter"]
