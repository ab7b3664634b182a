"""Fake Kafka clients and records for the thin loops without a broker: the one set used by
the unit tests (score loop, feedback loop and router, delivery) and benchmarks/hotpath.py.

Importable without pytest (the benchmarks import it too)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

from confluent_kafka import TopicPartition

# the prediction records both test tiers build (defined once, in tests/records.py)
from tests.records import DETAIL_FIELDS, nest_detail, prediction_record  # noqa: F401


class FakeMessage:
    """What the loops read of a ``confluent_kafka.Message``."""

    __slots__ = (
        "_error",
        "_headers",
        "_key",
        "_offset",
        "_partition",
        "_timestamp_ms",
        "_topic",
        "_value",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 1_700_000_000_000,
        error: Any = None,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._value, self._key, self._headers = value, key, headers
        self._timestamp_ms, self._error = timestamp_ms, error

    def error(self) -> Any:
        return self._error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp_ms)


def _triples(offsets: Sequence[Any]) -> list[tuple[str, int, int]]:
    return [(tp.topic, tp.partition, tp.offset) for tp in offsets]


class FakeConsumer:
    """Hands out ``batches`` one per ``consume`` (the next one is held back while a
    partition of it is paused); once they run out it sets ``stop`` when given one.
    ``on_consume(n)`` runs at the n-th ``consume`` call (tests stop or change the world
    from there). Records subscriptions, seeks, stored offsets and commits (``None`` for a
    commit of the stored offsets). ``assignment`` is ``partitions`` of ``topic``; every
    ``position`` is ``position`` and every high watermark ``high_watermark``."""

    def __init__(
        self,
        batches: list[list[FakeMessage]] | None = None,
        stop: threading.Event | None = None,
        *,
        on_consume: Callable[[int], None] | None = None,
        topic: str = "events",
        partitions: Sequence[int] = (0, 1),
        position: int = 5,
        high_watermark: int = 12,
    ) -> None:
        self.batches = batches if batches is not None else []
        self.stop = stop
        self.on_consume = on_consume
        self.topic, self.partitions = topic, list(partitions)
        self._position, self._high = position, high_watermark
        self.calls = 0
        self.subscribed: list[str] = []
        self.callbacks: dict[str, Any] = {}
        self.paused: set[int] = set()
        self.paused_polls = 0
        self.seeks: list[tuple[str, int, int]] = []
        self.stored: list[list[tuple[str, int, int]]] = []
        self.commits: list[list[tuple[str, int, int]] | None] = []
        self.assigned: list[tuple[str, int, int]] = []
        self.closed = False

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.subscribed = topics
        self.callbacks = callbacks

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        self.calls += 1
        if self.on_consume is not None:
            self.on_consume(self.calls)
        if self.paused:
            self.paused_polls += 1  # a poll that keeps a paused member in its group
        if not self.batches:
            if self.stop is not None:
                self.stop.set()
            return []
        if self.paused and any(m.partition() in self.paused for m in self.batches[0]):
            return []
        return self.batches.pop(0)

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in self.partitions]

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in tps}

    def resume(self, tps: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in tps}

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in tps]

    def committed(self, tps: list[TopicPartition], timeout: float = 10) -> list[TopicPartition]:
        """The last commit of each (``commits``); none yet: OFFSET_INVALID (-1001)."""
        done = {(t, p): o for c in self.commits if c for t, p, o in c}
        return [TopicPartition(tp.topic, tp.partition, done.get((tp.topic, tp.partition), -1001))
                for tp in tps]  # fmt: skip

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self._position) for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, **_kw: Any) -> tuple[int, int]:
        return (0, self._high)

    def store_offsets(self, offsets: Sequence[Any] | None = None, **_kw: Any) -> None:
        self.stored.append(_triples(offsets or []))

    def commit(self, offsets: Sequence[Any] | None = None, asynchronous: bool = True) -> None:
        self.commits.append(None if offsets is None else _triples(offsets))

    def close(self) -> None:
        self.closed = True


class FakeSink:
    """An output sink (``AtLeastOnceSink``'s interface) that keeps what it is sent; the
    test sets ``backlog`` (messages waiting in the producer queue)."""

    def __init__(self) -> None:
        self.backlog = 0
        self.sent: list[Any] = []
        self.drains = 0
        self.discards = 0

    def send(self, batch: Any) -> None:
        self.sent.append(batch)

    def poll(self, timeout: float = 0) -> None:
        pass

    def drain(self, timeout: float = 30.0, *, commit: bool = True) -> None:
        self.drains += 1

    def discard(self) -> None:
        self.discards += 1


class FlakyRegistry:
    """A schema registry client that is away (HTTP ``status``) for its first ``down``
    lookups, then answers as ``inner`` (e.g. confluent's ``mock://`` registry)."""

    def __init__(self, inner: Any, *, down: int = 1, status: int = 503) -> None:
        self.inner, self.down, self.status = inner, down, status
        self.lookups = 0

    def get_schema(self, schema_id: int) -> Any:
        self.lookups += 1
        if self.down > 0:
            self.down -= 1
            exc = Exception(f"registry answered {self.status}")
            exc.http_status_code = self.status  # type: ignore[attr-defined]
            raise exc
        return self.inner.get_schema(schema_id)

    def register_schema(self, subject_name: str, schema: Any) -> int:
        return int(self.inner.register_schema(subject_name, schema))

    def get_subjects(self) -> list[str]:
        return list(self.inner.get_subjects())


def kafka_exception(
    code: int,
    *,
    retriable: bool = False,
    abortable: bool = False,
    fatal: bool = False,
) -> Exception:
    """A ``KafkaException`` as the transactional API raises it (a real ``KafkaError``)."""
    from confluent_kafka import KafkaError, KafkaException

    return KafkaException(
        KafkaError(
            code,
            f"fake {code}",
            fatal=fatal,
            retriable=retriable,
            txn_requires_abort=abortable,
        )
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Hang:
    """A scripted outcome: the call blocks (in real time) until ``release`` is set, as
    librdkafka's ``send_offsets_to_transaction`` can, past any timeout."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()


Outcome = Exception | Hang | None


class FakeTxnProducer:
    """A transactional producer whose calls fail as scripted: ``script[name]`` is a list
    of outcomes, one per call (an exception to raise, a :class:`Hang`, or ``None`` for
    success; calls past the end succeed). A call that raises takes ``blocks_s`` of the
    fake clock (the timeout it waited; 1 s for a metadata request), ``poll`` advances the
    clock by its timeout."""

    def __init__(self, clock: FakeClock, script: dict[str, list[Outcome]] | None = None) -> None:
        self.clock = clock
        self.script = script or {}
        self.calls: list[str] = []
        self.produced: list[tuple[str, Any, Any]] = []
        self.waits: list[float] = []
        self.blocks_s = 30.0
        self.flushed = 0

    def _outcome(self, name: str) -> None:
        self.calls.append(name)
        todo = self.script.get(name, [])
        if todo:
            exc = todo.pop(0)
            if isinstance(exc, Hang):
                exc.entered.set()
                exc.release.wait(30)
            elif exc is not None:
                self.clock.now += 1.0 if name == "list_topics" else self.blocks_s
                raise exc

    def init_transactions(self, timeout: float) -> None:
        self._outcome("init_transactions")

    def begin_transaction(self) -> None:
        self._outcome("begin_transaction")

    def send_offsets_to_transaction(self, offsets: Any, group: Any, timeout: float) -> None:
        self._outcome("send_offsets_to_transaction")

    def commit_transaction(self, timeout: float) -> None:
        self._outcome("commit_transaction")

    def abort_transaction(self, timeout: float) -> None:
        self._outcome("abort_transaction")

    def list_topics(self, timeout: float) -> Any:
        """Metadata: scripted under ``"list_topics"`` (a failure = the broker away)."""
        self._outcome("list_topics")
        return _Metadata()

    def produce(self, topic: str, value: Any, key: Any, *_args: Any, **_kw: Any) -> None:
        self.produced.append((topic, key, value))

    def poll(self, timeout: float = 0) -> int:
        """Waits ``timeout`` of the fake clock; a :class:`Hang` scripted under ``"poll"``
        blocks (not recorded in ``calls``: the loops poll between any two calls)."""
        todo = self.script.get("poll")
        if todo:
            hang = todo.pop(0)
            if isinstance(hang, Hang):
                hang.entered.set()
                hang.release.wait(30)
        if timeout:
            self.waits.append(timeout)
            self.clock.now += timeout
        return 0

    def flush(self, timeout: float = 0) -> int:
        self.flushed += 1
        return 0

    def __len__(self) -> int:
        return 0


class FakeTxnProducers:
    """A factory of :class:`FakeTxnProducer` on one clock (what the CLI gives a
    ``TransactionalSink`` to replace a hung producer): the n-th one made follows
    ``scripts[n]`` (none past the end); ``made`` holds them all, the first included."""

    def __init__(self, clock: FakeClock, *scripts: dict[str, list[Outcome]]) -> None:
        self.clock = clock
        self.scripts = list(scripts)
        self.made: list[FakeTxnProducer] = []

    def __call__(self) -> FakeTxnProducer:
        n = len(self.made)
        p = FakeTxnProducer(self.clock, self.scripts[n] if n < len(self.scripts) else None)
        self.made.append(p)
        return p

    def release(self) -> None:
        """Let every hung call return (test teardown: no thread left blocked)."""
        for p in self.made:
            for todo in p.script.values():
                for o in todo:
                    if isinstance(o, Hang):
                        o.release.set()


class _Metadata:
    brokers = {1: "127.0.0.1:9092"}


class FakeTxnConsumer:
    """What a ``TransactionalSink`` uses of the consumer: group metadata, ``seek`` and
    ``committed`` (``committed_offsets`` per (topic, partition); none committed: -1001;
    ``committed_failures`` calls fail first, as while the coordinator is away). A seek
    of a partition in ``lost`` fails, as for a partition no longer assigned."""

    def __init__(
        self,
        committed_offsets: dict[tuple[str, int], int] | None = None,
        *,
        committed_failures: int = 0,
        lost: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.seeks: list[tuple[str, int, int]] = []
        self.committed_offsets = committed_offsets or {}
        self.committed_failures = committed_failures
        self.committed_calls = 0
        self.lost = set(lost)

    def consumer_group_metadata(self) -> object:
        return object()

    def seek(self, tp: Any) -> None:
        if (tp.topic, tp.partition) in self.lost:
            raise kafka_exception(-190)  # _UNKNOWN_PARTITION
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def committed(self, tps: Sequence[Any], timeout: float = 0) -> list[TopicPartition]:
        self.committed_calls += 1
        if self.committed_failures:
            self.committed_failures -= 1
            raise kafka_exception(-185, retriable=True)  # _TIMED_OUT
        return [
            TopicPartition(
                tp.topic, tp.partition, self.committed_offsets.get((tp.topic, tp.partition), -1001)
            )
            for tp in tps
        ]


class FakeAdmin:
    """The ``AdminClient`` calls of the start check (:mod:`streamscore.kafka.access`):
    ``describe_topics`` answers each of ``topics`` with its authorized operations (all),
    any other topic with UNKNOWN_TOPIC_OR_PART, as a broker does; groups are allowed."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = set(topics)
        self.described: list[str] = []

    def __call__(self, conf: dict[str, Any]) -> FakeAdmin:  # stands in for the class
        return self

    @staticmethod
    def _done(result: Any = None, error: BaseException | None = None) -> Future[Any]:
        fut: Future[Any] = Future()
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
        return fut

    def describe_topics(self, topics: Any, **_kw: Any) -> dict[str, Future[Any]]:
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import AclOperation  # type: ignore[attr-defined]

        out: dict[str, Future[Any]] = {}
        for name in topics.topic_names:
            self.described.append(name)
            if name in self.topics:
                found = SimpleNamespace(name=name, authorized_operations=[AclOperation.ALL])
                out[name] = self._done(found)
            else:
                out[name] = self._done(error=kafka_exception(KafkaError.UNKNOWN_TOPIC_OR_PART))
        return out

    def describe_consumer_groups(self, groups: list[str], **_kw: Any) -> dict[str, Future[Any]]:
        from confluent_kafka.admin import AclOperation  # type: ignore[attr-defined]

        found = SimpleNamespace(authorized_operations=[AclOperation.READ])
        return {g: self._done(found) for g in groups}

    def poll(self, timeout: float) -> int:
        return 0


class FakeChangelog:
    """The join state's changelog topic as Kafka holds it, for the feedback loop
    (:class:`~streamscore.kafka.changelog.Changelog`'s methods). Each commit appends every
    partition's records, then takes one more offset per partition for the transaction's
    commit marker, and keeps the consumed offsets with them; the next ``abort_next``
    commits abort instead (nothing kept). :meth:`compact` keeps the last record of each
    key, as log compaction does. :meth:`restore` applies a partition's records after the
    store's changelog offset. Each is atomic, as the broker's log is: commits run on the
    loop's checkpoint thread, meanwhile the test compacts and restores."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.logs: dict[tuple[str, int], list[tuple[int, bytes | None, bytes | None]]] = {}
        #: the next offset of each partition (its high watermark)
        self.ends: dict[tuple[str, int], int] = {}
        #: the join consumer's offsets, as the transactions committed them
        self.offsets: dict[tuple[str, int], int] = {}
        self.abort_next = 0
        self.commits = self.aborts = 0

    def look_up_ends(self, _tps: Any) -> None:
        pass

    def commit(
        self,
        changes: dict[tuple[str, int], list[tuple[bytes, bytes | None]]],
        offsets: dict[tuple[str, int], int],
        _group: Any,
    ) -> dict[tuple[str, int], int]:
        from streamscore.kafka.changelog import TransactionAborted

        if self.abort_next:
            self.abort_next -= 1
            self.aborts += 1
            raise TransactionAborted("checkpoint aborted (test)")
        last: dict[tuple[str, int], int] = {}
        with self._lock:
            for tp, recs in changes.items():
                log = self.logs.setdefault(tp, [])
                end = self.ends.get(tp, 0)
                for key, value in recs:
                    log.append((end, key, value))
                    end += 1
                last[tp] = end - 1
                self.ends[tp] = end + 1  # the commit marker
            self.offsets.update(offsets)
            self.commits += 1
        return last

    def compact(self) -> None:
        with self._lock:
            for tp, log in self.logs.items():
                latest = {key: off for off, key, _v in log}
                self.logs[tp] = [r for r in log if latest[r[1]] == r[0]]

    def restore(self, state: Any, join_topic: str, partition: int) -> int:
        from streamscore.core.errors import StateStoreError

        tp = (join_topic, partition)
        with self._lock:
            end, log = self.ends.get(tp, 0), list(self.logs.get(tp, []))
        if state.meta.changelog_offset >= end:
            raise StateStoreError(f"local join state of {tp} is beyond its changelog's end")
        after = [r for r in log if r[0] > state.meta.changelog_offset]
        return state.restore(iter(after)) if after else 0

    def close(self) -> None:
        pass


def feedback_loop(
    registry: Any,
    consumer: Any,
    store: Any,
    metrics: Any,
    stop: threading.Event,
    *,
    window_ms: int,
    heads: bool = False,
    **kw: Any,
) -> Any:
    """A join loop wired as the worker wires it (``streamscore feedback``): the writer
    schemas from ``registry``, predictions decoded with the v3/v2 layouts (and, with
    ``heads``, checked and held by their head fields), labels with the feedback schema."""
    from streamscore.core.records import Prediction
    from streamscore.feedback.join import JoinState
    from streamscore.feedback.loop import PREDICTION_HEAD, FeedbackLoop
    from streamscore.feedback.promotion import LiveQuality
    from streamscore.serde import schemas
    from streamscore.serde.message import AvroDeserializer, LayoutDeserializer
    from streamscore.serde.record_heads import HeadReader
    from streamscore.serde.wire import WriterSchemaCache

    cache = WriterSchemaCache(registry)
    decode_pred = LayoutDeserializer(
        cache, schemas.load("prediction"), schemas.load("prediction", 2), "detail"
    )
    if heads:
        kw["read_heads"] = HeadReader(
            schemas.load("prediction"), PREDICTION_HEAD, lambda sid: cache.get(sid)[0]
        )
    return FeedbackLoop(
        consumer=consumer,
        join_topic=consumer.topic,
        decode_prediction=decode_pred,
        decode_feedback=AvroDeserializer(cache, schemas.load("feedback")),
        join=JoinState(
            window_ms,
            already_written=store.contains,
            decode_prediction=lambda raw: Prediction.from_avro(decode_pred(raw)),
        ),
        store=store,
        metrics=metrics,
        quality=LiveQuality(metrics),
        stop=stop,
        **kw,
    )
