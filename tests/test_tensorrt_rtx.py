"""The tensorrt-rtx target with NVIDIA's real TensorRT-RTX parser and builder, which run on this CPU: engines
and sidecars for every precision, the precision of the ONNX reaching the engine's size, refused options, the
parser's errors naming the node, the runtime cache file's writer (two processes), and the one-line refusals
of a machine without an RTX GPU. Running an engine needs a GPU: tests/test_tensorrt_gpu.py."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from helpers import run_cli
from tiny_models import SIZE, WIDTH, sample_images, tiny_onnx

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import sha256_file
from ulffn_deploy.targets import registry

trt = pytest.importorskip("tensorrt_rtx", reason="needs tensorrt-rtx-cu12 (the [test] extra installs it on Linux)")

from ulffn_deploy.targets.tensorrt_build import parse_and_build  # noqa: E402
from ulffn_deploy.targets.tensorrt_cache import read_shared_file, write_shared_file  # noqa: E402
from ulffn_deploy.targets.tensorrt_rtx import TARGET, build_rtx_engine, runtime_settings  # noqa: E402


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rtx")
    return {precision: registry.build("tensorrt-rtx", tiny_onnx(precision), out / f"model.{precision}.rtxengine",
                                      {"max_batch": 4}, precision=precision)
            for precision in ("fp32", "fp16", "int8")}


def _sidecar(engine: Path) -> dict:
    return json.loads(engine.with_name(engine.name + ".json").read_text())


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_and_sidecar_describe_the_build(engines, precision):
    engine = engines[precision]
    sidecar = _sidecar(engine)
    assert engine.stat().st_size == sidecar["engine_bytes"] > 100_000
    assert sidecar["engine_sha256"] == sha256_file(engine)
    assert sidecar["backend"] == "tensorrt-rtx" and sidecar["precision"] == precision
    assert sidecar["tensorrt_rtx_version"] == trt.__version__
    assert sidecar["compute_capabilities"] == ["8.0", "8.6", "8.9", "12.0+"]  # NVIDIA's default set
    assert sidecar["source_onnx"] == {"file": f"model.{precision}.onnx", "sha256": sha256_file(tiny_onnx(precision))}
    assert sidecar["profile"]["image"] == {"min": [1, 3, SIZE, SIZE], "opt": [1, 3, SIZE, SIZE], "max": [4, 3, SIZE, SIZE]}
    assert sidecar["build_flags"]["strongly_typed"] is True and sidecar["build_flags"]["max_batch"] == 4
    assert sidecar["runtime"] == {"runtime_cache": None, "cuda_graph_strategy": "disabled", "kernel_specialization": "lazy"}
    assert "build-engine --backend tensorrt-rtx" in sidecar["build_command"] and "--max-batch 4" in sidecar["build_command"]
    assert not list(engine.parent.glob(".*.tmp"))


def test_the_rtx_suffix_is_never_taken_for_a_tensorrt_plan(engines):
    assert registry.target_for_path(engines["fp16"]).name == "tensorrt-rtx"
    assert registry.target_for_path("model.fp16.engine").name == "tensorrt"
    assert not engines["fp16"].name.endswith(".engine")


def test_turing_on_request_and_the_runtime_settings_are_recorded(tmp_path):
    engine = build_rtx_engine(tiny_onnx("fp16"), tmp_path / "model.fp16.rtxengine",
                              {"compute_capabilities": "7.5", "cuda_graph_strategy": "whole-graph",
                               "runtime_cache": "/var/cache/ulffn/jit.cache"})
    sidecar = _sidecar(engine)
    assert sidecar["compute_capabilities"] == ["7.5"]
    assert sidecar["runtime"]["cuda_graph_strategy"] == "whole-graph"
    assert "--compute-capabilities 7.5" in sidecar["build_command"]
    settings = runtime_settings(sidecar, engine, {})
    assert settings["runtime_cache"] == "/var/cache/ulffn/jit.cache" and settings["cuda_graph_strategy"] == "whole-graph"
    overridden = runtime_settings(sidecar, engine, {"cuda_graph_strategy": "disabled", "runtime_cache": None})
    assert overridden["cuda_graph_strategy"] == "disabled"
    default = runtime_settings({}, engine, {})
    assert default["runtime_cache"] == str(engine) + ".runtime-cache" and default["kernel_specialization"] == "lazy"


@pytest.mark.parametrize(("options", "message"), [
    ({"compute_capabilities": "9.0"}, "--compute-capabilities '9.0': 9.0 is not a compute capability"),
    ({"compute_capabilities": ","}, "none given"),
    ({"min_batch": 4, "max_batch": 2}, "batch profile 4/1/2 is not 1 <= min <= opt <= max"),
    ({"cuda_graph_strategy": "always"}, "--cuda-graph-strategy 'always' is not one of disabled, whole-graph"),
    ({"dla_core": 0}, "--dla-core do\\(es\\) not apply to --backend tensorrt-rtx"),
    ({"version_compatible": True}, "--version-compatible do\\(es\\) not apply"),
    ({"max_batch": 100_000_000_000}, "--max-batch 100000000000 is above 256"),
    ({"max_hw": 8192}, "--max-hw 8192 is above 2048"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, options, message):
    with pytest.raises(UlffnError, match=message):
        build_rtx_engine(tiny_onnx("fp16"), tmp_path / "model.fp16.rtxengine", options)
    assert list(tmp_path.iterdir()) == []


def test_runtime_settings_are_checked():
    with pytest.raises(UlffnError, match="--kernel-specialization 'sometimes' is not one of lazy, eager, none"):
        runtime_settings({}, Path("model.fp16.rtxengine"), {"kernel_specialization": "sometimes"})
    with pytest.raises(UlffnError, match="--cuda-graph-strategy"):
        runtime_settings({"runtime": {"cuda_graph_strategy": "sometimes"}}, Path("model.fp16.rtxengine"), {})


# -- the shared parse-and-build path, as a lint gate would call it ------------------------------------------
def _graph(tmp_path: Path, op: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node(op, ["x"], ["y"], name=f"my_{op.lower()}")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    path = tmp_path / f"{op}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_parse_and_build_returns_a_plan_and_names_the_node_it_refuses(tmp_path):
    assert len(parse_and_build(_graph(tmp_path, "Relu"), "tensorrt_rtx")) > 1000
    with pytest.raises(UlffnError, match=r"TensorRT-RTX's ONNX parser rejected Unique.onnx: node 'my_unique' \(Unique\)"):
        parse_and_build(_graph(tmp_path, "Unique"), "tensorrt_rtx")
    with pytest.raises(UlffnError, match="unknown TensorRT builder module"):
        parse_and_build(_graph(tmp_path, "Relu"), "tensorrt_llm")


# -- INT8 reaches the engine ----------------------------------------------------------------------------------
def test_int8_engine_is_smaller_than_fp16_on_a_wider_model(tmp_path):
    """Width 16 (4x the tiny model's weights): large enough that weights, not code, dominate the engine."""
    import onnx
    from PIL import Image

    calib = pytest.importorskip("ulffn_deploy.calib.pipeline", reason="INT8 calibration is not available")
    from ulffn_deploy.checkpoint import load_model, save_checkpoint
    from ulffn_deploy.config import Normalization
    from ulffn_deploy.export.onnx_export import ExportOptions
    from ulffn_deploy.export.pipeline import build_graphs, metadata_from_checkpoint
    from ulffn_deploy.model import random_model

    model = random_model(WIDTH * 2, 0)
    save_checkpoint(tmp_path / "best.pt", {"model_config": model.config.to_dict(), "normalization": Normalization().to_dict(),
                                           "input_size": SIZE, "fit_mode": "full", "state_dict": model.state_dict(), "epoch": 1})
    loaded, info = load_model(tmp_path / "best.pt")
    graphs = build_graphs(loaded, metadata_from_checkpoint(info, tmp_path / "best.pt"), ExportOptions())
    for precision in ("fp32", "fp16"):
        onnx.save(graphs[precision], str(tmp_path / f"model.{precision}.onnx"))
    (tmp_path / "images").mkdir()
    for i, image in enumerate(sample_images(3, seed=1)):
        Image.fromarray(image).save(tmp_path / "images" / f"image_{i}.png")
    calib.calibrate(tmp_path / "model.fp32.onnx", data=tmp_path / "images", output=tmp_path / "model.int8.onnx",
                    num_images=2, num_eval=0, log=lambda line: None)
    sizes = {p: build_rtx_engine(tmp_path / f"model.{p}.onnx").stat().st_size for p in ("fp16", "int8")}
    assert sizes["int8"] < 0.9 * sizes["fp16"], sizes


# -- built here, runs there -----------------------------------------------------------------------------------
def _no_rtx_gpu() -> None:
    if TARGET.unavailable_reason() is None:
        pytest.skip("an RTX-capable GPU is here: tests/test_tensorrt_gpu.py runs the engines")


def test_predict_on_an_rtx_engine_exits_2_in_one_line(engines, tmp_path):
    from ulffn_deploy.imageio import write_rgb

    _no_rtx_gpu()
    write_rgb(tmp_path / "lesion.png", sample_images(1)[0])
    result = run_cli("predict", str(engines["fp16"]), str(tmp_path / "lesion.png"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: cannot run model.fp16.rtxengine with tensorrt-rtx: a TensorRT-RTX engine "
                                    "runs on an RTX GPU")
    assert not (tmp_path / "out").exists()


def test_an_rtx_engine_renamed_to_a_tensorrt_plan_is_refused_as_another_targets(engines, tmp_path):
    """The sidecar names the target that built it: a renamed .rtxengine is not taken for a TensorRT plan."""
    import shutil

    from ulffn_deploy.imageio import write_rgb

    plan = Path(shutil.copy(engines["fp16"], tmp_path / "model.fp16.engine"))
    shutil.copy(engines["fp16"].with_name("model.fp16.rtxengine.json"), tmp_path / "model.fp16.engine.json")
    write_rgb(tmp_path / "lesion.png", sample_images(1)[0])
    result = run_cli("predict", str(plan), str(tmp_path / "lesion.png"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "model.fp16.engine was built by the tensorrt-rtx target, not tensorrt" in result.stderr
    assert "(.rtxengine)" in result.stderr
    assert registry.target_named("tensorrt").problem_here(plan).startswith("model.fp16.engine was built by")


def test_info_describes_an_rtx_engine(engines):
    result = run_cli("info", str(engines["int8"]))
    assert result.returncode == 0, result.stderr
    assert "TensorRT-RTX" in result.stdout and "int8" in result.stdout
    assert sha256_file(tiny_onnx("int8")) in result.stdout
    if TARGET.unavailable_reason() is not None:
        assert "runs on an RTX GPU" in result.stdout


def test_the_default_artifact_is_never_an_engine_this_machine_cannot_run(engines, tmp_path):
    import shutil

    _no_rtx_gpu()
    for path in (engines["fp16"], engines["fp16"].with_name("model.fp16.rtxengine.json"), tiny_onnx("fp32")):
        shutil.copy(path, tmp_path / path.name)
    assert registry.default_artifact(tmp_path).name == "model.fp32.onnx"


# -- the runtime cache file: atomic replacement under a lock, two processes -------------------------------------
def _write_many(path: str, fill: int, times: int) -> None:
    for _ in range(times):
        write_shared_file(Path(path), bytes([fill]) * 2_000_000)


def test_runtime_cache_file_from_two_writing_processes_is_always_whole(tmp_path):
    cache = tmp_path / "jit" / "model.fp16.rtxengine.runtime-cache"
    write_shared_file(cache, b"\x01" * 2_000_000)
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_many, args=(str(cache), fill, 15)) for fill in (2, 3)]
    for writer in writers:
        writer.start()
    while any(writer.is_alive() for writer in writers):
        data = read_shared_file(cache)
        assert data is not None and len(data) == 2_000_000 and len(set(data)) == 1  # one writer's whole file
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    assert read_shared_file(cache) in (b"\x02" * 2_000_000, b"\x03" * 2_000_000)
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name, cache.name + ".lock"]  # no temp files
    assert read_shared_file(tmp_path / "absent") is None


def test_every_tensorrt_rtx_name_the_target_and_runtime_use_exists_in_the_installed_module():
    """The runtime half cannot run here (no GPU), so each TensorRT-RTX name it uses is looked up in the real bindings."""
    from ulffn_deploy.targets.tensorrt_rtx import CAPABILITIES, CUDA_GRAPH_STRATEGIES, KERNEL_SPECIALIZATIONS

    used = {
        "ComputeCapability": set(CAPABILITIES.values()),
        "CudaGraphStrategy": set(CUDA_GRAPH_STRATEGIES.values()),
        "DynamicShapesKernelSpecializationStrategy": set(KERNEL_SPECIALIZATIONS.values()),
        "ICudaEngine": {"create_runtime_config", "create_execution_context", "get_tensor_profile_shape"},
        "IRuntimeConfig": {"create_runtime_cache", "set_runtime_cache", "cuda_graph_strategy",
                           "dynamic_shapes_kernel_specialization_strategy"},
        "IRuntimeCache": {"serialize", "deserialize"},
        "IBuilderConfig": {"num_compute_capabilities", "set_compute_capability", "set_memory_pool_limit",
                           "builder_optimization_level", "add_optimization_profile"},
        "MemoryPoolType": {"WORKSPACE"},
        "NetworkDefinitionCreationFlag": {"STRONGLY_TYPED"},
        "Runtime": {"deserialize_cuda_engine", "engine_host_code_allowed"},
    }
    missing = sorted(f"{cls}.{name}" for cls, names in used.items() for name in names if not hasattr(getattr(trt, cls), name))
    assert missing == []


def test_two_cuda_graph_captures_are_refused_before_the_gpu_is_touched(engines):
    with pytest.raises(UlffnError, match="use_cuda_graph and TensorRT-RTX's own CUDA-graph strategy exclude each other"):
        TARGET.load(engines["fp32"], use_cuda_graph=True, cuda_graph_strategy="whole-graph")


def test_runtime_settings_map_to_the_tensorrt_rtx_enums():
    from ulffn_deploy.targets.tensorrt_rtx import runtime_enums

    assert runtime_enums(trt, {"cuda_graph_strategy": "whole-graph", "kernel_specialization": "eager"}) == (
        trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE, trt.DynamicShapesKernelSpecializationStrategy.EAGER)
    assert runtime_enums(trt, {"cuda_graph_strategy": "disabled", "kernel_specialization": "none"}) == (
        trt.CudaGraphStrategy.DISABLED, trt.DynamicShapesKernelSpecializationStrategy.NONE)


def test_a_profile_without_the_models_input_is_refused(tmp_path):
    with pytest.raises(UlffnError, match="Relu.onnx: no shape profile for input\\(s\\) x"):
        parse_and_build(_graph(tmp_path, "Relu"), "tensorrt_rtx", {"image": {"min": [4], "opt": [4], "max": [4]}})


def test_tensorrt_log_is_collected_as_one_line_not_printed(capfd):
    from ulffn_deploy.targets.tensorrt_build import collecting_logger, last_errors

    logger = collecting_logger(trt)
    logger.log(trt.ILogger.Severity.INFO, "not kept")
    logger.log(trt.ILogger.Severity.ERROR, "first\nerror")
    logger.log(trt.ILogger.Severity.ERROR, "second error")
    assert last_errors(trt) == "first error; second error"
    assert capfd.readouterr().err == ""
