"""Every GPU check and GPU latency row in one go, for the day a machine with an NVIDIA GPU and TensorRT is at hand.

    python benchmarks/gpu_checks.py -o benchmarks/results/gpu            # quickstart-size model
    python benchmarks/gpu_checks.py --width 64 --size 512 -o OUT          # the full-size model

1. ``pytest -m gpu`` (tests/test_tensorrt_gpu.py and every other GPU test), with each skip's reason.
2. A model folder made by the shipped pipeline (benchmarks/pipeline_model.py): ONNX fp32/fp16/int8 and the
   TensorRT and TensorRT-RTX engines that can be built here (TensorRT-RTX builds on any CPU).
3. ``ulffn-deploy benchmark`` on that folder for the TensorRT, TensorRT-RTX and ONNX Runtime rows (PyTorch
   FP32 is its baseline): latency where the GPU runs them, skipped rows with the reason elsewhere.
4. TensorRT-RTX's first start (JIT compilation, empty runtime cache) against its second (cache reused), in
   one run, as a ratio.
5. PyTorch on CUDA (benchmarks/torch_cuda_latency.py) where torch sees a GPU.

It runs on a CPU-only machine too and says what it skipped and why; ``summary.json`` / ``summary.md`` in the
output folder list every step.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def run_gpu_tests(out: Path) -> dict[str, Any]:
    log = out / "pytest_gpu.log"
    result = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-rs", "-q", "-p", "no:cacheprovider"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    log.write_text(result.stdout + result.stderr)
    lines = result.stdout.splitlines()
    skipped = sorted({line.split(": ", 1)[-1] for line in lines if line.startswith("SKIPPED")})
    return {"step": "pytest -m gpu", "exit_code": result.returncode, "summary": lines[-1] if lines else "",
            "skip_reasons": skipped, "log": log.name}


def make_model(out: Path, width: int, size: int) -> tuple[Path, dict[str, Any]]:
    from pipeline_model import make_folder

    from ulffn_deploy.targets.registry import target_named

    folder = out / f"model-w{width}-{size}"
    builds, skipped = [], {}
    for name in ("tensorrt", "tensorrt-rtx"):
        reason = target_named(name).build_unavailable_reason()
        if reason:
            skipped[name] = reason
        else:
            builds += [(name, precision) for precision in ("fp32", "fp16", "int8")]
    messages: list[str] = []
    built = make_folder(folder, width, size, test_images=8, calibration_images=16, builds=builds, log=messages.append)
    rows = [{"file": path.name, "bytes": path.stat().st_size,
             "build_seconds": json.loads(path.with_name(path.name + ".json").read_text()).get("build_seconds")}
            for path in built]
    return folder, {"step": "build", "built": rows, "skipped": skipped,
                    "not_built": [m for m in messages if m.startswith("not built")]}


def run_benchmark(folder: Path, out: Path, quick: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "ulffn_deploy", "benchmark", "--artifacts", str(folder), "-o", str(out / "benchmark"),
               "--backends", "tensorrt,tensorrt-rtx,onnxruntime", "--no-build", *(["--quick"] if quick else [])]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    (out / "benchmark.log").write_text(result.stdout + result.stderr)
    return {"step": "ulffn-deploy benchmark", "exit_code": result.returncode, "report": "benchmark/benchmark.md",
            "log": "benchmark.log"}


def rtx_first_and_second_start(folder: Path) -> dict[str, Any]:
    from ulffn_deploy.targets.tensorrt_rtx import TARGET

    step: dict[str, Any] = {"step": "TensorRT-RTX first start vs cached start"}
    engine = folder / "model.fp16.rtxengine"
    reason = TARGET.unavailable_reason() or (None if engine.is_file() else f"{engine.name} was not built")
    if reason:
        return {**step, "skipped": reason}
    import numpy as np

    from ulffn_deploy.runtime import Segmenter

    cache = folder / "rtx-runtime.cache"
    cache.unlink(missing_ok=True)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        with Segmenter.load(engine, runtime_cache=str(cache)) as segmenter:
            segmenter.infer(np.zeros((1, 3, segmenter.input_size, segmenter.input_size), np.float32))
            loaded = segmenter.info["runtime_cache_loaded"]
        seconds.append(time.perf_counter() - start)
    return {**step, "first_s": round(seconds[0], 3), "second_s": round(seconds[1], 3),
            "second_over_first": round(seconds[1] / seconds[0], 3), "second_used_cache": loaded}


def torch_cuda(out: Path, width: int, size: int) -> dict[str, Any]:
    step: dict[str, Any] = {"step": "PyTorch CUDA latency"}
    try:
        import torch
    except ImportError as exc:
        return {**step, "skipped": f"torch is not importable ({exc})"}
    if not torch.cuda.is_available():
        return {**step, "skipped": "torch sees no CUDA GPU"}
    command = [sys.executable, str(ROOT / "benchmarks" / "torch_cuda_latency.py"), "--width", str(width),
               "--size", str(size), "-o", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    (out / "torch_cuda.log").write_text(result.stdout + result.stderr)
    return {**step, "exit_code": result.returncode, "log": "torch_cuda.log"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--quick", action="store_true", help="benchmark --quick (every latency cell flagged)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out pytest -m gpu")
    args = parser.parse_args()
    from ulffn_deploy.devices import cpu_name, gpu_problem

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    steps = [] if args.skip_tests else [run_gpu_tests(out)]
    folder, built = make_model(out, args.width, args.size)
    steps += [built, run_benchmark(folder, out, args.quick), rtx_first_and_second_start(folder),
              torch_cuda(out, args.width, args.size)]
    summary = {"machine": {"cpu": cpu_name(), "python": platform.python_version(), "gpu_problem": gpu_problem()},
               "model": {"width": args.width, "size": args.size}, "steps": steps}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# GPU checks ({cpu_name()}; GPU: {gpu_problem() or 'usable'})", ""]
    for step in steps:
        details = {k: v for k, v in step.items() if k != "step"}
        lines.append(f"- **{step['step']}**: {json.dumps(details)}")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
