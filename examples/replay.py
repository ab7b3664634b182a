"""Replay a bundled data set as a live stream: each row's event now, its label later.

Shared by the examples' ``produce.py`` scripts. It uses only confluent-kafka's own
clients (what any producer of yours would use), the project file for the topic names,
and the example's Avro schemas (registered under ``<topic>-value`` on first use).

    python examples/penguins/produce.py --config examples/penguins/streamscore.toml
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

#: (message key, the event as of a time, the label as of the time it is observed)
Row = tuple[str | None, Callable[[int], dict[str, Any]], Callable[[int], dict[str, Any]]]


@dataclass(frozen=True)
class Target:
    """Where to produce: the project's events and label topics, and the cluster."""

    events_topic: str
    labels_topic: str
    bootstrap: str = "127.0.0.1:19092"
    registry_url: str = "http://127.0.0.1:18081/apis/ccompat/v7"

    @classmethod
    def from_project(
        cls, path: Path, bootstrap: str | None = None, registry_url: str | None = None
    ) -> Target:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
        return cls(
            events_topic=doc["events"]["topic"],
            labels_topic=doc["labels"]["topic"],
            bootstrap=bootstrap or doc.get("kafka", {}).get("bootstrap_servers", cls.bootstrap),
            registry_url=registry_url or doc.get("registry", {}).get("url", cls.registry_url),
        )


def _serializer(registry: SchemaRegistryClient, schema_file: Path) -> AvroSerializer:
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    return AvroSerializer(registry, json.dumps(schema), conf={"auto.register.schemas": True})


def replay(
    target: Target,
    rows: Iterable[Row],
    *,
    event_schema: Path,
    label_schema: Path,
    rate: float = 100.0,
    label_delay_s: float = 1.0,
) -> tuple[int, int]:
    """Produce each row's event at ``rate`` per second and its label ``label_delay_s``
    later, on the label topic. Returns (events, labels) produced and acknowledged."""
    registry = SchemaRegistryClient({"url": target.registry_url})
    ser_event = _serializer(registry, event_schema)
    ser_label = _serializer(registry, label_schema)
    producer = Producer({"bootstrap.servers": target.bootstrap, "linger.ms": 5})
    ev_ctx = SerializationContext(target.events_topic, MessageField.VALUE)
    lab_ctx = SerializationContext(target.labels_topic, MessageField.VALUE)
    pending: list[tuple[float, int, Callable[[int], dict[str, Any]]]] = []
    n_events = n_labels = 0
    start = time.monotonic()

    def due_labels(until: float) -> None:
        nonlocal n_labels
        while pending and pending[0][0] <= until:
            _, _, label = heapq.heappop(pending)
            value = ser_label(label(int(time.time() * 1000)), lab_ctx)
            producer.produce(target.labels_topic, value)
            n_labels += 1

    for i, (key, event, label) in enumerate(rows):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        due_labels(time.monotonic())
        value = ser_event(event(int(time.time() * 1000)), ev_ctx)
        producer.produce(target.events_topic, value, key.encode() if key else None)
        n_events += 1
        heapq.heappush(pending, (time.monotonic() + label_delay_s, i, label))
        producer.poll(0)
    while pending:
        time.sleep(max(0.0, min(0.2, pending[0][0] - time.monotonic())))
        due_labels(time.monotonic())
    if producer.flush(30):
        raise RuntimeError("some messages were not acknowledged within 30 s")
    return n_events, n_labels


def write_sample(path: Path, project: Path, rows: Iterable[dict[str, Any]], n: int) -> int:
    """The first ``n`` of ``rows`` (each a row's features and its label, by the project
    file's names) as a CSV: the model inputs of ``[[features]]`` and the ``[labels]
    label_field`` column, what ``streamscore model publish --data`` trains v1 on.
    Booleans are written ``true``/``false``, missing values as empty cells."""
    doc = tomllib.loads(project.read_text(encoding="utf-8"))
    columns = [f.get("path", f["name"]) for f in doc["features"]] + [doc["labels"]["label_field"]]

    def cell(v: Any) -> str:
        return "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(columns)
        written = 0
        for row in rows:
            if written == n:
                break
            out.writerow([cell(row.get(c)) for c in columns])
            written += 1
    return written


def arguments(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", type=Path, default=Path("streamscore.toml"))
    p.add_argument("--bootstrap", default=None, help="default: the project file's, else local")
    p.add_argument("--registry-url", default=None, help="default: the project file's, else local")
    p.add_argument("--rate", type=float, default=100.0, help="events per second")
    p.add_argument("--label-delay-s", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=1, help="replay the data set this many times")
    p.add_argument(
        "--write-sample",
        type=Path,
        metavar="CSV",
        default=None,
        help="write the first --sample-rows rows (features and label) to CSV and exit: "
        "a training sample for v1",
    )
    p.add_argument("--sample-rows", type=int, default=40)
    return p
