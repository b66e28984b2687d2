"""Latency statistics and the measuring loop, with a fake clock (no timing in unit tests)."""

import pytest

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.latency import (
    STAT_KEYS,
    Schedule,
    format_latency_table,
    measure,
    median,
    percentile,
    summarize,
)


def test_percentiles_follow_trtexec():
    hundred = [float(v) for v in range(1, 101)]
    assert percentile(hundred, 90) == 90.0
    assert percentile(hundred, 95) == 95.0
    assert percentile(hundred, 99) == 99.0
    ten = [float(v) for v in range(1, 11)]
    # trtexec excludes int((1 - p/100) * n) from the top: one of ten at p90, none at p95 and p99
    assert percentile(ten, 90) == 9.0
    assert percentile(ten, 95) == 10.0
    assert percentile(ten, 99) == 10.0
    assert percentile([7.0], 99) == 7.0
    assert percentile(hundred, 0) == 1.0


def test_percentile_rejects_bad_input():
    with pytest.raises(UlffnError):
        percentile([], 90)
    with pytest.raises(UlffnError):
        percentile([1.0], 101)


def test_median_of_odd_and_even_counts():
    assert median([1.0, 2.0, 10.0]) == 2.0
    assert median([1.0, 2.0, 4.0, 10.0]) == 3.0


def test_summarize_sorts_and_reports_every_statistic():
    stats = summarize([4.0, 1.0, 3.0, 2.0])
    assert tuple(stats) == STAT_KEYS
    assert stats["min"] == 1.0 and stats["max"] == 4.0
    assert stats["mean"] == 2.5 and stats["median"] == 2.5
    assert stats["p99"] == 4.0
    with pytest.raises(UlffnError):
        summarize([])


class FakeClock:
    """Time moves only when a step runs."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _step(clock: FakeClock, seconds: float, device: dict | None = None):
    def step():
        clock.now += seconds
        return device

    return step


def test_measure_counts_iterations_and_throughput():
    clock = FakeClock()
    schedule = Schedule(warmup_iterations=2, iterations=5, duration_s=0.0)
    result = measure(_step(clock, 0.010), batch_size=4, schedule=schedule, clock=clock)
    assert result["warmup_iterations"] == 2
    assert result["iterations"] == 5
    assert result["walltime_s"] == pytest.approx(0.05)
    assert result["throughput"] == pytest.approx(4 * 5 / 0.05)
    assert result["series"]["host"]["median"] == pytest.approx(10.0)
    assert set(result["series"]) == {"host"}


def test_measure_runs_for_the_warmup_time_and_the_duration():
    clock = FakeClock()
    schedule = Schedule(warmup_ms=25.0, iterations=1, duration_s=0.1)
    result = measure(_step(clock, 0.010), batch_size=1, schedule=schedule, clock=clock)
    assert result["warmup_iterations"] == 3
    assert result["iterations"] == 10


def test_measure_summarises_device_timings_separately():
    clock = FakeClock()
    device = {"gpu_compute": 2.0, "h2d": 0.5, "d2h": 0.25, "unknown": 9.0}
    result = measure(_step(clock, 0.004, device), 1, Schedule(warmup_iterations=0, iterations=3, duration_s=0), clock)
    assert set(result["series"]) == {"host", "gpu_compute", "h2d", "d2h"}
    assert result["series"]["gpu_compute"]["mean"] == 2.0
    assert result["series"]["d2h"]["p99"] == 0.25
    table = format_latency_table(result)
    assert "| GPU compute |" in table and "| H2D |" in table and "| D2H |" in table
    assert "Throughput: 250.00 images/s" in table


def test_schedule_options():
    default = Schedule.from_options()
    assert (default.warmup_ms, default.iterations, default.duration_s) == (200.0, 10, 3.0)
    only_iterations = Schedule.from_options(iterations=50)
    assert (only_iterations.iterations, only_iterations.duration_s) == (50, 0.0)
    only_duration = Schedule.from_options(duration_s=2.0)
    assert (only_duration.iterations, only_duration.duration_s) == (1, 2.0)
    assert Schedule.from_options(warmup=0).warmup_iterations == 0
    with pytest.raises(UlffnError):
        Schedule.from_options(warmup=3, warmup_ms=10.0)
    with pytest.raises(UlffnError):
        Schedule(iterations=0, duration_s=0.0)
    assert only_iterations.describe() == "200 ms warm-up, then 50 timed calls"
