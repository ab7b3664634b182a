"""Fake Kafka clients and records for unit tests of the thin loops (no broker)."""

from __future__ import annotations

import threading
from typing import Any


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
    """Hands out ``batches`` one per ``consume``, then sets ``stop``; records commits."""

    def __init__(self, batches: list[list[FakeMessage]], stop: threading.Event) -> None:
        self.batches = batches
        self.stop = stop
        self.subscribed: list[str] = []
        self.commits: list[list[tuple[str, int, int]]] = []
        self.closed = False

    def subscribe(self, topics: list[str], **_callbacks: Any) -> None:
        self.subscribed = topics

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if not self.batches:
            self.stop.set()
            return []
        return self.batches.pop(0)

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def close(self) -> None:
        self.closed = True


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
