"""GPU tests: the cuda-python wrapper (needs only cuda-python and a GPU) and TensorRT engines built from tiny
ONNX files of each precision, compared with ONNX Runtime through the harness (its tolerance table; the
maximum error is reported, never gated); version-compatible plans (full and lean runtime), the engine cache
(build on first use, reuse, rebuild, two processes at once), the post-build precision check, DLA refusal and
concurrent calls; TensorRT-RTX engines (built on CPU, compiled just in time on the GPU, the runtime cache
reused by the second load, outputs against the FP32 reference). Skipped, with the reason, where those are
missing. ``python benchmarks/gpu_checks.py`` runs these and the GPU latency rows in one go."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_models import SIZE, sample_images, tiny_onnx

from ulffn_deploy.config import Normalization
from ulffn_deploy.devices import gpu_problem, tensorrt_unavailable_reason
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.harness import check, compare, failures, synthetic_images, tolerance_for
from ulffn_deploy.preprocess import preprocess

pytestmark = pytest.mark.gpu

_NO_GPU = gpu_problem()
_NO_TRT = tensorrt_unavailable_reason(build=True)
needs_gpu = pytest.mark.skipif(_NO_GPU is not None, reason=f"needs cuda-python and an NVIDIA GPU: {_NO_GPU}")
needs_trt = pytest.mark.skipif(_NO_TRT is not None, reason=f"needs TensorRT (to build) and an NVIDIA GPU: {_NO_TRT}")


def assert_agrees(reference, candidate, precision: str, images: int = 6) -> None:
    """The harness's verdict for ``precision`` (mask agreement and p99 error; the max error is only reported)."""
    comparison = compare(reference, candidate, synthetic_images(images, SIZE, seed=11))
    failed = failures(check(comparison, tolerance_for(precision)))
    assert not failed, f"{failed} (max error {comparison.max_abs_diff:.3g}, reported only)"


# -- cuda-python only ----------------------------------------------------------------------------------
@needs_gpu
def test_device_properties_name_and_compute_capability():
    from ulffn_deploy.targets import cuda as cu

    props = cu.device_properties(0)
    assert cu.device_count() >= 1
    assert props["name"] and "\0" not in props["name"]
    major, minor = props["compute_capability"].split(".")
    assert int(major) >= 3 and int(minor) >= 0
    assert props["total_memory_mib"] > 0


@needs_gpu
def test_pinned_device_round_trip_and_event_timing():
    from ulffn_deploy.targets import cuda as cu

    data = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    stream = cu.Stream()
    src, dst = cu.PinnedBuffer(data.nbytes), cu.PinnedBuffer(data.nbytes + 64)
    device = cu.DeviceBuffer(data.nbytes)
    start, end = cu.Event(), cu.Event()
    try:
        src.view(np.float32, data.shape)[...] = data
        dst.view(np.float32, data.shape)[...] = 0
        start.record(stream)
        cu.copy_to_device(device, src, data.nbytes, stream)
        cu.copy_to_host(dst, device, data.nbytes, stream)
        end.record(stream)
        stream.synchronize()
        np.testing.assert_array_equal(dst.view(np.float32, data.shape), data)
        assert end.elapsed_ms(start) >= 0.0
        with pytest.raises(UlffnError, match="does not fit"):
            cu.copy_to_device(device, dst, data.nbytes + 64, stream)
    finally:
        for resource in (end, start, device, dst, src, stream):
            resource.free()
    src.free()  # a second free is a no-op
    assert src.ptr == 0


@needs_gpu
def test_graph_replays_captured_copies_with_new_host_data():
    from ulffn_deploy.targets import cuda as cu

    nbytes = 4096 * 4
    stream, host_in, host_out, device = cu.Stream(), cu.PinnedBuffer(nbytes), cu.PinnedBuffer(nbytes), cu.DeviceBuffer(nbytes)

    def enqueue(s: cu.Stream) -> None:
        cu.copy_to_device(device, host_in, nbytes, s)
        cu.copy_to_host(host_out, device, nbytes, s)

    graph = cu.Graph(stream, enqueue)
    try:
        for value in (1.0, 7.5):
            host_in.view(np.float32, (4096,))[...] = value
            graph.launch(stream)
            stream.synchronize()
            assert np.all(host_out.view(np.float32, (4096,)) == value)
    finally:
        for resource in (graph, device, host_out, host_in, stream):
            resource.free()


@needs_gpu
def test_cuda_errors_are_named():
    from ulffn_deploy.targets import cuda as cu

    with pytest.raises(cu.CudaError, match="cudaMalloc.*cudaError"):
        cu.DeviceBuffer(1 << 60)
    with pytest.raises(cu.CudaError, match="cudaErrorInvalidDevice"):
        cu.device_properties(10_000)


# -- TensorRT -------------------------------------------------------------------------------------------
def _build_tiny(build, out: Path, suffix: str, options: dict) -> dict:
    """{precision: artifact} built by ``build`` from the tiny model's ONNX files (int8 where calib is present)."""
    built = {}
    for precision in ("fp32", "fp16", "int8"):
        try:
            onnx = tiny_onnx(precision)
        except pytest.skip.Exception:  # int8 without ulffn_deploy.calib
            continue
        built[precision] = build(onnx, out / f"model.{precision}{suffix}", options)
    return built


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from ulffn_deploy.targets.tensorrt import build_tensorrt_engine

    out = tmp_path_factory.mktemp("engines")
    options = {"min_batch": 1, "opt_batch": 2, "max_batch": 4, "timing_cache": str(out / "timing.cache")}
    return _build_tiny(build_tensorrt_engine, out, ".engine", options)


@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_matches_onnxruntime(engines, precision):
    from ulffn_deploy.runtime import Segmenter

    if precision not in engines:
        pytest.skip(f"no {precision} ONNX to build (INT8 needs ulffn_deploy.calib)")
    images = sample_images(6)
    batch, _ = preprocess(images, SIZE, "full", Normalization())
    with Segmenter.load(tiny_onnx(precision)) as reference, Segmenter.load(engines[precision]) as engine:
        expected, got = reference.infer(batch), engine.infer(batch)  # 6 > max batch 4: two chunks
        assert got.shape == expected.shape and got.dtype == np.float32
        assert_agrees(reference, engine, precision)
        assert engine.last_timings["chunks"] == 2 and engine.last_timings["gpu_compute"] > 0
        assert {"h2d", "d2h", "gpu_compute"} <= set(engine.last_timings)
        masks = engine.predict(images)
        assert [m.shape for m in masks] == [im.shape[:2] for im in images]
        assert engine.info["backend"] == "tensorrt" and engine.info["precision"] == precision


@needs_trt
def test_cuda_graph_gives_the_same_result_and_recaptures_on_shape_change(engines):
    from ulffn_deploy.runtime import Segmenter

    rng = np.random.default_rng(2)
    with Segmenter.load(engines["fp32"]) as plain, Segmenter.load(engines["fp32"], use_cuda_graph=True) as graphed:
        for batch_size in (2, 2, 3, 1):
            batch = rng.standard_normal((batch_size, 3, SIZE, SIZE)).astype(np.float32)
            np.testing.assert_allclose(graphed.infer(batch), plain.infer(batch), atol=1e-5)


@needs_trt
def test_shape_outside_profile_states_the_profile(engines):
    from ulffn_deploy.runtime import Segmenter

    with Segmenter.load(engines["fp32"]) as engine, pytest.raises(UlffnError, match=r"profile: batch 1-4, height 32"):
        engine.infer(np.zeros((1, 3, SIZE + 8, SIZE + 8), np.float32))


@needs_trt
def test_sidecar_for_another_gpu_is_refused_before_deserializing(engines, tmp_path):
    from ulffn_deploy.runtime import Segmenter

    engine = tmp_path / "model.fp32.engine"
    engine.write_bytes(b"not a plan: must never be deserialized")
    sidecar = json.loads(engines["fp32"].with_name("model.fp32.engine.json").read_text())
    sidecar["gpu"]["compute_capability"] = "1.0"
    (tmp_path / "model.fp32.engine.json").write_text(json.dumps(sidecar))
    with pytest.raises(UlffnError, match="compute capability 1.0.*rebuild it on this machine: ulffn-deploy build-engine"):
        Segmenter.load(engine)


@needs_trt
def test_engine_that_does_not_match_its_sidecar_is_refused(engines, tmp_path):
    from ulffn_deploy.runtime import Segmenter

    engine = tmp_path / "model.fp32.engine"
    engine.write_bytes(engines["fp32"].read_bytes()[:-1] + b"\0")
    (tmp_path / "model.fp32.engine.json").write_bytes(engines["fp32"].with_name("model.fp32.engine.json").read_bytes())
    with pytest.raises(UlffnError, match="does not match its sidecar"):
        Segmenter.load(engine)


@needs_trt
def test_sidecar_records_the_build(engines):
    sidecar = json.loads(engines["fp32"].with_name("model.fp32.engine.json").read_text())
    assert sidecar["backend"] == "tensorrt" and sidecar["precision"] == "fp32"
    assert sidecar["profile"]["image"] == {"min": [1, 3, SIZE, SIZE], "opt": [2, 3, SIZE, SIZE], "max": [4, 3, SIZE, SIZE]}
    assert sidecar["gpu"]["name"] and sidecar["tensorrt_version"]
    assert sidecar["build_flags"]["strongly_typed"] is True
    assert "--max-batch 4" in sidecar["build_command"]
    assert engines["fp32"].with_name("timing.cache").stat().st_size > 0  # shared by the builds, kept between them
    # the timing cache is replaced under its own lock file; nothing else is left behind
    assert [p.name for p in engines["fp32"].parent.glob("*.lock")] == ["timing.cache.lock"]
    assert not list(engines["fp32"].parent.glob(".*.tmp"))


@needs_trt
def test_parser_errors_name_the_node(tmp_path):
    import onnx
    from onnx import numpy_helper

    from ulffn_deploy.targets.tensorrt import build_tensorrt_engine

    model = onnx.load(str(tiny_onnx("int8")))  # skips without ulffn_deploy.calib
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2)
    zero_point = next(t for t in model.graph.initializer if t.name == node.input[2])
    zero_point.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zero_point) + 1, zero_point.name))
    broken = tmp_path / "model.int8.onnx"
    onnx.save(model, str(broken))  # ONNX Runtime runs it; TensorRT wants symmetric (zero point 0) quantization
    with pytest.raises(UlffnError, match=f"rejected model.int8.onnx: node '{node.name}'"):
        build_tensorrt_engine(broken)
    assert not (tmp_path / "model.int8.engine").exists()


# -- precision check, version-compatible plans, lean runtime ------------------------------------------------
@needs_trt
def test_sidecar_records_layer_precisions_that_match_the_precision(engines):
    for precision, engine in engines.items():
        counts = json.loads(engine.with_name(engine.name + ".json").read_text())["layer_precisions"]
        wanted = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}[precision]
        assert counts.get(wanted, 0) > 0, (precision, counts)
        if precision == "fp32":
            assert counts.get("FP16", 0) == 0 and counts.get("INT8", 0) == 0, counts


@pytest.fixture(scope="module")
def version_compatible(tmp_path_factory):
    from ulffn_deploy.targets.tensorrt import build_tensorrt_engine

    out = tmp_path_factory.mktemp("vc")
    return build_tensorrt_engine(tiny_onnx("fp16"), out / "model.fp16.engine", {"version_compatible": True, "max_batch": 4})


@needs_trt
def test_version_compatible_engine_loads_with_host_code_allowed_and_matches(engines, version_compatible):
    from ulffn_deploy.runtime import Segmenter

    with Segmenter.load(version_compatible) as vc, Segmenter.load(engines["fp16"]) as plain:
        assert vc.info["host_code_allowed"] is True and plain.info["host_code_allowed"] is False
        assert_agrees(plain, vc, "fp16")


@needs_trt
def test_version_compatible_engine_with_an_edited_sidecar_gets_no_host_code(version_compatible, tmp_path):
    """Without a sha256 to verify the plan, host code stays forbidden, so TensorRT refuses the plan."""
    from ulffn_deploy.runtime import Segmenter

    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(version_compatible.read_bytes())
    sidecar = json.loads(version_compatible.with_name("model.fp16.engine.json").read_text())
    del sidecar["engine_sha256"]
    (tmp_path / "model.fp16.engine.json").write_text(json.dumps(sidecar))
    with pytest.raises(UlffnError, match="could not deserialize"):
        Segmenter.load(engine)


def _lean():
    from ulffn_deploy.devices import import_tensorrt, import_tensorrt_lean

    lean, full = import_tensorrt_lean(), import_tensorrt()
    if lean is None:
        pytest.skip("needs tensorrt_lean: pip install 'ulffn-deploy[tensorrt-lean]'")
    return lean, full


@needs_trt
def test_lean_runtime_runs_a_version_compatible_engine(version_compatible):
    from ulffn_deploy.runtime import Segmenter

    _lean()
    batch = np.random.default_rng(4).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with Segmenter.load(version_compatible, runtime="lean") as lean, Segmenter.load(version_compatible, runtime="full") as full:
        assert lean.info["tensorrt_runtime"] == "tensorrt_lean"
        np.testing.assert_allclose(lean.infer(batch), full.infer(batch), atol=1e-3)


@needs_trt
def test_lean_runtime_refuses_a_plan_that_is_not_version_compatible(engines):
    from ulffn_deploy.runtime import Segmenter

    _lean()
    with pytest.raises(UlffnError, match="not built version-compatible") as caught:
        Segmenter.load(engines["fp16"], runtime="lean")
    assert "--version-compatible" in caught.value.hint


@needs_trt
def test_plan_without_lean_runtime_runs_on_the_installed_lean_library(tmp_path):
    from ulffn_deploy.runtime import Segmenter
    from ulffn_deploy.targets.tensorrt import build_tensorrt_engine

    lean, full = _lean()
    if full is not None and lean.__version__ != full.__version__:
        pytest.skip(f"tensorrt {full.__version__} and tensorrt_lean {lean.__version__} differ: the excluded lean "
                    "runtime must be the building version")
    engine = build_tensorrt_engine(tiny_onnx("fp16"), tmp_path / "model.fp16.engine",
                                   {"version_compatible": True, "exclude_lean_runtime": True})
    sidecar = json.loads(engine.with_name("model.fp16.engine.json").read_text())
    assert sidecar["build_flags"]["exclude_lean_runtime"] is True and "--exclude-lean-runtime" in sidecar["build_command"]
    batch = np.random.default_rng(5).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    with Segmenter.load(engine, runtime="lean") as segmenter:
        assert segmenter.infer(batch).shape == (1, 2, SIZE, SIZE)


# -- engine cache: build on first boot --------------------------------------------------------------------------
@needs_trt
def test_engine_cache_builds_once_reuses_and_rebuilds_when_the_key_changes(tmp_path):
    from ulffn_deploy.runtime import Segmenter

    cache = tmp_path / "cache"
    onnx = tiny_onnx("fp16")
    batch = np.random.default_rng(6).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with Segmenter.load(onnx, backend="tensorrt", engine_cache=cache) as first:
        built = first.path
        expected = first.infer(batch)
    stamp = built.stat().st_mtime_ns
    assert built.parent.parent == cache and built.name == "model.fp16.engine"
    assert json.loads(built.with_name("model.fp16.engine.json").read_text())["layer_precisions"].get("FP16", 0) > 0
    assert list(cache.glob("timing-*.cache"))
    with Segmenter.load(onnx, backend="tensorrt", engine_cache=cache) as again:
        assert again.path == built and built.stat().st_mtime_ns == stamp  # reused, not rebuilt
        np.testing.assert_array_equal(again.infer(batch), expected)
    with Segmenter.load(onnx, backend="tensorrt", engine_cache=cache, build_options={"max_batch": 2}) as other:
        assert other.path.parent != built.parent and other.max_batch == 2  # new key, new build
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


@needs_trt
def test_two_processes_loading_at_once_build_once(tmp_path):
    from helpers import run_python

    cache = tmp_path / "cache"
    code = f"""
        from ulffn_deploy.runtime import Segmenter
        with Segmenter.load({str(tiny_onnx("fp16"))!r}, backend="tensorrt", engine_cache={str(cache)!r}) as seg:
            print(seg.path)
        """
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: run_python(code), range(2)))
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    assert len({run.stdout.strip() for run in runs}) == 1
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1


# -- DLA and threads -------------------------------------------------------------------------------------------
@needs_trt
def test_dla_core_is_refused_on_a_gpu_without_dla(tmp_path):
    from ulffn_deploy.devices import import_tensorrt
    from ulffn_deploy.targets.tensorrt import build_tensorrt_engine

    trt = import_tensorrt()
    if trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores > 0:
        pytest.skip("this device has DLA cores")
    with pytest.raises(UlffnError, match="this GPU has no DLA") as caught:
        build_tensorrt_engine(tiny_onnx("fp16"), tmp_path / "model.fp16.engine", {"dla_core": 0})
    assert "\n" not in str(caught.value) and not (tmp_path / "model.fp16.engine").exists()


@needs_trt
def test_concurrent_calls_give_the_serial_results(engines):
    import concurrent.futures

    from ulffn_deploy.runtime import Segmenter

    rng = np.random.default_rng(7)
    batches = [rng.standard_normal((1 + i % 4, 3, SIZE, SIZE)).astype(np.float32) for i in range(16)]
    with Segmenter.load(engines["fp32"]) as engine:
        serial = [engine.infer(b) for b in batches]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(engine.infer, batches))
    for got, expected in zip(parallel, serial):
        np.testing.assert_array_equal(got, expected)


# -- TensorRT-RTX: built on CPU, compiled just in time here -------------------------------------------------------
def _rtx_problem() -> str | None:
    from ulffn_deploy.targets.tensorrt_rtx import TARGET

    return TARGET.unavailable_reason()


_NO_RTX = _rtx_problem()
needs_rtx = pytest.mark.skipif(_NO_RTX is not None, reason=f"needs tensorrt_rtx, cuda-python and an RTX-class GPU: {_NO_RTX}")


@pytest.fixture(scope="module")
def rtx_engines(tmp_path_factory):
    from ulffn_deploy.targets.tensorrt_rtx import build_rtx_engine

    return _build_tiny(build_rtx_engine, tmp_path_factory.mktemp("rtx"), ".rtxengine", {"max_batch": 4})


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_rtx_engine_compiles_here_and_matches_the_fp32_reference(rtx_engines, precision, tmp_path):
    from ulffn_deploy.runtime import Segmenter

    if precision not in rtx_engines:
        pytest.skip(f"no {precision} ONNX to build (INT8 needs ulffn_deploy.calib)")
    cache = tmp_path / "jit.cache"
    with Segmenter.load(tiny_onnx("fp32")) as reference, \
            Segmenter.load(rtx_engines[precision], runtime_cache=str(cache)) as engine:
        assert engine.info["backend"] == "tensorrt-rtx" and engine.info["runtime_cache_loaded"] is False
        assert_agrees(reference, engine, precision)
    assert cache.stat().st_size > 0  # the JIT kernels were saved at close


@needs_rtx
def test_second_rtx_load_reuses_the_runtime_cache(rtx_engines, tmp_path):
    """The first load compiles kernels and saves them; the second finds them in the cache file. How much faster
    the second start is comes from benchmarks/gpu_checks.py, measured in one run (no timing asserted here)."""
    from ulffn_deploy.runtime import Segmenter

    cache = tmp_path / "jit.cache"
    batch = np.random.default_rng(8).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with Segmenter.load(rtx_engines["fp16"], runtime_cache=str(cache)) as first:
        expected = first.infer(batch)
    saved = cache.read_bytes()
    with Segmenter.load(rtx_engines["fp16"], runtime_cache=str(cache)) as second:
        assert second.info["runtime_cache_loaded"] is True
        np.testing.assert_array_equal(second.infer(batch), expected)
    assert len(cache.read_bytes()) >= len(saved)


@needs_rtx
def test_rtx_cuda_graph_strategy_gives_the_same_result(rtx_engines):
    from ulffn_deploy.runtime import Segmenter

    batch = np.random.default_rng(9).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    with Segmenter.load(rtx_engines["fp32"]) as plain, \
            Segmenter.load(rtx_engines["fp32"], cuda_graph_strategy="whole-graph") as graphed:
        assert graphed.info["runtime"]["cuda_graph_strategy"] == "whole-graph"
        for _ in range(2):
            np.testing.assert_allclose(graphed.infer(batch), plain.infer(batch), atol=1e-5)


@needs_rtx
def test_rtx_engine_for_other_gpus_is_refused_before_deserializing(rtx_engines, tmp_path):
    from ulffn_deploy.runtime import Segmenter

    engine = tmp_path / "model.fp32.rtxengine"
    engine.write_bytes(b"not an engine: must never be deserialized")
    sidecar = json.loads(rtx_engines["fp32"].with_name("model.fp32.rtxengine.json").read_text())
    sidecar["compute_capabilities"] = ["1.0"]
    (tmp_path / "model.fp32.rtxengine.json").write_text(json.dumps(sidecar))
    with pytest.raises(UlffnError, match="built for compute capabilities 1.0"):
        Segmenter.load(engine)
