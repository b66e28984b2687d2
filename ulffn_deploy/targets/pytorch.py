"""PyTorch reference backend: a training checkpoint, evaluated with softmax on CPU or CUDA."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ulffn_deploy.deps import require
from ulffn_deploy.runtime.base import Segmenter
from ulffn_deploy.runtime.metadata import ArtifactMetadata
from ulffn_deploy.targets.registry import BuildOption, Target


class TorchSegmenter(Segmenter):
    """A ULFFN checkpoint (``best.pt``) loaded with ``ulffn_deploy.checkpoint.load_model``."""

    backend = "pytorch"

    def __init__(self, path: Path, fit_mode: str = "full", device: str = "cpu", threads: int | None = None) -> None:
        self._torch = require("torch")
        if threads:
            self._torch.set_num_threads(int(threads))  # process-wide: torch has no per-model setting
        from ulffn_deploy.checkpoint import load_model

        model, info = load_model(path)
        super().__init__(path, ArtifactMetadata.from_checkpoint(info, path), fit_mode)
        self.device = self._torch.device(device)
        self.model = model.to(self.device).eval()
        self.checkpoint_info = {key: value for key, value in info.items() if key not in ("state_dict", "optimizer")}

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        start = time.perf_counter()
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(batch).to(self.device))
            probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
        self.last_timings = {"compute": (time.perf_counter() - start) * 1e3}
        return np.asarray(probabilities, dtype=np.float32)

    def _close_impl(self) -> None:
        del self.model

    def _backend_info(self) -> dict[str, Any]:
        return {"torch_version": str(self._torch.__version__), "device": str(self.device),
                "epoch": self.checkpoint_info.get("epoch")}


class PyTorchTarget(Target):
    """The reference: a training checkpoint (``best.pt``) in PyTorch eager mode."""

    name = "pytorch"
    title = "PyTorch"
    description = "a training checkpoint, the reference every artifact is compared with"
    runs_on = "the CPU, or a CUDA GPU"
    packages = ("torch",)
    suffixes = (".pt",)
    load_options = (BuildOption("device", str, "cpu", "PyTorch device.", choices=("cpu", "cuda")),
                    BuildOption("threads", int, None, "CPU threads (torch.set_num_threads, process-wide).", minimum=1))
    rank = 0
    install_hint = "pip install 'ulffn-deploy[train]'"

    def unavailable_reason(self) -> str | None:
        import importlib.util

        return None if importlib.util.find_spec("torch") else "torch is not installed"

    def describe_file(self, path: Path) -> dict[str, Any]:
        require("torch")
        from ulffn_deploy.checkpoint import checkpoint_info, load_checkpoint

        checkpoint = load_checkpoint(path)
        info = checkpoint_info(checkpoint)
        state = checkpoint["state_dict"]
        values = sum(int(t.numel()) for t in state.values() if hasattr(t, "numel")) if isinstance(state, Mapping) else None
        return {"metadata": ArtifactMetadata.from_checkpoint(info, path).to_dict(),
                "checkpoint": {"kind": info.get("kind"), "epoch": info.get("epoch"), "best": info.get("best"),
                               "tensor_values": values, "resumable": "optimizer" in checkpoint}}

    def load(self, path: Path, **options: Any) -> Segmenter:
        return TorchSegmenter(path, **options)


TARGET = PyTorchTarget()
