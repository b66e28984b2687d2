"""A user's own deployment target, as one module: what 'adding a backend' takes (README, Adding a backend).

It "runs" ``.npz`` files holding a fixed probability map; the registry tests register it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ulffn_deploy.config import Normalization
from ulffn_deploy.runtime.base import Segmenter
from ulffn_deploy.runtime.metadata import ArtifactMetadata
from ulffn_deploy.targets.registry import Target


class ConstantSegmenter(Segmenter):
    backend = "constant"

    def __init__(self, path: Path, fit_mode: str = "full") -> None:
        self.lesion = float(np.load(path)["lesion"])
        super().__init__(path, ArtifactMetadata(Normalization(), 32, "full", "fp32", model_config=None), fit_mode)

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        lesion = np.full((len(batch), 1, *batch.shape[2:]), self.lesion, np.float32)
        return np.concatenate([1 - lesion, lesion], axis=1)


class ConstantTarget(Target):
    name = "constant"
    title = "Constant"
    suffixes = (".npz",)
    rank = 50
    available = True

    def unavailable_reason(self) -> str | None:
        return None if self.available else "switched off by the test"

    def load(self, path: Path, **options: Any) -> Segmenter:
        return ConstantSegmenter(path, **options)


TARGET = ConstantTarget()
