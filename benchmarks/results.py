"""What a ``make bench`` run is given (a :class:`Profile`) and what it measures: plain
records, written to ``results/bench.json`` as they are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    n_short: int  # events of the short run (memory / CPU comparison)
    n_long: int  # events pre-filled; the long runs drain all of them
    repeats: int  # long runs per model (throughput = median)
    naive_events: int  # events per naive run
    naive_repeats: int
    burst_events: int  # full-speed latency run
    paced_rate: float  # events/s of the paced latency run
    paced_seconds: float
    warmup_seconds: float  # paced traffic before each latency measurement (not measured)


FULL = Profile("full", 200_000, 600_000, 3, 10_000, 3, 150_000, 2000.0, 30.0, 5.0)
QUICK = Profile("quick", 20_000, 60_000, 1, 1_000, 1, 20_000, 2000.0, 5.0, 2.0)


@dataclass
class WorkerRun:
    model: str
    label: str
    events: int
    predictions: int
    sustained_eps: float
    overall_eps: float
    cpu_s_per_1k: float
    broker_cpu_s_per_1k: float  # the local broker's CPU over the same window
    machine_busy_cpus: float  # CPUs busy (all processes) over the same window
    peak_rss_mb: float  # VmHWM at the end of the run
    rss_mb_end: float
    rss_mb_at: dict[str, float]  # VmRSS when a fraction of the events was done
    stage_us_per_event: dict[str, float]  # from the worker's own histograms
    wall_s: float


@dataclass
class LatencyRun:
    model: str
    mode: str
    offered_eps: float
    events: int
    drained_eps: float
    broker_p50_ms: float
    broker_p99_ms: float
    broker_max_ms: float
    broker_p99_incl_warmup_ms: float
    producer_p99_ms: float  # event appended - event_time (the benchmark's producer)
    worker_p50_ms: float  # prediction appended - event appended (consume, score, produce)
    worker_p99_ms: float
    scored_p50_ms: float
    scored_p99_ms: float


@dataclass
class NaiveRun:
    model: str
    events: int
    eps: float
    cpu_s_per_1k: float


@dataclass
class Results:
    profile: str
    batch_size: int
    host: dict[str, Any]
    throughput: list[WorkerRun] = field(default_factory=list)
    latency: list[LatencyRun] = field(default_factory=list)
    naive: list[NaiveRun] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
