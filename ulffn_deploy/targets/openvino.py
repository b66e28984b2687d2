"""OpenVINO target: exported ONNX -> OpenVINO IR (``model.<precision>.xml`` + ``.bin``) for x86 CPUs (and the
GPU/NPU devices OpenVINO finds), plus its JSON sidecar.

The artifact is OpenVINO IR written by ``ov.save_model`` (weights kept as they are in the ONNX file:
FP32, FP16, or the INT8 Q/DQ model as ``calibrate`` wrote it), not the ONNX plus a compiled-model
cache. Measured on the full model (width 64, 512 px; 2-core AMD EPYC Zen 4, OpenVINO 2026.4), read +
compile: ONNX 0.55 s, IR 0.10 s, ONNX with a warm compiled-model cache 0.03 s but 0.95 s cold; sizes:
IR 228.7 MB against ONNX 228.6 MB, and a cache would add a 228.5 MB blob beside the ONNX (twice the
disk) that is specific to the CPU and OpenVINO version that wrote it. IR loads 5x faster than ONNX,
costs no extra disk and any OpenVINO since the one that wrote it reads it.

Precision: OpenVINO's CPU plugin picks an inference precision itself (bf16 on CPUs with AMX or
AVX512-BF16, also for FP32 models), and an IR cannot carry that choice. So the build records the
precision in the sidecar (``inference_precision``: f32, bf16 or f16) and the Segmenter sets it when it
compiles: ``fp32`` artifacts always run f32; ``fp16`` artifacts run bf16 where the CPU has BF16, else
f16 where it has FP16, else f32; ``int8`` artifacts run their quantized convolutions in INT8 and the
other layers in ``INT8_OTHER_LAYERS``. ``info``, verify and benchmark show the precision that runs.

INT8 (``targets/openvino_int8.py``, docs/openvino_int8.md): by default NNCF's quantisation of model.fp32.onnx
with calibrate's images and FP32-keep rules (fastest); without NNCF, calibrate's Q/DQ file as it is where
OpenVINO keeps its activations signed (AMX CPUs), else that file with its int8 activations re-encoded as
uint8 / zero point 128 (the same grid), because OpenVINO 2026.4 without AMX computes a signed-int8 Q/DQ
after a Concat wrongly. The float layers of
an INT8 IR run bf16 where the CPU has BF16. The build reads the compiled model's runtime graph and counts
its convolutions per precision (sidecar ``layer_precisions``); an INT8 IR running none in int8 fails.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.runtime.base import Segmenter
from ulffn_deploy.runtime.metadata import ArtifactMetadata, read_sidecar, sidecar_path
from ulffn_deploy.targets.registry import BuildOption, Target

INSTALL_HINT = "pip install openvino"
INFERENCE_PRECISIONS = ("auto", "f32", "bf16", "f16")
PERFORMANCE_HINTS = ("latency", "throughput")
DEVICES = ("CPU", "GPU", "NPU", "AUTO")
# OpenVINO's OPTIMIZATION_CAPABILITIES entry a CPU needs to run each inference precision
NEEDS_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}
LABELS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
# layers of an INT8 model that are not quantized run in the first of these the CPU has (docs/openvino_int8.md)
INT8_OTHER_LAYERS = ("bf16", "f32")

BUILD_OPTIONS = (
    BuildOption("inference_precision", str, "auto", "OpenVINO CPU inference precision: auto = f32 for an fp32 "
                "model, bf16 (else f16, else f32) for fp16 as this CPU supports, INT8 with bf16 (else f32) elsewhere "
                "for int8.", choices=INFERENCE_PRECISIONS),
    BuildOption("int8_method", str, "auto", "How an INT8 IR is made: nncf (NNCF quantises model.fp32.onnx on "
                "calibrate's images; fastest), qdq (calibrate's file as it is; exact where OpenVINO keeps int8 "
                "activations signed, AMX CPUs), uint8-qdq (calibrate's file re-encoded; exact everywhere, slower); "
                "auto = nncf when installed, else qdq where exact here, else uint8-qdq.",
                choices=("auto", "nncf", "qdq", "uint8-qdq")),
    BuildOption("performance_hint", str, "latency", "OpenVINO performance hint the artifact loads with by default "
                "(latency: one request uses every core; throughput: parallel requests).", choices=PERFORMANCE_HINTS),
)


@functools.cache
def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise UlffnError(f"openvino is not importable ({exc})", INSTALL_HINT) from exc
    return openvino


@functools.cache
def core() -> Any:
    """One ``openvino.Core`` per process (it caches plugins)."""
    return _openvino().Core()


def openvino_version() -> str:
    return str(_openvino().get_version()).split("-")[0]


@functools.cache
def capabilities(device: str = "CPU") -> tuple[str, ...]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of ``device`` here (e.g. FP32, BF16, INT8), () if it has none."""
    try:
        return tuple(str(c) for c in core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError:
        return ()


def runs_as(source_precision: str, inference_precision: str) -> str:
    """What actually computes: "fp32", "bf16", "fp16", or "int8+f32" (INT8 layers, the rest in f32)."""
    if source_precision == "int8":
        return f"int8+{inference_precision}"
    return LABELS.get(inference_precision, inference_precision)


def resolve_inference_precision(requested: str, source_precision: str, caps: Sequence[str]) -> str:
    """The inference precision an artifact of ``source_precision`` runs on a CPU with ``caps``."""
    if source_precision == "fp32":
        if requested not in ("auto", "f32"):
            raise UlffnError(f"--inference-precision {requested} would run an fp32 artifact in {requested}",
                             "build model.fp16.onnx for bf16/f16 (its name then says it is reduced precision)")
        return "f32"
    if requested == "auto":
        if source_precision == "int8":
            return next((p for p in INT8_OTHER_LAYERS if NEEDS_CAPABILITY.get(p, "") in (*caps, "")), "f32")
        return next((p for p in ("bf16", "f16") if NEEDS_CAPABILITY[p] in caps), "f32")
    need = NEEDS_CAPABILITY.get(requested)
    if need and need not in caps:
        raise UlffnError(f"this CPU cannot run {requested} inference (OpenVINO capabilities: {', '.join(caps)})",
                         "use --inference-precision auto")
    return requested


def weights_path(xml: Path) -> Path:
    return xml.with_suffix(".bin")


def rebuild_command(path: Path, sidecar: Mapping[str, Any]) -> str:
    """The build-engine command that rebuilds ``path`` for this machine (automatic inference precision)."""
    source = path.parent / str((sidecar.get("source_onnx") or {}).get("file", "model.fp32.onnx"))
    return f"ulffn-deploy build-engine --backend openvino --onnx {source} -o {path}"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def compatibility_problem(path: Path, sidecar: Mapping[str, Any], caps: Sequence[str], version: str) -> str | None:
    """Why the IR ``sidecar`` describes cannot run on this CPU (``caps``) with OpenVINO ``version``, or None."""
    weights = weights_path(path)
    if not weights.is_file():
        return f"its weights file {weights.name} is missing"
    if weights.stat().st_size != (sidecar.get("ir") or {}).get("bin_bytes", weights.stat().st_size):
        return f"{weights.name} does not match its sidecar (another build's weights); rebuild: {rebuild_command(path, sidecar)}"
    built = str(sidecar.get("openvino_version", "0"))
    if _version_tuple(built) > _version_tuple(version):
        return f"it was written by OpenVINO {built} and this is OpenVINO {version}; upgrade openvino"
    precision = str(sidecar.get("inference_precision", "f32"))
    need = NEEDS_CAPABILITY.get(precision)
    if need and need not in caps:
        cpu = (sidecar.get("cpu") or {}).get("name", "another CPU")
        return (f"it was built on {cpu} to run {LABELS.get(precision, precision)} and this CPU has no {need} support; "
                f"rebuild it here: {rebuild_command(path, sidecar)}")
    return None


class OpenVinoSegmenter(Segmenter):
    """An OpenVINO IR compiled for ``device`` with the inference precision its sidecar records."""

    backend = "openvino"

    def __init__(self, path: Path, fit_mode: str = "full", device: str = "CPU", threads: int | None = None,
                 performance_hint: str | None = None) -> None:
        self.sidecar = read_sidecar(path, "rebuild it with 'ulffn-deploy build-engine --backend openvino'")
        super().__init__(path, ArtifactMetadata.from_mapping(self.sidecar, path), fit_mode)
        self.device = _check_device(device)
        hint = performance_hint or (self.sidecar.get("build_flags") or {}).get("performance_hint") or "latency"
        if hint not in PERFORMANCE_HINTS:
            raise UlffnError(f"unknown performance hint {hint!r}", f"use one of {', '.join(PERFORMANCE_HINTS)}")
        self.performance_hint = hint
        if self.device == "CPU":
            problem = compatibility_problem(path, self.sidecar, capabilities("CPU"), openvino_version())
            if problem:
                raise UlffnError(f"{path.name} cannot run here: {problem}")
        self.compiled = _compile(path, self.device, self._config(hint, threads))
        self._request = self.compiled.create_infer_request()
        self._queue: Any = None
        if hint == "throughput":
            jobs = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self._queue = _openvino().AsyncInferQueue(self.compiled, max(jobs, 1)) if jobs > 1 else None
        self._fixed_hw = [d.get_length() if d.is_static else None for d in self.compiled.input(0).get_partial_shape()][2:]

    def _config(self, hint: str, threads: int | None) -> dict[str, Any]:
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper()}
        if self.device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = str(self.sidecar.get("inference_precision", "f32"))
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
        elif threads:
            raise UlffnError("threads applies to device CPU only", f"drop threads for device {self.device}")
        return config

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        if any(want is not None and want != got for want, got in zip(self._fixed_hw, batch.shape[2:])):
            raise UlffnError(f"{self.path.name} takes {self._fixed_hw[0]}x{self._fixed_hw[1]} inputs, got "
                             f"{batch.shape[2]}x{batch.shape[3]}", f"preprocess to size {self.input_size}")
        start = time.perf_counter()
        if self._queue is not None and len(batch) > 1:
            output = self._infer_parallel(batch)
        else:
            self._request.infer([batch], share_inputs=True)
            output = np.array(self._request.get_output_tensor(0).data, dtype=np.float32)
        self.last_timings = {"compute": (time.perf_counter() - start) * 1e3}
        return output

    def _infer_parallel(self, batch: np.ndarray) -> np.ndarray:
        """Throughput hint: the batch split across OpenVINO's parallel infer requests."""
        chunks = np.array_split(batch, min(len(batch), len(self._queue)))
        results: list[np.ndarray | None] = [None] * len(chunks)

        def done(request: Any, index: int) -> None:
            results[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32)

        self._queue.set_callback(done)
        for index, chunk in enumerate(chunks):
            self._queue.start_async([np.ascontiguousarray(chunk)], index)
        self._queue.wait_all()
        return np.concatenate(results)  # type: ignore[arg-type]

    def _close_impl(self) -> None:
        del self._request, self._queue, self.compiled

    def _backend_info(self) -> dict[str, Any]:
        compiled = None if self._closed else self.compiled
        precision = str(self.sidecar.get("inference_precision", "f32"))
        if compiled is not None and self.device == "CPU":
            precision = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        return {
            "openvino_version": openvino_version(),
            "device": self.device,
            "execution_devices": list(compiled.get_property("EXECUTION_DEVICES")) if compiled is not None else [],
            "performance_hint": self.performance_hint,
            "inference_precision": precision,
            "runs_as": runs_as(self.metadata.precision, precision),
            "layer_precisions": self.sidecar.get("layer_precisions"),
            "built_on": (self.sidecar.get("cpu") or {}).get("name"),
        }


def _type_name(element_type: Any) -> str:
    """An OpenVINO element type (``<Type: 'bfloat16'>``) -> its short name ("bf16")."""
    name = str(getattr(element_type, "get_type_name", lambda: element_type)())
    return {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}.get(name, name)


def _check_device(device: str) -> str:
    device = device.upper()
    if device not in DEVICES:
        raise UlffnError(f"unknown OpenVINO device {device!r}", f"use one of {', '.join(DEVICES)}")
    found = [str(d) for d in core().available_devices]
    if device != "AUTO" and not any(d.split(".")[0] == device for d in found):
        raise UlffnError(f"OpenVINO finds no {device} device here (it finds {', '.join(found) or 'none'})",
                         "use device CPU")
    return device


def _compile(path: Path, device: str, config: Mapping[str, Any]) -> Any:
    try:
        return core().compile_model(core().read_model(os.fspath(path)), device, dict(config))
    except RuntimeError as exc:
        raise UlffnError(f"{path}: OpenVINO cannot load it ({' '.join(str(exc).split())[:300]})",
                         "rebuild it with 'ulffn-deploy build-engine --backend openvino'") from exc


class OpenVinoTarget(Target):
    """OpenVINO IR (``model.<precision>.xml`` + ``.bin`` + sidecar), on the CPU by default."""

    name = "openvino"
    title = "OpenVINO"
    description = "OpenVINO IR (.xml with its .bin weights), compiled for this CPU's inference precision"
    packages = ("openvino",)
    suffixes = (".xml",)
    load_options = (BuildOption("device", str, "cpu", "OpenVINO device.", choices=tuple(d.lower() for d in DEVICES)),)
    build_suffix = ".xml"
    build_options = BUILD_OPTIONS
    default_build_precision = "fp32"
    rank = 20
    # measured (README, OpenVINO): INT8 is the fastest on VNNI/AMX CPUs, then bf16 where the CPU has it
    preferred_precisions = ("int8", "fp16", "fp32")
    install_hint = INSTALL_HINT

    def unavailable_reason(self) -> str | None:
        import importlib.util

        return None if importlib.util.find_spec("openvino") else "openvino is not installed"

    def companion_files(self, path: Path) -> tuple[Path, ...]:
        return (weights_path(path),)

    def artifact_problem(self, path: Path) -> str | None:
        try:
            sidecar = read_sidecar(path)
        except UlffnError as exc:
            return exc.message
        return compatibility_problem(path, sidecar, capabilities("CPU"), openvino_version())

    def load(self, path: Path, **options: Any) -> Segmenter:
        return OpenVinoSegmenter(path, **options)

    def build(self, source_onnx: Path, output: Path | None, options: Mapping[str, Any], command: Sequence[str]) -> Path:
        return build_openvino_ir(source_onnx, output or self.default_output(source_onnx), options, command)


TARGET = OpenVinoTarget()


def build_openvino_ir(source_onnx: Path, output: Path, options: Mapping[str, Any], command: Sequence[str]) -> Path:
    """Convert ``source_onnx`` to IR at ``output`` (and its .bin), check it runs, write the sidecar; atomically."""
    from ulffn_deploy.targets.onnx_source import describe_onnx

    ov = _openvino()
    source = describe_onnx(source_onnx)
    caps = capabilities("CPU")
    precision = resolve_inference_precision(options["inference_precision"], source.metadata.precision, caps)
    if output.suffix != ".xml":
        raise UlffnError(f"{output}: an OpenVINO IR file name ends in .xml", "choose -o model.<precision>.xml")
    from ulffn_deploy.fileio import output_errors

    start = time.perf_counter()
    with output_errors(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        model, int8 = _source_model(source, options, staging)
        staged = staging / "model.xml"
        ov.save_model(model, os.fspath(staged), compress_to_fp16=False)
        compiled = core().compile_model(core().read_model(os.fspath(staged)), "CPU",
                                        {"INFERENCE_PRECISION_HINT": precision})
        check = {**_check_ir(compiled, source), **int8}
        check["layer_precisions"] = _check_precisions(compiled, source.metadata.precision)
        seconds = time.perf_counter() - start
        os.replace(weights_path(staged), weights_path(output))
        os.replace(staged, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_sidecar(output, source, precision, options, check, seconds, command, caps)
    return output


def _source_model(source: Any, options: Mapping[str, Any], staging: Path) -> tuple[Any, dict[str, Any]]:
    """The ``openvino.Model`` to save for ``source`` and what the sidecar records of how INT8 was made."""
    if source.metadata.precision != "int8":
        return _read(source.path, source.path.name), {}
    from ulffn_deploy.targets import openvino_int8

    method, record = openvino_int8.plan_method(str(options.get("int8_method", "auto")), source.path)
    if record is not None:
        fp32, images = record
        return openvino_int8.nncf_quantize(fp32, images, log=_log), {
            "int8_method": "nncf", "calibration_images": len(images), "fp32_onnx": fp32.name}
    if method == "uint8-qdq":
        readable = staging / "unsigned.onnx"
        recoded = unsigned_activations(source.path, readable)
        return _read(readable, source.path.name), {"int8_method": method, "uint8_activation_qdq": recoded}
    return _read(source.path, source.path.name), {"int8_method": method}


def _log(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def _check_precisions(compiled: Any, source_precision: str) -> dict[str, int]:
    """Convolutions per precision as the compiled IR runs here; UlffnError when an INT8 IR runs none in int8."""
    from ulffn_deploy.targets.openvino_int8 import convolution_precisions

    counts = convolution_precisions(compiled)
    if source_precision == "int8" and not counts.get("int8"):
        shown = ", ".join(f"{n} {p}" for p, n in counts.items()) or "none found"
        raise UlffnError(f"the OpenVINO INT8 IR runs no convolution in int8 (convolutions: {shown})",
                         "rebuild with another --int8-method, or report the model")
    return counts


def _read(path: Path, name: str) -> Any:
    try:
        return core().read_model(os.fspath(path))
    except RuntimeError as exc:
        raise UlffnError(f"OpenVINO cannot read {name} ({' '.join(str(exc).split())[:300]})") from exc


def unsigned_activations(source: Path, output: Path) -> int:
    """Write ``source`` with its int8 zero-point-0 activation Q/DQ nodes as uint8 zero point 128 (the same
    grid: see the module docstring) to ``output``; returns how many nodes changed. Weights stay int8."""
    from ulffn_deploy.deps import require

    onnx = require("onnx")
    from onnx import numpy_helper

    model = onnx.load(os.fspath(source))
    initializers = {init.name: init for init in model.graph.initializer}
    added: dict[str, Any] = {}
    changed = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zero = initializers.get(node.input[2])
        if node.input[0] in initializers or zero is None or zero.data_type != onnx.TensorProto.INT8:
            continue  # weights (DequantizeLinear of an initializer) keep int8
        values = numpy_helper.to_array(zero)
        if values.size != 1 or int(values.reshape(())) != 0:
            continue
        name = node.input[2] + "_uint8"
        added.setdefault(name, numpy_helper.from_array(np.full(values.shape, 128, np.uint8), name))
        node.input[2] = name
        changed += 1
    model.graph.initializer.extend(added.values())
    del model.graph.value_info[:]  # recorded int8 types of the changed tensors
    onnx.save(model, os.fspath(output))
    return changed


def _check_ir(compiled: Any, source: Any) -> dict[str, Any]:
    """The saved IR, compiled as it will run, against ONNX Runtime on the source through the harness's build check
    (``onnx_source.check_build``): gated for an fp32 model (always f32: the same graph), recorded otherwise
    (bf16/f16/int8 kernels differ by design; verify judges them against the reference)."""
    from ulffn_deploy.targets.onnx_source import check_build, run_onnx

    request = compiled.create_infer_request()

    def run_ir(batch: np.ndarray) -> np.ndarray:
        return np.asarray(request.infer([batch])[0], np.float32)

    return check_build(lambda batch: run_onnx(source, batch), run_ir, source, f"the OpenVINO IR of {source.path.name}",
                       gate=source.metadata.precision == "fp32")


def _write_sidecar(output: Path, source: Any, precision: str, options: Mapping[str, Any], check: dict[str, Any],
                   seconds: float, command: Sequence[str], caps: Sequence[str]) -> None:
    import platform

    from ulffn_deploy.devices import cpu_features, cpu_name
    from ulffn_deploy.fileio import write_json_atomic
    from ulffn_deploy.targets.onnx_source import files_record, sidecar_common

    sidecar = sidecar_common(source, "openvino", seconds, command)
    sidecar.update({
        "openvino_version": openvino_version(),
        "inference_precision": precision,
        "runs_as": runs_as(source.metadata.precision, precision),
        "cpu": {"name": cpu_name(), "machine": platform.machine(), "isa": cpu_features(),
                "openvino_capabilities": list(caps)},
        "build_flags": dict(options),
        "ir": {"xml": output.name, "bin": weights_path(output).name, "bin_bytes": weights_path(output).stat().st_size},
        "layer_precisions": check.get("layer_precisions"),
        "check": check,
        "files": files_record([output, weights_path(output)]),
    })
    write_json_atomic(sidecar_path(output), sidecar)
