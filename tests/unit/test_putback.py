"""Registry outages with fakes: the put-back (paused, polled, resumed, sought back), the
batch failing at its first unreachable lookup, "not found" from a registry in trouble,
and the model watcher waiting for the registry instead of rejecting envelopes."""

from __future__ import annotations

import json
import struct
import threading
import time
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.schema_registry import Schema
from prometheus_client import CollectorRegistry

from streamscore.core import errors
from streamscore.core.config import KafkaSettings, RegistrySettings
from streamscore.core.records import Role
from streamscore.kafka.putback import PutBack, first_offsets
from streamscore.metrics.series import Metrics
from streamscore.models import envelope
from streamscore.models.store import ModelStore
from streamscore.models.updates import ModelUpdater
from streamscore.models.watcher import ModelWatcher, _Stopped
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, registry_client

from .kafka_fakes import FakeConsumer, FakeMessage, FlakyRegistry


@pytest.fixture
def registry() -> Any:
    return registry_client({"url": f"mock://putback-{id(object())}"})


def test_put_back_pauses_polls_resumes_and_seeks_back_what_it_dropped() -> None:
    stop = threading.Event()
    late = FakeMessage("ev", 2, 40, b"x")  # from a partition assigned during the wait
    c = FakeConsumer([[late]], topic="ev", partitions=(0, 1))  # never stops the put-back
    put_back = PutBack(c, stop=stop, backoff_s=(0.05, 0.1), poll_s=0.01)

    def rebalance(n: int) -> None:  # what a real consumer does inside consume()
        if n == 1:
            c.partitions = [0, 2]  # p1 revoked (and no longer paused), p2 assigned
            c.paused.discard(1)
            put_back.revoked([TopicPartition("ev", 1)])

    c.on_consume = rebalance
    waited = put_back({("ev", 0): 3, ("ev", 1): 7}, "registry away")
    c.on_consume = None

    assert 0.05 <= waited < 5
    assert c.seeks == [("ev", 0, 3), ("ev", 2, 40)]  # p1 forgotten, p2 sought back
    assert c.paused_polls >= 1 and not c.paused and not put_back.waiting
    assert put_back.backoff_s == 0.05
    put_back({("ev", 0): 3}, "still away")
    assert put_back.backoff_s == 0.1  # doubled
    put_back({("ev", 0): 3}, "still away")
    assert put_back.backoff_s == 0.1  # bounded
    put_back.ok()
    assert put_back.backoff_s == 0.0


def test_first_offsets_are_the_lowest_per_partition() -> None:
    msgs = [
        FakeMessage("ev", 0, 5, b""),
        FakeMessage("ev", 1, 2, b""),
        FakeMessage("ev", 0, 4, b""),
    ]
    assert first_offsets(msgs) == {("ev", 0): 4, ("ev", 1): 2}


class _Counting:
    """A real registry client, its lookups counted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lookups = 0

    def get_schema(self, schema_id: int) -> Any:
        self.lookups += 1
        return self.inner.get_schema(schema_id)

    def register_schema(self, subject_name: str, schema: Any) -> int:
        raise NotImplementedError


def test_a_batch_fails_fast_at_its_first_unreachable_lookup() -> None:
    # the default settings' timeout and retries, against a port nothing listens on
    settings = RegistrySettings(url="http://127.0.0.1:9/apis/ccompat/v7")
    client = _Counting(registry_client(settings.client_config()))
    decoder = AvroDeserializer(WriterSchemaCache(client), schemas.load("event"))
    body = b"\x00" * 40
    batch = [struct.pack(">bI", 0, 100 + i % 5) + body for i in range(500)]  # 5 uncached ids
    t0 = time.monotonic()
    with pytest.raises(errors.RegistryUnavailableError):
        decoder.decode_many(batch)
    assert time.monotonic() - t0 < 3.0  # was ~3.8 s per message
    assert client.lookups == 1  # the first unreachable lookup ends the batch


def test_not_found_right_after_an_outage_is_retried_not_dead_lettered(registry: Any) -> None:
    now = [0.0]
    flaky = FlakyRegistry(registry, down=1)
    registry.register_schema("ev-value", event_schema())  # a registry in use
    cache = WriterSchemaCache(flaky, recovery_grace_s=60, clock=lambda: now[0])  # type: ignore[arg-type]
    with pytest.raises(errors.RegistryUnavailableError):
        cache.get(999)  # the registry is away (503)
    now[0] = 30.0
    flaky.status = 404  # back, but without schema 999 yet
    for _ in range(2):  # not negatively cached: each retry asks again
        with pytest.raises(errors.RegistryUnavailableError, match="after it was away"):
            cache.get(999)
    assert flaky.lookups == 3
    now[0] = 61.0  # long after the outage: a 404 is an unknown id (dead letter)
    with pytest.raises(errors.UnknownSchemaError):
        cache.get(999)


def event_schema() -> Schema:
    return Schema(json.dumps(schemas.load("event")), "AVRO")


def test_not_found_from_a_registry_without_any_subject_is_retried(registry: Any) -> None:
    cache = WriterSchemaCache(registry)
    with pytest.raises(errors.RegistryUnavailableError, match="no subject"):
        cache.get(7)  # an empty registry: restarted without its storage
    registry.register_schema("ev-value", event_schema())
    with pytest.raises(errors.UnknownSchemaError):
        cache.get(7)  # a registry in use: a bogus id is bad input


def _watcher(decode: Any, metrics: Metrics) -> ModelWatcher:
    updater = ModelUpdater(ModelStore(), keyring={}, reader_fields={}, metrics=metrics)
    return ModelWatcher(
        KafkaSettings(),
        "models",
        decode,
        updater,
        metrics,
        max_message_bytes=1 << 20,
        registry_retry_s=(0.01, 0.02),
    )


def _envelope_bytes(registry: Any) -> bytes:
    env = envelope.make(
        model_name="demo",
        role=Role.PRIMARY,
        version=3,
        artifact=b"bundle",
        signature=b"sig",
        key_id="k",
        created_at_ms=1,
        published_at_ms=2,
        publisher="test",
    )
    ser = AvroSerializer(registry, "models-value", schemas.load("model_envelope"))
    return ser(env.to_avro())


def test_the_model_watcher_waits_for_the_registry_instead_of_rejecting(registry: Any) -> None:
    data = _envelope_bytes(registry)
    flaky = FlakyRegistry(registry, down=3)
    decode = AvroDeserializer(WriterSchemaCache(flaky), schemas.load("model_envelope"))  # type: ignore[arg-type]
    metrics = Metrics(CollectorRegistry())
    env = _watcher(decode, metrics)._envelope(FakeMessage("models", 0, 0, data))
    assert env is not None and (env.model_name, env.version) == ("demo", 3)
    assert flaky.lookups == 4  # three refusals, then the schema
    rejected = [
        s
        for m in metrics.registry.collect()
        for s in m.samples
        if s.name == "streamscore_model_updates_rejected_total"
    ]
    assert rejected == []  # an outage is not a rejection


def test_the_model_watcher_stops_while_waiting_for_the_registry(registry: Any) -> None:
    data = _envelope_bytes(registry)
    decode = AvroDeserializer(
        WriterSchemaCache(FlakyRegistry(registry, down=10**6)),  # type: ignore[arg-type]
        schemas.load("model_envelope"),
    )
    watcher = _watcher(decode, Metrics(CollectorRegistry()))
    threading.Timer(0.2, watcher._stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(_Stopped):
        watcher._envelope(FakeMessage("models", 0, 0, data))
    assert time.monotonic() - t0 < 5
