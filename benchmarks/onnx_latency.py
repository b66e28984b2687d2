"""ONNX Runtime CPU latency of the exported FP32, FP16 and INT8 graphs against PyTorch eager, in one run.

    python benchmarks/onnx_latency.py [-o benchmarks/results] [--configs cpu-demo,paper] [--threads N]

Random-initialised ULFFN weights (latency does not depend on their values), batch 1, one synthetic
dermoscopy image preprocessed as deployed. The FP32/FP16 graphs are built exactly as ``ulffn-deploy
export`` builds them; INT8 is quantized with ONNX Runtime using the options of ``ulffn_deploy.calib``
(symmetric, per-channel Q/DQ, CAM kept FP32), or skipped with the reason when that is unavailable.
Writes onnx_latency.md and onnx_latency.json: median milliseconds per image and the speed-up
against PyTorch eager measured in the same run with the same number of threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ulffn_deploy.config import ModelConfig, Normalization
from ulffn_deploy.export.fp16 import convert_to_fp16
from ulffn_deploy.export.graph import slim
from ulffn_deploy.export.onnx_export import WithSoftmax, fp32_scopes, torch_to_onnx
from ulffn_deploy.fileio import write_json_atomic, write_text_atomic
from ulffn_deploy.harness import synthetic_images
from ulffn_deploy.model import build_model
from ulffn_deploy.preprocess import Preprocessing
from ulffn_deploy.targets.onnxruntime import create_session

# name -> (base width, input size, timed iterations); 512 at width 64 is ~1.2 TFLOPs per image
CONFIGS = {"cpu-demo": (16, 128, 20), "paper": (64, 512, 3)}
WARMUP = 1


def median_ms(run: Callable[[], object], iterations: int) -> float:
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def session(path: Path, threads: int) -> ort.InferenceSession:
    return create_session(path, threads=threads)


def quantize_int8(fp32: Path, out: Path, batch: np.ndarray) -> str | None:
    """Write an INT8 Q/DQ model with the calibration module's settings; return why not, if it cannot."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        from ulffn_deploy.calib import quantize as calib
        options, op_types, exclusions = calib.EXTRA_OPTIONS, calib.QUANTIZED_OP_TYPES, calib.default_exclusions
    except (ImportError, AttributeError) as exc:
        return f"INT8 skipped: ulffn_deploy.calib is not usable here ({exc})"

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": batch}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(
        str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        nodes_to_exclude=sorted(exclusions(onnx.load(str(fp32)).graph)), calibrate_method=CalibrationMethod.MinMax,
        extra_options=options,
    )
    return None


def bench_config(name: str, width: int, size: int, iterations: int, threads: int, folder: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(ModelConfig("w-ac", width)).eval()
    batch = synthetic_images(1, size).input_batch(1, Preprocessing(size, "full", Normalization()))
    paths = {p: folder / f"{name}.{p}.onnx" for p in ("fp32", "fp16", "int8")}
    fp32 = slim(torch_to_onnx(model, size))
    onnx.save(fp32, str(paths["fp32"]))
    onnx.save(convert_to_fp16(fp32, fp32_scopes(WithSoftmax(model))), str(paths["fp16"]))
    skipped = quantize_int8(paths["fp32"], paths["int8"], batch)

    wrapper = WithSoftmax(model).eval()
    image = torch.from_numpy(batch)
    with torch.inference_mode():
        rows = {"pytorch-eager-fp32": median_ms(lambda: wrapper(image), iterations)}
    for precision, path in paths.items():
        if path.exists():
            run = partial(session(path, threads).run, None, {"image": batch})
            rows[f"onnxruntime-cpu-{precision}"] = median_ms(run, iterations)
    eager = rows["pytorch-eager-fp32"]
    return {
        "config": name, "variant": "w-ac", "width": width, "input_size": size, "batch": 1,
        "iterations": iterations, "warmup": WARMUP,
        "median_ms": {k: round(v, 2) for k, v in rows.items()},
        "speedup_vs_pytorch_eager": {k: round(eager / v, 3) for k, v in rows.items()},
        "skipped": [skipped] if skipped else [],
    }


def markdown(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    setup = (f"{env['cpu']} ({env['threads']} threads), torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
             f"python {env['python']}; batch 1, random-initialised weights, median of the timed iterations.")
    lines = ["# ONNX Runtime CPU latency vs PyTorch eager", "", setup, ""]
    for r in results:
        size = f"{r['input_size']}x{r['input_size']}"
        title = f"## {r['config']}: ULFFN {r['variant']}, width {r['width']}, {size}, {r['iterations']} iterations"
        lines += [f"{title} after {r['warmup']} warm-up", "",
                  "| runtime | median ms | speed-up vs PyTorch eager |", "|---|---|---|"]
        lines += [f"| {k} | {v:.2f} | {r['speedup_vs_pytorch_eager'][k]:.2f}x |" for k, v in r["median_ms"].items()]
        lines += [f"\n{reason}" for reason in r["skipped"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
           "onnxruntime": ort.__version__, "python": platform.python_version()}
    results = []
    with tempfile.TemporaryDirectory(prefix="ulffn-latency-") as tmp:
        for name in args.configs.split(","):
            width, size, iterations = CONFIGS[name]
            print(f"{name}: width {width}, {size}x{size} ...", file=sys.stderr, flush=True)
            results.append(bench_config(name, width, size, iterations, args.threads, Path(tmp)))
            print(markdown(results[-1:], env), file=sys.stderr, flush=True)
    write_json_atomic(args.out / "onnx_latency.json", {"environment": env, "results": results})
    write_text_atomic(args.out / "onnx_latency.md", markdown(results, env))


if __name__ == "__main__":
    main()
