"""Fake Kafka clients and records for unit tests of the thin loops (no broker)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import TopicPartition


class FakeMessage:
    """What the loops read of a ``confluent_kafka.Message``."""

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 1_700_000_000_000,
        error: Any = None,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._value, self._key, self._headers = value, key, headers
        self._timestamp_ms, self._error = timestamp_ms, error

    def error(self) -> Any:
        return self._error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp_ms)


class FakeConsumer:
    """Hands out ``batches`` one per ``consume``, then sets ``stop``; records commits.

    Its assignment is every partition the batches hold (``assigned``); ``pause`` /
    ``resume`` / ``seek`` are recorded, and the next batch is held back while a partition
    in it is paused (``paused_polls`` counts the calls that kept the member in its group
    meanwhile). ``on_consume``, if set, runs first in each ``consume`` (where a real
    consumer runs its rebalance callbacks)."""

    def __init__(self, batches: list[list[FakeMessage]], stop: threading.Event) -> None:
        self.batches = batches
        self.stop = stop
        self.subscribed: list[str] = []
        self.commits: list[list[tuple[str, int, int]]] = []
        self.closed = False
        self.assigned = sorted({(m.topic(), m.partition()) for b in batches for m in b})
        self.paused: set[tuple[str, int]] = set()
        self.paused_polls = 0
        self.seeks: list[tuple[str, int, int]] = []
        self.on_consume: Callable[[], None] | None = None

    def subscribe(self, topics: list[str], **_callbacks: Any) -> None:
        self.subscribed = topics

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if self.on_consume is not None:
            self.on_consume()
        held = self.batches[0] if self.batches else None
        if self.paused and (
            held is None or any((m.topic(), m.partition()) in self.paused for m in held)
        ):
            self.paused_polls += 1
            return []
        if not self.batches:
            self.stop.set()
            return []
        return self.batches.pop(0)

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.assigned]

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in tps}

    def resume(self, tps: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in tps}

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def close(self) -> None:
        self.closed = True


class FlakyRegistry:
    """A schema registry client that is away (HTTP ``status``) for its first ``down``
    lookups, then answers as ``inner`` (e.g. confluent's ``mock://`` registry)."""

    def __init__(self, inner: Any, *, down: int = 1, status: int = 503) -> None:
        self.inner, self.down, self.status = inner, down, status
        self.lookups = 0

    def get_schema(self, schema_id: int) -> Any:
        self.lookups += 1
        if self.down > 0:
            self.down -= 1
            exc = Exception(f"registry answered {self.status}")
            exc.http_status_code = self.status  # type: ignore[attr-defined]
            raise exc
        return self.inner.get_schema(schema_id)

    def register_schema(self, subject_name: str, schema: Any) -> int:
        return int(self.inner.register_schema(subject_name, schema))

    def get_subjects(self) -> list[str]:
        return list(self.inner.get_subjects())


def prediction_record(eid: str, *, event_time_ms: int = 1_700_000_000_000) -> dict[str, Any]:
    """A valid prediction (schema v2) of a regressor, for the feedback side's tests."""
    return {
        "event_id": eid,
        "key": "k",
        "event_time": event_time_ms,
        "scored_time": event_time_ms + 5,
        "model_name": "demo",
        "model_version": 1,
        "role": "primary",
        "value": 2.0,
        "label": None,
        "probabilities": [],
        "classes": [],
        "degraded": False,
        "late": False,
        "feature_names": ["a"],
        "features": [1.0],
        "inputs": {},
    }
