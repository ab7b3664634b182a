"""The benchmark's workload on a broker: a producer, a pre-filled topic, a burst as fast
as one Python process can send, and paced traffic (``event_time`` taken as each event is
made or sent, so producer batching is part of the measured latency)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from confluent_kafka import Producer

from streamscore.core.config import KafkaSettings

from . import workload


def producer(kafka: KafkaSettings, **extra: Any) -> Producer:
    conf = {
        **kafka.client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "log_level": 0,
    }
    conf.update(extra)
    return Producer(conf)


def fill(kafka: KafkaSettings, schema_id: int, topic: str, n: int) -> None:
    """Pre-fill ``topic`` with ``n`` events (event_time = when each was encoded)."""
    t0 = time.perf_counter()
    enc = workload.EventEncoder(schema_id)
    p = producer(kafka)
    rng = np.random.default_rng(11)
    produce, poll = p.produce, p.poll
    for i, e in enumerate(workload.events(n, rng)):
        value, key = enc.encode(e), e["key"].encode()
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                poll(0.05)
        if i % 5000 == 0:
            poll(0)
    left = p.flush(120)
    if left:
        raise RuntimeError(f"{left} events not acknowledged while filling {topic}")
    print(
        f"bench: filled {topic} with {n:,} events in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )


def burst(
    p: Producer,
    topic: str,
    enc: workload.EventEncoder,
    rng: np.random.Generator,
    n: int,
    start: int,
) -> int:
    """Produce ``n`` events as fast as this process can (event_time = when each is made)."""
    chunk = 1000
    for first in range(start, start + n, chunk):
        batch = workload.events(min(chunk, start + n - first), rng, start=first)
        for e in batch:  # event_time is taken as each event is made
            value, key = enc.encode(e), e["key"].encode()
            while True:
                try:
                    p.produce(topic, value, key)
                    break
                except BufferError:
                    p.poll(0.01)
        p.poll(0)
    return n


def paced(
    p: Producer,
    topic: str,
    enc: workload.EventEncoder,
    rng: np.random.Generator,
    rate: float,
    seconds: float,
    start: int,
) -> int:
    """Produce ``rate`` events/s for ``seconds`` (event_time = when each is sent)."""
    total = int(rate * seconds)
    gen = workload.events(total, rng, start=start)
    sent = 0
    t0 = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            e = next(gen)
            e["event_time"] = int(time.time() * 1000)
            p.produce(topic, enc.encode(e), e["key"].encode())
            sent += 1
        p.poll(0)
        time.sleep(0.0005)
    return sent
