"""A user's own deployment target, as one module: what 'adding a backend' takes (README, Adding a backend).

It builds ``model.<precision>.npz`` from an exported ONNX file (the ONNX bytes inside a numpy archive, with
the sidecar every built artifact writes) and runs it with ONNX Runtime, so its masks are real. The registry
tests copy this file into a temporary module of another name and register it, to show that every command
treats such a target correctly with no other file edited. With ``ARCHIVE_RUNS=0`` in the environment (a
test switch) it cannot run here but still builds: a target that builds here for a device elsewhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ulffn_deploy.runtime.base import Segmenter
from ulffn_deploy.runtime.metadata import ArtifactMetadata, read_sidecar, sidecar_path
from ulffn_deploy.targets.registry import BuildOption, Target


class ArchiveSegmenter(Segmenter):
    backend = "archive"

    def __init__(self, path: Path, fit_mode: str = "full", threads: int | None = None) -> None:
        from ulffn_deploy.onnx_session import create_session

        sidecar = read_sidecar(path)
        super().__init__(path, ArtifactMetadata.from_mapping(sidecar, path), fit_mode)
        self.max_batch = int((sidecar.get("build_flags") or {}).get("max_batch", 1))
        self.session = create_session(np.load(path)["onnx"].tobytes(), threads=threads)
        self.input = self.session.get_inputs()[0]

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        kind = np.float16 if self.input.type == "tensor(float16)" else np.float32
        return np.asarray(self.session.run(None, {self.input.name: batch.astype(kind)})[0], np.float32)

    def _backend_info(self) -> dict[str, Any]:
        return {"device": "archive-cpu", "archive_bytes": self.path.stat().st_size}


class ArchiveTarget(Target):
    name = "archive"
    title = "Archive"
    description = "an ONNX model inside a numpy archive, run by ONNX Runtime"
    runs_on = "an archive accelerator"
    suffixes = (".npz",)
    build_suffix = ".npz"
    # the same name as TensorRT's option, declared differently: validated by this declaration alone
    build_options = (BuildOption("max_batch", int, 2, "Largest batch one archive call takes.", minimum=1, maximum=4),)
    load_options = (BuildOption("threads", int, None, "ONNX Runtime threads.", minimum=1),)
    rank = 50
    runs = os.environ.get("ARCHIVE_RUNS", "1") == "1"

    def unavailable_reason(self) -> str | None:
        return None if self.runs else "no archive accelerator here"

    def build_unavailable_reason(self) -> str | None:
        return None  # it builds anywhere, like TensorRT-RTX's CPU-only builder

    def load(self, path: Path, **options: Any) -> Segmenter:
        return ArchiveSegmenter(path, **options)

    def build(self, source_onnx: Path, output: Path | None, options: Mapping[str, Any], command: Sequence[str]) -> Path:
        from ulffn_deploy.fileio import atomic_path, write_json_atomic
        from ulffn_deploy.targets.onnx_source import describe_onnx, files_record, sidecar_common

        start = time.perf_counter()
        source = describe_onnx(source_onnx)
        output = output or self.default_output(source_onnx)
        with atomic_path(output) as tmp, open(tmp, "wb") as file:
            np.savez(file, onnx=np.frombuffer(source_onnx.read_bytes(), np.uint8))
        sidecar = sidecar_common(source, self.name, time.perf_counter() - start, command)
        sidecar.update(build_flags=dict(options), files=files_record([output]))
        write_json_atomic(sidecar_path(output), sidecar)
        return output


TARGET = ArchiveTarget()
