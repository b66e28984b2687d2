"""The TensorRT decisions that need no GPU: host code only for verified version-compatible plans, the engine
cache's key, rebuild rule and locking (two processes, one build), layer-precision counts on recorded engine
inspector JSON, the serialising lock, Jetson power-mode parsing, and the one-line errors on this machine."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.targets.tensorrt import (
    BUILD_OPTIONS,
    TARGET,
    _check_option_combination,
    layer_precisions,
    precision_problem,
    tensor_precision,
)
from ulffn_deploy.targets.tensorrt_cache import cached_build, engine_cache_key, timing_cache_path
from ulffn_deploy.targets.tensorrt_runtime import TrtSegmenter, host_code_allowed, lean_runtime_problem, serialized

INSPECTOR = Path(__file__).with_name("data") / "tensorrt_inspector"
SHA = "ab" * 32
GPU = {"name": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7", "total_memory_mib": 62841}


# -- host code: allowed only for a verified version-compatible plan ------------------------------------
def sidecar(version_compatible: bool, sha: str | None = SHA, **flags: object) -> dict:
    data: dict = {"build_flags": {"version_compatible": version_compatible, **flags}, "tensorrt_version": "11.4.0.106"}
    if sha is not None:
        data["engine_sha256"] = sha
    return data


@pytest.mark.parametrize(("record", "plan_sha", "allowed"), [
    (sidecar(True), SHA, True),
    (sidecar(False), SHA, False),            # not version-compatible: no host code to allow
    (sidecar(True), "cd" * 32, False),       # the plan is not the one the sidecar describes
    (sidecar(True, sha=None), SHA, False),   # an unverifiable plan never runs host code
    ({"engine_sha256": SHA}, SHA, False),    # no build flags at all
])
def test_host_code_is_allowed_only_for_a_verified_version_compatible_plan(record, plan_sha, allowed):
    assert host_code_allowed(record, plan_sha) is allowed


def test_lean_runtime_refuses_plans_it_cannot_run():
    assert "not built version-compatible" in lean_runtime_problem(sidecar(False), "11.4.0.106")
    assert lean_runtime_problem(sidecar(True), "11.5.0.1") is None
    excluded = sidecar(True, exclude_lean_runtime=True)
    assert lean_runtime_problem(excluded, "11.4.0.106") is None
    assert "needs that very version's lean runtime" in lean_runtime_problem(excluded, "11.5.0.1")


# -- build options: declared once, reaching the sidecar flags and the rebuild command -------------------
def test_device_build_options_are_declared_and_reach_the_rebuild_command():
    names = {option.name for option in BUILD_OPTIONS}
    assert {"exclude_lean_runtime", "dla_core", "version_compatible"} <= names
    options = TARGET.resolve_options({"version_compatible": True, "exclude_lean_runtime": True, "dla_core": 1})
    args = TARGET.option_args(options)
    assert args[-4:] == ["--version-compatible", "--exclude-lean-runtime", "--dla-core", "1"]
    with pytest.raises(UlffnError, match="--dla-core -1 is below 0"):
        TARGET.resolve_options({"dla_core": -1})
    with pytest.raises(UlffnError, match="--exclude-lean-runtime applies to version-compatible plans"):
        _check_option_combination(TARGET.resolve_options({"exclude_lean_runtime": True}))


# -- engine cache: key and rebuild rule ---------------------------------------------------------------------
def test_cache_key_changes_with_everything_the_plan_depends_on():
    options = TARGET.resolve_options({})
    key = engine_cache_key(SHA, options, GPU, "10.3.0.30")
    assert key == engine_cache_key(SHA, dict(options), dict(GPU), "10.3.0.30")
    assert key.startswith("sm8.7-trt10.3.0.30-")
    changed = [
        engine_cache_key("cd" * 32, options, GPU, "10.3.0.30"),
        engine_cache_key(SHA, {**options, "max_batch": 4}, GPU, "10.3.0.30"),
        engine_cache_key(SHA, {**options, "dla_core": 0}, GPU, "10.3.0.30"),
        engine_cache_key(SHA, options, {**GPU, "compute_capability": "8.6"}, "10.3.0.30"),
        engine_cache_key(SHA, options, {**GPU, "name": "NVIDIA Jetson Orin NX"}, "10.3.0.30"),
        engine_cache_key(SHA, options, GPU, "10.3.0.31"),
    ]
    assert len({key, *changed}) == 1 + len(changed)
    # where the timing cache lives does not change the plan
    assert engine_cache_key(SHA, {**options, "timing_cache": "/elsewhere"}, GPU, "10.3.0.30") == key
    assert timing_cache_path(Path("cache"), GPU, "10.3.0.30").name == "timing-nvidia-jetson-agx-orin-trt10.3.0.30.cache"


def _write_plan(log: Path, delay: float = 0.0):
    def build(output: Path) -> None:
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(delay)
        output.write_bytes(b"plan " * 1000)
        output.with_name(output.name + ".json").write_text("{}")
    return build


def test_cache_builds_once_reuses_and_rebuilds_on_a_new_key(tmp_path):
    log = tmp_path / "builds.log"
    first, built = cached_build(tmp_path / "cache", "key1", "model.fp16.engine", _write_plan(log))
    assert built and first == tmp_path / "cache" / "key1" / "model.fp16.engine" and first.read_bytes().startswith(b"plan")
    again, built_again = cached_build(tmp_path / "cache", "key1", "model.fp16.engine", _write_plan(log))
    assert again == first and not built_again
    other, built_other = cached_build(tmp_path / "cache", "key2", "model.fp16.engine", _write_plan(log))
    assert built_other and other.parent.name == "key2"
    assert len(log.read_text().split()) == 2
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_failed_build_leaves_no_entry_and_an_unusable_entry_is_replaced(tmp_path):
    cache = tmp_path / "cache"

    def fail(output: Path) -> None:
        output.write_bytes(b"half a plan")
        raise UlffnError("TensorRT build failed")

    with pytest.raises(UlffnError, match="build failed"):
        cached_build(cache, "key", "model.fp16.engine", fail)
    assert sorted(p.name for p in cache.iterdir()) == ["key.lock"]
    (cache / "key").mkdir()
    (cache / "key" / "model.fp16.engine").write_bytes(b"stale")  # no sidecar: not complete
    path, built = cached_build(cache, "key", "model.fp16.engine", _write_plan(tmp_path / "log"),
                               complete=lambda p: p.is_file() and p.with_name(p.name + ".json").is_file())
    assert built and path.read_bytes().startswith(b"plan")


def _first_load(cache: str, log: str, results: str) -> None:
    path, built = cached_build(cache, "key", "model.fp16.engine", _write_plan(Path(log), delay=1.0))
    with open(results, "a") as handle:
        handle.write(json.dumps([str(path), built]) + "\n")


def test_concurrent_first_loads_build_once(tmp_path):
    """Two processes start at once: one builds while the other waits on the lock, then finds the entry."""
    cache, log, results = tmp_path / "cache", tmp_path / "builds.log", tmp_path / "results.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_first_load, args=(str(cache), str(log), str(results))) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(log.read_text().split()) == 1  # one build
    outcomes = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(built for _, built in outcomes) == [False, True]
    assert {path for path, _ in outcomes} == {str(cache / "key" / "model.fp16.engine")}
    assert (cache / "key" / "model.fp16.engine").read_bytes() == b"plan " * 1000


# -- post-build precision check, on recorded engine inspector JSON -----------------------------------------
def inspector_json(name: str) -> str:
    return (INSPECTOR / name).read_text()


def test_fp16_engine_counts_fp16_layers_and_skips_reformats():
    counts = layer_precisions(inspector_json("ulffn_fp16.json"))
    assert counts == {"FP16": 5, "FP32": 1}
    assert precision_problem("fp16", counts) is None


def test_int8_engine_counts_int8_layers():
    counts = layer_precisions(inspector_json("ulffn_int8.json"))
    assert counts == {"FP16": 1, "INT8": 4}
    assert precision_problem("int8", counts) is None


def test_an_fp16_build_that_runs_in_fp32_fails_the_check():
    counts = layer_precisions(inspector_json("ulffn_fp16_silently_fp32.json"))
    assert counts == {"FP32": 4}
    assert precision_problem("fp16", counts) == "the fp16 engine has no FP16 layers (4 FP32)"
    assert precision_problem("int8", counts) == "the int8 engine has no INT8 layers (4 FP32)"
    assert precision_problem("fp32", counts) is None


def test_inspector_output_without_detailed_verbosity_is_refused():
    with pytest.raises(UlffnError, match="layer names only.*DETAILED"):
        layer_precisions(json.dumps({"Layers": ["conv1", "conv2"], "Bindings": ["image", "probabilities"]}))
    with pytest.raises(UlffnError, match="unreadable engine inspector output"):
        layer_precisions("not json")


@pytest.mark.parametrize(("description", "precision"), [
    ("Row major linear FP32", "FP32"),
    ("Channel major FP16 format where channel % 8 == 0", "FP16"),
    ("Half", "FP16"),
    ("Thirty-two wide channel vectorized row major Int8 format", "INT8"),
    ("Channel major INT8 format where channel % 16 == 0", "INT8"),
    ("Row major linear BFloat16 format", "BF16"),
    ("Unknown format", "unknown"),
])
def test_tensor_precision_reads_the_format_description(description, precision):
    assert tensor_precision(description) == precision


# -- thread safety: the lock that serialises TrtSegmenter calls ------------------------------------------
class _Shared:
    """One resource that breaks when two calls overlap (like one execution context, stream and buffers)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.inside = 0
        self.overlaps = 0
        self.calls = 0

    @serialized
    def use(self, value: int) -> int:
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        time.sleep(0.002)
        self.calls += 1
        self.inside -= 1
        return value * 2


def test_serialized_calls_never_overlap_across_threads():
    shared = _Shared()
    results: dict[int, int] = {}

    def work(thread: int) -> None:
        for i in range(10):
            results[thread * 100 + i] = shared.use(thread * 100 + i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert shared.overlaps == 0 and shared.calls == 80
    assert all(value == key * 2 for key, value in results.items())


def test_unserialized_calls_do_overlap_so_the_check_above_can_fail():
    shared = _Shared()
    plain = _Shared.use.__wrapped__  # the same body without the lock
    threads = [threading.Thread(target=plain, args=(shared, t)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert shared.overlaps > 0


def test_trt_segmenter_serialises_inference_and_close():
    assert TrtSegmenter.infer.__dict__.get("serialized") and TrtSegmenter.close.__dict__.get("serialized")
    assert "serialised" in (TrtSegmenter.__doc__ or "")


# -- Jetson power mode ------------------------------------------------------------------------------------
def test_nvpmodel_query_is_parsed():
    from ulffn_deploy.devices import parse_nvpmodel_query

    assert parse_nvpmodel_query("NV Power Mode: MAXN\n0\n") == "MAXN (mode 0)"
    assert parse_nvpmodel_query("NVPM WARN: ...\nNV Power Mode: 15W\n2\n") == "15W (mode 2)"
    assert parse_nvpmodel_query("NV Power Mode: 30W") == "30W"
    assert parse_nvpmodel_query("nvpmodel: command not found") is None


def test_no_power_mode_off_jetson():
    from ulffn_deploy.devices import NVPMODEL_CONF, jetson_power_mode

    if NVPMODEL_CONF.exists():
        pytest.skip("this is a Jetson")
    assert jetson_power_mode() is None


# -- one-line errors on a machine without TensorRT and a GPU -------------------------------------------------
def test_onnx_needs_an_engine_cache_to_run_on_tensorrt(tmp_path):
    onnx = tmp_path / "model.fp16.onnx"
    onnx.write_bytes(b"onnx")
    with pytest.raises(UlffnError, match="not a TensorRT engine.*engine_cache=DIR"):
        TARGET.load(onnx)
    with pytest.raises(UlffnError, match="apply to an .onnx source"):
        TARGET.load(tmp_path / "model.fp16.engine", engine_cache=tmp_path)


def test_engine_cache_without_tensorrt_fails_in_one_line(tmp_path):
    from tiny_models import tiny_onnx

    from ulffn_deploy.devices import tensorrt_unavailable_reason
    from ulffn_deploy.runtime import Segmenter

    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are available here (see test_tensorrt_gpu.py)")
    with pytest.raises(UlffnError) as caught:
        Segmenter.load(tiny_onnx("fp16"), backend="tensorrt", engine_cache=tmp_path / "cache")
    assert "\n" not in str(caught.value) and "cannot run model.fp16.onnx with tensorrt" in str(caught.value)
    assert not (tmp_path / "cache").exists()


def test_predict_engine_cache_without_tensorrt_exits_2_in_one_line(tmp_path):
    from helpers import run_cli
    from tiny_models import sample_images, tiny_onnx

    from ulffn_deploy.devices import tensorrt_unavailable_reason
    from ulffn_deploy.imageio import write_rgb

    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are available here (see test_tensorrt_gpu.py)")
    write_rgb(tmp_path / "lesion.png", sample_images(1)[0])
    result = run_cli("predict", str(tiny_onnx("fp16")), str(tmp_path / "lesion.png"), "--engine-cache",
                     str(tmp_path / "cache"), "-o", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: cannot run model.fp16.onnx with tensorrt")
    refused = run_cli("predict", str(tiny_onnx("fp16")), str(tmp_path / "lesion.png"), "--engine-cache",
                      str(tmp_path / "cache"), "--device", "cpu", "--no-progress")
    assert refused.returncode == 2 and "--engine-cache applies to an .onnx model" in refused.stderr
