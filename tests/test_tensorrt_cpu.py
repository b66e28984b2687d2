"""The TensorRT decisions that need no GPU: host code only for verified version-compatible plans, the engine
cache's key, rebuild rule and locking (two processes, one build), layer-precision counts on hand-written
engine inspector JSON, the serialising lock, and the one-line errors on this machine.

The inspector JSON is hand-written (tests/data/tensorrt_inspector/README.md): the inspector needs a
deserialised engine, hence a GPU, for TensorRT and TensorRT-RTX alike, so real inspector output cannot be
produced on these machines."""

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
def test_device_build_options_reach_the_rebuild_command_and_are_checked():
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


# -- post-build precision check, on hand-written engine inspector JSON (no GPU here to produce real output) ----
def inspector_json(name: str) -> str:
    return (INSPECTOR / name).read_text()


def test_fp16_engine_counts_fp16_layers_and_skips_reformats():
    counts = layer_precisions(inspector_json("handwritten_fp16.json"))
    assert counts == {"FP16": 5, "FP32": 1}
    assert precision_problem("fp16", counts) is None


def test_int8_engine_counts_int8_layers():
    counts = layer_precisions(inspector_json("handwritten_int8.json"))
    assert counts == {"FP16": 1, "INT8": 4}
    assert precision_problem("int8", counts) is None


def test_an_fp16_build_that_runs_in_fp32_fails_the_check():
    counts = layer_precisions(inspector_json("handwritten_fp16_silently_fp32.json"))
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
    """One resource that records whether two calls overlap (like one execution context, stream and buffers).
    The first call waits inside, up to ``wait`` seconds, for a second call to come in; no sleeps: events only.
    With the lock the second call cannot come in, so the wait runs out and ``overlapped`` stays False; without
    it the second call comes in at once and ends the wait."""

    def __init__(self, wait: float) -> None:
        self._lock = threading.RLock()
        self.wait = wait
        self.first_inside = threading.Event()
        self.second_came_in = threading.Event()
        self.overlapped = False
        self.order: list[int] = []

    def body(self, value: int) -> int:
        if not self.first_inside.is_set():
            self.first_inside.set()
            self.overlapped = self.second_came_in.wait(self.wait)
        else:
            self.second_came_in.set()
        self.order.append(value)
        return value * 2

    @serialized
    def use(self, value: int) -> int:
        return self.body(value)


def _two_calls(shared: _Shared, call) -> list[int]:
    """Call ``call(1)``, and once it is inside, ``call(2)`` from a second thread; the results."""
    results = [0, 0]

    def run(index: int) -> None:
        results[index] = call(index + 1)

    first = threading.Thread(target=run, args=(0,))
    first.start()
    assert shared.first_inside.wait(60)
    second = threading.Thread(target=run, args=(1,))
    second.start()
    first.join(60)
    second.join(60)
    return results


def test_serialized_calls_never_overlap_across_threads():
    shared = _Shared(wait=0.2)
    assert _two_calls(shared, shared.use) == [2, 4]
    assert not shared.overlapped and shared.order == [1, 2]


def test_unserialized_calls_do_overlap_so_the_check_above_can_fail():
    shared = _Shared(wait=60)  # ends as soon as the second call comes in
    assert _two_calls(shared, shared.body) == [2, 4]
    assert shared.overlapped and shared.order == [2, 1]


class _LockOnlySegmenter(TrtSegmenter):
    """TrtSegmenter's own infer/close with the engine call replaced by a _Shared body (no GPU needed)."""

    def __init__(self, shared: _Shared) -> None:  # noqa: D107 - skips the engine: only the locking runs
        self._lock, self._closed, self.max_batch, self.shared = threading.RLock(), False, None, shared
        self.last_timings: dict[str, float] = {}

    def _infer_impl(self, batch):
        import numpy as np

        self.shared.body(int(batch[0, 0, 0, 0]))
        return np.zeros((len(batch), 2, *batch.shape[2:]), np.float32)

    def _checked_output(self, output, batch):
        return output


def test_trt_segmenter_infer_calls_wait_for_each_other():
    import numpy as np

    shared = _Shared(wait=0.2)
    segmenter = _LockOnlySegmenter(shared)
    _two_calls(shared, lambda value: segmenter.infer(np.full((1, 3, 2, 2), value, np.float32)))
    assert not shared.overlapped and shared.order == [1, 2]


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
