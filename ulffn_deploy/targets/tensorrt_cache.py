"""Build on first boot: an engine cache folder that builds a TensorRT engine from an ONNX file once per key.

A device ships ``model.fp16.onnx`` and builds its own engine, since plans do not move between GPUs or
TensorRT versions (docs/tensorrt.md). The key names everything the plan depends on: the ONNX file's
sha256, the build options, the GPU (name and compute capability) and the TensorRT version; a change of
any of them gives a new key, hence a new build. Each key is one folder ``DIR/<key>/`` holding the engine and
its sidecar. The tactic timing cache is shared by every key of the same GPU and TensorRT version
(``DIR/timing-<gpu>-trt<version>.cache``), so that a rebuild after an ONNX update is quick.

Concurrent first loads (two processes starting at once) build once: the builder holds an exclusive
``fcntl`` lock on ``DIR/<key>.lock``, builds into a temporary folder and renames it to ``DIR/<key>``
(atomic on one file system); a waiting process finds the finished folder when it gets the lock. A
crashed build leaves only a temporary folder, never a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ulffn_deploy.errors import UlffnError

KEY_OPTIONS_IGNORED = ("timing_cache",)  # where the timing cache lives does not change the plan


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "x"


def engine_cache_key(onnx_sha256: str, options: Mapping[str, Any], gpu: Mapping[str, Any], tensorrt_version: str) -> str:
    """A folder name that changes whenever the plan would: readable prefix (precision-free: the ONNX decides
    it) of compute capability and TensorRT version, then a hash of every input."""
    material = {
        "onnx_sha256": onnx_sha256,
        "build_options": {k: v for k, v in sorted(options.items()) if k not in KEY_OPTIONS_IGNORED},
        "gpu": str(gpu.get("name", "")),
        "compute_capability": str(gpu.get("compute_capability", "")),
        "tensorrt_version": str(tensorrt_version),
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"sm{_slug(str(material['compute_capability']))}-trt{_slug(str(tensorrt_version))}-{digest}"


def timing_cache_path(cache_dir: Path, gpu: Mapping[str, Any], tensorrt_version: str) -> Path:
    """The timing cache shared by every key of one GPU model and TensorRT version."""
    return cache_dir / f"timing-{_slug(str(gpu.get('name', 'gpu')))}-trt{_slug(str(tensorrt_version))}.cache"


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if needed); released when the block ends or the
    process dies, so a crashed builder never blocks the next one."""
    import fcntl

    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def cached_build(cache_dir: str | os.PathLike[str], key: str, name: str, build: Callable[[Path], None],
                 complete: Callable[[Path], bool] | None = None) -> tuple[Path, bool]:
    """``DIR/<key>/<name>``, built by ``build(path)`` when the entry is missing; (path, whether this call built it).

    ``build`` writes ``path`` (and anything beside it) inside a temporary folder that becomes ``DIR/<key>``
    by one rename. ``complete(path)`` says whether an existing entry is usable (default: the file exists).
    """
    cache = Path(cache_dir)
    entry = cache / key
    target = entry / name
    usable = complete or (lambda path: path.is_file())
    if usable(target):
        return target, False
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UlffnError(f"cannot create the engine cache folder {cache}: {exc.strerror}") from exc
    with exclusive_lock(cache / f"{key}.lock"):
        if usable(target):  # another process built it while this one waited
            return target, False
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=cache))
        try:
            build(staging / name)
            if entry.exists():  # an unusable leftover (e.g. edited by hand): replaced under the lock
                shutil.rmtree(entry)
            os.rename(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target, True


def read_shared_file(path: Path) -> bytes | None:
    """The bytes of a file that :func:`write_shared_file` keeps (None when absent or unreadable): every writer
    renames a complete file into place, so a reader never sees half of one and needs no lock."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def write_shared_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` under an exclusive lock on ``<path>.lock``, by an atomic rename: two
    processes saving at once (e.g. the TensorRT-RTX runtime cache of two servers) leave one complete file."""
    from ulffn_deploy.fileio import write_bytes_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UlffnError(f"cannot create the folder of {path}: {exc.strerror}") from exc
    with exclusive_lock(path.with_name(path.name + ".lock")):
        write_bytes_atomic(path, data)
