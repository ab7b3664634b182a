"""Topic admin: the one place streamscore creates topics, and reads what it needs of them
(partition counts, record limits, leaders).

Every creator goes through :func:`create_topics`: the local cluster's standard topics
(:func:`standard_topics`), the demo's per-run topics, the feedback join topic
(:func:`ensure_topic`), and the tests' and benchmarks' fresh topics. A topic that already
exists is left as it is (it may have been created by an operator, or by another worker at
the same moment) unless the caller asks for a fresh one. Functions take an
``AdminClient`` (or anything with its methods), so the caller picks the client settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from ..core.config import TopicSettings
from ..core.errors import KafkaIOError

log = logging.getLogger(__name__)

#: Replication factor -1: the broker's ``default.replication.factor``.
BROKER_DEFAULT_REPLICATION = -1


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: its name, partitions, configuration and replication."""

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)
    replication_factor: int = BROKER_DEFAULT_REPLICATION


def standard_topics(
    topics: TopicSettings,
    *,
    partitions: int,
    model_topic_max_bytes: int,
    model_partitions: int | None = None,
    replication_factor: int = 1,
) -> list[TopicSpec]:
    """``topics.all()`` as specs: ``partitions`` partitions each (the models topic
    ``model_partitions``, default the same), the models topic compacted with
    ``max.message.bytes = model_topic_max_bytes``."""
    models_config = {
        "cleanup.policy": "compact",
        "max.message.bytes": str(model_topic_max_bytes),
    }
    return [
        TopicSpec(
            name,
            partitions=(model_partitions or partitions) if name == topics.models else partitions,
            config=models_config if name == topics.models else {},
            replication_factor=replication_factor,
        )
        for name in dict.fromkeys(topics.all())
    ]


def create_topics(
    admin: Any,
    specs: Iterable[TopicSpec],
    *,
    exist_ok: bool = True,
    wait_for_leaders: bool = True,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create ``specs`` in one request; return the names created. A topic that already
    exists is fine when ``exist_ok`` (left as it is), else a :class:`KafkaIOError`, like
    any other refusal. With ``wait_for_leaders``, returns once every created topic has a
    leader for each partition (or ``timeout_s`` has passed; the caller may check with
    :func:`partition_count`)."""
    from confluent_kafka.cimpl import NewTopic

    want = {s.name: s for s in specs}
    if not want:
        return []
    new = [
        NewTopic(
            s.name,
            num_partitions=s.partitions,
            replication_factor=s.replication_factor,
            config=dict(s.config),
        )
        for s in want.values()
    ]
    futures = admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
    created: list[str] = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if exist_ok and getattr(err, "code", lambda: None)() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise KafkaIOError(f"cannot create topic {name!r}: {err}") from exc
    if wait_for_leaders:
        deadline = time.monotonic() + timeout_s
        for name in created:
            left = max(0.0, deadline - time.monotonic())
            wait_for_partition_leaders(admin, name, want[name].partitions, timeout_s=left)
    return created


def ensure_topic(
    admin: Any,
    topic: str,
    partitions: int,
    config: dict[str, str],
    *,
    timeout_s: float = 30.0,
) -> int:
    """Create ``topic`` (broker-default replication) unless it exists; return the number
    of partitions it has. An existing topic is used as it is (it may have been created
    by an operator, or by another worker at the same moment)."""
    have = partition_count(admin, topic)
    if have is not None:
        return have
    create_topics(
        admin,
        [TopicSpec(topic, partitions, config)],
        wait_for_leaders=False,
        timeout_s=timeout_s,
    )
    if not wait_for_partition_leaders(admin, topic, partitions, timeout_s=timeout_s):
        have = partition_count(admin, topic)
        if have is None:
            raise KafkaIOError(f"topic {topic!r} was created but has no leaders yet")
        return have
    return partitions


def topic_limits(admin: Any, topics: Iterable[str], *, timeout_s: float = 10.0) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` as the broker applies it (the topic's override,
    else the broker's default), read with one DescribeConfigs request. A topic whose
    configuration cannot be read (missing, not authorised, no answer) is left out and
    logged; the caller falls back to its default limit for it."""
    from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

    names = list(dict.fromkeys(topics))
    if not names:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in names]
    futures = admin.describe_configs(resources, request_timeout=timeout_s)
    out: dict[str, int] = {}
    for resource, fut in futures.items():
        try:
            entries = fut.result(timeout=timeout_s)
            out[resource.name] = int(entries["max.message.bytes"].value)
        except (KafkaException, KeyError, ValueError, TypeError, TimeoutError) as exc:
            log.warning("cannot read max.message.bytes of topic %r: %s", resource.name, exc)
    return out


def partition_count(admin: Any, topic: str, *, timeout_s: float = 10.0) -> int | None:
    """Partitions of ``topic`` per the cluster metadata, or None if it does not exist."""
    md = admin.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if md is None or md.error is not None or not md.partitions:
        return None
    return len(md.partitions)


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
