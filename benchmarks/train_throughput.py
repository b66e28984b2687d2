"""Training throughput.

CPU (default): images/s of the cpu-demo preset with 1 and 2 processes (gloo, started by
torch.distributed.run), measured in one run on a synthetic set; the first epoch (warm-up) is left out.

    python benchmarks/train_throughput.py [--data DIR] [--epochs 3] [--out benchmarks/results]

CUDA (--cuda): one AMP training step (bf16 where supported, else fp16 with loss scaling; channels_last)
of the full model (w=64, 512x512, batch 8), timed after warm-up, with peak GPU memory.

    python benchmarks/train_throughput.py --cuda [--batch-size 8] [--size 512] [--width 64]

Results go to OUT/train_throughput[_cuda].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ulffn_deploy.fileio import write_json_atomic, write_text_atomic


def run_cpu(data: Path, epochs: int, nprocs: list[int], scratch: Path) -> list[dict[str, Any]]:
    rows = []
    for nproc in nprocs:
        run_dir = scratch / f"run{nproc}"
        command = [sys.executable, "-m", "ulffn_deploy", "train", "--data", str(data), "--out", str(run_dir),
                   "--preset", "cpu-demo", "--epochs", str(epochs), "--nproc", str(nproc), "--quiet", "--overwrite"]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        wall = time.perf_counter() - started
        summary = json.loads((run_dir / "summary.json").read_text())
        rows.append({"processes": nproc, "threads_per_process": int(env["OMP_NUM_THREADS"]),
                     "images_per_second": summary["train_images_per_second"], "wall_seconds": wall,
                     "epochs": epochs, "final_val_dice": summary["final"]["dice"]})
    return rows


def cpu_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Training throughput, cpu-demo preset ({meta['machine']})", "",
             f"{meta['cpu_count']} CPU cores, torch {meta['torch']}; synthetic set of {meta['n_train']} images "
             f"at size {meta['data_size']}; epochs after the first are timed (data loading included, validation not).", "",
             "| processes | threads each | images/s | wall s (incl. start-up, validation) |", "|---|---|---|---|"]
    lines += [f"| {r['processes']} | {r['threads_per_process']} | {r['images_per_second']:.1f} | {r['wall_seconds']:.1f} |"
              for r in rows]
    lines += ["", "With several processes every BatchNorm layer synchronises its batch statistics (one gloo all-reduce "
              "forward, one backward), which costs more than it gains on a 2-core machine."]
    return "\n".join(lines) + "\n"


def run_cuda(width: int, size: int, batch: int, steps: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from ulffn_deploy.config import ModelConfig
    from ulffn_deploy.model import build_model
    from ulffn_deploy.train.trainer import amp_dtype

    if not torch.cuda.is_available():
        raise SystemExit("--cuda: PyTorch sees no CUDA GPU")
    device = torch.device("cuda")
    dtype = amp_dtype(device, True)
    model = build_model(ModelConfig("w-ac", width)).to(device).train()
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, 2, (batch, size, size), device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "amp_dtype": str(dtype).replace("torch.", ""),
            "width": width, "size": size, "batch": batch, "steps_timed": steps, "seconds_per_step": seconds,
            "images_per_second": batch / seconds, "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}


def cuda_markdown(r: dict[str, Any]) -> str:
    return "\n".join([
        f"# Training step on {r['gpu']} (torch {r['torch']})", "",
        "| model | input | batch | AMP | s/step | images/s | peak memory GiB |", "|---|---|---|---|---|---|---|",
        f"| ULFFN w-ac w={r['width']} | {r['size']}x{r['size']} | {r['batch']} | {r['amp_dtype']} | "
        f"{r['seconds_per_step']:.3f} | {r['images_per_second']:.1f} | {r['max_memory_allocated_gib']:.2f} |",
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="ISIC-layout folder (default: a synthetic set made here)")
    parser.add_argument("--n-train", type=int, default=160, help="images of the synthetic set")
    parser.add_argument("--data-size", type=int, default=128, help="shorter side of the synthetic images")
    parser.add_argument("--epochs", type=int, default=3, help="CPU: epochs per run (the first is not timed)")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="CPU: process counts to measure")
    parser.add_argument("--cuda", action="store_true", help="time one AMP step of the full model on the GPU")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="CUDA: steps timed after 3 warm-up steps")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    if args.cuda:
        result = run_cuda(args.width, args.size, args.batch_size, args.steps)
        write_json_atomic(args.out / "train_throughput_cuda.json", result)
        write_text_atomic(args.out / "train_throughput_cuda.md", cuda_markdown(result))
        print(cuda_markdown(result))
        return

    import torch

    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        data = args.data
        if data is None:
            from ulffn_deploy.synth import generate_dataset

            data = scratch / "isic"
            generate_dataset(data, args.n_train, 0, args.data_size, seed=0)
        rows = run_cpu(data, args.epochs, args.nproc, scratch)
    meta = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "n_train": args.n_train if args.data is None else str(args.data), "data_size": args.data_size}
    write_json_atomic(args.out / "train_throughput.json", {"meta": meta, "rows": rows})
    write_text_atomic(args.out / "train_throughput.md", cpu_markdown(rows, meta))
    print(cpu_markdown(rows, meta))


if __name__ == "__main__":
    main()
