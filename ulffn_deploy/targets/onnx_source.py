"""Generic helpers for an exported ONNX file, for every target that builds from one.

``describe_onnx`` reads a source's input, output and ``ulffn.*`` metadata through ``onnx_session.open_onnx``
(the one place that opens an ONNX file in ONNX Runtime to read it). ``sidecar_common`` gives the sidecar fields every
built artifact records (README, Adding a backend: the sidecar contract). onnxruntime is imported inside
the functions that need it.
"""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulffn_deploy import __version__
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import sha256_file
from ulffn_deploy.onnx_session import open_onnx, session_metadata
from ulffn_deploy.runtime.metadata import SIDECAR_FORMAT, SIDECAR_VERSION, ArtifactMetadata

if TYPE_CHECKING:
    pass



@dataclass(frozen=True)
class OnnxSource:
    """What a build needs to know about its source ONNX file."""

    path: Path
    input_name: str
    input_shape: tuple[int | None, ...]  # None for dynamic axes
    output_name: str
    metadata: ArtifactMetadata
    input_type: str = "tensor(float)"  # ONNX Runtime's type name of the input

    @functools.cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)

    def example_shape(self, batch: int = 2) -> tuple[int, ...]:
        """A concrete input shape: static axes as they are, dynamic batch ``batch``, dynamic H/W the input size."""
        size = self.metadata.input_size
        return tuple(dim if dim is not None else (batch if axis == 0 else size) for axis, dim in enumerate(self.input_shape))


def describe_onnx(path: str | os.PathLike[str], precision: str | None = None) -> OnnxSource:
    """Input/output names and shapes and the ``ulffn.*`` metadata of an exported model (onnxruntime only);
    with ``precision``, UlffnError unless the file's metadata says that precision."""
    path = Path(path)
    session = open_onnx(path)
    metadata = session_metadata(session, path)
    if precision is not None and precision != metadata.precision:
        raise UlffnError(f"{path.name} is a {metadata.precision} model, not {precision}",
                         f"pass --precision {metadata.precision}, or the {precision} ONNX file")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise UlffnError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
    shape = tuple(dim if isinstance(dim, int) and dim > 0 else None for dim in inputs[0].shape)
    if len(shape) != 4 or shape[1] not in (3, None):
        raise UlffnError(f"{path}: input {inputs[0].name!r} has shape {inputs[0].shape}, expected N x 3 x H x W")
    return OnnxSource(path, inputs[0].name, shape, outputs[0].name, metadata, str(inputs[0].type))


def sidecar_common(source: OnnxSource, backend: str, seconds: float, command: Sequence[str]) -> dict[str, Any]:
    """Sidecar fields every built artifact writes: the source's metadata and hash (``source_onnx``, which the
    registry compares with the ONNX file beside the artifact), and how the artifact was built."""
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "backend": backend,
        **source.metadata.to_dict(),
        "input_name": source.input_name,
        "output_name": source.output_name,
        "source_onnx": {"file": source.path.name, "sha256": source.sha256},
        "build_seconds": round(seconds, 3),
        "build_command": shlex.join(command),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "toolkit_version": __version__,
    }


def files_record(paths: Sequence[Path]) -> dict[str, int]:
    """The sidecar's ``files`` entry: {file name: bytes} of every model file of a finished build (the artifact
    and its companion files), which ``Target.stale_problem`` compares to find truncated or replaced files."""
    return {path.name: path.stat().st_size for path in paths}


def random_batch(source: OnnxSource, batch: int = 2, seed: int = 0) -> Any:
    """A random float32 input batch of ``source``'s shape, for a build's self-check."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal(source.example_shape(batch)).astype(np.float32)


def run_onnx(source: OnnxSource, batch: Any) -> Any:
    """``source`` run by ONNX Runtime on ``batch`` (cast to its input type): float32 class probabilities."""
    import numpy as np

    session = open_onnx(source.path)
    kind = np.float16 if source.input_type == "tensor(float16)" else np.float32
    return np.asarray(session.run(None, {source.input_name: batch.astype(kind)})[0], np.float32)


def source_record(sidecar: Mapping[str, Any]) -> tuple[str, str] | None:
    """(file name, sha256) of the source ONNX a sidecar records, or None when it records none readable."""
    record = sidecar.get("source_onnx")
    if not isinstance(record, Mapping):
        return None
    name, digest = record.get("file"), record.get("sha256")
    if not isinstance(name, str) or not isinstance(digest, str) or not name or "/" in name or "\\" in name:
        return None
    return name, digest


BUILD_CHECK_IMAGES = 2


def check_build(reference: Callable[[Any], Any], candidate: Callable[[Any], Any], source: OnnxSource, what: str,
                hint: str | None = None, gate: bool = True) -> dict[str, Any]:
    """A build's self-check: ``candidate`` (the built artifact, batch -> probabilities) against ``reference``
    (its source ONNX) through ``harness.compare`` on synthetic images, judged by the tolerance table's
    ``built`` row; UlffnError naming ``what`` when it fails (and ``gate``) or gives non-finite values.
    Returns the sidecar's ``check`` record."""
    from ulffn_deploy.harness import BUILD_ROW, check, compare, failures, passed, synthetic_images, tolerance_for
    from ulffn_deploy.runtime.base import FunctionSegmenter

    def finite(batch: Any) -> Any:
        import numpy as np

        output = candidate(batch)
        if not np.all(np.isfinite(output)):
            raise UlffnError(f"{what} gives non-finite values", "report the model; ONNX Runtime runs it")
        return output

    batch = source.input_shape[0] or BUILD_CHECK_IMAGES
    images = synthetic_images(batch, source.metadata.input_size)
    with FunctionSegmenter(source.path, source.metadata, reference, "source") as ref, \
            FunctionSegmenter(source.path, source.metadata, finite, "built") as built:
        comparison = compare(ref, built, images, batch_size=batch)
    checks = check(comparison, tolerance_for(BUILD_ROW))
    if gate and not passed(checks):
        raise UlffnError(f"{what} disagrees with {source.path.name}: {'; '.join(failures(checks))}", hint)
    return {"images": images.description, "tolerance": BUILD_ROW, "gated": gate, "passed": passed(checks),
            "max_abs_difference": comparison.max_abs_diff, "p99_abs_difference": comparison.p99_abs_diff,
            "mask_agreement": comparison.mask_dice}
