"""Exactly-once delivery while the broker is away: which transactional errors are
retried (once a broker answers again), when the transaction is aborted and the batch
rewound, what replaces a producer hung in a call, and when the worker must give up."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from streamscore.core.config import KafkaSettings, ScoringSettings
from streamscore.core.errors import StreamscoreError, TransactionFailedError
from streamscore.kafka.clients import score_consumer
from streamscore.kafka.delivery import (
    MAX_HUNG_PRODUCERS,
    OutBatch,
    OutMessage,
    RetryBatch,
    TransactionalSink,
    send_bound_s,
)
from streamscore.metrics.series import Metrics

from .kafka_fakes import (
    FakeClock,
    FakeTxnConsumer,
    FakeTxnProducer,
    FakeTxnProducers,
    Hang,
    Outcome,
    kafka_exception,
)

FIRST = [("events", 0, 10), ("events", 1, 5)]


def timed_out() -> Exception:
    return kafka_exception(KafkaError._TIMED_OUT, retriable=True)


def broker_away() -> Exception:
    return kafka_exception(KafkaError._TRANSPORT, retriable=True)


def abortable() -> Exception:
    return kafka_exception(KafkaError._MSG_TIMED_OUT, abortable=True)


def fenced() -> Exception:
    return kafka_exception(KafkaError._FENCED, fatal=True)


def batch() -> OutBatch:
    return OutBatch(
        [OutMessage("out", b"k", b"v"), OutMessage("out", b"k2", b"v2")],
        offsets={("events", 0): 12, ("events", 1): 7},
        first_offsets={("events", 0): 10, ("events", 1): 5},
    )


def sink(
    script: dict[str, list[Outcome]],
    *,
    retry_s: float = 240.0,
    stop: threading.Event | None = None,
) -> tuple[TransactionalSink, FakeTxnProducer, FakeTxnConsumer]:
    clock = FakeClock()
    p, c = FakeTxnProducer(clock, script), FakeTxnConsumer()
    s = TransactionalSink(p, c, retry_s=retry_s, backoff_s=(0.5, 4.0), stop=stop, clock=clock)
    return s, p, c


def test_a_healthy_batch_is_one_committed_transaction() -> None:
    s, p, c = sink({})
    s.send(batch())
    assert p.calls == [
        "init_transactions",
        "begin_transaction",
        "send_offsets_to_transaction",
        "commit_transaction",
    ]
    assert len(p.produced) == 2 and c.seeks == []


def test_timed_out_send_offsets_waits_for_the_broker_then_aborts_and_rewinds() -> None:
    s, p, c = sink(
        {"send_offsets_to_transaction": [timed_out()], "list_topics": [broker_away()] * 4}
    )
    with pytest.raises(RetryBatch, match="send_offsets_to_transaction"):
        s.send(batch())
    # never re-issued (librdkafka may block forever in a repeated call)
    assert p.calls.count("send_offsets_to_transaction") == 1
    assert p.calls.count("list_topics") == 5  # away 4 times, then answers
    assert p.waits == [0.5, 1.0, 2.0, 4.0, 4.0]  # doubling, capped
    assert p.calls[-1] == "abort_transaction" and "commit_transaction" not in p.calls
    assert sorted(c.seeks) == FIRST


def test_timed_out_commit_is_called_again_once_the_broker_answers() -> None:
    s, p, c = sink(
        {"commit_transaction": [timed_out(), timed_out()], "list_topics": [broker_away()]}
    )
    s.send(batch())
    assert p.calls.count("commit_transaction") == 3
    assert p.calls.count("send_offsets_to_transaction") == 1
    assert "abort_transaction" not in p.calls and c.seeks == []


def test_abortable_error_aborts_and_rewinds_to_the_first_offsets() -> None:
    s, p, c = sink({"commit_transaction": [abortable()]})
    with pytest.raises(RetryBatch, match="commit_transaction"):
        s.send(batch())
    assert p.calls[-1] == "abort_transaction"
    assert sorted(c.seeks) == FIRST


def test_the_wait_ends_after_the_budget_then_abort_and_rewind() -> None:
    s, p, c = sink(
        {"commit_transaction": [timed_out()], "list_topics": [broker_away()] * 1000},
        retry_s=120.0,
    )
    with pytest.raises(RetryBatch, match="still away after 120s"):
        s.send(batch())
    assert 20 <= p.calls.count("list_topics") <= 40  # bounded by the budget, not by 1000
    assert p.clock.now <= 120.0 + 30.0 + 5.0
    assert p.calls[-1] == "abort_transaction"
    assert sorted(c.seeks) == FIRST


def test_abort_that_times_out_is_retried_until_the_broker_is_back() -> None:
    s, p, c = sink({"commit_transaction": [abortable()], "abort_transaction": [timed_out()] * 3})
    with pytest.raises(RetryBatch):
        s.send(batch())
    assert p.calls.count("abort_transaction") == 4
    assert sorted(c.seeks) == FIRST


def test_abort_that_never_succeeds_is_a_clear_fatal_error_without_rewind() -> None:
    s, p, c = sink(
        {
            "send_offsets_to_transaction": [timed_out()],
            "abort_transaction": [timed_out()] * 1000,
            "list_topics": [broker_away()] * 1000,
        },
        retry_s=60.0,
    )
    with pytest.raises(TransactionFailedError, match="cannot abort the transaction") as ei:
        s.send(batch())
    assert isinstance(ei.value, StreamscoreError)  # the CLI reports it and exits 1
    assert c.seeks == []
    assert p.calls.count("abort_transaction") == 1


def test_fatal_error_is_not_retried_nor_aborted() -> None:
    s, p, c = sink({"send_offsets_to_transaction": [fenced()]})
    with pytest.raises(TransactionFailedError, match="fatally"):
        s.send(batch())
    assert p.calls.count("send_offsets_to_transaction") == 1
    assert "abort_transaction" not in p.calls and c.seeks == []


def test_non_retriable_non_abortable_error_is_not_retried() -> None:
    s, p, _c = sink({"commit_transaction": [kafka_exception(KafkaError._STATE)]})
    with pytest.raises(TransactionFailedError, match="commit_transaction failed"):
        s.send(batch())
    assert p.calls.count("commit_transaction") == 1


def test_stop_request_ends_the_wait_with_an_abort() -> None:
    stop = threading.Event()
    stop.set()
    s, p, c = sink({"commit_transaction": [timed_out()] * 1000}, stop=stop)
    with pytest.raises(RetryBatch, match="stopping"):
        s.send(batch())
    assert p.calls.count("commit_transaction") == 1
    assert p.calls[-1] == "abort_transaction" and sorted(c.seeks) == FIRST


def test_init_transactions_waits_for_the_broker() -> None:
    _s, p, _c = sink({"init_transactions": [timed_out(), timed_out()]})
    assert p.calls.count("init_transactions") == 3


def test_each_batch_gets_its_own_budget() -> None:
    s, p, _c = sink(
        {"commit_transaction": [timed_out()], "list_topics": [broker_away()] * 10},
        retry_s=100.0,
    )
    s.send(batch())  # about 30 s + 10 checks with backoff (~72 s): within the budget
    p.script["commit_transaction"] = [timed_out()]
    p.script["list_topics"] = [broker_away()] * 10
    s.send(batch())  # a fresh budget: would not fit in what the first batch left
    assert p.calls.count("commit_transaction") == 4
    assert "abort_transaction" not in p.calls


# ---- a call that hangs (librdkafka#5456 / #5511): the producer is replaced

END = {("events", 0): 12, ("events", 1): 7}
FIRST_OFFSETS = {("events", 0): 10, ("events", 1): 5}


@pytest.fixture
def producers() -> Iterator[FakeTxnProducers]:
    made = FakeTxnProducers(FakeClock())
    yield made
    made.release()  # no thread left blocked in a fake call


def hanging_sink(
    producers: FakeTxnProducers,
    script: dict[str, list[Outcome]],
    consumer: FakeTxnConsumer,
    *,
    replace: bool = True,
) -> tuple[TransactionalSink, Metrics]:
    """A sink whose first producer follows ``script``; a call is hung after 0.15 s."""
    producers.scripts.insert(0, script)
    metrics = Metrics(CollectorRegistry(), "score")
    s = TransactionalSink(
        producers(),
        consumer,
        new_producer=producers if replace else None,
        timeout=0.05,
        hang_grace_s=0.1,
        backoff_s=(0.5, 4.0),
        clock=producers.clock,
        metrics=metrics,
    )
    return s, metrics


def outcomes(m: Metrics) -> dict[str, float]:
    name = "streamscore_transaction_retries_total"
    return {
        o: m.registry.get_sample_value(name, {"outcome": o}) or 0.0
        for o in ("retried", "aborted", "producer_replaced")
    }


def test_hung_send_offsets_replaces_the_producer_and_the_batch_is_consumed_again(
    producers: FakeTxnProducers,
) -> None:
    hang = Hang()
    c = FakeTxnConsumer(FIRST_OFFSETS)  # the new producer's init aborted the open transaction
    s, m = hanging_sink(producers, {"send_offsets_to_transaction": [hang]}, c)
    t0 = time.monotonic()
    with pytest.raises(RetryBatch, match="send_offsets_to_transaction still blocked"):
        s.send(batch())
    assert time.monotonic() - t0 < 5  # bounded by timeout + grace, not by the hang
    assert hang.entered.is_set() and not hang.release.is_set()  # still blocked
    old, new = producers.made
    assert s.producer is new and s.replaced == 1
    # the new producer (same transactional.id) was initialised: that fences the old one
    assert new.calls == ["init_transactions"]
    assert "abort_transaction" not in old.calls and old.flushed == 0  # left alone
    assert sorted(c.seeks) == FIRST  # where the group's committed offsets say
    assert outcomes(m) == {"retried": 0, "aborted": 0, "producer_replaced": 1}
    s.send(batch())  # the next batch goes through the new producer
    assert new.calls[-1] == "commit_transaction" and len(new.produced) == 2


def test_hung_commit_whose_transaction_was_committed_is_not_consumed_again(
    producers: FakeTxnProducers,
) -> None:
    c = FakeTxnConsumer(END)  # the commit had reached the coordinator: it completed
    s, m = hanging_sink(producers, {"commit_transaction": [Hang()]}, c)
    s.send(batch())  # no RetryBatch: the batch is done
    assert c.seeks == [] and c.committed_calls == 1
    assert s.replaced == 1 and outcomes(m)["producer_replaced"] == 1


def test_committed_offsets_unreadable_at_first_are_read_again(
    producers: FakeTxnProducers,
) -> None:
    c = FakeTxnConsumer({("events", 0): 10}, committed_failures=2)  # partition 1: none yet
    s, _m = hanging_sink(producers, {"send_offsets_to_transaction": [Hang()]}, c)
    with pytest.raises(RetryBatch):
        s.send(batch())
    assert c.committed_calls == 3
    assert sorted(c.seeks) == FIRST  # none committed for partition 1: the batch's first


def test_hung_abort_is_replaced_too(producers: FakeTxnProducers) -> None:
    c = FakeTxnConsumer(FIRST_OFFSETS)
    s, m = hanging_sink(
        producers, {"commit_transaction": [abortable()], "abort_transaction": [Hang()]}, c
    )
    with pytest.raises(RetryBatch):
        s.send(batch())
    assert s.replaced == 1 and sorted(c.seeks) == FIRST
    assert outcomes(m) == {"retried": 0, "aborted": 0, "producer_replaced": 1}


@pytest.mark.parametrize("call", ["list_topics", "poll"])
def test_a_call_that_hangs_while_waiting_for_the_broker_replaces_the_producer(
    producers: FakeTxnProducers, call: str
) -> None:
    """The calls made while the sink waits for the broker (``poll``, ``list_topics``)
    are bounded too: one blocked for good (as a transactional call can be after an
    outage) no longer leaves the worker silent until it is killed."""
    hang = Hang()
    c = FakeTxnConsumer(FIRST_OFFSETS)
    script: dict[str, list[Outcome]] = {"send_offsets_to_transaction": [timed_out()], call: [hang]}
    s, m = hanging_sink(producers, script, c)
    t0 = time.monotonic()
    with pytest.raises(RetryBatch, match=f"{call} still blocked"):
        s.send(batch())
    assert time.monotonic() - t0 < 5  # bounded by the grace, not by the hang
    assert hang.entered.is_set() and not hang.release.is_set()  # still blocked
    old, new = producers.made
    assert s.producer is new and new.calls == ["init_transactions"]
    assert "abort_transaction" not in old.calls  # left to its thread
    assert sorted(c.seeks) == FIRST
    assert outcomes(m) == {"retried": 0, "aborted": 0, "producer_replaced": 1}


def test_a_long_wait_for_the_broker_says_how_it_goes(caplog: pytest.LogCaptureFixture) -> None:
    """Every 30 s of waiting, one line: how long, how many requests, the last error."""
    s, _p, _c = sink(
        {"commit_transaction": [timed_out()], "list_topics": [broker_away()] * 40},
        retry_s=120.0,
    )
    with (
        caplog.at_level(logging.INFO, logger="streamscore.kafka.delivery"),
        pytest.raises(RetryBatch),
    ):
        s.send(batch())
    lines = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert 2 <= len(lines) <= 3, lines  # 90 s of waiting (the commit took the first 30)
    assert all("retry commit_transaction" in x and "last: " in x for x in lines)
    assert "metadata requests" in lines[-1] and "_TRANSPORT" in lines[-1]


def test_hung_init_transactions_is_replaced_at_start(producers: FakeTxnProducers) -> None:
    s, _m = hanging_sink(producers, {"init_transactions": [Hang()]}, FakeTxnConsumer())
    assert s.replaced == 1 and producers.made[1].calls == ["init_transactions"]


def test_producers_that_keep_hanging_end_in_a_clear_fatal_error(
    producers: FakeTxnProducers,
) -> None:
    producers.scripts.extend({"init_transactions": [Hang()]} for _ in range(MAX_HUNG_PRODUCERS))
    with pytest.raises(TransactionFailedError, match="producers hung"):
        hanging_sink(producers, {"init_transactions": [Hang()]}, FakeTxnConsumer())
    assert len(producers.made) == MAX_HUNG_PRODUCERS + 1


def test_a_hang_without_a_producer_factory_is_a_clear_fatal_error(
    producers: FakeTxnProducers,
) -> None:
    c = FakeTxnConsumer(FIRST_OFFSETS)
    s, _m = hanging_sink(producers, {"send_offsets_to_transaction": [Hang()]}, c, replace=False)
    with pytest.raises(TransactionFailedError, match="no producer to replace it with"):
        s.send(batch())
    assert c.seeks == []


def test_rewind_skips_a_partition_no_longer_assigned() -> None:
    clock = FakeClock()
    p = FakeTxnProducer(clock, {"commit_transaction": [abortable()]})
    c = FakeTxnConsumer(lost=[("events", 1)])
    s = TransactionalSink(p, c, clock=clock)
    with pytest.raises(RetryBatch):
        s.send(batch())
    assert c.seeks == [("events", 0, 10)]  # partition 1's next owner starts at its commit


def test_an_outage_is_counted_and_logged_once_when_it_starts_and_once_when_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    p = FakeTxnProducer(
        clock, {"commit_transaction": [timed_out(), timed_out()], "list_topics": [broker_away()]}
    )
    metrics = Metrics(CollectorRegistry(), "score")
    s = TransactionalSink(p, FakeTxnConsumer(), clock=clock, metrics=metrics)
    with caplog.at_level(logging.INFO, logger="streamscore.kafka.delivery"):
        s.send(batch())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "commit_transaction failed" in warnings[0] and "waiting up to 240s" in warnings[0]
    assert "trouble over after" in warnings[1] and warnings[1].endswith("committed")
    assert outcomes(metrics) == {"retried": 2, "aborted": 0, "producer_replaced": 0}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="streamscore.kafka.delivery"):
        s.send(batch())  # a healthy batch logs nothing
    assert caplog.records == []


def test_an_aborted_batch_is_counted() -> None:
    clock = FakeClock()
    p = FakeTxnProducer(clock, {"commit_transaction": [abortable()]})
    metrics = Metrics(CollectorRegistry(), "score")
    s = TransactionalSink(p, FakeTxnConsumer(), clock=clock, metrics=metrics)
    with pytest.raises(RetryBatch):
        s.send(batch())
    assert outcomes(metrics)["aborted"] == 1


def test_the_consumer_stays_in_its_group_for_as_long_as_a_batch_can_wait() -> None:
    eos = score_consumer(KafkaSettings(), ScoringSettings(exactly_once=True, eos_retry_s=240))
    assert eos["max.poll.interval.ms"] >= 1000 * send_bound_s(240) > 300_000
    alo = score_consumer(KafkaSettings(), ScoringSettings())
    assert "max.poll.interval.ms" not in alo  # librdkafka's default (300 s)


def test_a_fatal_abort_after_an_outage_replaces_the_producer(
    producers: FakeTxnProducers,
) -> None:
    """Seen on the real broker: send_offsets timed out while it was away; once it was
    back, the coordinator had already aborted the transaction and abort_transaction
    failed with a fatal INVALID_TXN_STATE. Not a fencing: a new producer with the same
    transactional.id takes over and the batch is consumed again."""
    invalid_state = kafka_exception(KafkaError.INVALID_TXN_STATE, fatal=True)
    c = FakeTxnConsumer(FIRST_OFFSETS)
    s, m = hanging_sink(
        producers,
        {"send_offsets_to_transaction": [timed_out()], "abort_transaction": [invalid_state]},
        c,
    )
    with pytest.raises(RetryBatch, match="abort_transaction failed fatally"):
        s.send(batch())
    old, new = producers.made
    assert s.producer is new and s.replaced == 1
    assert new.calls == ["init_transactions"]
    assert old.calls.count("abort_transaction") == 1  # not called again on a dead producer
    assert sorted(c.seeks) == FIRST
    assert outcomes(m)["producer_replaced"] == 1
    s.send(batch())
    assert new.calls[-1] == "commit_transaction"


def test_a_fenced_producer_is_never_replaced(producers: FakeTxnProducers) -> None:
    """Fenced: another instance owns the transactional.id now; a new producer would fence
    it in turn. The worker exits instead."""
    c = FakeTxnConsumer(FIRST_OFFSETS)
    s, m = hanging_sink(producers, {"commit_transaction": [fenced()]}, c)
    with pytest.raises(TransactionFailedError, match="fatally"):
        s.send(batch())
    assert len(producers.made) == 1 and s.replaced == 0
    assert c.seeks == [] and outcomes(m)["producer_replaced"] == 0
