"""What the demo sees of its workers: the predictions and dead letters they write, and the
metrics they export.

:class:`Observer` follows the predictions and dead-letter topics and keeps, per primary
prediction of an event with a known truth, its scored time, model version, absolute error
and end-to-end latency (:class:`DemoObservations`). :func:`scrape` reads a process's
``/metrics`` with prometheus_client's own text parser; :func:`wait_model_loaded`,
:func:`active_models` and :func:`feedback_mae` are built on it.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from ..core.config import KafkaSettings, RegistrySettings, TopicSettings
from ..kafka.clients import reader_consumer
from ..serde import schemas
from ..serde.message import AvroDeserializer
from ..serde.wire import WriterSchemaCache, registry_client
from .traffic import DemoTruth


@dataclass
class DemoObservations:
    predictions: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    # (scored_time_s, version, abs_error, latency_s)
    rows: list[tuple[float, int, float, float]] = field(default_factory=list)
    first_seen: dict[int, float] = field(default_factory=dict)


def header(msg: Any, name: str) -> str:
    """A message's header ``name``, decoded ("?" when it has none)."""
    for k, v in msg.headers() or []:
        if k == name:
            return bytes(v).decode()
    return "?"


class Observer:
    """Follows ``topics.predictions`` and ``topics.dlq`` from the beginning until ``stop``.
    ``on_new_version(v)`` is called when model version ``v`` answers for the first time."""

    def __init__(
        self,
        kafka: KafkaSettings,
        registry: RegistrySettings,
        topics: TopicSettings,
        truth: DemoTruth,
        *,
        group_id: str,
        stop: threading.Event,
        on_new_version: Callable[[int], None],
    ) -> None:
        self.kafka = kafka
        self.registry = registry
        self.topics = topics
        self.truth = truth
        self.group_id = group_id
        self.stop = stop
        self.on_new_version = on_new_version
        self.obs = DemoObservations()

    def run(self) -> None:
        reg = registry_client(self.registry.client_config())
        dec = AvroDeserializer(WriterSchemaCache(reg), schemas.load("prediction"))
        c = Consumer(reader_consumer(self.kafka, self.group_id))
        parts = []
        for topic in (self.topics.predictions, self.topics.dlq):
            md = c.list_topics(topic, timeout=10).topics[topic]
            parts += [TopicPartition(topic, p, 0) for p in md.partitions]
        c.assign(parts)
        try:
            while not self.stop.is_set():
                for m in c.consume(num_messages=1000, timeout=0.2):
                    if m.error() is None:
                        self._one(m, dec)
        finally:
            c.close()

    def _one(self, m: Any, dec: Callable[[bytes | None], dict[str, Any]]) -> None:
        obs = self.obs
        if m.topic() == self.topics.dlq:
            obs.dead[header(m, "streamscore.error.class")] += 1
            return
        pr = dec(m.value())
        if pr["role"] != "primary":
            return
        with self.truth.lock:
            y = self.truth.y.get(pr["event_id"])
        if y is None:
            return
        v = int(pr["model_version"])
        obs.predictions += 1
        if v not in obs.first_seen:
            obs.first_seen[v] = time.time()
            if v > 1:
                self.on_new_version(v)
        obs.rows.append(
            (
                pr["scored_time"] / 1000.0,
                v,
                abs(pr["value"] - y),
                (pr["scored_time"] - pr["event_time"]) / 1000.0,
            )
        )


# ------------------------------------------------------------------------- /metrics


def metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


def scrape(port: int, metric: str) -> list[tuple[dict[str, str], float]]:
    """Every sample named ``metric`` that the process on ``port`` exports: (labels,
    value); none if it does not answer or its answer cannot be parsed."""
    try:
        with urllib.request.urlopen(metrics_url(port), timeout=2) as r:
            text = r.read().decode()
        return [
            (dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == metric
        ]
    except (OSError, ValueError):
        return []


def model_loaded(port: int) -> bool:
    """Whether the score worker on ``port`` has loaded a model."""
    return any(v == 1 for _labels, v in scrape(port, "streamscore_model_loaded"))


def wait_model_loaded(
    procs: Sequence[Any], ports: Sequence[int], logs: Path, timeout: float = 90.0
) -> None:
    """Returns once every score worker (``procs[i]`` exporting on ``ports[i]``) has loaded
    its model; raises RuntimeError if one exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    for i, (p, port) in enumerate(zip(procs, ports, strict=True)):
        while not model_loaded(port):
            if p.poll() is not None:
                raise RuntimeError(
                    f"score worker {i + 1} exited with {p.returncode}; see "
                    f"{logs}/worker-{i + 1}.log"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"score worker {i + 1} did not load a model in {timeout}s")
            time.sleep(0.2)


def active_models(port: int) -> str:
    """The models a score worker serves, as ``primary v2, shadow v3``."""
    rows = scrape(port, "streamscore_model_info")
    return ", ".join(
        f"{lab['role']} v{lab['model_version']}"
        for lab, v in sorted(rows, key=lambda r: r[0]["role"])
        if v == 1
    )


def feedback_mae(port: int) -> dict[str, float]:
    """The feedback worker's live MAE per model, keyed ``v<version>/<role>``."""
    return {
        f"v{lab['model_version']}/{lab['role']}": v
        for lab, v in scrape(port, "streamscore_live_mae")
    }
