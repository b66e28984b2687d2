"""Optional heavy dependencies, imported where used with an install hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from ulffn_deploy.errors import UlffnError

_EXTRA_FOR = {
    "torch": "train",
    "onnx": "export",
    "onnxconverter_common": "export",
    "onnxslim": "export",
    "tensorrt": "tensorrt",
    "cuda": "tensorrt",
    "matplotlib": "bench",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise a UlffnError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRA_FOR.get(top)
        hint = f"pip install 'ulffn-deploy[{extra}]'" if extra else f"pip install {top}"
        raise UlffnError(f"this needs the Python package {top!r}, which is not importable ({exc})", hint) from exc
