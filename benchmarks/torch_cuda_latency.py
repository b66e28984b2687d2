"""PyTorch latency of the full ULFFN on CUDA: FP32 against FP16, per batch size, timed with CUDA events.

    python benchmarks/torch_cuda_latency.py --width 64 --size 512 --batch-sizes 1,4,8 -o benchmarks/results

FP16 here is the whole model in half precision except the CAM statistics (kept FP32, as in the FP16
ONNX); FP32 disables TF32 so that it is real FP32 math. Numbers are medians of CUDA-event times of the
forward pass after warm-up, all from one run, so the ratios are comparable.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
from pathlib import Path

import torch

from ulffn_deploy.config import ModelConfig
from ulffn_deploy.model import CAM, build_model, model_info


class _Fp32Statistics(torch.nn.Module):
    """Runs the wrapped CAM in FP32 and returns to the caller's dtype."""

    def __init__(self, cam: torch.nn.Module) -> None:
        super().__init__()
        self.cam = cam.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam(x.float()).to(x.dtype)


def half_model(model: torch.nn.Module) -> torch.nn.Module:
    model = model.half()
    for name, module in list(model.named_modules()):
        if isinstance(module, CAM):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], _Fp32Statistics(module))
    return model


def time_forward(model: torch.nn.Module, batch: torch.Tensor, warmup: int, iters: int) -> list[float]:
    with torch.inference_mode():
        for _ in range(warmup):
            model(batch)
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(batch)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device: this benchmark needs an NVIDIA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    config = ModelConfig(width=args.width)
    gflops = model_info(config, args.size)["gflops"]
    reference = build_model(config).eval().cuda()
    variants = {"fp32": reference, "fp16": half_model(copy.deepcopy(reference))}
    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        x = torch.randn(batch_size, 3, args.size, args.size, device="cuda")
        for precision, model in variants.items():
            dtype = torch.float16 if precision == "fp16" else torch.float32
            times = time_forward(model.to(memory_format=torch.channels_last), x.to(dtype).contiguous(
                memory_format=torch.channels_last), args.warmup, args.iters)
            median = statistics.median(times)
            rows.append({"precision": precision, "batch": batch_size, "median_ms": median,
                         "p99_ms": sorted(times)[int(0.99 * (len(times) - 1))],
                         "images_per_s": batch_size * 1000 / median,
                         "tflops": gflops * batch_size / median})  # GFLOP / ms = TFLOP/s
    for row in rows:
        fp32 = next(r for r in rows if r["batch"] == row["batch"] and r["precision"] == "fp32")
        row["speedup_vs_fp32"] = fp32["median_ms"] / row["median_ms"]
    device = torch.cuda.get_device_name()
    header = (f"PyTorch {torch.__version__} on {device}, ULFFN w={args.width} at {args.size}x{args.size} "
              f"({gflops:.0f} GFLOP/image), CUDA events, median of {args.iters} after {args.warmup} warm-up")
    lines = [header, "", "| precision | batch | median ms | p99 ms | images/s | TFLOP/s | vs FP32 |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['precision']} | {r['batch']} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} | {r['images_per_s']:.1f} "
              f"| {r['tflops']:.1f} | {r['speedup_vs_fp32']:.2f}x |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "torch_cuda_latency.md").write_text("\n".join(lines) + "\n")
    (args.out / "torch_cuda_latency.json").write_text(json.dumps(
        {"device": device, "torch": torch.__version__, "python": platform.python_version(), "width": args.width,
         "size": args.size, "gflops_per_image": gflops, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
