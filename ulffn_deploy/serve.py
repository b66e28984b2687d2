"""Serve an artifact with NVIDIA Triton Inference Server (through PyTriton): ``ulffn-deploy serve``.

``serve`` binds two models into one Triton server (docs: Triton's model configuration and PyTriton's
binding guide):

- ``ulffn`` takes encoded images (JPEG/PNG bytes, input ``image``, TYPE_STRING, one per batch item) and
  returns ``mask`` (TYPE_BOOL, H x W at the image's original size), pre- and post-processed exactly as
  ``Segmenter.predict`` does, so a device needs nothing but an HTTP client;
- ``ulffn_tensor`` takes preprocessed N x 3 x S x S float32 tensors (``input``) and returns N x 2 x S x S
  probabilities (``probabilities``), for clients that preprocess and batch themselves.

Both use Triton's dynamic batching. Each model's configuration carries ``ulffn.*`` parameters (artifact,
backend, precision, sha256, toolkit version, normalisation, input size, fit mode): PyTriton 0.7 has no
public way to set Triton's model metadata, so they are config parameters, read with
``GET /v2/models/<name>/config`` (``triton_client.TritonClient.config``).

Lifecycle: the models are written into PyTriton's local model store before Triton starts, so Triton loads
both before it opens its endpoints and ``/v2/health/ready`` never answers 200 without them. A request the
server refuses gets Triton's INVALID_ARG status (HTTP 400) and one line of text, through a thin wrapper
around PyTriton's proxy model (``PROXY_MODEL``). SIGINT or SIGTERM drains: both models are unloaded
(Triton lets in-flight requests finish), then Triton stops, and no shared memory is left.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.preprocess import FIT_MODES
from ulffn_deploy.triton_client import (
    IMAGE_INPUT,
    IMAGE_MODEL,
    MASK_OUTPUT,
    PARAMETER_PREFIX,
    SERVE_EXTRA_HINT,
    TENSOR_INPUT,
    TENSOR_MODEL,
    TENSOR_OUTPUT,
    TritonClient,
)

if TYPE_CHECKING:
    from ulffn_deploy.runtime.base import Segmenter

MODELS = (IMAGE_MODEL, TENSOR_MODEL)
DRAIN_TIMEOUT_S = 10.0
REQUEST_ERROR_MARKER = "ulffn-request-refused: "


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

    @property
    def local_http_address(self) -> str:
        """Where this machine reaches the HTTP endpoint (a wildcard address listens on loopback too)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]:{self.http_port}" if ":" in host else f"{host}:{self.http_port}"


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
    from PIL import Image

    from ulffn_deploy.imageio import read_rgb

    if not data:
        raise UlffnError("an image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise UlffnError(f"an image of {len(data)} bytes is over the server's limit of {max_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Exception as exc:  # a hostile or broken image: whatever Pillow raises means "not readable"
        raise UlffnError(f"not a readable image ({_one_line(exc)})") from None
    if width * height > max_pixels:
        raise UlffnError(f"an image of {width}x{height} pixels is over the server's limit of {max_pixels} pixels")
    try:
        return read_rgb(io.BytesIO(data))  # type: ignore[arg-type]  # Pillow opens file objects too
    except UlffnError as exc:  # read_rgb names the file it was given: here a BytesIO object
        raise UlffnError(" ".join(_OBJECT_REPR.sub("", exc.message).split()).lstrip(": ")[:400]) from None
    except Exception as exc:
        raise UlffnError(f"not a readable image ({_one_line(exc)})") from None


_OBJECT_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>")


def _one_line(exc: BaseException) -> str:
    """An exception as a short line without object addresses (Pillow names the BytesIO it was given)."""
    text = " ".join(_OBJECT_REPR.sub("", str(exc)).split()) or type(exc).__name__
    return text[:200]


class RequestError(Exception):
    """A request the server refuses: the client gets ``message`` (one line) and HTTP 400 / gRPC INVALID_ARGUMENT.

    Its text carries ``REQUEST_ERROR_MARKER``, by which ``PROXY_MODEL`` tells it from a failure of the server."""

    def __init__(self, message: str) -> None:
        self.message = " ".join(message.split())[:400]
        super().__init__(REQUEST_ERROR_MARKER + self.message)


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
            raise RequestError(str(exc)) from None

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


# PyTriton's proxy model (the Python-backend model that forwards requests to the infer functions) raises
# every error with the whole traceback, which Triton sends to the client with status 500. This model.py
# replaces it in the model store and keeps PyTriton's as pytriton_model.py next to it.
PROXY_MODEL = f"""\
import triton_python_backend_utils as pb_utils

from .pytriton_model import TritonPythonModel as PyTritonModel

MARKER = {REQUEST_ERROR_MARKER!r}
INTERNAL = "the server failed on this request; its log has the details"


def _refusal(text):
    if MARKER not in text:
        return None
    return text.rsplit(MARKER, 1)[1].splitlines()[0].strip()[:400]


class TritonPythonModel(PyTritonModel):
    def execute(self, requests):
        try:
            return super().execute(requests)
        except Exception as exc:
            refusal = _refusal(str(exc))
            if refusal is None:
                error = pb_utils.TritonError(INTERNAL, pb_utils.TritonError.INTERNAL)
            else:
                error = pb_utils.TritonError(refusal, pb_utils.TritonError.INVALID_ARG)
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
"""


def bind_models(triton: Any, models: ServedModels, parameters: Mapping[str, str]) -> None:
    """Bind the image and tensor models, with dynamic batching, into PyTriton's local model store, with
    ``parameters`` in both configs and ``PROXY_MODEL`` as their model.py."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.model_config.generator import ModelConfigGenerator

    size = models.segmenter.input_size
    options = models.options

    def config() -> Any:
        return ModelConfig(max_batch_size=options.max_batch,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=options.queue_delay_us))

    triton.bind(IMAGE_MODEL, models.images, inputs=[Tensor(name=IMAGE_INPUT, dtype=bytes, shape=(1,))],
                outputs=[Tensor(name=MASK_OUTPUT, dtype=np.bool_, shape=(-1, -1))], config=config(), strict=True)
    triton.bind(TENSOR_MODEL, models.tensors, inputs=[Tensor(name=TENSOR_INPUT, dtype=np.float32, shape=(3, size, size))],
                outputs=[Tensor(name=TENSOR_OUTPUT, dtype=np.float32, shape=(2, size, size))], config=config(), strict=True)
    store = Path(triton._workspace.model_store_path)  # PyTriton 0.7: no public hook for config parameters
    for model in triton._model_manager.models:
        model_config = model._get_triton_model_config()
        model_config.backend_parameters.update(parameters)
        ModelConfigGenerator(config=model_config).to_file(store / model.model_name / "config.pbtxt")
        version = store / model.model_name / str(model.model_version)
        (version / "model.py").replace(version / "pytriton_model.py")
        (version / "model.py").write_text(PROXY_MODEL, encoding="utf-8")


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
                        exit_timeout_secs=1, log_verbose=0, strict_readiness=True)


def _refusals_in_one_line(record: Any) -> bool:
    """PyTriton logs every failed request with its traceback; a refused request is logged as one line."""
    text = record.getMessage()
    if REQUEST_ERROR_MARKER in text:
        record.msg, record.args = "refused a request: %s", (text.rsplit(REQUEST_ERROR_MARKER, 1)[1].splitlines()[0],)
    return True


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_triton(models: ServedModels, parameters: Mapping[str, str], log: Callable[[str], None],
                ready: Callable[[], None] | None) -> None:
    import logging

    from pytriton.triton import Triton, TritonLifecyclePolicy

    logging.getLogger("pytriton").setLevel(logging.WARNING)
    logging.getLogger("pytriton.proxy.inference").addFilter(_refusals_in_one_line)
    _use_interpreter_libpython()
    options = models.options
    with _stop_on_signals() as stop:
        triton = Triton(config=_triton_config(options),
                        triton_lifecycle_policy=TritonLifecyclePolicy(launch_triton_on_startup=True, local_model_store=True))
        try:
            bind_models(triton, models, parameters)
            try:
                triton.run()
            except Exception as exc:  # PyTriton and tritonclient raise their own types when the server fails to start
                raise UlffnError(f"the Triton server did not start ({' '.join(str(exc).split())[:300]})",
                                 "see the server's log above") from exc
            _check_models_ready(options)
            log(f"serving {parameters[PARAMETER_PREFIX + 'artifact']} ({models.segmenter.backend}, "
                f"{models.segmenter.precision}): http://{options.host}:{options.http_port}/{IMAGE_MODEL} (images), "
                f"/{TENSOR_MODEL} (tensors); grpc://{options.host}:{options.grpc_port}; "
                f"metrics http://{options.host}:{options.metrics_port}/metrics; Ctrl-C stops")
            if ready:
                ready()
            while not stop.wait(0.1) and triton.is_alive():
                pass
            if not stop.is_set():
                raise UlffnError("the Triton server stopped unexpectedly", "run again with ULFFN_DEBUG=1")
            log("stopping: finishing the requests in flight")
            _drain(options, triton.get_access_token())
        finally:
            triton.stop()
            if left := stop_leftovers(_shm_prefix(triton)):
                log(f"ended {len(left)} Triton backend process(es) that outlived the server")
    log("stopped")


def _check_models_ready(options: ServeOptions) -> None:
    client = TritonClient(f"http://{options.local_http_address}/{IMAGE_MODEL}", timeout_s=10)
    try:
        for model in MODELS:
            client.wait_until_ready(model, timeout_s=60)
    finally:
        client.close()


def _drain(options: ServeOptions, access_token: str) -> None:
    """Unload both models: Triton refuses new requests for them, lets those in flight finish, then ends the
    Python-backend stubs (which release their shared memory). Bounded by ``DRAIN_TIMEOUT_S``."""
    import tritonclient.http as http
    from pytriton.triton import TRITON_ACCESS_HEADER

    headers = {TRITON_ACCESS_HEADER: access_token}
    client = http.InferenceServerClient(options.local_http_address, network_timeout=DRAIN_TIMEOUT_S)
    try:
        for model in MODELS:
            client.unload_model(model, headers=headers)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            states = {entry.get("name"): entry.get("state") for entry in client.get_model_repository_index(headers=headers)}
            if all(states.get(model) not in ("READY", "UNLOADING", "LOADING") for model in MODELS):
                return
            time.sleep(0.1)
    except Exception:  # the server went away already: nothing left to drain
        return
    finally:
        client.close()


def _shm_prefix(triton: Any) -> str:
    """The prefix of the Python-backend stubs' shared-memory regions, which their command lines carry too."""
    return str(triton._python_backend_config["shm-region-prefix-name"])  # PyTriton 0.7 sets it per server


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
