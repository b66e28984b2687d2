"""``ulffn-deploy build-engine``: exported ONNX -> TensorRT engine + sidecar, or the ONNX Runtime CPU model."""

from __future__ import annotations

import click

BACKENDS = ("tensorrt", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8")


@click.command(name="build-engine")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Which exported ONNX to build: ARTIFACTS/model.<precision>.onnx. "
                   "[default: fp16 for tensorrt, fp32 for onnxruntime]")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
              help="Build this ONNX file instead (its precision is read from its metadata).")
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(file_okay=False),
              help="Folder holding the exported models.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output file. [default: model.<precision>.engine, or model.<precision>.ort.onnx, beside the ONNX]")
@click.option("--backend", type=click.Choice(BACKENDS), default="tensorrt", show_default=True,
              help="tensorrt needs TensorRT and an NVIDIA GPU; onnxruntime builds the offline-optimised CPU model.")
@click.option("--min-batch", default=1, show_default=True, type=int, help="Smallest batch of the engine's profile.")
@click.option("--opt-batch", default=1, show_default=True, type=int, help="Batch TensorRT optimises for.")
@click.option("--max-batch", default=8, show_default=True, type=int, help="Largest batch (runtime splits larger ones).")
@click.option("--min-hw", type=int, default=None, help="Smallest square input size, for ONNX exported with dynamic H/W.")
@click.option("--opt-hw", type=int, default=None, help="Input size TensorRT optimises for (dynamic H/W only).")
@click.option("--max-hw", type=int, default=None, help="Largest input size (dynamic H/W only).")
@click.option("--workspace", "workspace_mib", type=int, default=None, help="Builder workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Tactic timing cache file, read if present and updated after the build (speeds up rebuilds).")
@click.option("--builder-optimization-level", type=click.IntRange(0, 5), default=None,
              help="TensorRT builder optimisation level (default 3; higher builds longer).")
@click.option("--version-compatible", is_flag=True, help="Build an engine later TensorRT versions of the same major can run.")
@click.option("--hardware-compatibility", type=click.Choice(("none", "ampere-plus")), default="none", show_default=True,
              help="ampere-plus: one engine for every GPU from Ampere on (may run slower).")
@click.option("--ort-optimization", type=click.Choice(("basic", "extended")), default="extended", show_default=True,
              help="ONNX Runtime graph optimisation level for --backend onnxruntime.")
def command(precision: str | None, onnx_path: str | None, artifacts: str, output: str | None, backend: str,
            min_batch: int, opt_batch: int, max_batch: int, min_hw: int | None, opt_hw: int | None, max_hw: int | None,
            workspace_mib: int | None, timing_cache: str | None, builder_optimization_level: int | None,
            version_compatible: bool, hardware_compatibility: str, ort_optimization: str) -> None:
    """Build the deployable artifact from an exported ONNX model.

    TensorRT: a plain engine plan (model.fp16.engine) plus a JSON sidecar (model.fp16.engine.json) with the
    profile, TensorRT version, GPU and source hash. Precision comes from the ONNX file itself; no FP16/INT8
    builder flags are used. ONNX Runtime: an offline-optimised model (model.fp32.ort.onnx) plus sidecar.
    """
    from ulffn_deploy.export.engine import EngineOptions, build_artifact, default_onnx
    from ulffn_deploy.runtime.devices import require_tensorrt

    if backend == "tensorrt":
        from ulffn_deploy.export.engine import NO_TENSORRT_HINT

        require_tensorrt("build a TensorRT engine", NO_TENSORRT_HINT)  # before any other work
    options = EngineOptions(min_batch, opt_batch, max_batch, min_hw, opt_hw, max_hw, workspace_mib, timing_cache,
                            builder_optimization_level, version_compatible, hardware_compatibility)
    if onnx_path is None:
        onnx_path = str(default_onnx(artifacts, precision or ("fp16" if backend == "tensorrt" else "fp32")))
    built = build_artifact(onnx_path, backend, output, options, precision, ort_optimization)
    click.echo(f"wrote {built} and {built.name}.json ({backend})")
