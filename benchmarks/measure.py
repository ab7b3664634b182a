"""What ``make bench`` reads while and after a run: a process's CPU and memory from
``/proc``, the machine's busy CPUs, a topic's message count and broker timestamps, a
worker's own stage histograms, and the rates and percentiles computed from them."""

from __future__ import annotations

import os
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamscore.core.config import KafkaSettings
from streamscore.kafka.clients import reader_consumer
from tests.processes import sample

from .results import LatencyRun

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ processes, machine


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included), seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15 of stat(5)


def proc_mem_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(rest.split()[0])
    return out


def machine_jiffies() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


@dataclass
class Sample:
    t: float  # monotonic seconds
    count: int  # predictions acknowledged by the broker (sum of high watermarks)
    cpu_s: float
    rss_kb: int
    hwm_kb: int
    broker_cpu_s: float  # the local broker's utime + stime (0 when not known)
    machine: tuple[int, int]  # /proc/stat: (all jiffies, idle jiffies)


# ------------------------------------------------------------------------ topics


def high_watermarks(c: Consumer, topic: str, partitions: int = 4) -> int:
    """Messages in ``topic`` now (acknowledged by the broker). Retries while a freshly
    created topic's leaders are still settling."""
    for attempt in range(50):
        try:
            total = 0
            for p in range(partitions):
                _lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)
                total += max(0, hi)
            return total
        except KafkaException:
            if attempt == 49:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def read_topic(
    kafka: KafkaSettings,
    group: str,
    topic: str,
    decode: Callable[[bytes | None], dict[str, Any]] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Every message of ``topic``: broker timestamps (ms) and, with ``decode``, values."""
    c = Consumer(reader_consumer(kafka, f"{group}.{secrets.token_hex(3)}"))
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        his = {}
        for p in md.partitions:
            _lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
            his[p] = hi
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        want = sum(his.values())
        ts: list[int] = []
        values: list[dict[str, Any]] = []
        idle = 0
        while len(ts) < want and idle < 20:
            batch = c.consume(num_messages=10_000, timeout=0.5)
            if not batch:
                idle += 1
                continue
            idle = 0
            for m in batch:
                if m.error() is not None:
                    continue
                ts.append(m.timestamp()[1])
                if decode is not None:
                    values.append(decode(m.value()))
    finally:
        c.close()
    return np.asarray(ts, dtype=np.int64), values


# ------------------------------------------------------------------ rates, figures


def percentile(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else float("nan")


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def sustained(ts: np.ndarray) -> float:
    """Events/s over the central 90 % of the predictions (by broker time)."""
    if ts.size < 20:
        return float("nan")
    s = np.sort(ts)
    lo, hi = int(s.size * 0.05), int(s.size * 0.95)
    span = (s[hi] - s[lo]) / 1000.0
    return (hi - lo) / span if span > 0 else float("nan")


def overall(ts: np.ndarray) -> float:
    if ts.size < 2:
        return float("nan")
    span = (int(ts.max()) - int(ts.min())) / 1000.0
    return ts.size / span if span > 0 else float("nan")


def stage_us(port: int) -> dict[str, float]:
    """Per-event microseconds per stage, from the worker's own stage histograms."""
    consumed = sample(port, "streamscore_events_consumed_total")
    if consumed <= 0:
        return {}
    return {
        stage: sample(port, "streamscore_stage_seconds_sum", {"stage": stage}) / consumed * 1e6
        for stage in ("decode", "validate", "features", "predict", "encode", "produce", "drift")
    }


def latency_figures(
    kind: str,
    mode: str,
    offered_eps: float,
    warm: int,
    predictions: tuple[np.ndarray, list[dict[str, Any]]],
    events: tuple[np.ndarray, list[dict[str, Any]]],
) -> tuple[LatencyRun, tuple[np.ndarray, ...]]:
    """A latency run's figures from its predictions and its events (broker timestamps and
    decoded values, as :func:`read_topic` reads them); the first ``warm`` event ids are
    the warm-up's and are left out. Also the raw times (event_time, scored_time,
    prediction appended, event appended) of every prediction, for digging."""
    ts_all, vals = predictions
    ev_ts, ev_vals = events
    # when the broker appended each event: splits the latency into the producer's
    # share (event append - event_time) and the worker's (prediction - event append)
    appended = dict(zip((v["event_id"] for v in ev_vals), ev_ts.tolist(), strict=True))
    ev_append = np.fromiter(
        (appended.get(v["event_id"], -1) for v in vals), dtype=np.int64, count=len(vals)
    )
    ev_all = np.fromiter((v["event_time"] for v in vals), dtype=np.int64, count=len(vals))
    sc_all = np.fromiter((v["scored_time"] for v in vals), dtype=np.int64, count=len(vals))
    # event ids count up from 0: the first ``warm`` are the warm-up's
    measured = np.fromiter((int(v["event_id"], 16) >= warm for v in vals), dtype=bool)
    ev, sc, ts = ev_all[measured], sc_all[measured], ts_all[measured]
    broker = (ts - ev).astype(np.float64)
    scored = (sc - ev).astype(np.float64)
    app = ev_append[measured]
    producer_share = (app - ev).astype(np.float64)[app >= 0]
    worker_share = (ts - app).astype(np.float64)[app >= 0]
    run = LatencyRun(
        model=kind,
        mode=mode,
        offered_eps=offered_eps,
        events=int(ts.size),
        drained_eps=overall(ts),
        broker_p50_ms=percentile(broker, 50),
        broker_p99_ms=percentile(broker, 99),
        broker_max_ms=float(broker.max()) if broker.size else float("nan"),
        broker_p99_incl_warmup_ms=percentile((ts_all - ev_all).astype(np.float64), 99),
        producer_p99_ms=percentile(producer_share, 99),
        worker_p50_ms=percentile(worker_share, 50),
        worker_p99_ms=percentile(worker_share, 99),
        scored_p50_ms=percentile(scored, 50),
        scored_p99_ms=percentile(scored, 99),
    )
    return run, (ev_all, sc_all, ts_all, ev_append)


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""
