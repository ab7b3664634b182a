"""Offsets are stored only after every output of a batch, and of every batch before it,
is acknowledged; a failed delivery never lets offsets past it be stored."""

from __future__ import annotations

from typing import Any

import pytest

from streamscore.core.errors import AccessError, DeliveryError
from streamscore.kafka.delivery import AtLeastOnceSink, OutBatch, OutMessage

from .kafka_fakes import FakeClock, FakeConsumer


class FakeProducer:
    """Holds delivery callbacks until the test acknowledges them."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.waiting: list[tuple[Any, str]] = []
        self.capacity = capacity
        self.fail_next: str | None = None

    def produce(
        self, topic: str, value: Any, key: Any, headers: Any = None, on_delivery: Any = None
    ) -> None:
        if len(self.waiting) >= self.capacity:
            raise BufferError("queue full")
        self.waiting.append((on_delivery, topic))

    def ack(self, n: int, err: str | None = None) -> None:
        for cb, _topic in self.waiting[:n]:
            cb(err, None)
        del self.waiting[:n]

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        self.ack(len(self.waiting))
        return 0

    def __len__(self) -> int:
        return len(self.waiting)


def batch(n: int, offsets: dict[tuple[str, int], int]) -> OutBatch:
    return OutBatch([OutMessage("out", b"k", b"v") for _ in range(n)], offsets)


def test_offsets_stored_only_when_the_whole_batch_is_acked() -> None:
    p, c = FakeProducer(), FakeConsumer()
    sink = AtLeastOnceSink(p, c)
    sink.send(batch(3, {("events", 0): 10}))
    p.ack(2)
    sink.poll()
    assert c.stored == []
    p.ack(1)
    sink.poll()
    assert c.stored == [[("events", 0, 10)]]


def test_a_later_batch_acked_first_waits_for_the_earlier_one() -> None:
    p, c = FakeProducer(), FakeConsumer()
    sink = AtLeastOnceSink(p, c)
    sink.send(batch(2, {("events", 0): 10}))
    sink.send(batch(1, {("events", 0): 20}))
    # acknowledge the second batch's message before the first batch's
    second_cb = p.waiting.pop(2)[0]
    second_cb(None, None)
    sink.poll()
    assert c.stored == []
    p.ack(2)
    sink.poll()
    # one store at the checkpoint: the furthest offset of every batch sent
    assert c.stored == [[("events", 0, 20)]]


def test_under_sustained_load_a_due_checkpoint_flushes_then_stores() -> None:
    """The queue is never empty while batches keep coming: once the checkpoint is due,
    a flush (bounded) waits for every output, then the offsets are stored."""
    clock = FakeClock()
    p, c = FakeProducer(), FakeConsumer()
    flushes: list[float] = []
    flush = p.flush

    def timed_flush(timeout: float = 0) -> int:
        flushes.append(timeout)
        return flush(timeout)

    p.flush = timed_flush  # type: ignore[method-assign]
    sink = AtLeastOnceSink(p, c, checkpoint_s=1.0, flush_s=0.25, clock=clock)
    sink.send(batch(2, {("events", 0): 10}))
    clock.now += 0.5
    sink.send(batch(2, {("events", 1): 4}))
    p.ack(3)  # one output of the second batch still in flight
    sink.poll()
    assert (c.stored, flushes) == ([], [])  # not due yet: no flush, nothing stored
    clock.now += 0.6  # the first batch was sent 1.1 s ago
    sink.poll()
    assert flushes == [0.25]
    assert c.stored == [[("events", 0, 10), ("events", 1, 4)]]
    assert sink.backlog == 0


def test_a_checkpoint_flush_that_times_out_stores_nothing_and_is_tried_again_later() -> None:
    """The broker slower than the worker (or away): nothing is stored, the next attempt
    waits a full interval and may wait twice as long (up to the cap), so that offsets
    move on under a sustained overload too; a checkpoint that completes resets it."""
    clock = FakeClock()
    p, c = FakeProducer(), FakeConsumer()
    away = True
    bounds: list[float] = []

    def flush(timeout: float = 0) -> int:
        bounds.append(timeout)
        if not away:
            p.ack(len(p.waiting))
        return len(p.waiting)

    p.flush = flush  # type: ignore[method-assign]
    sink = AtLeastOnceSink(p, c, checkpoint_s=1.0, flush_s=0.5, max_flush_s=1.5, clock=clock)
    sink.send(batch(1, {("events", 0): 3}))
    clock.now += 1.5
    sink.poll()
    assert (c.stored, bounds) == ([], [0.5])
    sink.poll()  # the next attempt waits a full interval
    assert bounds == [0.5]
    for _ in range(2):
        clock.now += 1.0
        sink.poll()
    assert (c.stored, bounds) == ([], [0.5, 1.0, 1.5])  # doubled, capped
    away = False
    clock.now += 1.0
    sink.poll()
    assert (c.stored, bounds) == ([[("events", 0, 3)]], [0.5, 1.0, 1.5, 1.5])
    sink.send(batch(1, {("events", 0): 4}))
    clock.now += 1.0
    sink.poll()
    assert bounds[-1] == 0.5  # reset by the checkpoint that completed


def test_a_drain_that_times_out_raises_and_leaves_the_checkpoint_bound_alone() -> None:
    clock = FakeClock()
    p, c = FakeProducer(), FakeConsumer()
    bounds: list[float] = []

    def flush(timeout: float = 0) -> int:  # the broker away
        bounds.append(timeout)
        return len(p.waiting)

    p.flush = flush  # type: ignore[method-assign]
    sink = AtLeastOnceSink(p, c, checkpoint_s=1.0, flush_s=0.5, clock=clock)
    sink.send(batch(2, {("events", 0): 3}))
    with pytest.raises(DeliveryError, match="2 outputs still unacknowledged after 7"):
        sink.drain(7)
    clock.now += 1.0
    sink.poll()
    assert bounds == [7, 0.5] and c.stored == [] and c.commits == []


def test_a_refusal_served_by_the_checkpoint_flush_raises_and_stores_nothing() -> None:
    clock = FakeClock()
    p, c = FakeProducer(), FakeConsumer()
    p.flush = lambda timeout=0: (p.ack(1, err="broker said no"), 0)[1]  # type: ignore[method-assign]
    sink = AtLeastOnceSink(p, c, clock=clock)
    sink.send(batch(1, {("events", 0): 3}))
    clock.now += 2.0
    with pytest.raises(DeliveryError, match="broker said no"):
        sink.poll()
    assert c.stored == []


def test_with_a_real_producer_that_reports_failures_only_offsets_are_stored() -> None:
    """librdkafka's in-process mock cluster, the score worker's producer settings
    (``delivery.report.only.error``): no success report ever comes, and the offsets are
    still stored once the outputs are acknowledged."""
    from confluent_kafka import Producer

    from streamscore.core.config import KafkaSettings, ScoringSettings
    from streamscore.kafka.clients import score_producer

    conf = score_producer(KafkaSettings(bootstrap_servers="unused:1"), ScoringSettings())
    assert conf["delivery.report.only.error"] is True
    conf.pop("bootstrap.servers")
    producer = Producer({**conf, "test.mock.num.brokers": 1, "log_level": 0})
    c = FakeConsumer()
    sink = AtLeastOnceSink(producer, c)
    sink.send(batch(50, {("events", 2): 60}))
    sink.drain(10, commit=False)
    assert c.stored == [[("events", 2, 60)]]
    assert sink.backlog == 0


def test_failed_delivery_raises_and_never_stores_past_it() -> None:
    p, c = FakeProducer(), FakeConsumer()
    sink = AtLeastOnceSink(p, c)
    sink.send(batch(2, {("events", 0): 10}))
    sink.send(batch(1, {("events", 0): 20}))
    p.ack(1, err="broker said no")
    p.ack(2)
    with pytest.raises(DeliveryError, match="broker said no"):
        sink.poll()
    assert c.stored == []


def test_an_output_refused_for_a_missing_acl_is_an_access_error_and_stores_nothing() -> None:
    from confluent_kafka import KafkaError

    class Refused:
        def topic(self) -> str:
            return "predictions"

    p, c = FakeProducer(), FakeConsumer()
    sink = AtLeastOnceSink(p, c)
    sink.send(batch(1, {("events", 0): 10}))
    cb = p.waiting.pop(0)[0]
    cb(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), Refused())
    with pytest.raises(AccessError) as err:
        sink.poll()
    assert "may not" not in str(err.value)  # the clear wording, not a raw code
    assert "to write topic 'predictions'" in str(err.value)
    assert "grant the ACL (WRITE on topic 'predictions'" in str(err.value)
    assert c.stored == []


def test_an_output_produce_refuses_for_a_missing_acl_is_an_access_error() -> None:
    from confluent_kafka import KafkaError, KafkaException

    class Unauthorized(FakeProducer):
        def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
            raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

    c = FakeConsumer()
    sink = AtLeastOnceSink(Unauthorized(), c)
    with pytest.raises(AccessError, match=r"to write topic 'out'"):
        sink.send(batch(1, {("events", 0): 10}))
    bulk = OutBatch([], {("events", 0): 11}, bulk=[("predictions", [(b"k", b"v")], None)])
    with pytest.raises(AccessError, match=r"to write topic 'predictions'"):
        sink.send(bulk)
    sink.poll()
    assert c.stored == []


def test_full_local_queue_waits_instead_of_dropping() -> None:
    p, c = FakeProducer(capacity=2), FakeConsumer()
    polls = []

    def poll(timeout: float = 0) -> int:
        polls.append(timeout)
        p.ack(len(p.waiting))  # the broker catches up while we wait
        return 0

    p.poll = poll  # type: ignore[method-assign]
    sink = AtLeastOnceSink(p, c)
    sink.send(batch(5, {("events", 1): 7}))
    assert polls  # it waited for room
    sink.poll()
    assert c.stored == [[("events", 1, 7)]]


def test_drain_flushes_stores_and_commits() -> None:
    p, c = FakeProducer(), FakeConsumer()
    sink = AtLeastOnceSink(p, c)
    sink.send(batch(4, {("events", 0): 5, ("events", 1): 9}))
    sink.drain()
    assert c.stored == [[("events", 0, 5), ("events", 1, 9)]]
    assert c.commits == [None]  # one synchronous commit of the stored offsets
    assert sink.backlog == 0
