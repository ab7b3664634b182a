"""Exactly-once delivery while the broker is away: which transactional errors are
retried (once a broker answers again), when the transaction is aborted and the batch
rewound, and when the worker must give up."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError

from streamscore.core.errors import StreamscoreError, TransactionFailedError
from streamscore.kafka.delivery import OutBatch, OutMessage, RetryBatch, TransactionalSink

from .kafka_fakes import FakeClock, FakeTxnConsumer, FakeTxnProducer, kafka_exception

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
    script: dict[str, list[Exception | None]],
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
