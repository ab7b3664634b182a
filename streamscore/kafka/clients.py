"""librdkafka settings for each client streamscore creates, in one place; and reading a
topic to its end (:func:`read_to_end`). Topics are created and described in
:mod:`streamscore.kafka.admin`."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from ..core.config import KafkaSettings, ScoringSettings
from .delivery import send_bound_s
from .output_limits import OutputLimits

log = logging.getLogger(__name__)

#: librdkafka's defaults for a consumer's fetch sizes (a larger input raises them)
_FETCH_MAX_BYTES = 52_428_800
_RECEIVE_MAX_BYTES = 100_000_000
_RECEIVE_MAX_BYTES_CAP = 2_147_483_647


def _group_consumer(group_id: str, client_id: str) -> dict[str, Any]:
    """What every streamscore consumer-group member shares: read committed data from the
    beginning, offsets stored by the loop (never on poll), prompt failure detection and a
    bounded prefetch (memory stays flat however far behind it is), refilled soon after
    the loop takes from it: once the prefetch reaches its bound librdkafka postpones the
    next fetch by ``fetch.queue.backoff.ms``, 1 s by default, which capped a consumer at
    one prefetch-full per second (README, Performance: 235,500 against 770,000 messages/s
    consumed on the local broker with this 16 MB bound)."""
    conf: dict[str, Any] = {}
    conf.update(
        {
            "group.id": group_id,
            "client.id": client_id,
            "auto.offset.reset": "earliest",
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "queued.max.messages.kbytes": 16_384,
            "fetch.queue.backoff.ms": 10,
        }
    )
    return conf


def score_consumer(
    kafka: KafkaSettings, scoring: ScoringSettings, *, max_input_bytes: int | None = None
) -> dict[str, Any]:
    """``max_input_bytes``: the events topic's ``max.message.bytes``; the fetch limits
    are raised to take a message that large (the defaults take up to about 50 MB)."""
    conf = _group_consumer(scoring.group_id, f"streamscore-score-{scoring.worker_id}")
    conf.update(
        {
            "partition.assignment.strategy": "cooperative-sticky",
            # a batch's offsets are stored only when all its outputs are acknowledged
            "enable.auto.commit": not scoring.exactly_once,
            "auto.commit.interval.ms": 1000,
            "fetch.wait.max.ms": 50,
        }
    )
    if scoring.exactly_once:
        # a batch may wait out a broker outage inside its transaction (delivery.py):
        # the consumer stays a member of its group for as long as that can take
        conf["max.poll.interval.ms"] = int(1000 * max(300.0, send_bound_s(scoring.eos_retry_s)))
    if max_input_bytes is not None and max_input_bytes + 65_536 > _FETCH_MAX_BYTES:
        fetch = min(max_input_bytes + 65_536, _RECEIVE_MAX_BYTES_CAP - 1_048_576)
        conf["fetch.max.bytes"] = fetch
        conf["receive.message.max.bytes"] = max(_RECEIVE_MAX_BYTES, fetch + 1_048_576)
    return kafka.config("consumer", conf)


def score_producer(
    kafka: KafkaSettings, scoring: ScoringSettings, limits: OutputLimits | None = None
) -> dict[str, Any]:
    """``limits``: the output topics' limits; the producer's ``message.max.bytes`` is
    set to take the largest record any of them accepts, and its ``batch.size`` to fit the
    smallest (the outputs themselves are sized per topic before they are produced)."""
    conf: dict[str, Any] = {}
    conf.update(
        {
            "client.id": f"streamscore-score-{scoring.worker_id}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": max(scoring.max_in_flight * 2, 10_000),
            "queue.buffering.max.kbytes": 262_144,
            # a success costs no Python call: both sinks count failures only (at least
            # once stores offsets at flush checkpoints; a transaction's commit is one
            # acknowledgement); reports of refused outputs still come (delivery.py
            # sizes them anew)
            "delivery.report.only.error": True,
        }
    )
    if limits is not None:
        conf["message.max.bytes"] = limits.producer_max_bytes()
        conf["batch.size"] = limits.batch_bytes()
    if scoring.exactly_once:
        conf["transactional.id"] = f"streamscore-score-{scoring.group_id}-{scoring.worker_id}"
        conf["transaction.timeout.ms"] = 30_000
    return kafka.config("producer", conf)


#: librdkafka's largest ``receive.message.max.bytes``.
MAX_RECEIVE_MESSAGE_BYTES = 2_147_483_647


def model_reader_limits(max_message_bytes: int) -> dict[str, Any]:
    """Fetch sizes for every reader of the model topic (workers, `model list/rollback`).

    A fetch asks for about one model's worth (``fetch.max.bytes``,
    ``max.partition.fetch.bytes``), but the broker returns the first record batch whole
    even when it is larger (KIP-74), and the response must then fit
    ``receive.message.max.bytes`` or librdkafka fails the fetch ("Invalid response size")
    and retries the same offset forever: the reader is wedged. So the receive limit is
    librdkafka's maximum (buffers are sized by what arrives, not by this limit): any record
    the topic's ``max.message.bytes`` lets in, whatever that is, is received, and the
    reader rejects one above ``max_message_bytes`` by its size and goes on.
    """
    fetch = max_message_bytes + 65_536
    return {
        "fetch.max.bytes": fetch,
        "max.partition.fetch.bytes": fetch,
        "receive.message.max.bytes": MAX_RECEIVE_MESSAGE_BYTES,
    }


def model_watcher_consumer(kafka: KafkaSettings, max_message_bytes: int) -> dict[str, Any]:
    conf: dict[str, Any] = {}
    conf.update(
        {
            # never subscribes: assign() only, so this group id never joins or commits
            "group.id": f"streamscore-model-watcher-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 20,
            **model_reader_limits(max_message_bytes),
        }
    )
    return kafka.config("consumer", conf)


def plain_producer(
    kafka: KafkaSettings,
    *,
    max_message_bytes: int | None = None,
    failures_only: bool = False,
    max_queued: int | None = None,
) -> dict[str, Any]:
    """An idempotent producer. ``failures_only``: delivery reports for failures only, so
    that a success costs no Python call (for an
    :class:`~streamscore.kafka.delivery.AtLeastOnceSink`, which counts failures only);
    ``max_queued``: messages waiting in its queue at most (more: ``produce`` raises
    ``BufferError`` and the caller waits for deliveries)."""
    conf: dict[str, Any] = {}
    conf.update({"enable.idempotence": True, "acks": "all", "linger.ms": 5})
    if failures_only:
        conf["delivery.report.only.error"] = True
    if max_message_bytes is not None:
        conf["message.max.bytes"] = max_message_bytes + 65_536
    if max_queued is not None:
        conf["queue.buffering.max.messages"] = max_queued
    return kafka.config("producer", conf)


#: the feedback router's producer queue (librdkafka's default is 100,000 messages)
ROUTER_QUEUE_MESSAGES = 20_000


def reader_consumer(kafka: KafkaSettings, group_id: str, **extra: Any) -> dict[str, Any]:
    """A plain consumer for tools and tests (read_committed, from the beginning)."""
    conf: dict[str, Any] = {}
    conf.update(
        {
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    conf.update(extra)
    return kafka.config("consumer", conf)


def feedback_consumer(kafka: KafkaSettings, group_id: str, client_id: str) -> dict[str, Any]:
    """The join loop: eager ``range`` assignment (it drops its join state on revocation)
    and explicit commits of settled offsets only."""
    conf = _group_consumer(group_id, client_id)
    conf.update(
        {
            "partition.assignment.strategy": "range",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
            **FEEDBACK_PREFETCH,
        }
    )
    return kafka.config("consumer", conf)


def router_consumer(kafka: KafkaSettings, group_id: str, client_id: str) -> dict[str, Any]:
    """The feedback router: like a score worker (offsets stored when the batch's outputs
    are acknowledged, then auto-committed), in its own group ``<group>.router``."""
    conf = _group_consumer(f"{group_id}.router", f"{client_id}-router")
    conf.update(
        {
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            "fetch.wait.max.ms": 100,
            **FEEDBACK_PREFETCH,
        }
    )
    return kafka.config("consumer", conf)


#: the feedback consumers' prefetch (the router's and the join's): their messages are
#: small (a prediction is ~100-300 bytes), and librdkafka's own bookkeeping of each
#: prefetched message (a few hundred bytes more) is not counted by
#: ``queued.max.messages.kbytes``: with 16 MB of payload and the default 100,000 messages
#: per partition, each consumer held ~60 MB. A few thousand messages per partition is
#: still seconds of work for the loop, since it is refilled 10 ms after the loop takes
#: from it (``_group_consumer``; with librdkafka's 1 s default, 200,000 messages of 150
#: bytes on 4 partitions took 65.8 µs each to consume on the local broker, 2.3 µs now).
FEEDBACK_PREFETCH = {"queued.min.messages": 5_000, "queued.max.messages.kbytes": 4_096}


def admin_config(kafka: KafkaSettings) -> dict[str, Any]:
    """An admin client's properties (topics, their limits, ACLs)."""
    return kafka.config("admin")


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
