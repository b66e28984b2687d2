"""Serve an artifact with NVIDIA Triton Inference Server (through PyTriton), and talk to such a server.

``ulffn-deploy serve ARTIFACT`` binds two models into one Triton server (docs: Triton's model configuration
and PyTriton's binding guide):

- ``ulffn`` takes encoded images (JPEG/PNG bytes, input ``image``, TYPE_STRING, one per batch item) and
  returns ``mask`` (TYPE_BOOL, H x W at the image's original size), pre- and post-processed exactly as
  ``Segmenter.predict`` does, so a device needs nothing but an HTTP client;
- ``ulffn_tensor`` takes preprocessed N x 3 x S x S float32 tensors (``input``) and returns N x 2 x S x S
  probabilities (``probabilities``), for clients that preprocess and batch themselves.

Both use Triton's dynamic batching. Each model's configuration carries ``ulffn.*`` parameters (artifact,
backend, precision, sha256, toolkit version, normalisation, input size, fit mode): PyTriton 0.7 has no
public way to set Triton's model metadata, so they are config parameters, read with
``GET /v2/models/<name>/config``. ``RemoteSegmenter`` (target ``triton`` of the registry) reads them and
runs preprocessing and postprocessing on the client, against the tensor model.

PyTriton's Python-backend stub links ``libpython3.X.so`` at run time; the interpreter that serves must be
a shared-library build that the stub can find (``stub_problem()`` says why not, in one line).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.preprocess import FIT_MODES

if TYPE_CHECKING:
    from ulffn_deploy.runtime.base import Segmenter

IMAGE_MODEL, TENSOR_MODEL = "ulffn", "ulffn_tensor"
IMAGE_INPUT, MASK_OUTPUT = "image", "mask"
TENSOR_INPUT, TENSOR_OUTPUT = "input", "probabilities"
PARAMETER_PREFIX = "ulffn."
TENSOR_MODEL_PARAMETER = PARAMETER_PREFIX + "tensor_model"
URL_PATTERN = re.compile(r"^(?P<scheme>https?|grpc)://?(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?(?:/(?P<model>[^/?#]*))?/?$",
                         re.IGNORECASE)
DEFAULT_PORTS = {"http": 8000, "https": 8000, "grpc": 8001}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
SERVE_EXTRA_HINT = "pip install 'ulffn-deploy[serve]'"


@dataclass(frozen=True)
class ServeOptions:
    """Where and how ``serve`` listens, and what requests it accepts."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8
    queue_delay_us: int = 2000
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000  # a 6000 x 6000 dermoscopy image is 36 MP
    fit_mode: str = "full"
    threads: int | None = None

    def check(self) -> None:
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports):
            raise UlffnError(f"ports {ports} must be three different numbers in 1-65535")
        if self.max_batch < 1 or self.queue_delay_us < 0:
            raise UlffnError("--max-batch must be at least 1 and --queue-delay-us not negative")
        if self.fit_mode not in FIT_MODES:
            raise UlffnError(f"unknown fit mode {self.fit_mode!r}", f"use one of {', '.join(FIT_MODES)}")


# -- can this interpreter host PyTriton's stub? -------------------------------------------------------

def interpreter_libpython() -> Path | None:
    """This interpreter's shared libpython, or None for a static build."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not soname:
        return None
    path = Path(libdir) / soname
    return path if path.is_file() else None


def stub_problem() -> str | None:
    """Why PyTriton's Python-backend stub cannot run under this interpreter (one line), or None.

    The stub is a separate process that loads ``libpython3.X.so`` and then this interpreter's packages;
    ``serve`` puts this interpreter's library directory first on LD_LIBRARY_PATH, so a shared-library
    build works and a static one (no libpython of its own) would load another build's library.
    """
    try:
        import pytriton  # noqa: F401
        import tritonclient  # noqa: F401
    except ImportError as exc:
        return f"PyTriton is not installed ({exc})"
    if not sys.platform.startswith("linux"):
        return f"PyTriton's Triton server runs on Linux only, this is {sys.platform}"
    from pytriton.utils.distribution import get_stub_path

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not get_stub_path(version).is_file():
        return f"PyTriton has no Python-backend stub for Python {version}"
    if interpreter_libpython() is None:
        return (f"{sys.executable} (Python {sys.version.split()[0]}) is not a shared-library build, so PyTriton's "
                "Python-backend stub would load another Python's libpython; use an interpreter built with "
                "--enable-shared, such as the system's python3")
    return None


def _use_interpreter_libpython() -> None:
    library = interpreter_libpython()
    if library is not None:
        current = os.environ.get("LD_LIBRARY_PATH", "")
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(library.parent), current) if p)


# -- the served models ---------------------------------------------------------------------------------

def served_parameters(segmenter: Segmenter, artifact: Path) -> dict[str, str]:
    """The ``ulffn.*`` config parameters of a served model: what it is and how to feed it."""
    from ulffn_deploy import __version__
    from ulffn_deploy.fileio import sha256_file

    fields = {key: value for key, value in segmenter.metadata.to_dict().items() if value is not None}
    fields.update(artifact=artifact.name, backend=segmenter.backend, sha256=sha256_file(artifact) if artifact.is_file() else "",
                  server_toolkit_version=__version__, serving_fit_mode=segmenter.fit_mode, tensor_model=TENSOR_MODEL)
    return {PARAMETER_PREFIX + key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in fields.items()}


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> HxWx3 uint8 RGB, as ``imageio.read_rgb`` reads files; UlffnError otherwise."""
    from ulffn_deploy.imageio import read_rgb

    if not data:
        raise UlffnError("an image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise UlffnError(f"an image of {len(data)} bytes is over the server's limit of {max_bytes} bytes")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UlffnError(f"not a readable image ({exc})") from exc
    if width * height > max_pixels:
        raise UlffnError(f"an image of {width}x{height} pixels is over the server's limit of {max_pixels} pixels")
    return read_rgb(io.BytesIO(data))  # type: ignore[arg-type]  # Pillow opens file objects too


class RequestError(Exception):
    """A request the server refuses; its message goes back to the client."""


class ServedModels:
    """The two infer functions PyTriton calls, around one Segmenter (calls are serialised by a lock)."""

    def __init__(self, segmenter: Segmenter, options: ServeOptions) -> None:
        self.segmenter = segmenter
        self.options = options
        self._lock = threading.Lock()

    def images(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """One request: K x 1 encoded images of one size -> K x H x W bool masks. A bad request fails the
        requests Triton batched with it (PyTriton answers errors per batch)."""
        try:
            return self._images(requests)
        except UlffnError as exc:
            raise RequestError(str(exc)) from None  # no chained traceback of the server's files for the client

    def tensors(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """One request: N x 3 x S x S float32 -> N x 2 x S x S float32 probabilities; requests run as one batch."""
        try:
            return self._tensors(requests)
        except UlffnError as exc:
            raise RequestError(str(exc)) from None

    def _images(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        per_request = [self._decode_request(request) for request in requests]
        flat = [image for images in per_request for image in images]
        if not flat:
            raise UlffnError("the request holds no images (an empty batch)")
        with self._lock:
            masks = self.segmenter.predict(flat)
        responses, first = [], 0
        for images in per_request:
            responses.append({MASK_OUTPUT: np.stack(masks[first : first + len(images)])})
            first += len(images)
        return responses

    def _tensors(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        batches = [np.asarray(request[TENSOR_INPUT]) for request in requests]
        for batch in batches:
            if batch.dtype != np.float32 or batch.ndim != 4 or len(batch) == 0:
                raise UlffnError(f"expected a non-empty N x 3 x S x S float32 batch, got {batch.dtype} {batch.shape}")
        with self._lock:
            probabilities = self.segmenter.infer(np.concatenate(batches))
        responses, first = [], 0
        for batch in batches:
            responses.append({TENSOR_OUTPUT: probabilities[first : first + len(batch)]})
            first += len(batch)
        return responses

    def _decode_request(self, request: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        items = np.asarray(request[IMAGE_INPUT]).reshape(-1)
        if items.dtype != object:
            raise UlffnError(f"input '{IMAGE_INPUT}' must be BYTES (encoded images), got {items.dtype}")
        images = [decode_image(bytes(item), self.options.max_image_bytes, self.options.max_image_pixels) for item in items]
        if len({image.shape for image in images}) > 1:
            raise UlffnError("the images of one request differ in size", "send one image per request")
        return images


def bind_models(triton: Any, models: ServedModels, parameters: Mapping[str, str]) -> None:
    """Bind the image and tensor models, with dynamic batching, and attach ``parameters`` to both configs."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    size = models.segmenter.input_size
    options = models.options

    def config() -> Any:
        return ModelConfig(max_batch_size=options.max_batch,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=options.queue_delay_us))

    triton.bind(IMAGE_MODEL, models.images, inputs=[Tensor(name=IMAGE_INPUT, dtype=bytes, shape=(1,))],
                outputs=[Tensor(name=MASK_OUTPUT, dtype=np.bool_, shape=(-1, -1))], config=config(), strict=True)
    triton.bind(TENSOR_MODEL, models.tensors, inputs=[Tensor(name=TENSOR_INPUT, dtype=np.float32, shape=(3, size, size))],
                outputs=[Tensor(name=TENSOR_OUTPUT, dtype=np.float32, shape=(2, size, size))], config=config(), strict=True)
    for model in triton._model_manager.models:  # PyTriton 0.7: no public hook for config parameters
        model._get_triton_model_config().backend_parameters.update(parameters)


def serve(artifact: str | os.PathLike[str], options: ServeOptions = ServeOptions(),
          log: Callable[[str], None] = lambda message: None, ready: Callable[[], None] | None = None) -> None:
    """Serve ``artifact`` until SIGINT or SIGTERM; returns after Triton has stopped."""
    options.check()
    problem = stub_problem()
    if problem:
        raise UlffnError(f"cannot serve here: {problem}", SERVE_EXTRA_HINT)
    from ulffn_deploy.runtime import Segmenter

    path = Path(artifact)
    load_options: dict[str, Any] = {"threads": options.threads} if options.threads and path.suffix.lower() == ".onnx" else {}
    with Segmenter.load(path, fit_mode=options.fit_mode, **load_options) as segmenter:
        models = ServedModels(segmenter, options)
        _run_triton(models, served_parameters(segmenter, path), log, ready)


def _triton_config(options: ServeOptions) -> Any:
    from pytriton.triton import TritonConfig

    return TritonConfig(http_address=options.host, http_port=options.http_port, grpc_address=options.host,
                        grpc_port=options.grpc_port, metrics_address=options.host, metrics_port=options.metrics_port,
                        exit_timeout_secs=1, log_verbose=0)


def _run_triton(models: ServedModels, parameters: Mapping[str, str], log: Callable[[str], None],
                ready: Callable[[], None] | None) -> None:
    import logging

    from pytriton.triton import Triton

    logging.getLogger("pytriton").setLevel(logging.WARNING)
    _use_interpreter_libpython()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    options = models.options
    triton = Triton(config=_triton_config(options))
    try:
        bind_models(triton, models, parameters)
        try:
            triton.run()
        except Exception as exc:  # PyTriton and tritonclient raise their own types when the server fails to start
            raise UlffnError(f"the Triton server did not start ({' '.join(str(exc).split())[:300]})",
                             "see the server's log above") from exc
        log(f"serving {parameters[PARAMETER_PREFIX + 'artifact']} ({models.segmenter.backend}, "
            f"{models.segmenter.precision}): http://{options.host}:{options.http_port}/{IMAGE_MODEL} (images), "
            f"/{TENSOR_MODEL} (tensors); grpc://{options.host}:{options.grpc_port}; "
            f"metrics http://{options.host}:{options.metrics_port}/metrics; Ctrl-C stops")
        if ready:
            ready()
        while not stop.wait(0.5) and triton.is_alive():
            pass
        if not stop.is_set():
            raise UlffnError("the Triton server stopped unexpectedly", "run again with ULFFN_DEBUG=1")
        log("stopping")
    finally:
        triton.stop()
        if left := stop_leftovers(f"pytrtion{os.getpid()}-"):
            log(f"ended {len(left)} Triton backend process(es) that outlived the server")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _descendants(marker: str) -> list[int]:
    """Processes whose command line contains ``marker``, and their descendants (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # the process ended while we read it
            continue
        if marker.encode() in cmdline:
            found.add(int(entry.name))
    while True:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        if not children:
            return sorted(found)
        found |= children


def stop_leftovers(marker: str, grace_s: float = 2.0) -> list[int]:
    """Kill what outlived Triton: Python-backend stubs whose shared-memory name starts with ``marker``
    (PyTriton names it after the serving process) and their children, which PyTriton 0.7 leaves behind
    at times after stopping (they ignore SIGTERM); then remove their shared-memory regions. Returns the pids."""
    deadline = time.monotonic() + grace_s
    while (left := _descendants(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for region in Path("/dev/shm").glob(marker + "*"):
        region.unlink(missing_ok=True)
    return left


# -- clients -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerUrl:
    """``http://127.0.0.1:8000/ulffn`` parsed: protocol, host, port and model name."""

    scheme: str
    host: str
    port: int
    model: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}/{self.model}"

    @property
    def is_loopback(self) -> bool:
        return self.host.lower() in LOOPBACK_HOSTS or self.host.startswith("127.")


def is_server_url(text: str) -> bool:
    """Whether ``text`` names a Triton server (``http://``, ``https://``, ``grpc://``; one slash after the
    scheme is accepted too, as ``pathlib.Path`` leaves it)."""
    return bool(URL_PATTERN.match(os.fspath(text)))


def parse_server_url(text: str | os.PathLike[str]) -> ServerUrl:
    match = URL_PATTERN.match(os.fspath(text))
    if not match:
        raise UlffnError(f"{text}: not a server URL", "use http://HOST:PORT/MODEL or grpc://HOST:PORT/MODEL")
    scheme = match["scheme"].lower()
    port = int(match["port"] or DEFAULT_PORTS[scheme])
    return ServerUrl(scheme, match["host"], port, match["model"] or IMAGE_MODEL)


class TritonClient:
    """A tritonclient HTTP or gRPC client for one server, with UlffnErrors instead of transport exceptions."""

    def __init__(self, url: str | os.PathLike[str] | ServerUrl, timeout_s: float = 60.0) -> None:
        self.url = url if isinstance(url, ServerUrl) else parse_server_url(url)
        self.timeout_s = timeout_s
        try:
            if self.url.scheme == "grpc":
                import tritonclient.grpc as module
            else:
                import tritonclient.http as module
        except (ImportError, RuntimeError) as exc:  # RuntimeError: tritonclient without that protocol's extra
            raise UlffnError(f"talking to a Triton server needs tritonclient ({exc})", SERVE_EXTRA_HINT) from exc
        self.module = module
        self.exceptions = __import__("tritonclient.utils", fromlist=["InferenceServerException"])
        try:
            if self.url.scheme == "grpc":
                self.client = module.InferenceServerClient(self.url.address)
            else:
                self.client = module.InferenceServerClient(self.url.address, ssl=self.url.scheme == "https",
                                                           network_timeout=timeout_s, connection_timeout=timeout_s)
        except Exception as exc:  # tritonclient raises several types for a bad address
            raise UlffnError(f"{self.url}: cannot create a client ({exc})") from exc

    def _call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except self.exceptions.InferenceServerException as exc:
            raise UlffnError(f"{self.url}: {what} failed: {server_message(str(exc.message()))}") from exc
        except (OSError, ConnectionError) as exc:
            raise UlffnError(f"{self.url}: {what} failed: {exc}", "is 'ulffn-deploy serve' running there?") from exc

    def is_ready(self, model: str | None = None) -> bool:
        try:
            return bool(self.client.is_model_ready(model or self.url.model))
        except Exception:  # not reachable yet, or not ready: the same answer
            return False

    def config(self, model: str | None = None) -> dict[str, Any]:
        """The model's Triton configuration as a dict (its ``parameters`` as plain strings)."""
        name = model or self.url.model
        if self.url.scheme == "grpc":
            from google.protobuf.json_format import MessageToDict

            response = self._call("reading the model config", self.client.get_model_config, name)
            config = MessageToDict(response.config, preserving_proto_field_name=True)
        else:
            config = self._call("reading the model config", self.client.get_model_config, name)
        raw = config.get("parameters") or {}
        config["parameters"] = {key: str(value.get("string_value", "")) for key, value in raw.items()}
        return dict(config)

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Run ``model`` once; numpy arrays in and out (object arrays of bytes for BYTES inputs)."""
        infer_inputs = []
        for name, array in inputs.items():
            datatype = "BYTES" if array.dtype == object else self.exceptions.np_to_triton_dtype(array.dtype)
            item = self.module.InferInput(name, list(array.shape), datatype)
            item.set_data_from_numpy(array)
            infer_inputs.append(item)
        requested = [self.module.InferRequestedOutput(name) for name in outputs]
        kwargs = {"client_timeout": self.timeout_s} if self.url.scheme == "grpc" else {}
        result = self._call(f"inference on {model}", self.client.infer, model, infer_inputs, outputs=requested, **kwargs)
        return {name: result.as_numpy(name) for name in outputs}

    def segment_encoded(self, images: Sequence[bytes], model: str | None = None) -> np.ndarray:
        """Encoded images of one size -> K x H x W bool masks from the server's image model."""
        array = np.array([[bytes(data)] for data in images], dtype=object)
        return self.infer(model or IMAGE_MODEL, {IMAGE_INPUT: array}, [MASK_OUTPUT])[MASK_OUTPUT]

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing twice, or a transport that is already gone
            pass


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(?:[A-Za-z_]\w*)(?:Error|Exception): (?P<message>.*)$")


def server_message(message: str) -> str:
    """The line that matters of a server's error: a Python backend sends a traceback, whose last exception
    line is the error our infer function raised."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if "Traceback" in message:
        raised = [match["message"] for line in lines if (match := _EXCEPTION_LINE.match(line))]
        if raised:
            return raised[-1][:400]
    return " ".join(lines)[:400]


def segment_images(url: str, images: Sequence[np.ndarray], fit_mode: str | None = None) -> list[np.ndarray]:
    """The documented client: HxWx3 uint8 RGB images -> HxW bool masks, identical to ``predict``'s.

    It reads the model's ``ulffn.*`` parameters, preprocesses here, sends N x 3 x S x S float32 to the
    tensor model (``ulffn_tensor`` of ``serve``, or a model of an ``export-triton`` repository) and maps the
    lesion probability back to each image's original size. Any of ``http://``, ``grpc://`` works.
    """
    from ulffn_deploy.targets.triton import RemoteSegmenter

    with RemoteSegmenter(url) as segmenter:
        return segmenter.predict(images, fit_mode)


# -- perf_analyzer-style concurrency sweep ---------------------------------------------------------------

SWEEP_LEVELS = (1, 2, 4, 8)


def _percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    from ulffn_deploy.latency import percentile

    ordered = sorted(samples_ms)
    return {"p50_ms": percentile(ordered, 50), "p90_ms": percentile(ordered, 90), "p99_ms": percentile(ordered, 99)}


def _client_loop(url: ServerUrl, send: Callable[[TritonClient], Any], deadline: float, budget: list[int],
                 lock: threading.Lock, samples: list[float], errors: list[str]) -> None:
    client = TritonClient(url)
    try:
        while time.perf_counter() < deadline:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            start = time.perf_counter()
            try:
                send(client)
            except UlffnError as exc:
                errors.append(str(exc))
                continue
            samples.append((time.perf_counter() - start) * 1e3)
    finally:
        client.close()


def measure_concurrency(url: ServerUrl, send: Callable[[TritonClient], Any], clients: int, requests: int,
                        seconds: float) -> dict[str, Any]:
    """``clients`` threads, each with its own connection, sending until ``requests`` are sent or ``seconds`` pass."""
    samples: list[float] = []
    errors: list[str] = []
    budget, lock = [requests], threading.Lock()
    start = time.perf_counter()
    threads = [threading.Thread(target=_client_loop, args=(url, send, start + seconds, budget, lock, samples, errors))
               for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    row: dict[str, Any] = {"concurrency": clients, "requests": len(samples), "errors": len(errors),
                           "seconds": round(elapsed, 3), "throughput_rps": len(samples) / elapsed if elapsed else 0.0}
    if samples:
        row.update(_percentiles(samples))
    if errors:
        row["first_error"] = errors[0]
    return row


def concurrency_sweep(url: str, image: np.ndarray, levels: Sequence[int] = SWEEP_LEVELS, requests: int = 200,
                      seconds: float = 10.0, endpoint: str = "image", warmup: int = 5,
                      allow_remote: bool = False) -> dict[str, Any]:
    """Throughput and p50/p99 latency at each client concurrency, against ``url`` (loopback unless allowed).

    ``endpoint`` "image" sends the image as PNG bytes to the image model (what a device does); "tensor"
    sends the preprocessed tensor to the tensor model. Each level stops after ``requests`` or ``seconds``.
    """
    target = parse_server_url(url)
    if not target.is_loopback and not allow_remote:
        raise UlffnError(f"{target.host} is not a loopback address", "the sweep runs against a server on this machine")
    send, described = _sender(target, image, endpoint)
    probe = TritonClient(target)
    try:
        for _ in range(warmup):
            send(probe)
        parameters = {key: value for key, value in probe.config(target.model).get("parameters", {}).items()
                      if key.startswith(PARAMETER_PREFIX)}  # not PyTriton's workspace path
    finally:
        probe.close()
    load_before = os.getloadavg()[0]
    rows = [measure_concurrency(target, send, level, requests, seconds) for level in levels]
    return {"url": str(target), "endpoint": endpoint, "request": described, "requests_per_level": requests,
            "seconds_per_level": seconds, "served": parameters, "levels": rows, "machine": _machine(load_before)}


def _machine(load_before: float) -> dict[str, Any]:
    """The CPU and how busy it was: client, server and anything else share it on loopback."""
    from ulffn_deploy.devices import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_1min": [round(load_before, 2),
                                                                              round(os.getloadavg()[0], 2)]}


def _sender(target: ServerUrl, image: np.ndarray, endpoint: str) -> tuple[Callable[[TritonClient], Any], str]:
    if endpoint == "image":
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded = buffer.getvalue()
        return ((lambda client: client.segment_encoded([encoded], target.model)),
                f"one {image.shape[1]}x{image.shape[0]} PNG ({len(encoded)} bytes) per request")
    if endpoint == "tensor":
        from ulffn_deploy.targets.triton import RemoteSegmenter

        with RemoteSegmenter(str(target)) as remote:
            batch, _ = remote.preprocess([image])
            model, input_name, output_name = remote.tensor_model, remote.input_name, remote.output_name
        return ((lambda client: client.infer(model, {input_name: batch}, [output_name])),
                f"one 1x3x{batch.shape[2]}x{batch.shape[3]} float32 tensor per request")
    raise UlffnError(f"unknown endpoint {endpoint!r}", "use image or tensor")


def in_process_latency(artifact: str | os.PathLike[str], image: np.ndarray, iterations: int = 50,
                       fit_mode: str = "full", endpoint: str = "image") -> dict[str, Any]:
    """The same artifact in this process (no server), for comparison: ``predict`` on the image ("image"),
    or ``infer`` on its preprocessed tensor ("tensor")."""
    from ulffn_deploy.preprocess import preprocess
    from ulffn_deploy.runtime import Segmenter

    with Segmenter.load(artifact, fit_mode=fit_mode) as segmenter:
        batch, _ = preprocess([image], segmenter.input_size, fit_mode, segmenter.metadata.normalization)
        step = (lambda: segmenter.predict([image])) if endpoint == "image" else (lambda: segmenter.infer(batch))
        for _ in range(5):
            step()
        samples = []
        for _ in range(iterations):
            start = time.perf_counter()
            step()
            samples.append((time.perf_counter() - start) * 1e3)
        return {"artifact": str(artifact), "backend": segmenter.backend, "precision": segmenter.precision,
                "call": "predict" if endpoint == "image" else "infer", "iterations": iterations,
                "throughput_rps": 1e3 * iterations / sum(samples), **_percentiles(samples)}


def format_sweep(result: Mapping[str, Any]) -> str:
    """The sweep as a Markdown table (one row per concurrency level, then the in-process row if present)."""
    machine = result.get("machine") or {}
    served = result.get("served") or {}
    lines = [f"Server {result['url']} ({result['endpoint']} endpoint: {result['request']}), serving "
             f"{served.get('ulffn.artifact', '?')} ({served.get('ulffn.backend', '?')}, {served.get('ulffn.precision', '?')})",
             f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, 1-min load average "
             f"{' -> '.join(str(v) for v in machine.get('load_average_1min', []))} (client and server share it)", "",
             "| clients | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) |", "|---|---|---|---|---|---|"]
    for row in result["levels"]:
        lines.append(f"| {row['concurrency']} | {row['requests']} | {row['errors']} | {row['throughput_rps']:.1f} | "
                     f"{row.get('p50_ms', float('nan')):.2f} | {row.get('p99_ms', float('nan')):.2f} |")
    local = result.get("in_process")
    if local:
        lines.append(f"| in-process {local.get('call', 'predict')} (no server) | {local['iterations']} | 0 | "
                     f"{local['throughput_rps']:.1f} | "
                     f"{local['p50_ms']:.2f} | {local['p99_ms']:.2f} |")
    return "\n".join(lines)
