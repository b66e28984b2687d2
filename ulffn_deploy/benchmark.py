"""One benchmark over every registered target x precision x batch size (docs/architecture.md, Checking).

Rows come from the target registry: PyTorch FP32 from the checkpoint first (the baseline of every
speed-up and the reference of every agreement), then every target x precision: its built artifact
(``model.<precision><build suffix>``, built from ``model.<precision>.onnx`` when missing and the target
builds here) and any other file of the target's suffixes (the exported ``model.<precision>.onnx`` for
ONNX Runtime). What cannot run here is listed as skipped with the target's own reason.

Accuracy goes through the evaluation harness (``ulffn_deploy.harness``): mask agreement and p99
probability error against PyTorch FP32, label Dice, and the verdict of the precision's tolerance row.
The reference runs once; its outputs are replayed for every row.

A latency cell is trusted only with at least ``MIN_CALLS`` timed calls over ``MIN_SECONDS``, and a
p99/median ratio of at most ``MAX_SPREAD``; other cells are flagged in the table (``--quick`` cells
always are). Writes ``benchmark.md``, ``benchmark.json`` and ``benchmark.png``. Needs torch (the
reference); matplotlib only for the plot.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import atomic_path, write_json_atomic, write_text_atomic
from ulffn_deploy.latency import Schedule, measure

if TYPE_CHECKING:
    from ulffn_deploy.harness import ImageSource
    from ulffn_deploy.runtime import Segmenter
    from ulffn_deploy.targets.registry import Candidate, Target

DEFAULT_BATCH_SIZES = (1, 4, 8)
QUICK_SCHEDULE = Schedule(warmup_ms=100.0, iterations=3, duration_s=0.0)
QUICK_IMAGES = 4
ACCURACY_BATCH = 4
MIN_CALLS = 10  # a trusted latency cell has at least this many timed calls ...
MIN_SECONDS = 2.0  # ... over at least this many seconds ...
MAX_SPREAD = 1.5  # ... and p99 / median at most this
LIBRARIES = ("numpy",)  # besides each registered target's own packages (Target.packages)


# -- machine ------------------------------------------------------------------------------------------

def _libraries() -> dict[str, str | None]:
    from ulffn_deploy.targets.registry import installed_version, targets

    versions = {name: installed_version(name) for name in LIBRARIES}
    for target in targets():
        versions.update(target.versions())
    return dict(sorted(versions.items()))


def _cuda_device() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_description() -> dict[str, Any]:
    """CPU model, cores and ISA features, GPU (through torch) and library versions: every result's header."""
    from ulffn_deploy.devices import cpu_features, cpu_name

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "cpu_features": cpu_features(),
        "gpu": _cuda_device(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": _libraries(),
    }


# -- candidates ---------------------------------------------------------------------------------------

def _build_missing(target: Target, artifact: Path, source: Path, log: Callable[[str], None]) -> str | None:
    """Build ``artifact`` from ``source`` with the registry's build (as build-engine does); why not, or None."""
    from ulffn_deploy.targets.registry import build

    log(f"building {artifact.name} from {source.name} ({target.name})")
    try:
        build(target.name, source, artifact)
    except UlffnError as exc:
        return f"could not build {artifact.name}: {exc.message}"
    return None


def _target_candidates(target: Target, folder: Path, found: Sequence[Candidate], build: bool,
                       log: Callable[[str], None]) -> list[Candidate]:
    """The rows of one file-based target: per precision its artifacts in ``folder`` (``found``, from the
    registry, stale ones already refused there) and its build output, built from ``model.<precision>.onnx``
    when missing and ``build``."""
    from ulffn_deploy.targets.registry import ARTIFACT_PREFIX, PRECISIONS, Candidate, candidate

    reason = target.unavailable_reason()
    rows = []
    for precision in PRECISIONS:
        stem = f"{ARTIFACT_PREFIX}{precision}"
        existing = [c for c in found if c.target is target and c.precision == precision]
        if target.builds:
            built = folder / (stem + str(target.build_suffix))
            if not any(c.path == built for c in existing):
                # a target that builds here for a device elsewhere is still built: its build time and size are measured here
                skip = (None if target.builds_here() else reason) or _missing_reason(built, folder / f"{stem}.onnx",
                                                                                     build, target, log)
                existing.append(Candidate(built, target, precision, skip) if skip else candidate(built, target))
        elif not existing:
            missing = f"{stem}{target.suffixes[0]}"
            rows.append(Candidate(folder / missing, target, precision, reason or f"no {missing} in {folder}"))
        rows += existing
    return sorted(rows, key=lambda c: (PRECISIONS.index(c.precision), len(c.path.name)))


def _missing_reason(built: Path, source: Path, build: bool, target: Target, log: Callable[[str], None]) -> str | None:
    if not source.is_file():
        making = "ulffn-deploy calibrate" if ".int8." in source.name else "ulffn-deploy export"
        return f"{built.name} not found, nor {source.name} to build it from (make it with '{making}')"
    if not build:
        return f"{built.name} not found (building is off: --no-build)"
    return _build_missing(target, built, source, log)


def find_candidates(folder: Path, checkpoint: Path, build: bool = True, backends: Sequence[str] | None = None,
                    log: Callable[[str], None] = lambda message: None) -> list[Candidate]:
    """PyTorch FP32 (always: the baseline and reference), then every registered target x precision, each
    runnable or with its reason (``problem``); ``backends`` limits which targets run (the others are listed
    skipped). Stale artifacts are skipped with a warning (``log``) naming their rebuild command."""
    from ulffn_deploy.targets.registry import Candidate, candidate, candidates, names, targets, warn_stale

    unknown = sorted(set(backends or ()) - set(names()))
    if unknown:
        raise UlffnError(f"unknown backend(s) {', '.join(unknown)}", f"choose from {', '.join(names())}")
    reference = replace(candidate(checkpoint), precision="fp32")
    rows = [reference]
    found = [c for c in candidates(folder) if c.path != checkpoint] if folder.is_dir() else []
    warn_stale(found, log)
    for target in targets():
        if target is reference.target and not target.builds:
            continue
        if target.addressed_by_url:
            rows.append(Candidate(folder, target, "-", f"{target.title} serves over a URL: 'ulffn-deploy "
                                                       "benchmark-server URL' sweeps its client concurrency"))
            continue
        if backends is not None and target.name not in backends:
            rows.append(Candidate(folder, target, "-", "not selected (--backends)"))
            continue
        rows += _target_candidates(target, folder, found, build, log)
    return rows


# -- measuring ----------------------------------------------------------------------------------------

class _Replay:
    """The reference's outputs, computed once per distinct batch and replayed for every row's comparison."""

    def __init__(self, reference: Segmenter) -> None:
        self._reference = reference
        self._outputs: dict[bytes, np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reference, name)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(np.ascontiguousarray(batch).tobytes()).digest()
        if key not in self._outputs:
            self._outputs[key] = self._reference.infer(batch)
        return self._outputs[key]


def cell_flags(result: Mapping[str, Any]) -> list[str]:
    """Why a latency cell is not to be trusted: too few calls or seconds, or a wide spread; [] when it is."""
    host = result["series"]["host"]
    flags = []
    if result["iterations"] < MIN_CALLS:
        flags.append(f"{result['iterations']} calls < {MIN_CALLS}")
    if result["walltime_s"] < MIN_SECONDS:
        flags.append(f"{result['walltime_s']:.1f} s < {MIN_SECONDS:g} s")
    if host["median"] > 0 and host["p99"] / host["median"] > MAX_SPREAD:
        flags.append(f"p99/median {host['p99'] / host['median']:.2f} > {MAX_SPREAD:g}")
    return flags


def _step(segmenter: Segmenter, batch: np.ndarray) -> Callable[[], None]:
    def step() -> None:
        segmenter.infer(batch)

    return step


def _latency_cells(segmenter: Segmenter, source: ImageSource, fit_mode: str | None, batch_sizes: Sequence[int],
                   schedule: Schedule) -> list[dict[str, Any]]:
    from ulffn_deploy.harness import preprocessing_of

    cells = []
    for size in batch_sizes:
        try:
            batch = source.input_batch(size, preprocessing_of(segmenter, fit_mode))
            result = measure(_step(segmenter, batch), size, schedule)
        except UlffnError as exc:
            cells.append({"batch_size": size, "status": "skipped", "reason": exc.message})
            continue
        host = result["series"]["host"]
        cells.append({"batch_size": size, "status": "ok", "median_ms": host["median"], "p99_ms": host["p99"],
                      "throughput": result["throughput"], "flags": cell_flags(result), "latency": result})
    return cells


def _precision_text(segmenter: Segmenter) -> str:
    from ulffn_deploy.runtime.metadata import runs_as_text

    return runs_as_text(segmenter.precision, segmenter.runs_as)


def run_candidate(candidate: Candidate, reference: _Replay | None, source: ImageSource, fit_mode: str | None,
                  batch_sizes: Sequence[int], schedule: Schedule, open_options: Mapping[str, Any]) -> dict[str, Any]:
    """Accuracy (against ``reference``; None for the reference itself) and latency of one candidate."""
    from ulffn_deploy.harness import check, compare, passed, runs_as_row, tolerance_for
    from ulffn_deploy.runtime import Segmenter

    row = _row_head(candidate)
    with Segmenter.load(candidate.path, candidate.target.name, **open_options) as segmenter:
        row.update(status="ok", precision=_precision_text(segmenter), device=candidate.target.device_of(segmenter.info),
                   size_mb=candidate.target.model_bytes(candidate.path) / 1e6)
        if reference is not None:
            comparison = compare(reference, segmenter, source, ACCURACY_BATCH, fit_mode)  # type: ignore[arg-type]
            checks = check(comparison, tolerance_for(runs_as_row(segmenter)))
            row.update(mask_agreement=comparison.mask_dice, p99_abs_diff=comparison.p99_abs_diff,
                       label_dice=(comparison.metrics or {}).get("candidate", {}).get("dice"),
                       label_dice_drop=comparison.label_dice_drop, passed=passed(checks),
                       checks=[c.to_dict() for c in checks])
        row["batches"] = _latency_cells(segmenter, source, fit_mode, batch_sizes, schedule)
    return row


def _row_head(candidate: Candidate) -> dict[str, Any]:
    return {"name": candidate.label, "backend": candidate.target.name, "precision": candidate.precision,
            "path": candidate.path.name}


def add_derived(rows: list[dict[str, Any]], gflops_per_image: float | None) -> None:
    """Speed-up against the first row (PyTorch FP32) at the same batch size, and achieved GFLOP/s."""
    baseline = {c["batch_size"]: c for c in rows[0].get("batches", []) if c["status"] == "ok"}
    for row in rows:
        for cell in row.get("batches", []):
            if cell["status"] != "ok":
                continue
            base = baseline.get(cell["batch_size"])
            cell["speedup"] = base["median_ms"] / cell["median_ms"] if base else None
            cell["speedup_flagged"] = bool(base is None or base["flags"] or cell["flags"])
            cell["gflops_per_s"] = (gflops_per_image * cell["batch_size"] / (cell["median_ms"] / 1e3)
                                    if gflops_per_image else None)


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
    source: ImageSource | None = None,
    fit_mode: str | None = None,
    build: bool = True,
    backends: Sequence[str] | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Benchmark everything under ``artifacts_dir``; write benchmark.{md,json,png} to ``out_dir``
    (``artifacts_dir/benchmark`` by default) and return the results. ``source`` replaces the images of
    ``data_dir``; ``threads`` sets the CPU threads of every CPU backend (their default: all cores)."""
    from ulffn_deploy.harness import find_images
    from ulffn_deploy.runtime import Segmenter
    from ulffn_deploy.verify import default_reference

    folder = Path(artifacts_dir)
    checkpoint = Path(reference) if reference else default_reference(folder)
    if not checkpoint.is_file():
        raise UlffnError(f"{checkpoint}: no reference checkpoint", "run 'ulffn-deploy quickstart', or pass --reference "
                         "(a checkpoint, or the model.fp32.onnx of a model imported with 'ulffn-deploy import-model')")
    if not batch_sizes or min(batch_sizes) < 1:
        raise UlffnError(f"batch sizes {list(batch_sizes)} must be positive integers")
    schedule = schedule or (QUICK_SCHEDULE if quick else Schedule())
    images = source or find_images(data_dir or folder / "data", limit=num_images or (QUICK_IMAGES if quick else None))
    info = reference_info(checkpoint)
    rows: list[dict[str, Any]] = []
    with Segmenter.load(checkpoint) as torch_reference:
        replay = _Replay(torch_reference)
        for candidate in find_candidates(folder, checkpoint, build, backends, log):
            log(f"{candidate.label} {candidate.precision}: "
                + (f"skipped ({candidate.problem})" if candidate.problem else "running"))
            rows.append(_run_logged(candidate, None if not rows else replay, images, fit_mode, batch_sizes, schedule,
                                    _open_options(candidate.target, threads)))
    if rows[0]["status"] != "ok":
        raise UlffnError(f"the reference could not run: {rows[0].get('reason')}")
    add_derived(rows, info["gflops"])
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "default_artifact": _default_artifact_name(folder),
        "machine": machine_description(),
        "model": {**info, "checkpoint": str(checkpoint)},
        "settings": {"data": images.description, "num_images": len(images), "fit_mode": fit_mode or "full",
                     "input_size": info["input_size"], "batch_sizes": list(batch_sizes),
                     "schedule": schedule.describe(), "quick": quick, "threads": threads,
                     "trusted_cell": {"min_calls": MIN_CALLS, "min_seconds": MIN_SECONDS, "max_p99_over_median": MAX_SPREAD}},
        "rows": rows,
    }
    write_results(results, Path(out_dir) if out_dir else folder / "benchmark")
    return results


def _default_artifact_name(folder: Path) -> str | None:
    """What predict and verify use in ``folder`` when no model is named (registry.DEFAULT_RULE), now that
    missing artifacts are built and verified ones recorded."""
    from ulffn_deploy.targets.registry import default_artifact

    try:
        return default_artifact(folder, log=lambda message: None).name  # stale ones were warned about already
    except UlffnError:
        return None


def reference_info(reference: Path) -> dict[str, Any]:
    """The model row of the results: ULFFN's parameters and GFLOPs from a checkpoint; for another model's
    reference artifact (``import-model``), its name and input size (GFLOPs unknown)."""
    if reference.suffix.lower() != ".pt":
        from ulffn_deploy.runtime.metadata import read_metadata

        meta = read_metadata(reference)
        return {"name": meta.model_name, "input_size": meta.input_size, "gflops": None}
    from ulffn_deploy.checkpoint import load_checkpoint
    from ulffn_deploy.config import ModelConfig
    from ulffn_deploy.model import model_info

    saved = load_checkpoint(reference)
    return model_info(ModelConfig.from_dict(saved["model_config"]), int(saved["input_size"]))


def _open_options(target: Target, threads: int | None) -> dict[str, Any]:
    """Segmenter options that make CPU rows comparable: the same thread count for every target that declares
    a ``threads`` load option."""
    if not threads:
        return {}
    return {"threads": threads} if target.load_option("threads") is not None else {}


def _run_logged(candidate: Candidate, reference: _Replay | None, source: ImageSource, fit_mode: str | None,
                batch_sizes: Sequence[int], schedule: Schedule, options: Mapping[str, Any]) -> dict[str, Any]:
    """``run_candidate``, with a failure of one backend recorded in its row rather than ending the run."""
    if candidate.problem:
        return {**_row_head(candidate), "status": "skipped", "reason": candidate.problem}
    try:
        return run_candidate(candidate, reference, source, fit_mode, batch_sizes, schedule, options)
    except Exception as exc:
        reason = exc.message if isinstance(exc, UlffnError) else f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        return {**_row_head(candidate), "status": "failed", "reason": reason}


# -- output -------------------------------------------------------------------------------------------

COLUMNS = ("Backend", "Precision", "Device", "Size (MB)", "Batch", "Median (ms)", "p99 (ms)", "Throughput (img/s)",
           "Speed-up", "GFLOP/s", "Mask agreement", "p99 prob. error", "Label Dice", "Tolerance", "Latency flags")


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _verdict(row: Mapping[str, Any]) -> str:
    if "passed" not in row:
        return "reference"
    return "pass" if row["passed"] else "FAIL"


def _cell_line(row: Mapping[str, Any], cell: Mapping[str, Any]) -> str:
    mark = " ⚠" if cell["flags"] else ""
    speedup = "-" if cell.get("speedup") is None else f"{cell['speedup']:.2f}x" + (" ⚠" if cell["speedup_flagged"] else "")
    return (f" {cell['median_ms']:.2f}{mark} | {cell['p99_ms']:.2f} | {cell['throughput']:.1f} | {speedup} | "
            f"{_num(cell.get('gflops_per_s'), 1)} | {_num(row.get('mask_agreement', 1.0), 4)} | "
            f"{_num(row.get('p99_abs_diff', 0.0), 4)} | {_num(row.get('label_dice'), 4)} | {_verdict(row)} | "
            f"{'; '.join(cell['flags']) or 'ok'} |")


def _table_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        head = f"| {row['name']} | {row['precision']} |"
        if row["status"] != "ok":
            lines.append(head + " - |" * (len(COLUMNS) - 3) + f" {row['status']}: {row['reason']} |")
            continue
        for cell in row["batches"]:
            common = f" {row['device']} | {row['size_mb']:.2f} | {cell['batch_size']} |"
            if cell["status"] != "ok":
                lines.append(head + common + " - |" * (len(COLUMNS) - 6) + f" skipped: {cell['reason']} |")
                continue
            lines.append(head + common + _cell_line(row, cell))
    return lines


def format_markdown(results: Mapping[str, Any]) -> str:
    machine, model, settings = results["machine"], results["model"], results["settings"]
    libraries = ", ".join(f"{name} {version or 'not installed'}" for name, version in machine["libraries"].items())
    features = machine.get("cpu_features")
    trusted = settings.get("trusted_cell", {"min_calls": MIN_CALLS, "min_seconds": MIN_SECONDS,
                                            "max_p99_over_median": MAX_SPREAD})
    lines = [
        "# ULFFN benchmark",
        "",
        f"- Date: {results['date']}",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores; CPU features: "
        f"{', '.join(features) if features else 'unknown'}; GPU: {machine['gpu'] or 'none'}; {machine['platform']}",
        f"- Python {machine['python']}; {libraries}",
        (f"- Model: ULFFN {model['variant']} width {model['width']}, {model['parameters']:,} parameters, input 3x"
         f"{model['input_size']}x{model['input_size']}, {model['gflops']:.3f} GFLOPs per image ({model['flop_convention']})"
         if "variant" in model else f"- Model: {model['name']} (imported), input 3x{model['input_size']}x{model['input_size']}"),
        (f"- Accuracy on {settings['data']} (fit {settings['fit_mode']}), through the evaluation harness: mask "
         "agreement = mean Dice against PyTorch FP32 masks, p99 prob. error = 99th percentile of the lesion probability "
         "difference, label Dice = mean Dice against the labels; Tolerance = the verdict of the precision's row of the "
         "tolerance table (docs/architecture.md). Precision: the file's, and what runs when that differs"),
        (f"- Latency: host wall time per call, {settings['schedule']} per batch size"
         + (f", {settings['threads']} threads per CPU backend" if settings.get("threads") else "")
         + "; speed-up = PyTorch FP32 median / median at the same batch size; GFLOP/s = GFLOPs per image x batch / median"),
        (f"- ⚠ marks a latency cell not to be trusted: fewer than {trusted['min_calls']} timed calls, under "
         f"{trusted['min_seconds']:g} s timed, or p99/median above {trusted['max_p99_over_median']:g} (see Latency flags)"),
        "",
        f"- Default artifact of the folder (what predict and verify use when no model is named): "
        f"{results.get('default_artifact') or 'none runs here'}",
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
                           cell["median_ms"] / cell["batch_size"], row.get("mask_agreement", 1.0)))
    return points


def write_plot(results: Mapping[str, Any], path: Path) -> None:
    """Latency against mask agreement. Points carry numbers only; a legend beside the axes names them, so
    labels never overlap however close the points are (matplotlib's Agg canvas, no pyplot)."""
    from ulffn_deploy.deps import require

    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    points = sorted(plot_points(results["rows"]), key=lambda point: point[1])
    figure = Figure(figsize=(11, 5.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    markers = "osD^vP*Xh<>p"
    for index, (label, latency, agreement) in enumerate(points, start=1):
        axes.scatter(latency, agreement, s=50, marker=markers[(index - 1) % len(markers)], label=f"{index}: {label}",
                     zorder=3)
        # numbers alternate around their point, so that neighbours' numbers stay apart
        offset = [(6, 6), (6, -12), (-14, 6), (-14, -12)][(index - 1) % 4]
        axes.annotate(str(index), (latency, agreement), textcoords="offset points", xytext=offset, fontsize=8)
    latencies = [latency for _, latency, _ in points]
    log_scale = bool(latencies) and max(latencies) > 10 * min(latencies)
    if log_scale:
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.margins(x=0.15, y=0.15)
    axes.set_xlabel(f"median latency per image (ms{', log scale' if log_scale else ''}; smallest batch measured)")
    axes.set_ylabel("mask agreement with PyTorch FP32 (mean Dice)")
    model, machine = results["model"], results["machine"]
    title = f"ULFFN {model['variant']} w{model['width']}" if "variant" in model else str(model["name"])
    axes.set_title(f"{title}, {model['input_size']} px; {machine['cpu']}, "
                   f"GPU: {machine['gpu'] or 'none'}", fontsize=9)
    axes.grid(True, alpha=0.3)
    if points:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, borderaxespad=0)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def write_results(results: Mapping[str, Any], out_dir: Path) -> None:
    """benchmark.md, benchmark.json and benchmark.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "benchmark.md", format_markdown(results))
    write_json_atomic(out_dir / "benchmark.json", results)
    write_plot(results, out_dir / "benchmark.png")
