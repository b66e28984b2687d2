"""One benchmark over every backend x precision x batch size this machine can run (ARCHITECTURE.md, Checking).

Rows: PyTorch eager FP32 from the checkpoint (the baseline of every speed-up and the reference of every
agreement), PyTorch FP16 (autocast) when CUDA is there, ONNX Runtime on each ``model.<precision>.onnx``
(and ``.ort.onnx`` offline models when present), TensorRT on each ``model.<precision>.engine`` (built
from the ONNX file when missing) when TensorRT and a GPU are there. What cannot run here is listed as
skipped with the reason. Writes ``benchmark.md``, ``benchmark.json`` and ``benchmark.png``.

Needs torch (the reference); matplotlib only for the plot, imported when it is drawn.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import atomic_path, write_json_atomic, write_text_atomic
from ulffn_deploy.latency import Schedule
from ulffn_deploy.metrics import image_metrics
from ulffn_deploy.preprocess import probabilities_to_masks
from ulffn_deploy.devices import cpu_name
from ulffn_deploy.verify import (
    Item,
    Preparation,
    find_images,
    iterate_batches,
    latency_batch,
    measure_latency,
    open_runner,
)

PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("pytorch", "onnxruntime", "tensorrt")
DEFAULT_BATCH_SIZES = (1, 4, 8)
QUICK_SCHEDULE = Schedule(warmup_ms=100.0, iterations=3, duration_s=0.0)
QUICK_IMAGES = 4
LIBRARIES = ("numpy", "onnxruntime", "torch", "tensorrt", "polygraphy")


@dataclass
class Candidate:
    """One artifact to benchmark, how to open it, and why it cannot run here (``skip``)."""

    name: str
    backend: str
    precision: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext


# -- machine ------------------------------------------------------------------------------------------

def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for name in (package, f"{package}-cu13", f"{package}-cu12", f"{package}-gpu"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def _cuda_device() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_description() -> dict[str, Any]:
    """CPU model and cores, GPU (through torch) and library versions: the header of every result."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "gpu": _cuda_device(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


# -- candidates ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _torch_fp32_exact() -> Iterator[None]:
    """Full FP32 convolutions on CUDA (PyTorch would use TF32 on Ampere and newer)."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _autocast_fp16() -> contextlib.AbstractContextManager[Any]:
    import torch

    return torch.autocast("cuda", dtype=torch.float16)


def _torch_candidates(checkpoint: Path) -> list[Candidate]:
    import torch

    if not torch.cuda.is_available():
        return [Candidate("PyTorch eager", "pytorch", "fp32", checkpoint, {"device": "cpu"}),
                Candidate("PyTorch eager", "pytorch", "fp16", checkpoint, skip="needs a CUDA GPU (no FP16 on CPU)")]
    return [Candidate("PyTorch eager", "pytorch", "fp32", checkpoint, {"device": "cuda"}, context=_torch_fp32_exact),
            Candidate("PyTorch eager (autocast)", "pytorch", "fp16", checkpoint, {"device": "cuda"},
                      context=_autocast_fp16)]


def _ort_candidates(folder: Path) -> list[Candidate]:
    import onnxruntime as ort

    device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_device() else "cpu"
    rows = []
    for precision in PRECISIONS:
        path = folder / f"model.{precision}.onnx"
        making = "ulffn-deploy calibrate" if precision == "int8" else "ulffn-deploy export"
        skip = None if path.is_file() else f"{path.name} not found (make it with '{making}')"
        rows.append(Candidate("ONNX Runtime", "onnxruntime", precision, path, {"device": device}, skip))
        offline = folder / f"model.{precision}.ort.onnx"
        if offline.is_file():
            rows.append(Candidate("ONNX Runtime (offline-optimised)", "onnxruntime", precision, offline, {"device": device}))
    return rows


def _build_engine(onnx_path: Path, engine_path: Path) -> None:
    """Build a missing engine with the export stage's builder (the same as 'ulffn-deploy build-engine')."""
    from ulffn_deploy.targets.tensorrt import build_tensorrt_engine

    build_tensorrt_engine(onnx_path, engine_path)


def _trt_candidates(folder: Path, build: bool, log: Callable[[str], None]) -> list[Candidate]:
    from ulffn_deploy.devices import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    rows = []
    for precision in PRECISIONS:
        engine, source = folder / f"model.{precision}.engine", folder / f"model.{precision}.onnx"
        skip = reason
        if skip is None and not engine.is_file():
            if not (build and source.is_file()):
                skip = f"{engine.name} not found, nor {source.name} to build it from"
            else:
                log(f"building {engine} from {source.name}")
                try:
                    _build_engine(source, engine)
                except (UlffnError, ImportError) as exc:
                    skip = f"could not build {engine.name}: {exc}"
        rows.append(Candidate("TensorRT", "tensorrt", precision, engine, skip=skip))
    return rows


def find_candidates(folder: Path, checkpoint: Path, build_engines: bool = True, backends: Sequence[str] = BACKENDS,
                    log: Callable[[str], None] = lambda message: None) -> list[Candidate]:
    """Every backend x precision, in table order, each runnable or with its skip reason. PyTorch FP32
    always runs: it is the baseline and the reference."""
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise UlffnError(f"unknown backend(s) {', '.join(unknown)}", f"choose from {', '.join(BACKENDS)}")
    candidates = _torch_candidates(checkpoint)
    if "onnxruntime" in backends:
        candidates += _ort_candidates(folder)
    if "tensorrt" in backends:
        candidates += _trt_candidates(folder, build_engines, log)
    for candidate in candidates[1:]:
        if candidate.backend not in backends and not candidate.skip:
            candidate.skip = "not selected (--backends)"
    return candidates


# -- measuring ----------------------------------------------------------------------------------------

@dataclass
class Outputs:
    """What accuracy needs from one runner: network-resolution masks and, with labels, label Dice per image."""

    masks: list[np.ndarray]
    label_dice: list[float] | None


def predict_outputs(runner: Any, items: Sequence[Item], prep: Preparation, batch_size: int) -> Outputs:
    masks: list[np.ndarray] = []
    dice: list[float] = []
    for _, batch, placements, truths in iterate_batches(items, batch_size, prep):
        probabilities = runner.infer(batch)
        masks.extend(p[1] > 0.5 for p in probabilities)
        if all(t is not None for t in truths):
            originals = probabilities_to_masks(probabilities, placements)
            dice.extend(image_metrics(m, t)["dice"] for m, t in zip(originals, truths))
    return Outputs(masks, dice if len(dice) == len(masks) else None)


def mean_mask_agreement(reference: Outputs, outputs: Outputs) -> float:
    """Mean Dice between the two runners' masks, image by image."""
    return float(np.mean([image_metrics(m, r)["dice"] for m, r in zip(outputs.masks, reference.masks)]))


class _InContext:
    """A runner whose ``infer`` runs inside a context (autocast, TF32 off), for the latency loop too."""

    def __init__(self, runner: Any, context: Callable[[], contextlib.AbstractContextManager[Any]]) -> None:
        self._runner, self._context = runner, context

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self._context():
            return self._runner.infer(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


def _latency_cells(runner: Any, items: Sequence[Item], prep: Preparation, batch_sizes: Sequence[int],
                   schedule: Schedule) -> list[dict[str, Any]]:
    cells = []
    for size in batch_sizes:
        try:
            result = measure_latency(runner, latency_batch(items, size, prep), schedule)
        except UlffnError as exc:
            cells.append({"batch_size": size, "status": "skipped", "reason": str(exc)})
            continue
        host = result["series"]["host"]
        cells.append({"batch_size": size, "status": "ok", "median_ms": host["median"], "p99_ms": host["p99"],
                      "throughput": result["throughput"], "latency": result})
    return cells


def run_candidate(candidate: Candidate, items: Sequence[Item], prep: Preparation, batch_sizes: Sequence[int],
                  schedule: Schedule, reference: Outputs | None) -> tuple[dict[str, Any], Outputs | None]:
    """Accuracy and latency of one candidate, and its outputs (the reference's, for the first row)."""
    row: dict[str, Any] = {"name": candidate.name, "backend": candidate.backend, "precision": candidate.precision,
                           "path": str(candidate.path)}
    if candidate.skip:
        return {**row, "status": "skipped", "reason": candidate.skip}, None
    with open_runner(candidate.path, **candidate.options) as opened:
        runner = _InContext(opened, candidate.context)
        outputs = predict_outputs(runner, items, prep, max(batch_sizes))
        row.update(status="ok", device=_device_of(opened.info), size_mb=candidate.path.stat().st_size / 1e6,
                   mask_agreement=1.0 if reference is None else mean_mask_agreement(reference, outputs),
                   label_dice=float(np.mean(outputs.label_dice)) if outputs.label_dice is not None else None,
                   batches=_latency_cells(runner, items, prep, batch_sizes, schedule))
    return row, outputs


def _device_of(info: Mapping[str, Any]) -> str:
    if info.get("backend") == "tensorrt":
        gpu = info.get("gpu") or {}
        return str(gpu.get("name", "GPU")) if isinstance(gpu, Mapping) else str(gpu)
    providers = info.get("providers")
    if providers:
        return str(providers[0]).replace("ExecutionProvider", "").lower()
    return str(info.get("device", "cpu"))


def add_derived(rows: list[dict[str, Any]], gflops_per_image: float) -> None:
    """Speed-up against the first row (PyTorch FP32) at the same batch size, and achieved GFLOP/s."""
    baseline = {c["batch_size"]: c["median_ms"] for c in rows[0].get("batches", []) if c["status"] == "ok"}
    for row in rows:
        for cell in row.get("batches", []):
            if cell["status"] != "ok":
                continue
            base = baseline.get(cell["batch_size"])
            cell["speedup"] = base / cell["median_ms"] if base else None
            cell["gflops_per_s"] = gflops_per_image * cell["batch_size"] / (cell["median_ms"] / 1e3)


# -- the whole run ------------------------------------------------------------------------------------

def run_benchmark(
    artifacts_dir: str | os.PathLike[str] = "artifacts",
    out_dir: str | os.PathLike[str] | None = None,
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    quick: bool = False,
    schedule: Schedule | None = None,
    num_images: int | None = None,
    reference: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    build_engines: bool = True,
    backends: Sequence[str] = BACKENDS,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Benchmark everything under ``artifacts_dir``; write benchmark.{md,json,png} to ``out_dir``
    (``artifacts_dir/benchmark`` by default) and return the results."""
    from ulffn_deploy.config import ModelConfig, Normalization
    from ulffn_deploy.model import model_info
    from ulffn_deploy.checkpoint import load_checkpoint

    folder = Path(artifacts_dir)
    checkpoint = Path(reference) if reference else folder / "run" / "best.pt"
    if not checkpoint.is_file():
        raise UlffnError(f"{checkpoint}: no reference checkpoint", "run 'ulffn-deploy quickstart', or pass --reference")
    if not batch_sizes or min(batch_sizes) < 1:
        raise UlffnError(f"batch sizes {list(batch_sizes)} must be positive integers")
    schedule = schedule or (QUICK_SCHEDULE if quick else Schedule())
    items, description = find_images(data_dir or folder / "data", limit=num_images or (QUICK_IMAGES if quick else None))
    saved = load_checkpoint(checkpoint)
    prep = Preparation(int(saved["input_size"]), str(saved["fit_mode"]), Normalization.from_dict(saved["normalization"]))
    info = model_info(ModelConfig.from_dict(saved["model_config"]), prep.size)
    rows: list[dict[str, Any]] = []
    reference_outputs: Outputs | None = None
    for candidate in find_candidates(folder, checkpoint, build_engines, backends, log):
        log(f"{candidate.name} {candidate.precision}: " + (f"skipped ({candidate.skip})" if candidate.skip else "running"))
        row, produced = _run_logged(candidate, items, prep, batch_sizes, schedule, reference_outputs)
        if reference_outputs is None:  # the first row is PyTorch FP32, the reference
            if produced is None:
                raise UlffnError(f"the PyTorch reference could not run: {row.get('reason')}")
            reference_outputs = produced
        rows.append(row)
    add_derived(rows, info["gflops"])
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "model": {**info, "checkpoint": str(checkpoint)},
        "settings": {"data": description, "num_images": len(items), "fit_mode": prep.fit_mode,
                     "input_size": prep.size, "batch_sizes": list(batch_sizes), "schedule": schedule.describe(),
                     "quick": quick},
        "rows": rows,
    }
    write_results(results, Path(out_dir) if out_dir else folder / "benchmark")
    return results


def _run_logged(candidate: Candidate, items: Sequence[Item], prep: Preparation, batch_sizes: Sequence[int],
                schedule: Schedule, reference: Outputs | None) -> tuple[dict[str, Any], Outputs | None]:
    """``run_candidate``, with a failure of one backend recorded in its row rather than ending the run."""
    try:
        return run_candidate(candidate, items, prep, batch_sizes, schedule, reference)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, UlffnError) else f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        return {"name": candidate.name, "backend": candidate.backend, "precision": candidate.precision,
                "path": str(candidate.path), "status": "failed", "reason": reason}, None


# -- output -------------------------------------------------------------------------------------------

COLUMNS = ("Backend", "Precision", "Device", "Size (MB)", "Batch", "Median (ms)", "p99 (ms)", "Throughput (img/s)",
           "Speed-up", "GFLOP/s", "Mask agreement", "Label Dice", "Status")


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        head = f"| {row['name']} | {row['precision']} |"
        if row["status"] != "ok":
            lines.append(head + " - |" * (len(COLUMNS) - 3) + f" {row['status']}: {row['reason']} |")
            continue
        for cell in row["batches"]:
            common = (f" {row['device']} | {row['size_mb']:.2f} | {cell['batch_size']} |")
            if cell["status"] != "ok":
                lines.append(head + common + " - |" * (len(COLUMNS) - 6) + f" skipped: {cell['reason']} |")
                continue
            speedup = "-" if cell.get("speedup") is None else f"{cell['speedup']:.2f}x"
            lines.append(head + common + f" {cell['median_ms']:.2f} | {cell['p99_ms']:.2f} | {cell['throughput']:.1f} | "
                         f"{speedup} | {_num(cell.get('gflops_per_s'), 1)} | {_num(row['mask_agreement'], 4)} | "
                         f"{_num(row['label_dice'], 4)} | ok |")
    return lines


def format_markdown(results: Mapping[str, Any]) -> str:
    machine, model, settings = results["machine"], results["model"], results["settings"]
    libraries = ", ".join(f"{name} {version or 'not installed'}" for name, version in machine["libraries"].items())
    lines = [
        "# ULFFN benchmark",
        "",
        f"- Date: {results['date']}",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores; GPU: {machine['gpu'] or 'none'}; {machine['platform']}",
        f"- Python {machine['python']}; {libraries}",
        (f"- Model: ULFFN {model['variant']} width {model['width']}, {model['parameters']:,} parameters, input 3x"
        f"{model['input_size']}x{model['input_size']}, {model['gflops']:.3f} GFLOPs per image ({model['flop_convention']})"),
        (f"- Accuracy on {settings['data']} (fit {settings['fit_mode']}); mask agreement = mean Dice against "
        "PyTorch FP32 masks, label Dice = mean Dice against the labels"),
        (f"- Latency: host wall time per call, {settings['schedule']} per batch size; speed-up = PyTorch FP32 "
        "median / median at the same batch size; GFLOP/s = GFLOPs per image x batch / median"),
        "",
        *_table_lines(results["rows"]),
        "",
    ]
    return "\n".join(lines)


def plot_points(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, float]]:
    """(label, median ms per image at the smallest measured batch, mask agreement), one per runnable artifact."""
    points = []
    for row in rows:
        cells = [c for c in row.get("batches", []) if c["status"] == "ok"]
        if row["status"] == "ok" and cells:
            cell = min(cells, key=lambda c: c["batch_size"])
            points.append((f"{row['name']} {row['precision']} ({row['device']})",
                           cell["median_ms"] / cell["batch_size"], row["mask_agreement"]))
    return points


def write_plot(results: Mapping[str, Any], path: Path) -> None:
    """Latency against mask agreement, one labelled point per artifact (matplotlib's Agg canvas, no pyplot)."""
    from ulffn_deploy.deps import require

    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    figure = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    points = plot_points(results["rows"])
    for index, (label, latency, agreement) in enumerate(sorted(points, key=lambda point: point[1])):
        axes.scatter(latency, agreement, s=40)
        # labels of neighbouring points go alternately above and below, so that they do not overlap
        axes.annotate(label, (latency, agreement), textcoords="offset points", xytext=(5, 6 if index % 2 else -12),
                      fontsize=8)
    latencies = [latency for _, latency, _ in points]
    log_scale = bool(latencies) and max(latencies) > 10 * min(latencies)
    if log_scale:
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.margins(x=0.35, y=0.1)
    axes.set_xlabel(f"median latency per image (ms{', log scale' if log_scale else ''}; smallest batch measured)")
    axes.set_ylabel("mask agreement with PyTorch FP32 (mean Dice)")
    model = results["model"]
    axes.set_title(f"ULFFN {model['variant']} w{model['width']}, {model['input_size']} px; "
                   f"{results['machine']['cpu']}, GPU: {results['machine']['gpu'] or 'none'}", fontsize=9)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def write_results(results: Mapping[str, Any], out_dir: Path) -> None:
    """benchmark.md, benchmark.json and benchmark.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "benchmark.md", format_markdown(results))
    write_json_atomic(out_dir / "benchmark.json", results)
    write_plot(results, out_dir / "benchmark.png")
