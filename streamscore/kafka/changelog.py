"""The join state's changelog topics: one compacted topic per join topic, one changelog
partition per join partition (``<join topic>.changelog``).

:class:`Changelog` writes each checkpoint's state changes and the join consumer's offsets
in **one Kafka transaction** (:meth:`Changelog.commit`), so the committed offsets and the
committed state always match: a crash before the commit aborts both (the next owner
resumes from the previous checkpoint, state and offsets alike), a crash after it loses
nothing. :meth:`Changelog.restore` reads a partition's committed records
(``read_committed``: aborted checkpoints are never seen) after the offset a local store
has reached (or from the start, on a fresh host) and applies them to it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ..core.config import KafkaSettings
from ..core.errors import KafkaIOError, StateStoreError

log = logging.getLogger(__name__)

TP = tuple[str, int]
#: a changelog record read back: (offset, key, value; None: a tombstone)
Record = tuple[int, bytes | None, bytes | None]


class _Position(Protocol):
    changelog_offset: int  # the last changelog offset the store has applied (-1: none)


class Restorable(Protocol):
    """A store a changelog partition restores (the feedback join's
    :class:`~streamscore.feedback.state.PartitionState`)."""

    @property
    def meta(self) -> _Position: ...

    def restore(self, records: Iterable[Record]) -> int:
        """Apply ``records`` (in offset order) and record the last offset; how many."""
        ...


#: errors of a watermark lookup while a partition's leadership moves (retried)
_MOVING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)

#: the changelog topics' configuration: compacted, tombstones kept a day
CHANGELOG_CONFIG = {
    "cleanup.policy": "compact",
    "delete.retention.ms": str(86_400_000),
    "min.compaction.lag.ms": "0",
    "segment.bytes": str(64 << 20),
}


class TransactionAborted(KafkaIOError):
    """The checkpoint's transaction was aborted: state and offsets roll back together."""

    reason = "transaction_aborted"


#: records produced between two polls of a checkpoint's transaction: librdkafka keeps a
#: delivered record (a copy of it, ~600 bytes) until its delivery report is served, so
#: without polls a checkpoint of 50,000 changes held all of them until the final flush
POLL_EVERY = 2_000


def changelog_topic_for(join_topic: str) -> str:
    return f"{join_topic}.changelog"


def transactional_producer(
    kafka: KafkaSettings, transactional_id: str, *, max_message_bytes: int | None = None
) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "transactional.id": transactional_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "transaction.timeout.ms": 60_000,
        "queue.buffering.max.messages": 1_000_000,
    }
    if max_message_bytes is not None:
        conf["message.max.bytes"] = max_message_bytes + 65_536
    return kafka.config("producer", conf)


def restore_consumer(kafka: KafkaSettings, group_id: str) -> dict[str, Any]:
    """Assign-only reader of changelog partitions (committed records only)."""
    return kafka.config(
        "consumer",
        {
            "group.id": f"{group_id}.restore",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 52_428_800,
            # the broker answers at once: at the end of a partition (often nothing but a
            # commit marker after the local store's offset) a fetch would otherwise be
            # held for its default 500 ms, per partition restored
            "fetch.wait.max.ms": 10,
        },
    )


class Changelog:
    def __init__(
        self,
        producer: Any,
        restore_conf: Mapping[str, Any],
        *,
        timeout_s: float = 30.0,
        restore_timeout_s: float = 600.0,
    ) -> None:
        self._p = producer
        self._restore_conf = dict(restore_conf)
        self._timeout = timeout_s
        self._restore_timeout = restore_timeout_s
        self._reader: Any = None
        #: changelog end offsets looked up ahead (:meth:`look_up_ends`), used once each
        self._ends: dict[TP, tuple[int, int]] = {}
        self._p.init_transactions(timeout_s)

    @classmethod
    def connect(cls, kafka: KafkaSettings, group_id: str, worker_id: str) -> Changelog:
        return cls(
            Producer(transactional_producer(kafka, f"{group_id}.{worker_id}")),
            restore_consumer(kafka, group_id),
        )

    def commit(
        self,
        changes: Mapping[TP, Sequence[tuple[bytes, bytes | None]]],
        offsets: Mapping[TP, int],
        group_metadata: Any,
    ) -> dict[TP, int]:
        """One transaction: every partition's changes, then the consumer's offsets.
        Each partition's records end with the one whose offset is its position (the
        join state's meta record); returns that offset for each partition."""
        p = self._p
        last: dict[TP, int] = {}
        failed: list[KafkaError] = []

        def delivered(err: KafkaError | None, msg: Any, tp: TP) -> None:
            if err is not None:
                failed.append(err)
            else:
                last[tp] = msg.offset()

        try:
            p.begin_transaction()
            n = 0
            for tp, recs in changes.items():
                topic = changelog_topic_for(tp[0])
                last_i = len(recs) - 1
                for i, (key, value) in enumerate(recs):
                    cb = (lambda e, m, tp=tp: delivered(e, m, tp)) if i == last_i else None
                    while True:
                        try:
                            p.produce(topic, value, key, partition=tp[1], on_delivery=cb)
                            break
                        except BufferError:
                            p.poll(0.05)
                    n += 1
                    if n % POLL_EVERY == 0:
                        p.poll(0)  # delivery reports served: their records freed
            if offsets:
                p.send_offsets_to_transaction(
                    [TopicPartition(t, part, off) for (t, part), off in offsets.items()],
                    group_metadata,
                    self._timeout,
                )
            if p.flush(self._timeout):
                raise KafkaIOError("changelog records not acknowledged in time")
            if failed:
                raise KafkaIOError(f"changelog write failed: {failed[0]}")
            p.commit_transaction(self._timeout)
        except (KafkaException, KafkaIOError) as exc:
            self._abort(exc)
        missing = [tp for tp in changes if tp not in last]
        if missing:
            raise StateStoreError(f"no changelog offset for {missing}")
        return last

    def _abort(self, exc: Exception) -> None:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is not None and err.fatal():
            raise KafkaIOError(f"changelog producer fenced or failed: {err}") from exc
        try:
            self._p.abort_transaction(self._timeout)
        except KafkaException as abort_exc:
            raise KafkaIOError(f"could not abort the checkpoint: {abort_exc}") from exc
        raise TransactionAborted(f"checkpoint aborted: {exc}") from exc

    def _consumer(self) -> Any:
        if self._reader is None:  # one reader for every partition (connecting takes ~1 s)
            self._reader = Consumer(self._restore_conf)
        return self._reader

    def look_up_ends(self, join_partitions: Sequence[TP]) -> None:
        """Ask for the changelog offsets of every newly assigned join partition before
        any is restored: a few ms each this way, where a lookup right after the previous
        partition's restore waited about a second for the reader to settle."""
        c = self._consumer()
        self._ends.clear()  # never an end looked up for an earlier assignment
        for join_topic, partition in join_partitions:
            tp = TopicPartition(changelog_topic_for(join_topic), partition)
            self._ends[(join_topic, partition)] = self._watermarks(c, tp)

    def _watermarks(self, c: Any, tp: TopicPartition) -> tuple[int, int]:
        """A changelog partition's low and high offsets. What a lookup meets while
        leadership moves (a topic just created, a broker restarting, a leader election)
        is retried with a backoff, up to the client timeout; then it raises."""
        deadline = time.monotonic() + self._timeout
        delay = 0.05
        while True:
            try:
                lo, hi = c.get_watermark_offsets(tp, timeout=max(0.5, deadline - time.monotonic()))
                return int(lo), int(hi)
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                transient = err is not None and (err.retriable() or err.code() in _MOVING)
                if not transient or time.monotonic() + delay > deadline:
                    raise
                log.info("changelog %s[%d] end offsets: %s (retried)", tp.topic, tp.partition, err)
                time.sleep(delay)
                delay = min(2 * delay, 1.0)

    def restore(self, state: Restorable, join_topic: str, partition: int) -> int:
        """Bring ``state`` up to the end of its changelog partition; returns the number of
        records applied. A local store ahead of the changelog (a topic recreated) is an
        error: the caller wipes it and restores from scratch."""
        topic = changelog_topic_for(join_topic)
        c = self._consumer()
        try:
            ends = self._ends.pop((join_topic, partition), None)
            if ends is None:
                ends = self._watermarks(c, TopicPartition(topic, partition))
            lo, hi = ends
            if state.meta.changelog_offset >= hi:
                raise StateStoreError(
                    f"local join state of {join_topic}[{partition}] is at changelog offset "
                    f"{state.meta.changelog_offset}, beyond the changelog's end {hi}"
                )
            start = max(state.meta.changelog_offset + 1, lo)
            if start >= hi:
                return 0
            c.assign([TopicPartition(topic, partition, start)])
            return state.restore(self._records(c, hi))
        finally:
            with contextlib.suppress(KafkaException):
                c.unassign()

    def _records(self, c: Any, hi: int) -> Iterator[Record]:
        deadline = time.monotonic() + self._restore_timeout
        while time.monotonic() < deadline:
            # a short wait: consume() returns when the batch is full or the wait is over,
            # and a changelog read to its end often holds no record at all after the
            # store's offset (only the last transaction's commit marker), so the end of
            # the partition is a wait, not a record count (0.5 s waits cost 1 s each)
            for m in c.consume(10_000, 0.05):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return
                    raise KafkaIOError(f"changelog read failed: {err}")
                off = m.offset()
                yield off, m.key(), m.value()
                if off + 1 >= hi:
                    return
        raise KafkaIOError(f"changelog restore did not finish in {self._restore_timeout:.0f}s")

    def close(self) -> None:
        self._p.flush(self._timeout)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
