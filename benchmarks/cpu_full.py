"""The full model on this CPU, in one run: PyTorch FP32, ONNX Runtime FP32, OpenVINO FP32, FP16 (running
bf16 where the CPU has it) and INT8, at batch 1 and 4: median, p99, throughput and mask agreement with
PyTorch, through ``ulffn-deploy benchmark``'s code.

    python benchmarks/cpu_full.py [-o benchmarks/results/cpu_full] [--width 64] [--size 512] [--work DIR]
                                  [--quickstart artifacts]

``--quickstart DIR`` adds, in the same process and run, the same rows for a quickstart folder (its
``run/best.pt``, ``data/``, ``model.fp32.onnx`` and ``model.int8.onnx``; missing OpenVINO IRs are built
there), written to ``<out>/quickstart``. OpenVINO INT8 is built as ``build-engine`` builds it by default
(``int8_method auto``: NNCF on calibrate's images when NNCF is installed; docs/openvino_int8.md).

The artifacts come from the shipped pipeline (``pipeline_model.make_folder``: export_checkpoint,
calibrate, registry.build); the benchmark runs in a folder holding only these rows' files. Writes
benchmark.md, benchmark.json and benchmark.png to the output folder, with the CPU model and its ISA
features in the header.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_model import make_folder, measure_folder  # noqa: E402

from ulffn_deploy.benchmark import format_markdown, run_benchmark  # noqa: E402

BUILDS = (("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "int8"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=Path(__file__).parent / "results" / "cpu_full")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=4, help="test images for accuracy")
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--work", type=Path, help="keep the artifacts here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="measure the artifacts an earlier run left in --work")
    parser.add_argument("--quickstart", type=Path, help="also measure this quickstart artifacts folder")
    args = parser.parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="ulffn-cpu-full-") as tmp:
        work = args.work or Path(tmp)
        folder = work / "pipeline"
        if args.reuse and args.work:
            built = [path for _, p in BUILDS if (path := folder / f"model.{p}.xml").is_file()]
        else:
            built = make_folder(folder, args.width, args.size, args.images, args.calibration_images, BUILDS, log)
        rows = measure_folder(folder, [folder / "model.fp32.onnx", *built], work / "measured")
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
        results = run_benchmark(rows, args.out, batch_sizes=batch_sizes, num_images=args.images, build=False, log=log)
        print(format_markdown(results))
        if args.quickstart:
            keep = [args.quickstart / "model.fp32.onnx", *quickstart_builds(args.quickstart, log)]
            quick = measure_folder(args.quickstart, keep, work / "quickstart")
            print(format_markdown(run_benchmark(quick, args.out / "quickstart", batch_sizes=batch_sizes,
                                                num_images=args.images, build=False, log=log)))


def quickstart_builds(folder: Path, log: Callable[[str], None]) -> list[Path]:
    """The ``BUILDS`` artifacts of a quickstart folder, built where missing."""
    from ulffn_deploy.errors import UlffnError
    from ulffn_deploy.targets.registry import build

    built = []
    for target, precision in BUILDS:
        path = folder / f"model.{precision}.xml"
        try:
            built.append(path if path.is_file() else build(target, folder / f"model.{precision}.onnx"))
        except UlffnError as exc:
            log(f"not built: {target} {precision}: {exc.message}")
    return built


if __name__ == "__main__":
    main()
