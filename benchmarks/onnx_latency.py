"""ONNX Runtime on the CPU with the exported FP32 and FP16 models and calibrate's INT8 model, against PyTorch
eager, in one run per configuration, through ``ulffn-deploy benchmark``'s code.

    python benchmarks/onnx_latency.py [-o benchmarks/results/onnx_latency] [--configs cpu-demo,paper] [--threads N]

The files are the shipped pipeline's (``pipeline_model.make_folder``: export_checkpoint, then calibrate,
never a quantizer or exporter of its own); batch 1 on synthetic dermoscopy images. Writes one
benchmark.{md,json,png} per configuration under the output folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_model import make_folder  # noqa: E402

from ulffn_deploy.benchmark import format_markdown, run_benchmark  # noqa: E402

# name -> (base width, input size); 512 px at width 64 is about 1.2 TFLOPs per image
CONFIGS = {"cpu-demo": (16, 128), "paper": (64, 512)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=Path(__file__).parent / "results" / "onnx_latency")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    for name in args.configs.split(","):
        width, size = CONFIGS[name]
        with tempfile.TemporaryDirectory(prefix="ulffn-latency-") as tmp:
            folder = Path(tmp)
            make_folder(folder, width, size, args.images, calibration_images=16, builds=(), log=log)
            results = run_benchmark(folder, args.out / name, batch_sizes=(1,), num_images=args.images, build=False,
                                    backends=("onnxruntime",), threads=args.threads, log=log)
        print(format_markdown(results))


if __name__ == "__main__":
    main()
