"""Triton: ``serve`` on loopback (a real Triton server through PyTriton), the ``triton`` target, the
concurrency sweep, bad requests, readiness, SIGTERM under load, and ``export-triton`` configs parsed against
Triton's own schema (tritonclient's ``model_config_pb2``).

The server tests need an interpreter whose libpython PyTriton's stub can load (``stub_problem``); elsewhere
they skip with that reason, and ``.ci/run`` runs this file under the system's python3 as well.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from tiny_models import sample_images, tiny_onnx

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.serve import stub_problem
from ulffn_deploy.triton_client import is_server_url, parse_server_url

STUB_PROBLEM = stub_problem()
needs_server = pytest.mark.skipif(STUB_PROBLEM is not None, reason=f"no Triton server here: {STUB_PROBLEM}")
START_TIMEOUT_S = 120
MAX_PIXELS = 5000  # the served limit: sample images are up to 40x71 = 2840 pixels


# -- without a server -----------------------------------------------------------------------------------

def test_server_urls_are_artifacts_of_the_triton_target() -> None:
    from ulffn_deploy.targets.registry import is_artifact, target_for_path

    for url in ("http://127.0.0.1:8000/ulffn", "grpc://localhost:8001/ulffn_tensor", "https://host/ulffn"):
        assert is_server_url(url) and is_artifact(url)
        assert target_for_path(url).name == "triton"
    assert target_for_path(Path("http://127.0.0.1:8000/ulffn")).name == "triton"  # pathlib folds the //
    assert parse_server_url(Path("http://127.0.0.1:8000/ulffn")).address == "127.0.0.1:8000"
    assert parse_server_url("grpc://[::1]/x").port == 8001 and parse_server_url("http://h:9/").model == "ulffn"
    assert not is_server_url("model.fp32.onnx") and target_for_path("model.fp32.onnx").name == "onnxruntime"
    with pytest.raises(UlffnError, match="not a server URL"):
        parse_server_url("ftp://host/x")


def test_a_client_waits_a_bounded_time_for_its_model() -> None:
    from ulffn_deploy.runtime import Segmenter
    from ulffn_deploy.targets.triton import TARGET

    if TARGET.unavailable_reason():
        pytest.skip(TARGET.unavailable_reason())
    (port,) = _free_ports(1)  # nothing listens there
    start = time.monotonic()
    with pytest.raises(UlffnError, match=r"model 'ulffn' was not ready within 0.5 s") as caught:
        Segmenter.load(f"http://127.0.0.1:{port}/ulffn", ready_timeout_s=0.5)
    assert "\n" not in str(caught.value) and time.monotonic() - start < 30


def _copy(source: Path, folder: Path, name: str) -> Path:
    target = folder / name
    target.write_bytes(source.read_bytes())
    return target


def _stand_in_artifact(folder: Path, name: str, backend: str, extra: dict) -> Path:
    """A built artifact's file and sidecar for the repository writer, which copies the file and reads only
    the sidecar (no TensorRT or OpenVINO runs here; the bytes are not a real plan or IR)."""
    from ulffn_deploy.runtime.metadata import SIDECAR_FORMAT, SIDECAR_VERSION, read_metadata

    meta = read_metadata(tiny_onnx("fp32")).with_precision(extra.pop("precision", "fp16"))
    path = folder / name
    path.write_bytes(b"stand-in for " + name.encode())
    sidecar = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "backend": backend, **meta.to_dict(),
               "input_name": "image", "output_name": "probabilities", **extra}
    path.with_name(name + ".json").write_text(json.dumps(sidecar), encoding="utf-8")
    return path


def _engine(folder: Path, name: str, capability: str, max_batch: int = 4) -> Path:
    profile = {"image": {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32], "max": [max_batch, 3, 32, 32]}}
    return _stand_in_artifact(folder, name, "tensorrt", {"gpu": {"name": "GPU", "compute_capability": capability},
                                                         "profile": profile, "tensorrt_version": "10.13.0"})


def _parse_config(text: str):  # type: ignore[no-untyped-def]
    """``text`` parsed as Triton's ModelConfig protobuf; ParseError otherwise. tritonclient ships the schema as
    grpc/model_config_pb2.py, loaded here by path: importing tritonclient.grpc needs its gRPC extra."""
    import importlib.util

    from google.protobuf import text_format

    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("checking configs needs tritonclient's model_config_pb2")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    loaded = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert loaded is not None and loaded.loader is not None
    schema = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(schema)
    return text_format.Parse(text, schema.ModelConfig())


def test_export_triton_writes_configs_that_parse_against_tritons_schema(tmp_path: Path) -> None:
    from ulffn_deploy.fileio import sha256_file
    from ulffn_deploy.triton_export import export_repository

    folder = tmp_path / "artifacts"
    folder.mkdir()
    onnx_fp32 = _copy(tiny_onnx("fp32"), folder, "model.fp32.onnx")
    onnx_dynamic = _copy(tiny_onnx("fp16", dynamic_hw=True), folder, "model.fp16.onnx")
    engines = [_engine(folder, "model.fp16.sm86.engine", "8.6", 4), _engine(folder, "model.fp16.sm90.engine", "9.0", 16)]
    openvino = _stand_in_artifact(folder, "model.fp32.xml", "openvino", {"precision": "fp32"})
    openvino.with_suffix(".bin").write_bytes(b"weights")
    written = export_repository(tmp_path / "repo", [onnx_fp32, onnx_dynamic, *engines, openvino], device="gpu", max_batch=8)
    configs = {path.parent.name: _parse_config(path.read_text(encoding="utf-8")) for path in written}
    assert set(configs) == {"ulffn_onnx_fp32", "ulffn_onnx_fp16", "ulffn_trt_fp16", "ulffn_openvino_fp32"}

    onnx_config = configs["ulffn_onnx_fp32"]
    assert onnx_config.platform == "onnxruntime_onnx" and onnx_config.max_batch_size == 8
    assert list(onnx_config.input[0].dims) == [3, 32, 32] and list(onnx_config.output[0].dims) == [2, 32, 32]
    assert onnx_config.input[0].name == "image" and onnx_config.output[0].name == "probabilities"
    assert onnx_config.instance_group[0].kind == onnx_config.instance_group[0].KIND_GPU
    assert onnx_config.dynamic_batching.max_queue_delay_microseconds == 2000
    parameters = {key: value.string_value for key, value in onnx_config.parameters.items()}
    assert parameters["ulffn.sha256"] == sha256_file(onnx_fp32) and parameters["ulffn.precision"] == "fp32"
    assert parameters["ulffn.artifact"] == "model.fp32.onnx" and parameters["ulffn.input_size"] == "32"
    assert (tmp_path / "repo" / "ulffn_onnx_fp32" / "1" / "model.onnx").read_bytes() == onnx_fp32.read_bytes()

    assert list(configs["ulffn_onnx_fp16"].input[0].dims) == [3, -1, -1]  # dynamic height and width

    plan = configs["ulffn_trt_fp16"]
    assert plan.platform == "tensorrt_plan" and plan.max_batch_size == 4  # the smaller engine profile's batch
    assert dict(plan.cc_model_filenames) == {"8.6": "model_sm86.plan", "9.0": "model_sm90.plan"}
    assert plan.instance_group[0].kind == plan.instance_group[0].KIND_GPU
    for name, engine in zip(("model_sm86.plan", "model_sm90.plan"), engines):
        assert (tmp_path / "repo" / "ulffn_trt_fp16" / "1" / name).read_bytes() == engine.read_bytes()

    ov = configs["ulffn_openvino_fp32"]
    assert ov.backend == "openvino" and not ov.platform and ov.instance_group[0].kind == ov.instance_group[0].KIND_CPU
    assert sorted(p.name for p in (tmp_path / "repo" / "ulffn_openvino_fp32" / "1").iterdir()) == ["model.bin", "model.xml"]

    with pytest.raises(UlffnError, match="exists"):
        export_repository(tmp_path / "repo", [onnx_fp32])
    with pytest.raises(UlffnError, match="distinct recorded compute capabilities"):
        export_repository(tmp_path / "repo2", [*engines, _engine(folder, "model.fp16.b.engine", "8.6")])


def test_export_triton_command_takes_a_folders_artifacts(tmp_path: Path) -> None:
    folder = tmp_path / "artifacts"
    folder.mkdir()
    _copy(tiny_onnx("fp32"), folder, "model.fp32.onnx")
    run = run_cli("export-triton", str(tmp_path / "repo"), "--artifacts", str(folder), "--max-batch", "4")
    assert run.returncode == 0, run.stderr
    text = (tmp_path / "repo" / "ulffn_onnx_fp32" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text and "max_batch_size: 4" in text and "KIND_CPU" in text
    again = run_cli("export-triton", str(tmp_path / "repo"), "--artifacts", str(folder))
    assert again.returncode == 2 and "--force" in again.stderr


def test_serve_explains_why_it_cannot_run_here() -> None:
    if STUB_PROBLEM is None:
        pytest.skip("this interpreter can serve")
    from ulffn_deploy.serve import serve

    with pytest.raises(UlffnError, match="cannot serve here"):
        serve(tiny_onnx("fp32"))


# -- a real server ------------------------------------------------------------------------------------

def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _http_status(url: str) -> int | None:
    """The HTTP status of GET ``url``; None when nothing answers."""
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=2) as response:
            return int(response.status)
    except HTTPError as exc:
        return int(exc.code)
    except (URLError, OSError):
        return None


def _descendants(pid: int) -> dict[int, str]:
    """The processes below ``pid`` (Linux /proc), with their command lines."""
    parents, commands = {}, {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    found = {pid}
    while children := {child for child, parent in parents.items() if parent in found} - found:
        found |= children
    return {child: commands[child] for child in found - {pid}}


def _still_running(processes: dict[int, str]) -> list[str]:
    """Those of ``processes`` that are still running (same pid, same command line)."""
    left = []
    for pid, command in processes.items():
        try:
            if (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace") == command:
                left.append(command.replace("\0", " "))
        except OSError:
            continue
    return left


class Server:
    """``ulffn-deploy serve`` in a subprocess on free loopback ports; from its start, ``wait_ready`` watches
    ``/v2/health/ready`` and records what the model endpoints answered when it first said 200, and a client
    that opens the server's URL at once records whether it waited for the model."""

    def __init__(self, artifact: Path, folder: Path) -> None:
        self.http, self.grpc, self.metrics = _free_ports(3)
        self.log = folder / "serve.log"
        command = [sys.executable, "-m", "ulffn_deploy", "serve", str(artifact), "--http-port", str(self.http),
                   "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
                   "--max-image-megapixels", str(MAX_PIXELS / 1e6), "--max-batch", "8", "--queue-delay-us", "1000"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        self.url = {"http": f"http://127.0.0.1:{self.http}/ulffn", "grpc": f"grpc://127.0.0.1:{self.grpc}/ulffn"}
        self.models_at_first_ready: dict[str, int | None] = {}
        self.early_client: list[str] = []
        self._early = threading.Thread(target=self._open_at_once, daemon=True)
        self._early.start()

    def _open_at_once(self) -> None:
        from ulffn_deploy.runtime import Segmenter

        try:
            with Segmenter.load(self.url["http"], ready_timeout_s=START_TIMEOUT_S) as remote:
                self.early_client.append(f"opened, input size {remote.input_size}")
        except UlffnError as exc:
            self.early_client.append(f"failed: {exc}")

    def wait_ready(self) -> None:
        base = f"http://127.0.0.1:{self.http}/v2"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.tail()}")
            if _http_status(f"{base}/health/ready") == 200:
                self.models_at_first_ready = {model: _http_status(f"{base}/models/{model}/ready")
                                              for model in ("ulffn", "ulffn_tensor")}
                self._early.join(timeout=START_TIMEOUT_S)
                return
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"the server was not ready within {START_TIMEOUT_S} s:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> float:
        """SIGTERM; seconds until the process exited."""
        start = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return float("inf")
        return time.monotonic() - start


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("triton-artifact")
    return _copy(tiny_onnx("fp32"), folder, "model.fp32.onnx")


@pytest.fixture(scope="module")
def server(artifact: Path):  # type: ignore[no-untyped-def]
    if STUB_PROBLEM is not None:
        pytest.skip(f"no Triton server here: {STUB_PROBLEM}")
    pytest.importorskip("tritonclient.grpc")
    running = Server(artifact, artifact.parent)
    running.wait_ready()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def local(artifact: Path):  # type: ignore[no-untyped-def]
    from ulffn_deploy.runtime import Segmenter

    with Segmenter.load(artifact) as segmenter:
        yield segmenter


def _encoded(image: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@needs_server
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_served_masks_equal_local_predict(server: Server, local, scheme: str) -> None:  # type: ignore[no-untyped-def]
    from ulffn_deploy.imageio import read_rgb
    from ulffn_deploy.targets.triton import segment_images
    from ulffn_deploy.triton_client import TritonClient

    images = sample_images(3)
    client = TritonClient(server.url[scheme])
    try:
        for image, fmt in zip(images, ("PNG", "JPEG", "PNG")):
            data = _encoded(image, fmt)
            (mask,) = client.segment_encoded([data])
            (expected,) = local.predict([read_rgb(io.BytesIO(data))])  # type: ignore[arg-type]
            assert mask.dtype == np.bool_ and mask.shape == image.shape[:2]
            assert np.array_equal(mask, expected) and 0 < expected.sum() < expected.size
        two = client.segment_encoded([_encoded(images[0]), _encoded(images[0])])
        assert two.shape == (2, *images[0].shape[:2])
    finally:
        client.close()
    for mask, expected in zip(segment_images(server.url[scheme], images), local.predict(images)):
        assert np.array_equal(mask, expected)


@needs_server
def test_the_triton_target_infers_the_same_tensors(server: Server, local) -> None:  # type: ignore[no-untyped-def]
    from ulffn_deploy.fileio import sha256_file
    from ulffn_deploy.runtime import Segmenter

    images = sample_images(3)
    for url in server.url.values():
        with Segmenter.load(url) as remote:
            assert remote.backend == "triton" and remote.precision == "fp32" and remote.input_size == local.input_size
            batch, _ = remote.preprocess(images)
            np.testing.assert_allclose(remote.infer(batch), local.infer(batch), atol=1e-5, rtol=0)
            for got, want in zip(remote.predict(images), local.predict(images)):
                assert np.array_equal(got, want)
            served = remote.info["served"]
            assert served["sha256"] == sha256_file(local.path) and served["artifact"] == "model.fp32.onnx"
            assert served["precision"] == "fp32" and served["toolkit_version"]


@needs_server
def test_predict_command_takes_a_server_url(server: Server, local, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ulffn_deploy.imageio import read_mask, write_rgb

    image = sample_images(1)[0]
    write_rgb(tmp_path / "lesion.png", image)
    run = run_cli("predict", server.url["grpc"], str(tmp_path / "lesion.png"), "-o", str(tmp_path / "out"), "--no-progress")
    assert run.returncode == 0, run.stderr
    assert np.array_equal(read_mask(tmp_path / "out" / "lesion_mask.png"), local.predict([image])[0])


@needs_server
def test_verify_command_checks_a_server_against_its_checkpoint(server: Server, tmp_path: Path) -> None:
    from tiny_models import artifacts

    report = tmp_path / "verify.json"
    run = run_cli("verify", server.url["http"], "--artifacts", str(artifacts()), "--num-images", "2", "--warmup", "1",
                  "--iterations", "3", "--duration", "0", "--json", str(report))
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(report.read_text())
    assert result["passed"] and result["artifact"]["backend"] == "triton"
    assert result["artifact"]["path"] == server.url["http"]
    assert not (artifacts() / "verified.json").exists() or "ulffn" not in json.loads((artifacts() / "verified.json").read_text())


@needs_server
def test_eight_concurrent_clients(server: Server, local) -> None:  # type: ignore[no-untyped-def]
    from ulffn_deploy.triton_client import TritonClient

    images = sample_images(3)
    encoded = [_encoded(image) for image in images]
    expected = local.predict(images)
    failures: list[str] = []
    done = [0]
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        client = TritonClient(server.url["grpc" if index % 2 else "http"])
        try:
            for request in range(20):
                k = (index + request) % 3
                try:
                    (mask,) = client.segment_encoded([encoded[k]])
                except UlffnError as exc:
                    failures.append(str(exc))
                    continue
                if not np.array_equal(mask, expected[k]):
                    failures.append(f"client {index} request {request}: wrong mask")
                with lock:
                    done[0] += 1
        finally:
            client.close()

    before = _metrics(server)
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and done[0] == 160
    deadline = time.monotonic() + 10
    while True:  # Triton counts a request after it has sent the response
        after = _metrics(server)
        requests = after["nv_inference_request_success"] - before["nv_inference_request_success"]
        if requests >= 160 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    assert requests == 160 and executions < requests  # Triton's dynamic batcher ran several requests at once


def _metrics(server: Server, model: str = "ulffn") -> dict[str, float]:
    """The Prometheus counters of ``model`` from the server's metrics port."""
    from urllib.request import urlopen

    with urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10) as response:
        text = response.read().decode()
    label = f'{{model="{model}",version="1"}} '
    return {line.split("{")[0]: float(line.split(label)[1]) for line in text.splitlines() if label in line}


@needs_server
def test_bad_requests_get_errors_and_the_server_keeps_serving(server: Server, local) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    from ulffn_deploy.triton_client import TritonClient

    big = np.asarray(Image.new("RGB", (100, 100), (200, 120, 90)))  # 10,000 pixels > MAX_PIXELS
    good = sample_images(1)[0]
    size = local.input_size
    bad = {
        "wrong dtype": ("ulffn_tensor", {"input": np.zeros((1, 3, size, size), np.float64)}, "probabilities", "FP64"),
        "wrong shape": ("ulffn_tensor", {"input": np.zeros((1, 3, size // 2, size), np.float32)}, "probabilities", "shape"),
        "empty batch": ("ulffn_tensor", {"input": np.zeros((0, 3, size, size), np.float32)}, "probabilities", "got 0"),
        "empty image batch": ("ulffn", {"image": np.zeros((0, 1), object)}, "mask", "got 0"),
        "image as numbers": ("ulffn", {"image": np.zeros((1, 1), np.float32)}, "mask", "BYTES"),
        "garbage bytes": ("ulffn", {"image": np.array([[b"\x89PNG not really"]], object)}, "mask", "not a readable image"),
        "truncated PNG": ("ulffn", {"image": np.array([[_encoded(good)[:200]]], object)}, "mask", "not a readable image"),
        "no bytes": ("ulffn", {"image": np.array([[b""]], object)}, "mask", "empty"),
        "oversized image": ("ulffn", {"image": np.array([[_encoded(big)]], object)}, "mask", "over the server's limit"),
    }
    refused = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}
    for scheme, url in server.url.items():
        client = TritonClient(url)
        try:
            for what, (model, inputs, output, message) in bad.items():
                with pytest.raises(UlffnError, match=message) as caught:
                    client.infer(model, inputs, [output])
                assert caught.value.__cause__.status() == refused[scheme], f"{what} over {scheme}"
                _assert_one_line_without_internals(str(caught.value.__cause__.message()), what)
                assert client.is_ready("ulffn") and client.is_ready("ulffn_tensor"), f"not ready after {what}"
                (mask,) = client.segment_encoded([_encoded(good)])
                assert np.array_equal(mask, local.predict([good])[0]), f"wrong answer after {what}"
        finally:
            client.close()
    assert server.process.poll() is None


def _assert_one_line_without_internals(text: str, what: str) -> None:
    assert text and "\n" not in text.strip(), f"{what}: {text!r}"
    for internal in ("Traceback", "File \"", "site-packages", "ulffn_deploy", " at 0x", ".py", "/"):
        assert internal not in text, f"{what}: {internal!r} in {text!r}"


@needs_server
def test_an_undecodable_image_over_plain_http_gets_400_and_one_line(server: Server) -> None:
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    body = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": ["not an image"]}]})
    request = Request(f"http://127.0.0.1:{server.http}/v2/models/ulffn/infer", data=body.encode(),
                      headers={"Content-Type": "application/json"})
    with pytest.raises(HTTPError) as caught:
        urlopen(request, timeout=30)
    assert caught.value.code == 400
    answer = json.loads(caught.value.read())
    assert list(answer) == ["error"] and answer["error"].startswith("not a readable image")
    _assert_one_line_without_internals(answer["error"], "undecodable image")


@needs_server
def test_ready_means_both_models_are_loaded(server: Server) -> None:
    assert server.models_at_first_ready == {"ulffn": 200, "ulffn_tensor": 200}
    assert server.early_client and server.early_client[0].startswith("opened"), server.early_client


@needs_server
def test_config_reports_the_artifact(server: Server, artifact: Path) -> None:
    from ulffn_deploy import __version__
    from ulffn_deploy.fileio import sha256_file
    from ulffn_deploy.triton_client import TritonClient

    client = TritonClient(server.url["http"])
    try:
        for model in ("ulffn", "ulffn_tensor"):
            config = client.config(model)
            parameters = config["parameters"]
            assert parameters["ulffn.artifact"] == artifact.name and parameters["ulffn.precision"] == "fp32"
            assert parameters["ulffn.sha256"] == sha256_file(artifact)
            assert parameters["ulffn.server_toolkit_version"] == __version__ and parameters["ulffn.toolkit_version"]
            assert config["max_batch_size"] == 8 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 1000
    finally:
        client.close()


@needs_server
def test_concurrency_sweep_is_bounded(server: Server) -> None:
    from ulffn_deploy.load_generator import concurrency_sweep, format_sweep

    result = concurrency_sweep(server.url["http"], sample_images(1)[0], levels=(1, 3), requests=12, warmup=1)
    assert [row["concurrency"] for row in result["levels"]] == [1, 3]
    for row in result["levels"]:
        assert row["requests"] == 12 and row["p99_ms"] >= row["p90_ms"] >= row["p50_ms"] > 0
    assert result["served"]["ulffn.artifact"] == "model.fp32.onnx" and result["machine"]["cores"] == os.cpu_count()
    assert format_sweep(result).count("\n| ") == 3  # the header and one row per level
    with pytest.raises(UlffnError, match="loopback"):
        concurrency_sweep("http://192.0.2.1:8000/ulffn", sample_images(1)[0])


@needs_server
def test_sigterm_under_load_drains_and_leaves_nothing(server: Server, local) -> None:  # type: ignore[no-untyped-def]
    """The last test of the module: it stops the server, while four clients send requests (at most 400)."""
    from ulffn_deploy.triton_client import TritonClient

    image = sample_images(1)[0]
    encoded, expected = _encoded(image), local.predict([image])[0]
    children = _descendants(server.process.pid)
    shared_memory = {line.split()[-1] for pid in children for line in _maps(pid) if "/dev/shm/" in line}
    assert any("tritonserver" in command for command in children.values()) and shared_memory
    answered, refused, wrong = [0], [], []
    signalled = threading.Event()

    def client_loop() -> None:
        client = TritonClient(server.url["http"], timeout_s=20)
        try:
            for _ in range(100):
                try:
                    (mask,) = client.segment_encoded([encoded])
                except Exception as exc:  # a connection cut mid-request must show here too, not end the thread
                    refused.append(f"{type(exc).__name__}: {exc}")
                    if signalled.is_set():
                        return
                    continue
                answered[0] += 1
                if not np.array_equal(mask, expected):
                    wrong.append("wrong mask")
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    while answered[0] < 8 and any(thread.is_alive() for thread in threads):
        time.sleep(0.01)
    signalled.set()
    seconds = server.stop()
    for thread in threads:
        thread.join(timeout=60)
    log = server.log.read_text(errors="replace")
    assert server.process.returncode == 0, server.tail()
    assert seconds < 10, f"took {seconds:.1f} s to stop:\n{server.tail()}"
    assert len(refused) <= 4 and not wrong, (refused, wrong)  # only each client's first request after the signal fails
    assert all("unknown model" in message for message in refused), refused  # refused at the door, none cut off
    for unclean in ("Signal (11)", "Segmentation fault", "system_error", "core dumped", "Exit timeout expired"):
        assert unclean not in log, server.tail()  # Triton's own words for a crash or for giving up on a drain
    assert not _still_running(children), "processes of the server are left"
    assert not [path for path in shared_memory if Path(path).exists()], "shared memory is left"


def _maps(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "maps").read_text().splitlines()
    except OSError:
        return []
