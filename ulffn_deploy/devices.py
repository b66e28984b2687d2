"""What this machine has: its CPU (name, inference-relevant ISA extensions), a usable NVIDIA GPU, and which
TensorRT modules import (full ``tensorrt``, lean ``tensorrt_lean``); ``machine_key`` names the machine for
latency records. Nothing heavy is imported at module level and no check raises when something is absent.

``import tensorrt`` alone is not enough: a type-stub package (``tensorrt-stubs``) installs a bare
``tensorrt`` folder that imports as an empty namespace package, so the check looks for the real API
(``targets/tensorrt_build.import_builder``).
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
from types import ModuleType

from ulffn_deploy.errors import UlffnError

TENSORRT_RUNTIMES = ("auto", "full", "lean")
TENSORRT_HINT = "pip install 'ulffn-deploy[tensorrt]' on a machine with an NVIDIA GPU"


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` value of ``/proc/cpuinfo`` ("" when absent), None where it is not readable (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.lower().startswith(field)), "")
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


# /proc/cpuinfo flag -> name: the instruction sets that decide CPU inference speed (FP32, INT8, BF16/FP16)
CPU_ISA_FLAGS = {
    "avx2": "AVX2", "avx512f": "AVX-512", "avx_vnni": "AVX-VNNI", "avx512_vnni": "AVX512-VNNI",
    "avx512_bf16": "AVX512-BF16", "avx512_fp16": "AVX512-FP16",
    "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16", "amx_fp16": "AMX-FP16",
}


def cpu_features() -> list[str] | None:
    """The inference-relevant ISA extensions of this CPU (``CPU_ISA_FLAGS`` names), None where /proc/cpuinfo
    is not readable (not Linux)."""
    flags = _cpuinfo("flags")
    if flags is None:
        return None
    present = set(flags.split())
    return [name for flag, name in CPU_ISA_FLAGS.items() if flag in present]


def import_tensorrt() -> ModuleType | None:
    """The real ``tensorrt`` module (the full TensorRT: builder and runtime), or None when it is absent (or only
    type stubs are installed)."""
    from ulffn_deploy.targets.tensorrt_build import import_builder

    return import_builder("tensorrt")


def import_tensorrt_lean() -> ModuleType | None:
    """The lean runtime (``tensorrt_lean``: runs version-compatible plans, builds nothing), or None."""
    try:
        trt = importlib.import_module("tensorrt_lean")
    except ImportError:
        return None
    return trt if hasattr(trt, "Runtime") and hasattr(trt, "__version__") else None


def import_tensorrt_runtime(choice: str = "auto") -> ModuleType | None:
    """The module that runs engines: ``tensorrt`` when present, else ``tensorrt_lean`` ("auto"); or exactly
    "full" or "lean". None when the chosen one is absent."""
    if choice not in TENSORRT_RUNTIMES:
        raise UlffnError(f"unknown TensorRT runtime {choice!r}", f"use one of {', '.join(TENSORRT_RUNTIMES)}")
    if choice == "full":
        return import_tensorrt()
    if choice == "lean":
        return import_tensorrt_lean()
    return import_tensorrt() or import_tensorrt_lean()


def is_lean(trt: ModuleType) -> bool:
    return trt.__name__.split(".")[0] == "tensorrt_lean"


def tensorrt_problem(build: bool = False) -> str | None:
    """Why TensorRT cannot run engines (or, with ``build``, build them: that needs the full package), or None."""
    if import_tensorrt() is not None or (not build and import_tensorrt_lean() is not None):
        return None
    try:
        importlib.import_module("tensorrt")
    except ImportError as exc:
        why = f"the tensorrt package is not importable ({exc})"
    else:
        why = "the tensorrt package is not importable (only its type stubs are installed)"
    if build and import_tensorrt_lean() is not None:
        why += "; tensorrt_lean runs engines but cannot build them"
    return why


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


def tensorrt_unavailable_reason(build: bool = False) -> str | None:
    """Everything missing to run TensorRT engines here (``build``: to build them), joined into one line; None
    when it is usable. Running needs ``tensorrt`` or ``tensorrt_lean``, building the full ``tensorrt``."""
    problems = [p for p in (tensorrt_problem(build), gpu_problem()) if p]
    return "; ".join(problems) if problems else None


def require_tensorrt(purpose: str, hint: str = TENSORRT_HINT) -> ModuleType:
    """The full tensorrt module when it and a GPU are usable; otherwise a one-line UlffnError for ``purpose``."""
    reason = tensorrt_unavailable_reason(build=True)
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
