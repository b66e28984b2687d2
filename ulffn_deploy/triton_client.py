"""Talking to a Triton server that ``ulffn-deploy serve`` (or an ``export-triton`` repository) runs.

``TritonClient`` wraps tritonclient's HTTP and gRPC clients for one server URL (``http://HOST:PORT/MODEL``,
``grpc://HOST:PORT/MODEL``) and turns transport and server errors into one-line ``UlffnError``s. It is what
the ``triton`` target, the concurrency sweep and devices use; it imports nothing of the server side.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any

import numpy as np

from ulffn_deploy.errors import UlffnError

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
DEFAULT_READY_TIMEOUT_S = 30.0


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


def is_server_url(text: str | os.PathLike[str]) -> bool:
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
        except (OSError, HTTPException) as exc:  # HTTPException: geventhttpclient's "connection closed"
            raise UlffnError(f"{self.url}: {what} failed: {exc}", "is 'ulffn-deploy serve' running there?") from exc

    def is_ready(self, model: str | None = None) -> bool:
        try:
            return bool(self.client.is_model_ready(model or self.url.model))
        except Exception:  # not reachable yet, or not ready: the same answer
            return False

    def wait_until_ready(self, model: str | None = None, timeout_s: float = DEFAULT_READY_TIMEOUT_S,
                         poll_s: float = 0.25) -> None:
        """Return once ``model`` answers ready; UlffnError after ``timeout_s`` (a server that is still
        loading its models answers "not ready" for a few seconds)."""
        name = model or self.url.model
        deadline = time.monotonic() + timeout_s
        while not self.is_ready(name):
            if time.monotonic() >= deadline:
                raise UlffnError(f"{self.url}: model '{name}' was not ready within {timeout_s:g} s",
                                 "is 'ulffn-deploy serve' running there, and is the model name right?")
            time.sleep(poll_s)

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


def server_message(message: str) -> str:
    """A server's error as one line of at most 400 characters."""
    return " ".join(line.strip() for line in message.strip().splitlines() if line.strip())[:400]
