"""librdkafka settings for each client streamscore creates, in one place."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from .config import KafkaSettings, ScoringSettings


def score_consumer(kafka: KafkaSettings, scoring: ScoringSettings) -> dict[str, Any]:
    conf = kafka.client_config()
    conf.update(
        {
            "group.id": scoring.group_id,
            "client.id": f"streamscore-score-{scoring.worker_id}",
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            # a batch's offsets are stored only when all its outputs are acknowledged
            "enable.auto.offset.store": False,
            "enable.auto.commit": not scoring.exactly_once,
            "auto.commit.interval.ms": 1000,
            "isolation.level": "read_committed",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            # bounded prefetch: memory stays flat however far behind we are
            "queued.max.messages.kbytes": 16_384,
            "fetch.wait.max.ms": 50,
        }
    )
    conf.update(kafka.extra)
    return conf


def score_producer(kafka: KafkaSettings, scoring: ScoringSettings) -> dict[str, Any]:
    conf = kafka.client_config()
    conf.update(
        {
            "client.id": f"streamscore-score-{scoring.worker_id}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": max(scoring.max_in_flight * 2, 10_000),
            "queue.buffering.max.kbytes": 262_144,
        }
    )
    if scoring.exactly_once:
        conf["transactional.id"] = f"streamscore-score-{scoring.group_id}-{scoring.worker_id}"
        conf["transaction.timeout.ms"] = 30_000
    conf.update(kafka.extra)
    return conf


def model_watcher_consumer(kafka: KafkaSettings, max_message_bytes: int) -> dict[str, Any]:
    conf = kafka.client_config()
    conf.update(
        {
            # never subscribes: assign() only, so this group id never joins or commits
            "group.id": f"streamscore-model-watcher-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 20,
            "max.partition.fetch.bytes": max_message_bytes + 65_536,
            "fetch.max.bytes": max_message_bytes + 65_536,
            "receive.message.max.bytes": max_message_bytes + 1_048_576,
        }
    )
    conf.update(kafka.extra)
    return conf


def plain_producer(kafka: KafkaSettings, *, max_message_bytes: int | None = None) -> dict[str, Any]:
    conf = kafka.client_config()
    conf.update({"enable.idempotence": True, "acks": "all", "linger.ms": 5})
    if max_message_bytes is not None:
        conf["message.max.bytes"] = max_message_bytes + 65_536
    conf.update(kafka.extra)
    return conf


def reader_consumer(kafka: KafkaSettings, group_id: str, **extra: Any) -> dict[str, Any]:
    """A plain consumer for tools and tests (read_committed, from the beginning)."""
    conf = kafka.client_config()
    conf.update(
        {
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    conf.update(extra)
    conf.update(kafka.extra)
    return conf


def feedback_consumer(kafka: KafkaSettings, group_id: str, client_id: str) -> dict[str, Any]:
    conf = kafka.client_config()
    conf.update(
        {
            "group.id": group_id,
            "client.id": client_id,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "queued.max.messages.kbytes": 16_384,
            "fetch.wait.max.ms": 100,
        }
    )
    conf.update(kafka.extra)
    return conf


def read_to_end(
    consumer: Any,
    topic: str,
    *,
    metadata_timeout: float = 15.0,
    deadline_s: float | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[Any]:
    """Assign every partition of ``topic`` from the beginning and yield its messages
    (tombstones included, errors not) up to the high watermarks seen at the start. The
    consumer needs ``enable.partition.eof``. ``deadline_s`` bounds the whole read (None:
    until the end, or until ``stop()``)."""
    timeout = metadata_timeout
    md = consumer.list_topics(topic, timeout=timeout)
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        raise RuntimeError(f"topic {topic!r} is not available: {tmd and tmd.error}")
    parts = sorted(tmd.partitions)
    ends: dict[int, int] = {}
    pending: set[int] = set()
    for p in parts:
        lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        ends[p] = hi
        if hi > lo:
            pending.add(p)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    while pending and not stop() and (deadline is None or time.monotonic() < deadline):
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        err = msg.error()
        partition = msg.partition() or 0
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                pending.discard(partition)
            continue
        yield msg
        if (msg.offset() or 0) + 1 >= ends[partition]:
            pending.discard(partition)


def wait_for_partition_leaders(
    admin: Any, topic: str, partitions: int, *, timeout_s: float = 10.0
) -> bool:
    """After a create: wait until the metadata shows ``partitions`` partitions of
    ``topic``, each with a leader (produce/assign before that can fail). True if so."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        md = admin.list_topics(topic, timeout=5).topics.get(topic)
        if (
            md is not None
            and md.error is None
            and len(md.partitions) == partitions
            and all(p.leader >= 0 for p in md.partitions.values())
        ):
            return True
        time.sleep(0.1)
    return False
