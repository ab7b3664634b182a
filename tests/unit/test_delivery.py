"""Offsets are stored only after every output of a batch, and of every batch before it,
is acknowledged; a failed delivery never lets offsets past it be stored."""

from __future__ import annotations

from typing import Any

import pytest

from streamscore.core.errors import AccessError, DeliveryError
from streamscore.kafka.delivery import AtLeastOnceSink, OutBatch, OutMessage

from .kafka_fakes import FakeConsumer


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
    assert c.stored == [[("events", 0, 10)], [("events", 0, 20)]]


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
