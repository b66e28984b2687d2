"""A perf_analyzer-style client concurrency sweep against a Triton server (``ulffn-deploy benchmark-server``).

At each concurrency level, that many client threads (each with its own connection) send one request after
another; each thread is one ``latency.measure`` loop, and the level's latency statistics pool every
thread's timings. The machine description is ``benchmark.machine_description``, plus the load average
before and after (client and server share the CPU on loopback).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.latency import Schedule, measure, summarize
from ulffn_deploy.triton_client import PARAMETER_PREFIX, ServerUrl, TritonClient, parse_server_url

SWEEP_LEVELS = (1, 2, 4, 8)
Send = Callable[[TritonClient], Any]


def _shares(requests: int, clients: int) -> list[int]:
    """``requests`` split over ``clients`` as evenly as whole numbers allow (every client sends at least one)."""
    base, extra = divmod(max(requests, clients), clients)
    return [base + (index < extra) for index in range(clients)]


def _client(url: ServerUrl, send: Send, count: int, results: list[dict[str, Any]], errors: list[str]) -> None:
    client = TritonClient(url)

    def step() -> None:
        send(client)

    try:
        schedule = Schedule(warmup_iterations=0, iterations=count, duration_s=0)
        results.append(measure(step, 1, schedule, keep_samples=True))
    except UlffnError as exc:
        errors.append(exc.message)
    finally:
        client.close()


def measure_concurrency(url: ServerUrl, send: Send, clients: int, requests: int) -> dict[str, Any]:
    """``clients`` threads sending ``requests`` requests in all; throughput and pooled latency percentiles.
    A failed request ends the sweep with its error (as perf_analyzer does)."""
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    threads = [threading.Thread(target=_client, args=(url, send, count, results, errors))
               for count in _shares(requests, clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise UlffnError(f"a request at concurrency {clients} failed: {errors[0]}")
    samples = [sample for result in results for sample in result["host_samples_ms"]]
    stats = summarize(samples)
    return {"concurrency": clients, "requests": len(samples), "seconds": round(elapsed, 3),
            "throughput_rps": len(samples) / elapsed, "p50_ms": stats["median"], "p90_ms": stats["p90"],
            "p99_ms": stats["p99"]}


def concurrency_sweep(url: str, image: np.ndarray, levels: Sequence[int] = SWEEP_LEVELS, requests: int = 200,
                      endpoint: str = "image", warmup: int = 5, allow_remote: bool = False) -> dict[str, Any]:
    """Throughput and p50/p99 latency at each client concurrency, against ``url`` (loopback unless allowed).

    ``endpoint`` "image" sends the image as PNG bytes to the image model (what a device does); "tensor"
    sends the preprocessed tensor to the tensor model. Each level sends ``requests`` requests.
    """
    from ulffn_deploy.benchmark import machine_description

    target = parse_server_url(url)
    if not target.is_loopback and not allow_remote:
        raise UlffnError(f"{target.host} is not a loopback address", "the sweep runs against a server on this machine")
    probe = TritonClient(target)
    try:
        probe.wait_until_ready()
        send, described = _sender(target, probe, image, endpoint)
        for _ in range(warmup):
            send(probe)
        parameters = {key: value for key, value in probe.config(target.model).get("parameters", {}).items()
                      if key.startswith(PARAMETER_PREFIX)}  # not PyTriton's workspace path
    finally:
        probe.close()
    load_before = os.getloadavg()[0]
    rows = [measure_concurrency(target, send, level, requests) for level in levels]
    machine = {**machine_description(), "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    return {"url": str(target), "endpoint": endpoint, "request": described, "requests_per_level": requests,
            "served": parameters, "levels": rows, "machine": machine}


def _sender(target: ServerUrl, probe: TritonClient, image: np.ndarray, endpoint: str) -> tuple[Send, str]:
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
        def step() -> None:
            if endpoint == "image":
                segmenter.predict([image])
            else:
                segmenter.infer(batch)

        result = measure(step, 1, Schedule(warmup_iterations=5, iterations=iterations, duration_s=0))
        stats = result["series"]["host"]
        return {"artifact": str(artifact), "backend": segmenter.backend, "precision": segmenter.precision,
                "call": "predict" if endpoint == "image" else "infer", "iterations": result["iterations"],
                "throughput_rps": result["throughput"], "p50_ms": stats["median"], "p90_ms": stats["p90"],
                "p99_ms": stats["p99"]}


def format_sweep(result: Mapping[str, Any]) -> str:
    """The sweep as a Markdown table (one row per concurrency level, then the in-process row if present)."""
    machine = result.get("machine") or {}
    served = result.get("served") or {}
    features = machine.get("cpu_features")
    lines = [f"Server {result['url']} ({result['endpoint']} endpoint: {result['request']}), serving "
             f"{served.get('ulffn.artifact', '?')} ({served.get('ulffn.backend', '?')}, {served.get('ulffn.precision', '?')})",
             f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"
             f"{'; CPU features: ' + ', '.join(features) if features else ''}; 1-min load average "
             f"{' -> '.join(str(v) for v in machine.get('load_average_1min', []))} (client and server share it)", "",
             "| clients | requests | throughput (req/s) | p50 (ms) | p90 (ms) | p99 (ms) |", "|---|---|---|---|---|---|"]
    for row in result["levels"]:
        lines.append(f"| {row['concurrency']} | {row['requests']} | {row['throughput_rps']:.1f} | "
                     f"{row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} |")
    local = result.get("in_process")
    if local:
        lines.append(f"| in-process {local.get('call', 'predict')} (no server) | {local['iterations']} | "
                     f"{local['throughput_rps']:.1f} | {local['p50_ms']:.2f} | {local['p90_ms']:.2f} | "
                     f"{local['p99_ms']:.2f} |")
    return "\n".join(lines)
