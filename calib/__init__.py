"""INT8 post-training calibration: FP32 ONNX -> explicitly quantized (Q/DQ) ONNX for TensorRT.

Entry point: ``ulffn_deploy.calib.pipeline.calibrate`` (the ``ulffn-deploy calibrate`` command).
Modules: ``source`` (the FP32 model and its preprocessing), ``reader`` (calibration and held-out images),
``quantize`` (ONNX Runtime calibrator and Q/DQ quantizer, TensorRT options), ``ranges`` (stored ranges),
``report`` (graph summary, INT8 vs FP32 accuracy), ``sensitivity`` (per-layer sensitivity).
"""
