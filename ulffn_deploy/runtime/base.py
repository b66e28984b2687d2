"""One segmentation interface for every target the registry knows (``ulffn_deploy.targets.registry``).

>>> with Segmenter.load("model.fp16.xml") as seg:         # any artifact: .engine, .onnx, .xml, best.pt, a URL
...     masks = seg.predict(images)                       # HxWx3 uint8 images -> HxW bool masks

``Segmenter.load`` asks the registry which target an artifact belongs to and refuses, in one line, one that
cannot run here or is stale. Pre- and post-processing are the shared numpy functions of
``ulffn_deploy.preprocess``; a backend only implements ``_infer_impl`` (a preprocessed batch to class
probabilities), ``_close_impl`` and ``_backend_info`` (its part of ``info``, with ``runs_as`` where the
precision that computes differs from the file's).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.preprocess import FIT_MODES, lesion_probability_to_original, preprocess
from ulffn_deploy.runtime.metadata import ArtifactMetadata

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11


class Segmenter:
    """Base class; use :meth:`Segmenter.load`, which picks the backend from the file suffix."""

    backend: ClassVar[str] = "none"

    def __init__(self, path: Path, metadata: ArtifactMetadata, fit_mode: str = "full") -> None:
        if fit_mode not in FIT_MODES:
            raise UlffnError(f"unknown fit mode {fit_mode!r}", f"use one of {', '.join(FIT_MODES)}")
        self.path = path
        self.metadata = metadata
        self.fit_mode = fit_mode
        self.max_batch: int | None = None  # larger batches are split into chunks of this size
        # milliseconds of the last infer() call, summed over its chunks: "wall" (host), "compute" (ONNX Runtime,
        # PyTorch: host time of the run) or "h2d", "gpu_compute", "d2h" (TensorRT: CUDA events); and "chunks"
        self.last_timings: dict[str, float] = {}
        self._closed = False

    @staticmethod
    def load(path: str | os.PathLike[str], backend: str | None = None, **options: Any) -> Segmenter:
        """Open an artifact with the target its suffix names (``backend`` overrides): ``.pt`` PyTorch,
        ``.onnx`` ONNX Runtime, ``.engine`` TensorRT, and whatever else the registry holds
        (``ulffn_deploy.targets.registry``).

        ``fit_mode`` ("full" by default, or "paper") applies to every backend; other options go to the
        target (ONNX Runtime: ``device`` "cpu"/"cuda", ``threads``, ``optimization``; TensorRT:
        ``use_cuda_graph``, ``gpu`` index; OpenVINO (``.xml``): ``device`` "CPU"/"GPU"/"NPU"/"AUTO",
        ``threads``, ``performance_hint`` "latency"/"throughput"; PyTorch: ``device``).
        """
        from ulffn_deploy.targets.registry import load

        return load(path, backend, **options)

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    @property
    def precision(self) -> str:
        return self.metadata.precision

    @property
    def runs_as(self) -> str:
        """The precision that computes: the file's, or what the backend runs it as when that differs (its
        info's ``runs_as``: OpenVINO runs an fp16 file as bf16 on CPUs with BF16)."""
        return str(self._backend_info().get("runs_as") or self.precision)

    @property
    def info(self) -> dict[str, Any]:
        """Backend, precision, input size, fit modes, normalisation and backend details, JSON-ready."""
        meta = self.metadata
        return {
            "backend": self.backend,
            "path": str(self.path),
            "precision": meta.precision,
            "input_size": meta.input_size,
            "fit_mode": self.fit_mode,
            "training_fit_mode": meta.fit_mode,
            "normalization": meta.normalization.to_dict(),
            "model_config": meta.model_config.to_dict() if meta.model_config else None,
            "max_batch": self.max_batch,
            **self._backend_info(),
        }

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 preprocessed images -> N x 2 x H x W float32 probabilities (background, lesion)."""
        self._check_open()
        batch = _as_batch(batch)
        if len(batch) == 0:
            return np.zeros((0, 2, *batch.shape[2:]), np.float32)
        chunk = self.max_batch or len(batch)
        outputs: list[np.ndarray] = []
        totals: dict[str, float] = {}
        start = time.perf_counter()
        for first in range(0, len(batch), chunk):
            outputs.append(self._checked_output(self._infer_impl(batch[first : first + chunk]), batch[first : first + chunk]))
            for key, value in self.last_timings.items():
                totals[key] = totals.get(key, 0.0) + value
        totals["wall"] = (time.perf_counter() - start) * 1e3
        totals["chunks"] = float(len(outputs))
        self.last_timings = totals
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def predict_probabilities(self, images: Sequence[np.ndarray], fit_mode: str | None = None) -> list[np.ndarray]:
        """HxWx3 uint8 RGB images -> HxW float32 lesion probability maps at each image's original size."""
        _check_images(images)
        batch, placements = preprocess(images, self.input_size, fit_mode or self.fit_mode, self.metadata.normalization)
        probabilities = self.infer(batch)
        return [lesion_probability_to_original(p[1], pl) for p, pl in zip(probabilities, placements)]

    def predict(self, images: Sequence[np.ndarray], fit_mode: str | None = None) -> list[np.ndarray]:
        """HxWx3 uint8 RGB images -> HxW bool lesion masks at each image's original size."""
        return [p > 0.5 for p in self.predict_probabilities(images, fit_mode)]

    def close(self) -> None:
        """Release the backend's resources; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._close_impl()

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"{type(self).__name__}({str(self.path)!r}, precision={self.precision!r}, {state})"

    # -- for backends ---------------------------------------------------------------------------------
    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _close_impl(self) -> None:
        pass

    def _backend_info(self) -> dict[str, Any]:
        return {}

    def _check_open(self) -> None:
        if self._closed:
            raise UlffnError(f"{self!r} is closed", "load the model again")

    def _checked_output(self, output: np.ndarray, batch: np.ndarray) -> np.ndarray:
        expected = (len(batch), 2, *batch.shape[2:])
        if tuple(output.shape) != expected:
            raise UlffnError(f"{self.path.name} returned shape {tuple(output.shape)} for input {batch.shape}, "
                             f"expected {expected}", "is this a ULFFN model exported by ulffn-deploy?")
        return np.ascontiguousarray(output, dtype=np.float32)


class FunctionSegmenter(Segmenter):
    """A function from a preprocessed batch to class probabilities, as a Segmenter (a build's self-check
    compares a staged artifact that no target can load yet with its source this way)."""

    def __init__(self, path: Path, metadata: ArtifactMetadata, function: Any, backend: str) -> None:
        super().__init__(path, metadata)
        self._function = function
        self.backend = backend  # type: ignore[misc]

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._function(batch), dtype=np.float32)


def check_declared_input(path: Path, size: int, low_hw: Sequence[int | None], high_hw: Sequence[int | None]) -> None:
    """UlffnError unless the metadata's input ``size`` lies within the height and width the graph or engine
    declares (``None``: a dynamic axis); checked at load, before a batch of that size is allocated."""
    for axis, low, high in zip(("height", "width"), low_hw, high_hw):
        if (low is not None and size < low) or (high is not None and size > high):
            span = f"{low}" if low == high else f"{low or 1}-{high or 'any'}"
            raise UlffnError(f"{path.name}: its metadata says input size {size}, but its input {axis} is {span}",
                             "the file was altered or mislabelled; re-export or rebuild it")


def _as_batch(batch: np.ndarray) -> np.ndarray:
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise UlffnError(f"expected an N x 3 x H x W batch, got shape {batch.shape}", "preprocess images first, or use predict()")
    if not np.issubdtype(batch.dtype, np.floating):
        raise UlffnError(f"expected a float32 batch, got {batch.dtype}", "use ulffn_deploy.preprocess.preprocess()")
    return np.ascontiguousarray(batch, dtype=np.float32)


def _check_images(images: Sequence[np.ndarray]) -> None:
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise UlffnError(f"image {i}: expected HxWx3 uint8 RGB, got {got}", "read images with ulffn_deploy.imageio.read_rgb")
