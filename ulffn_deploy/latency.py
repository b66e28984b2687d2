"""Latency measurement and statistics in the manner of trtexec (numpy-free, no heavy imports).

trtexec's rules (samples/common/sampleReporting.cpp and its ``--warmUp/--iterations/--duration``
options), which this module follows so that numbers read the same:
- warm up for 200 ms, then time at least 10 iterations and at least 3 s of wall time;
- percentile p of n sorted timings is the element at index ``max(n - 1 - int((1 - p/100) * n), 0)``;
  the median of an even count is the mean of the two middle timings;
- throughput = batch size x iterations / total host wall time of the timed loop.

Host wall time is measured around every call; backends that time their own device work (TensorRT:
GPU compute with CUDA events, host-to-device and device-to-host copies) report it per call, and those
series get the same statistics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ulffn_deploy.errors import UlffnError

PERCENTILES = (90, 95, 99)
STAT_KEYS = ("min", "max", "mean", "median", *(f"p{p}" for p in PERCENTILES))
# per-call device timings a backend may report, in ms, and how reports name them
DEVICE_SERIES = {"gpu_compute": "GPU compute", "h2d": "H2D", "d2h": "D2H"}
SERIES_LABELS = {"host": "Host wall time", **DEVICE_SERIES}

DEFAULT_WARMUP_MS = 200.0
DEFAULT_ITERATIONS = 10
DEFAULT_DURATION_S = 3.0

Step = Callable[[], Mapping[str, float] | None]


def percentile(sorted_ms: Sequence[float], p: float) -> float:
    """trtexec's percentile of an ascending sequence."""
    if not sorted_ms:
        raise UlffnError("no timings to summarise")
    if not 0 <= p <= 100:
        raise UlffnError(f"percentile {p} is not in [0, 100]")
    n = len(sorted_ms)
    excluded = int((100 - p) * n / 100)  # exact for whole percentiles, as trtexec's float arithmetic gets them
    return float(sorted_ms[max(n - 1 - excluded, 0)])


def median(sorted_ms: Sequence[float]) -> float:
    if not sorted_ms:
        raise UlffnError("no timings to summarise")
    m = len(sorted_ms) // 2
    return float(sorted_ms[m]) if len(sorted_ms) % 2 else (sorted_ms[m - 1] + sorted_ms[m]) / 2


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """{min, max, mean, median, p90, p95, p99} of timings in ms."""
    ordered = sorted(float(t) for t in samples_ms)
    if not ordered:
        raise UlffnError("no timings to summarise")
    stats = {"min": ordered[0], "max": ordered[-1], "mean": math.fsum(ordered) / len(ordered), "median": median(ordered)}
    stats.update({f"p{p}": percentile(ordered, p) for p in PERCENTILES})
    return stats


@dataclass(frozen=True)
class Schedule:
    """How long to warm up and to measure. Measuring stops once both ``iterations`` and ``duration_s``
    are reached; warm-up runs ``warmup_iterations`` calls, or calls until ``warmup_ms`` has passed."""

    warmup_ms: float = DEFAULT_WARMUP_MS
    warmup_iterations: int | None = None
    iterations: int = DEFAULT_ITERATIONS
    duration_s: float = DEFAULT_DURATION_S

    def __post_init__(self) -> None:
        if self.warmup_ms < 0 or (self.warmup_iterations is not None and self.warmup_iterations < 0):
            raise UlffnError("warm-up must not be negative")
        if self.iterations < 1 and self.duration_s <= 0:
            raise UlffnError("nothing to measure: iterations < 1 and duration <= 0", "measure at least 1 iteration")
        if self.iterations < 0 or self.duration_s < 0:
            raise UlffnError("iterations and duration must not be negative")

    @classmethod
    def from_options(cls, warmup: int | None = None, warmup_ms: float | None = None,
                     iterations: int | None = None, duration_s: float | None = None) -> Schedule:
        """trtexec's defaults, except that giving only one of ``iterations`` / ``duration_s`` makes it the
        only stopping rule (``--iterations 50`` measures exactly 50 calls)."""
        if warmup is not None and warmup_ms is not None:
            raise UlffnError("give either a warm-up count or a warm-up time, not both")
        if iterations is None and duration_s is None:
            iterations, duration_s = DEFAULT_ITERATIONS, DEFAULT_DURATION_S
        return cls(
            warmup_ms=DEFAULT_WARMUP_MS if warmup_ms is None else float(warmup_ms),
            warmup_iterations=warmup,
            iterations=1 if iterations is None else int(iterations),
            duration_s=0.0 if duration_s is None else float(duration_s),
        )

    def describe(self) -> str:
        count = self.warmup_iterations
        warmup = f"{self.warmup_ms:g} ms warm-up" if count is None else f"{count} warm-up call{'s' * (count != 1)}"
        if self.duration_s == 0:
            return f"{warmup}, then {self.iterations} timed call{'s' * (self.iterations != 1)}"
        return f"{warmup}, then at least {self.iterations} timed calls and {self.duration_s:g} s"


def _warm_up(step: Step, schedule: Schedule, clock: Callable[[], float]) -> tuple[int, float]:
    start = clock()
    count = 0
    if schedule.warmup_iterations is not None:
        for _ in range(schedule.warmup_iterations):
            step()
        count = schedule.warmup_iterations
    else:
        while (clock() - start) * 1e3 < schedule.warmup_ms or count == 0:
            step()
            count += 1
    return count, (clock() - start) * 1e3


def measure(step: Step, batch_size: int, schedule: Schedule = Schedule(),
            clock: Callable[[], float] = time.perf_counter, keep_samples: bool = False) -> dict[str, Any]:
    """Warm up, then call ``step`` until the schedule is met; statistics of every timed series.

    ``step`` runs one inference; it may return that call's device timings in ms (keys of
    ``DEVICE_SERIES``). The result: batch size, warm-up and measured counts, total wall time,
    throughput in images/s and ``{series: summarize(...)}`` under ``"series"`` (``host`` always); with
    ``keep_samples``, the host timings themselves under ``"host_samples_ms"`` (to pool several callers').
    """
    if batch_size < 1:
        raise UlffnError(f"batch size {batch_size} is not positive")
    warmup_count, warmup_ms = _warm_up(step, schedule, clock)
    host: list[float] = []
    device: dict[str, list[float]] = {}
    start = clock()
    while len(host) < schedule.iterations or clock() - start < schedule.duration_s:
        before = clock()
        timings = step()
        host.append((clock() - before) * 1e3)
        for name, value in (timings or {}).items():
            if name in DEVICE_SERIES:
                device.setdefault(name, []).append(float(value))
    walltime = clock() - start
    series = {"host": summarize(host)}
    series.update({name: summarize(values) for name, values in device.items() if len(values) == len(host)})
    result = {
        "batch_size": batch_size,
        "warmup_iterations": warmup_count,
        "warmup_ms": warmup_ms,
        "iterations": len(host),
        "walltime_s": walltime,
        "throughput": batch_size * len(host) / walltime if walltime > 0 else math.inf,
        "series": series,
    }
    if keep_samples:
        result["host_samples_ms"] = host
    return result


def format_latency_table(result: Mapping[str, Any]) -> str:
    """A Markdown table (one row per timed series, ms) and trtexec's throughput line under it."""
    header = "| ms | " + " | ".join(STAT_KEYS) + " |"
    lines = [header, "|---|" + "---|" * len(STAT_KEYS)]
    for name, stats in result["series"].items():
        lines.append(f"| {SERIES_LABELS.get(name, name)} | " + " | ".join(f"{stats[k]:.3f}" for k in STAT_KEYS) + " |")
    lines.append(
        f"Throughput: {result['throughput']:.2f} images/s (batch {result['batch_size']}, {result['iterations']} calls "
        f"in {result['walltime_s']:.2f} s after {result['warmup_iterations']} warm-up calls "
        f"in {result['warmup_ms']:.0f} ms)"
    )
    return "\n".join(lines)
