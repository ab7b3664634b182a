"""The join state's changelog: end offsets looked up while a partition's leadership moves
(a changelog topic just created, a leader election) are retried, not raised out of the
rebalance callback that asks for them."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streamscore.kafka.changelog import Changelog

from .kafka_fakes import kafka_exception


class MovingLeader:
    """A restore reader whose first ``fails`` lookups meet ``code``."""

    def __init__(self, fails: int, code: int) -> None:
        self.fails, self.code, self.calls = fails, code, 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.calls <= self.fails:
            raise kafka_exception(self.code)
        return (0, 42 + tp.partition)


def changelog(reader: Any, timeout_s: float = 30.0) -> Changelog:
    c = Changelog(producer=_NoTransactions(), restore_conf={}, timeout_s=timeout_s)
    c._reader = reader  # the restore reader, connected lazily otherwise
    return c


class _NoTransactions:
    def init_transactions(self, timeout: float) -> None:
        pass


def test_end_offsets_are_retried_while_the_leader_moves() -> None:
    reader = MovingLeader(fails=3, code=KafkaError.NOT_LEADER_FOR_PARTITION)
    c = changelog(reader)
    c.look_up_ends([("g.join", 0), ("g.join", 1)])
    assert c._ends == {("g.join", 0): (0, 42), ("g.join", 1): (0, 43)}
    assert reader.calls == 5  # three refused, then one per partition


def test_other_errors_and_a_leader_that_never_comes_raise() -> None:
    with pytest.raises(KafkaException):
        changelog(MovingLeader(fails=1, code=KafkaError.TOPIC_AUTHORIZATION_FAILED)).look_up_ends(
            [("g.join", 0)]
        )
    never = MovingLeader(fails=10**6, code=KafkaError.LEADER_NOT_AVAILABLE)
    with pytest.raises(KafkaException):
        changelog(never, timeout_s=0.3).look_up_ends([("g.join", 0)])
    assert 2 <= never.calls < 20  # backed off, bounded by the timeout
