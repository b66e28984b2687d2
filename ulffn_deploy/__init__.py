"""ulffn-deploy: ULFFN skin-lesion segmentation from training to a TensorRT engine.

Importing this package needs only numpy; torch, onnx and tensorrt are imported where they are used.
"""

from __future__ import annotations

from ulffn_deploy.errors import UlffnError

__version__ = "0.1.0"
__all__ = ["UlffnError", "__version__"]
