"""A Triton Inference Server as a target: ``http://HOST:PORT/MODEL`` or ``grpc://HOST:PORT/MODEL``.

The artifact is a URL, not a file. ``RemoteSegmenter`` reads the model's ``ulffn.*`` configuration
parameters (written by ``ulffn-deploy serve`` and by ``export-triton``), preprocesses on the client and sends
N x 3 x S x S float32 tensors to the tensor model, so ``predict``, ``verify`` and ``benchmark`` compare the
server's own outputs with the same pre- and post-processing as a local artifact. Opening one waits (at most
``ready_timeout_s``) for the named model and the tensor model to be ready, as a server that has just started
is still loading them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.preprocess import Placement, preprocess
from ulffn_deploy.runtime.base import Segmenter
from ulffn_deploy.runtime.metadata import ArtifactMetadata
from ulffn_deploy.targets.registry import Target
from ulffn_deploy.triton_client import (
    DEFAULT_READY_TIMEOUT_S,
    PARAMETER_PREFIX,
    SERVE_EXTRA_HINT,
    TENSOR_MODEL_PARAMETER,
    TritonClient,
    is_server_url,
    parse_server_url,
)


class RemoteSegmenter(Segmenter):
    """A model served by Triton; ``infer`` is one request to the tensor model."""

    backend = "triton"

    def __init__(self, url: str | os.PathLike[str], fit_mode: str = "full", timeout_s: float = 60.0,
                 ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
        self.url = parse_server_url(url)
        self.client = TritonClient(self.url, timeout_s)
        try:
            self.client.wait_until_ready(self.url.model, ready_timeout_s)
            named = self.client.config(self.url.model)
            self.tensor_model = named["parameters"].get(TENSOR_MODEL_PARAMETER) or self.url.model
            if self.tensor_model != self.url.model:
                self.client.wait_until_ready(self.tensor_model, ready_timeout_s)
            config = named if self.tensor_model == self.url.model else self.client.config(self.tensor_model)
            parameters = config["parameters"]
            if not any(key.startswith(PARAMETER_PREFIX) for key in parameters):
                raise UlffnError(f"{self.url}: the model's config has no ulffn.* parameters",
                                 "serve it with 'ulffn-deploy serve' or export it with 'ulffn-deploy export-triton'")
            self.input_name = config["input"][0]["name"]
            self.output_name = config["output"][0]["name"]
            self.served = {key.removeprefix(PARAMETER_PREFIX): value for key, value in parameters.items()}
            metadata = ArtifactMetadata.from_mapping(parameters, str(self.url))
        except BaseException:
            self.client.close()
            raise
        super().__init__(Path(self.url.model), metadata, fit_mode)
        self.max_batch = int(config.get("max_batch_size") or 0) or None

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[Placement]]:
        """What this client sends for ``images``: the artifact's size, normalisation and this fit mode."""
        return preprocess(images, self.input_size, self.fit_mode, self.metadata.normalization)

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        outputs = self.client.infer(self.tensor_model, {self.input_name: batch}, [self.output_name])
        return np.asarray(outputs[self.output_name], dtype=np.float32)

    def _close_impl(self) -> None:
        self.client.close()

    def _backend_info(self) -> dict[str, Any]:
        reported = ("artifact", "backend", "precision", "sha256", "toolkit_version", "server_toolkit_version")
        return {"url": str(self.url), "tensor_model": self.tensor_model,
                "served": {key: self.served.get(key) for key in reported}}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"RemoteSegmenter({str(self.url)!r}, precision={self.precision!r}, {state})"


def segment_images(url: str, images: list[np.ndarray], fit_mode: str | None = None) -> list[np.ndarray]:
    """The documented client: HxWx3 uint8 RGB images -> HxW bool masks, identical to ``predict``'s.

    It reads the model's ``ulffn.*`` parameters, preprocesses here, sends N x 3 x S x S float32 to the
    tensor model (``ulffn_tensor`` of ``serve``, or a model of an ``export-triton`` repository) and maps the
    lesion probability back to each image's original size. Any of ``http://``, ``grpc://`` works.
    """
    with RemoteSegmenter(url) as segmenter:
        return segmenter.predict(images, fit_mode)


class TritonTarget(Target):
    """Models served by Triton Inference Server (``ulffn-deploy serve`` or an ``export-triton`` repository)."""

    name = "triton"
    title = "Triton server"
    description = "a model served by Triton Inference Server, preprocessed on this client"
    runs_on = "a Triton server"
    packages = ("tritonclient",)
    suffixes = ()
    addressed_by_url = True
    rank = -10  # never a folder's default: it has no files
    install_hint = SERVE_EXTRA_HINT

    def accepts_url(self, address: str) -> bool:
        return is_server_url(address)

    def unavailable_reason(self) -> str | None:
        try:
            import tritonclient.http  # noqa: F401
        except (ImportError, RuntimeError) as exc:  # RuntimeError: installed without its http extra
            return f"tritonclient's HTTP client is not importable ({' '.join(str(exc).split())[:120]})"
        return None

    def load(self, path: Path, **options: Any) -> Segmenter:
        reason = self.unavailable_reason()
        if reason:
            raise UlffnError(f"cannot talk to {parse_server_url(path)}: {reason}", SERVE_EXTRA_HINT)
        unknown = sorted(set(options) - {"fit_mode", "timeout_s", "ready_timeout_s"})
        if unknown:
            raise UlffnError(f"option(s) {', '.join(unknown)} do not apply to a Triton server URL")
        return RemoteSegmenter(str(path), **options)


TARGET = TritonTarget()
