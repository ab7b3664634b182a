"""librdkafka settings for each client streamscore creates, in one place."""

from __future__ import annotations

import uuid
from typing import Any

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
