"""Whether a built engine can run here, read from its sidecar before any TensorRT object exists.

A TensorRT plan is tied to the TensorRT version and the GPU's compute capability (docs/tensorrt.md,
Compatibility); a TensorRT-RTX engine to the TensorRT-RTX version and the compute capabilities it was built
for (NVIDIA's default set, or the ones its sidecar lists). Pure functions: unit-tested on CPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_CAPABILITY = re.compile(r"\d{1,3}(\.\d{1,3})?")
# TensorRT-RTX's default targets: compute capability 8.0, 8.6, 8.9, and 12.0 and later (NVIDIA, "CPU-Only AOT")
RTX_DEFAULT_CAPABILITIES = ("8.0", "8.6", "8.9", "12.0+")


def _short(value: Any) -> str:
    text = repr(value).encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= 40 else text[:37] + "..."


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def _capability(value: Any) -> tuple[int, int] | None:
    """(major, minor) of a compute capability like "8.9"; None when it is not one."""
    if not _CAPABILITY.fullmatch(str(value)):
        return None
    major, _, minor = str(value).partition(".")
    return int(major), int(minor or 0)


def engine_compatibility_problem(sidecar: Mapping[str, Any], gpu: Mapping[str, Any], tensorrt_version: str) -> str | None:
    """Why a TensorRT plan described by ``sidecar`` cannot run on ``gpu`` with ``tensorrt_version``, or None.

    Plans are tied to the TensorRT version and the GPU's compute capability (docs/tensorrt.md, Compatibility),
    unless built version-compatible (later TensorRT of the same major) or hardware-compatible (any GPU
    from Ampere, compute capability 8.0, on). A different GPU name with the same compute capability runs.
    """
    built = sidecar.get("gpu") or {}
    flags = sidecar.get("build_flags") or {}
    built_trt = str(sidecar.get("tensorrt_version", "?"))
    have, want = _version_tuple(tensorrt_version), _version_tuple(built_trt)
    if flags.get("version_compatible"):
        # the same or a later TensorRT: plans built version-compatible on 10 run on 11 (docs/tensorrt.md)
        version_ok = bool(have) and bool(want) and have >= want
    else:
        version_ok = have == want
    if not version_ok:
        return f"it was built with TensorRT {built_trt} and this is TensorRT {tensorrt_version}"
    here_cc, built_cc = _capability(gpu["compute_capability"]), _capability(built.get("compute_capability", "0.0"))
    if here_cc is None or built_cc is None:
        return (f"its sidecar records compute capability {_short(built.get('compute_capability'))}, "
                f"which is not a number like '8.9'")
    if flags.get("hardware_compatibility") == "ampere-plus":
        if here_cc < (8, 0):
            return f"it was built for Ampere and newer GPUs and {gpu['name']} has compute capability {gpu['compute_capability']}"
        return None
    if here_cc != built_cc:
        return (
            f"it was built on {built.get('name', '?')} (compute capability {built.get('compute_capability', '?')}) "
            f"and this GPU is {gpu['name']} (compute capability {gpu['compute_capability']})"
        )
    return None


def rtx_engine_problem(sidecar: Mapping[str, Any], gpu: Mapping[str, Any], rtx_version: str) -> str | None:
    """Why a TensorRT-RTX engine described by ``sidecar`` cannot run on ``gpu`` with TensorRT-RTX ``rtx_version``,
    or None. The engine runs on the same TensorRT-RTX version, on a GPU whose compute capability is one the
    sidecar's ``compute_capabilities`` lists ("12.0+": 12.0 and later)."""
    built = str(sidecar.get("tensorrt_rtx_version", "?"))
    if _version_tuple(built) != _version_tuple(rtx_version):
        return f"it was built with TensorRT-RTX {built} and this is TensorRT-RTX {rtx_version}"
    here = _capability(gpu.get("compute_capability"))
    if here is None:
        return f"this GPU's compute capability {_short(gpu.get('compute_capability'))} is not a number like '8.9'"
    targets: Sequence[str] = sidecar.get("compute_capabilities") or RTX_DEFAULT_CAPABILITIES
    for target in targets:
        lowest = _capability(str(target).removesuffix("+"))
        if lowest is not None and (here == lowest or (str(target).endswith("+") and here >= lowest)):
            return None
    return (f"it was built for compute capabilities {', '.join(map(str, targets))} and {gpu.get('name', 'this GPU')} "
            f"has {gpu.get('compute_capability')}")
