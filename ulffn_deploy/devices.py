"""Is TensorRT usable here? Checks that import nothing heavy at module level and never raise on absence.

``import tensorrt`` alone is not enough: a type-stub package (``tensorrt-stubs``) installs a bare
``tensorrt`` folder that imports as an empty namespace package, so the check looks for the real API.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
from types import ModuleType

from ulffn_deploy.errors import UlffnError

TENSORRT_HINT = "pip install 'ulffn-deploy[tensorrt]' on a machine with an NVIDIA GPU"


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def import_tensorrt() -> ModuleType | None:
    """The real ``tensorrt`` module, or None when it is absent (or only type stubs are installed)."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return None
    return trt if hasattr(trt, "Builder") and hasattr(trt, "__version__") else None


def tensorrt_problem() -> str | None:
    """Why TensorRT cannot be imported, or None."""
    try:
        importlib.import_module("tensorrt")
    except ImportError as exc:
        return f"the tensorrt package is not importable ({exc})"
    if import_tensorrt() is None:
        return "the tensorrt package is not importable (only its type stubs are installed)"
    return None


def gpu_problem() -> str | None:
    """Why no NVIDIA GPU can be used through cuda-python, or None."""
    try:
        from ulffn_deploy.targets import cuda
    except ImportError as exc:
        if shutil.which("nvidia-smi") is None:
            return "no NVIDIA GPU found (no nvidia-smi, and cuda-python is not installed)"
        return f"cuda-python (cuda.bindings) is not importable ({exc})"
    try:
        cuda.device_count()
    except UlffnError as exc:
        return f"no NVIDIA GPU usable ({exc.message})"
    return None


def tensorrt_unavailable_reason() -> str | None:
    """Everything missing for TensorRT on this machine, joined into one line; None when it is usable."""
    problems = [p for p in (tensorrt_problem(), gpu_problem()) if p]
    return "; ".join(problems) if problems else None


def require_tensorrt(purpose: str, hint: str = TENSORRT_HINT) -> ModuleType:
    """The tensorrt module when TensorRT and a GPU are usable; otherwise a one-line UlffnError for ``purpose``."""
    reason = tensorrt_unavailable_reason()
    trt = import_tensorrt()
    if reason or trt is None:
        raise UlffnError(f"cannot {purpose}: {reason}", hint)
    return trt


def machine_key() -> str:
    """What a latency measurement depends on: the CPU model and core count, and the GPU when one is usable."""
    gpu = ""
    if gpu_problem() is None:
        from ulffn_deploy.targets import cuda

        gpu = " / " + str(cuda.device_properties(0)["name"])
    return f"{cpu_name()} x{os.cpu_count()}{gpu}"
