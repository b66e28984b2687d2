"""Atomic file output and hashing: no stage ever leaves a half-written file behind."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ulffn_deploy.errors import UlffnError

STALE_TEMP_SECONDS = 3600  # a temp file of ours this old was left by a killed process: removed at the next write
# errors of writing an output: bad input (the CLI's exit 2), never an internal error
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_OUTPUT_ERRNOS = (*_FULL, *_READ_ONLY, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP)


def output_error(path: str | os.PathLike[str], exc: OSError) -> UlffnError:
    """A one-line UlffnError naming the output ``path`` and what to do about ``exc``."""
    if exc.errno in _FULL:
        what, hint = "no space left on the disk (or file size limit reached)", "free some space or write elsewhere"
    elif exc.errno in _READ_ONLY:
        what, hint = "the folder is read-only (permission denied)", "choose a folder you can write to"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST) and _file_above(Path(path)) is not None:
        what, hint = f"{_file_above(Path(path))} is a file, not a folder", "choose an output path under a folder"
    else:
        what, hint = exc.strerror or type(exc).__name__, "choose another output path"
    return UlffnError(f"cannot write {path}: {what}", hint)


def _file_above(path: Path) -> Path | None:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent if not parent.is_dir() else None
    return None


@contextmanager
def output_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn the OSErrors of writing ``path`` (full disk, read-only folder, a file in the way) into UlffnError."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        raise output_error(path, exc) from exc


def check_writable_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and make sure a file can be created in it (before a long run writes there)."""
    folder = Path(folder)
    with output_errors(folder):
        _probe(folder)
    return folder


def _probe(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".ulffn-write-check.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(probe)


def check_writable_file(path: str | os.PathLike[str]) -> Path:
    """Make sure ``path`` can be written later: its folder is writable and it is not a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise UlffnError(f"cannot write {path}: it is a folder", "give a file name")
    with output_errors(path):
        _probe(path.parent)
    return path


def remove_stale_temp_files(final: Path, max_age: float = STALE_TEMP_SECONDS) -> None:
    """Remove ``.<name>.<random>.tmp`` files (and folders) of ``final`` older than ``max_age`` seconds: what
    a killed writer left behind. Younger ones may belong to a writer still at work and are kept."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    cutoff = time.time() - max_age
    try:
        candidates = [entry for entry in os.scandir(final.parent) if pattern.fullmatch(entry.name)]
        for entry in candidates:
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
    except OSError:
        pass  # cleaning up is a courtesy; the write itself reports real problems


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    Writing errors (full disk, read-only folder, a file where a folder should be) become a UlffnError
    naming ``path``; the temporary file is removed either way.
    """
    final = Path(path)
    with output_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(final)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with output_errors(final):
            yield tmp
            if tmp.exists():
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
