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


def kafka_exception(
    code: int,
    *,
    retriable: bool = False,
    abortable: bool = False,
    fatal: bool = False,
) -> Exception:
    """A ``KafkaException`` as the transactional API raises it (a real ``KafkaError``)."""
    from confluent_kafka import KafkaError, KafkaException

    return KafkaException(
        KafkaError(
            code,
            f"fake {code}",
            fatal=fatal,
            retriable=retriable,
            txn_requires_abort=abortable,
        )
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTxnProducer:
    """A transactional producer whose calls fail as scripted: ``script[name]`` is a list
    of outcomes, one per call (an exception to raise, or ``None`` for success; calls past
    the end succeed). A call that raises takes ``blocks_s`` of the fake clock (the
    timeout it waited; ``list_topics_blocks_s`` for a metadata request), ``poll``
    advances the clock by its timeout."""

    def __init__(
        self, clock: FakeClock, script: dict[str, list[Exception | None]] | None = None
    ) -> None:
        self.clock = clock
        self.script = script or {}
        self.calls: list[str] = []
        self.produced: list[tuple[str, Any, Any]] = []
        self.waits: list[float] = []
        self.blocks_s = 30.0

    def _outcome(self, name: str) -> None:
        self.calls.append(name)
        todo = self.script.get(name, [])
        if todo:
            exc = todo.pop(0)
            if exc is not None:
                self.clock.now += 1.0 if name == "list_topics" else self.blocks_s
                raise exc

    def init_transactions(self, timeout: float) -> None:
        self._outcome("init_transactions")

    def begin_transaction(self) -> None:
        self._outcome("begin_transaction")

    def send_offsets_to_transaction(self, offsets: Any, group: Any, timeout: float) -> None:
        self._outcome("send_offsets_to_transaction")

    def commit_transaction(self, timeout: float) -> None:
        self._outcome("commit_transaction")

    def abort_transaction(self, timeout: float) -> None:
        self._outcome("abort_transaction")

    def list_topics(self, timeout: float) -> Any:
        """Metadata: scripted under ``"list_topics"`` (a failure = the broker away)."""
        self._outcome("list_topics")
        return _Metadata()

    def produce(self, topic: str, value: Any, key: Any, *_args: Any, **_kw: Any) -> None:
        self.produced.append((topic, key, value))

    def poll(self, timeout: float = 0) -> int:
        if timeout:
            self.waits.append(timeout)
            self.clock.now += timeout
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


class _Metadata:
    brokers = {1: "127.0.0.1:9092"}


class FakeTxnConsumer:
    """What a ``TransactionalSink`` uses of the consumer: group metadata and ``seek``."""

    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []

    def consumer_group_metadata(self) -> object:
        return object()

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))
