"""The feedback router with fake Kafka clients: re-keying by event id, dead letters,
registry outages, shutdown."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamscore.core.errors import RegistryUnavailableError
from streamscore.feedback.router import KIND_HEADER, FeedbackRouter, RouteTopics, join_topic_for
from streamscore.metrics.series import Metrics
from streamscore.serde import schemas
from streamscore.serde.event_ids import EventIdReader
from streamscore.serde.message import AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, registry_client

from .kafka_fakes import FakeConsumer, FakeMessage, FakeSink, FlakyRegistry

TOPICS = RouteTopics(predictions="preds", feedback="fb", join="g.join", dlq="dlq")


class EofError:
    def code(self) -> int:
        return -191  # _PARTITION_EOF


@pytest.fixture
def registry() -> Any:
    return registry_client({"url": f"mock://router-{id(object())}"})


def label(registry: Any, eid: str) -> bytes:
    ser = AvroSerializer(registry, "fb-value", schemas.load("feedback"))
    return ser({"event_id": eid, "label": "1.0", "observed_time": 1_700_000_000_000})


def make_router(
    event_id: Any, consumer: Any = None, sink: Any = None, stop: threading.Event | None = None
) -> tuple[FeedbackRouter, Metrics]:
    metrics = Metrics(CollectorRegistry())
    router = FeedbackRouter(
        consumer=consumer,
        sink=sink or FakeSink(),
        topics=TOPICS,
        event_id=event_id,
        metrics=metrics,
        worker_id="fb-test",
        stop=stop or threading.Event(),
        registry_backoff_s=(0.01, 0.02),
    )
    return router, metrics


def sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_join_topic_is_named_after_the_group() -> None:
    assert join_topic_for("streamscore-feedback") == "streamscore-feedback.join"


def test_predictions_and_labels_are_rekeyed_by_event_id(registry: Any) -> None:
    reader = EventIdReader(WriterSchemaCache(registry))
    router, metrics = make_router(reader)
    v1, v2, v3 = label(registry, "e1"), label(registry, "e2"), label(registry, "e1")
    msgs = [
        FakeMessage("preds", 2, 10, v1, key=b"entity-a"),
        FakeMessage("preds", 2, 11, v2, key=b"entity-b"),
        FakeMessage("fb", 0, 5, v3, key=b"e1"),
        FakeMessage("fb", 0, 6, None, error=EofError()),  # not a message: skipped
    ]
    batch = router.route(msgs)  # type: ignore[arg-type]

    assert [(m.topic, m.key, m.value) for m in batch.outputs()] == [
        ("g.join", b"e1", v1),  # the original bytes, keyed by event id
        ("g.join", b"e2", v2),
        ("g.join", b"e1", v3),
    ]
    kinds = [dict(m.headers or [])[KIND_HEADER] for m in batch.outputs()]
    assert kinds == [b"prediction", b"prediction", b"label"]
    assert batch.offsets == {("preds", 2): 12, ("fb", 0): 6}
    assert sample(metrics, "streamscore_feedback_routed_total", {"kind": "prediction"}) == 2
    assert sample(metrics, "streamscore_feedback_routed_total", {"kind": "label"}) == 1
    assert router.routed == 3


def test_a_message_without_a_readable_id_is_dead_lettered_untouched(registry: Any) -> None:
    reader = EventIdReader(WriterSchemaCache(registry))
    router, metrics = make_router(reader)
    bad = b"\x07not avro"
    good = label(registry, "e1")
    batch = router.route(
        [
            FakeMessage("fb", 1, 40, bad, key=b"orig-key", timestamp_ms=123),
            FakeMessage("fb", 1, 41, good, key=b"e1"),
        ]  # type: ignore[list-item]
    )
    routed, dlq = batch.outputs()  # the routed ones are produced first
    assert (dlq.topic, dlq.key, dlq.value) == ("dlq", b"orig-key", bad)
    h = dict(dlq.headers or [])
    assert h["streamscore.error.class"] == b"MagicByteError"
    assert h["streamscore.error.reason"] == b"bad_magic_byte"
    assert h["streamscore.source.topic"] == b"fb"
    assert h["streamscore.source.partition"] == b"1"
    assert h["streamscore.source.offset"] == b"40"
    assert h["streamscore.source.timestamp"] == b"123"
    assert h["streamscore.worker.id"] == b"fb-test"
    assert (routed.topic, routed.key) == ("g.join", b"e1")
    assert batch.offsets == {("fb", 1): 42}  # the bad one is settled by its dead letter
    assert sample(metrics, "streamscore_dead_letters_total", {"reason": "bad_magic_byte"}) == 1
    assert router.dead_lettered == 1


def test_a_registry_outage_puts_the_batch_back_paused_and_polling(registry: Any) -> None:
    """The registry away at the first lookup of a batch: nothing routed, dead-lettered
    or committed; the consumer is paused and polled (stays in its group) during the
    backoff, resumed and sought back to the batch's first offsets; once the registry
    answers, the same batch is routed once."""
    good = label(registry, "e7")
    stop = threading.Event()
    batch = [FakeMessage("fb", 0, 5, good), FakeMessage("fb", 1, 9, label(registry, "e8"))]
    reader = EventIdReader(WriterSchemaCache(FlakyRegistry(registry, down=1)))
    sink = FakeSink()
    consumer = FakeConsumer([batch, batch], stop, topic="fb")  # handed again after the seek
    router, metrics = make_router(reader, consumer=consumer, sink=sink, stop=stop)
    router.run()
    assert consumer.seeks == [("fb", 0, 5), ("fb", 1, 9)]
    assert consumer.paused_polls >= 1 and not consumer.paused
    (sent,) = sink.sent
    assert [m.key for m in sent.outputs()] == [b"e7", b"e8"]
    assert sent.offsets == {("fb", 0): 6, ("fb", 1): 10}
    assert router.dead_lettered == 0
    assert sample(metrics, "streamscore_registry_unavailable_batches_total", {}) == 1
    assert (
        sample(metrics, "streamscore_dead_letters_total", {"reason": "registry_unavailable"}) == 0
    )


def test_stop_during_an_outage_sends_nothing_and_drains() -> None:
    stop = threading.Event()

    def down(_value: bytes | None) -> str:
        stop.set()  # the worker is asked to stop while the registry is down
        raise RegistryUnavailableError("down")

    sink = FakeSink()
    consumer = FakeConsumer([[FakeMessage("fb", 0, 0, b"x")]], stop, topic="fb")
    router, _ = make_router(down, consumer=consumer, sink=sink, stop=stop)
    router.run()
    assert sink.sent == []  # the batch's offsets are never stored: it is read again
    assert consumer.seeks == [("fb", 0, 0)]
    assert sink.drains == 1
    assert consumer.closed


def test_run_routes_every_batch_then_drains_and_closes(registry: Any) -> None:
    reader = EventIdReader(WriterSchemaCache(registry))
    stop = threading.Event()
    batches = [
        [FakeMessage("preds", 0, i, label(registry, f"e{i}")) for i in range(3)],
        [FakeMessage("fb", 0, 0, label(registry, "e0"))],
    ]
    sink = FakeSink()
    consumer = FakeConsumer(batches, stop)
    router, _ = make_router(reader, consumer=consumer, sink=sink, stop=stop)
    router.run()
    assert consumer.subscribed == ["preds", "fb"]
    assert [len(b.outputs()) for b in sink.sent] == [3, 1]
    assert sink.drains == 1 and consumer.closed
