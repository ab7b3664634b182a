"""Getting a batch's outputs to the broker, and its offsets committed, per guarantee.

``AtLeastOnceSink``: outputs are produced asynchronously, only failures are reported;
consumed offsets are stored (and then auto-committed) at checkpoints, once every output
produced so far is acknowledged. ``TransactionalSink``: one transaction per batch holds
the outputs and the consumed offsets (``send_offsets_to_transaction``).

One concern, hence its length: delivery under the two guarantees, including the
exactly-once side's retries and hung-call recovery through a broker outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from ..core.errors import DeliveryError, TransactionFailedError
from ..metrics.series import Metrics
from .access import access_error
from .headers import RowHeaders
from .output_limits import wire_size

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutMessage:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


@dataclass(slots=True)
class _Refusal:
    """The first output the broker did not take: what it said, and the topic (an access
    failure is reported as one)."""

    why: str
    err: Any
    topic: str | None


#: Many messages to one topic: ``(topic, [(key, value), ...], headers)``, ``headers``
#: None (no headers) or theirs, one record each (:class:`RowHeaders`).
Bulk = tuple[str, Sequence[tuple[bytes | None, bytes | None]], RowHeaders | None]

#: Called with an output that the producer (in ``produce()``) or the broker (in its
#: delivery report) refused as too large; returns what to produce in its place (its
#: source message dead-lettered, cut to fit), or None when nothing can replace it.
TooLarge = Callable[[OutMessage], OutMessage | None]


@dataclass(slots=True)
class OutBatch:
    messages: Sequence[OutMessage]
    #: next offset to consume per (topic, partition): what a commit records
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: first offset of the batch per (topic, partition): where an aborted batch restarts
    first_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: outputs given column-wise (the predictions: no per-message object on the hot
    #: path); produced before ``messages`` and acknowledged like them
    bulk: Sequence[Bulk] = ()
    #: what to produce instead of an output refused as too large (None: the refusal
    #: is an error like any other)
    on_too_large: TooLarge | None = None

    def topic_partitions(self) -> list[TopicPartition]:
        return _topic_partitions(self.offsets)

    @property
    def n_outputs(self) -> int:
        """Every output of the batch (``messages`` and ``bulk``)."""
        return len(self.messages) + sum(len(pairs) for _topic, pairs, _h in self.bulk)

    def outputs(self) -> list[OutMessage]:
        """Every output as one message each, in the order they are produced (``bulk``,
        then ``messages``): to look at a batch (tests, logs), not for the hot path."""
        out: list[OutMessage] = []
        for topic, pairs, headers in self.bulk:
            lists = [None] * len(pairs) if headers is None else list(headers)
            out += [OutMessage(topic, k, v, h) for (k, v), h in zip(pairs, lists, strict=True)]
        return out + list(self.messages)


def _topic_partitions(offsets: dict[tuple[str, int], int]) -> list[TopicPartition]:
    """What a commit records: the next offset per (topic, partition), in order."""
    return [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]


def _is_too_large(err: Any) -> bool:
    code = getattr(err, "code", None)
    return callable(code) and code() == KafkaError.MSG_SIZE_TOO_LARGE


#: How many times in a row an output may be replaced (a dead letter refused again is
#: cut again, to a lower limit each time: a few steps get below any real limit)
MAX_REPLACEMENTS = 32


def _replacement(m: OutMessage, on_too_large: TooLarge | None) -> OutMessage | None:
    """What to produce instead of ``m``, refused as too large (never ``m`` again)."""
    if on_too_large is None:
        return None
    repl = on_too_large(m)
    if repl is None or (repl.topic, repl.key, repl.value) == (m.topic, m.key, m.value):
        return None
    log.warning(
        "output of %d bytes refused by %s as too large: produced to %s instead",
        wire_size(m.key, m.value, m.headers),
        m.topic,
        repl.topic,
    )
    return repl


def _raise_if_refused(exc: KafkaException, topic: str) -> None:
    """``produce()`` refused the output for a missing ACL (the producer knows it from the
    topic's metadata): the clear :class:`AccessError` instead."""
    refused = access_error(None, exc.args[0] if exc.args else None, topic=topic)
    if refused is not None:
        raise refused from None


def _produce_one(
    producer: Any, m: OutMessage, on_delivery: Any, poll: Any, on_too_large: TooLarge | None
) -> None:
    replaced = 0
    while True:
        try:
            producer.produce(m.topic, m.value, m.key, headers=m.headers, on_delivery=on_delivery)
            return
        except BufferError:
            # local queue full: serve delivery reports until there is room
            poll(0.05)
        except KafkaException as exc:
            _raise_if_refused(exc, m.topic)
            repl = None
            if _is_too_large(exc.args[0]) and replaced < MAX_REPLACEMENTS:
                repl = _replacement(m, on_too_large)
            if repl is None:
                raise
            m = repl
            replaced += 1


def _produce_all(
    producer: Any,
    messages: Sequence[OutMessage],
    on_delivery: Any,
    poll: Any,
    on_too_large: TooLarge | None = None,
) -> None:
    for m in messages:
        _produce_one(producer, m, on_delivery, poll, on_too_large)


_ANY_PARTITION = -1  # RD_KAFKA_PARTITION_UA: the partitioner picks (by key)


def _produce_bulk(
    producer: Any,
    bulk: Sequence[Bulk],
    on_delivery: Any,
    poll: Any,
    on_too_large: TooLarge | None = None,
) -> None:
    # positional arguments (see _produce_pair); anything but the plain call in a helper
    produce = producer.produce
    for topic, pairs, headers in bulk:
        if headers is None:
            for key, value in pairs:
                try:
                    produce(topic, value, key, _ANY_PARTITION, on_delivery)
                except (BufferError, KafkaException):
                    _produce_pair(
                        producer, topic, key, value, None, on_delivery, poll, on_too_large
                    )
            continue
        if len(headers) != len(pairs):
            raise ValueError(f"{len(pairs)} messages but {len(headers)} headers")
        name, values, copied = headers.name, headers.values, headers.copied
        start = 0
        for n, shared in headers.runs:
            stop = start + n
            # one list for the whole run, its last header replaced per record: produce()
            # copies the headers at the call, so only a record's own header is new
            h: list[Any] = [*shared, None]
            own = zip(pairs[start:stop], values[start:stop], strict=True)
            if copied is None:
                for (key, value), v in own:
                    h[-1] = (name, v)
                    try:
                        produce(topic, value, key, _ANY_PARTITION, on_delivery, None, 0, h)
                    except (BufferError, KafkaException):
                        _produce_pair(
                            producer, topic, key, value, h, on_delivery, poll, on_too_large
                        )
            else:
                for i, ((key, value), v) in enumerate(own, start):
                    h[-1] = (name, v)
                    hi = h + copied[i]
                    _produce_pair(producer, topic, key, value, hi, on_delivery, poll, on_too_large)
            start = stop


def _produce_pair(
    producer: Any,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: list[Any] | None,
    on_delivery: Any,
    poll: Any,
    on_too_large: TooLarge | None,
) -> None:
    """One message of a bulk: a full local queue served until there is room; one larger
    than the producer takes replaced (``on_too_large``) or raised."""
    # positional arguments, in the order of Producer.produce's C argument list (topic,
    # value, key, partition, callback, on_delivery, timestamp, headers): parsing keywords
    # costs a third of the call
    produce = producer.produce
    while True:
        try:
            produce(topic, value, key, _ANY_PARTITION, on_delivery, None, 0, headers)
            return
        except BufferError:  # local queue full: serve delivery reports until there is room
            poll(0.05)
        except KafkaException as exc:
            _raise_if_refused(exc, topic)
            # larger than the producer takes: the rest of the pipeline sized it wrong
            hs = None if headers is None else [(k, _utf8(v)) for k, v in headers]
            m = OutMessage(topic, key, value, hs)
            repl = _replacement(m, on_too_large) if _is_too_large(exc.args[0]) else None
            if repl is None:
                raise
            _produce_one(producer, repl, on_delivery, poll, on_too_large)
            return


def _utf8(v: bytes | str) -> bytes:
    return v.encode() if isinstance(v, str) else v


def _refusals(on_too_large: TooLarge) -> Any:
    """A delivery callback that only reports outputs the broker refused as too large
    (for a transaction, which fails as a whole: what replaces them is produced when the
    batch is consumed again, sized against the limit the refusal taught)."""

    def report(err: Any, msg: Any) -> None:
        if err is not None and _is_too_large(err):
            _replacement(_out_message(msg), on_too_large)

    return report


def _out_message(msg: Any) -> OutMessage:
    return OutMessage(msg.topic(), msg.key(), msg.value(), list(msg.headers() or []) or None)


def _produce_batch(producer: Any, batch: OutBatch, on_delivery: Any, poll: Any) -> None:
    hook = batch.on_too_large
    if on_delivery is None and hook is not None:
        on_delivery = _refusals(hook)
    _produce_bulk(producer, batch.bulk, on_delivery, poll, hook)
    _produce_all(producer, batch.messages, on_delivery, poll, hook)


class AtLeastOnceSink:
    """At least once, with delivery reports for failures only.

    The producer is configured with ``delivery.report.only.error`` (``score_producer``):
    a success costs no Python call. Consumed offsets are therefore stored at
    checkpoints, the way Kafka Streams commits under at-least-once (flush the producer,
    then commit): whenever the producer's queue is empty after a poll (every output
    produced so far acknowledged; at a modest rate that is almost every poll), and at the
    latest every ``checkpoint_s`` of pending batches by a ``flush`` bounded by
    ``flush_s`` (a stall of a few milliseconds when the broker keeps up). A flush that
    times out (the broker slower than the worker, or away) stores nothing and is tried
    again ``checkpoint_s`` later with twice the bound, up to ``max_flush_s``, so that
    offsets move on under a sustained overload too (the worker produces nothing while it
    waits); the bound is reset by a checkpoint that completes. Offsets are stored only
    when every output of every batch sent so far is acknowledged; a refusal (a failure
    report) raises before any offset is stored past it. A crash re-reads at most the
    batches since the last checkpoint and the auto-commit interval: duplicates, never a
    loss.

    Success reports, if the producer sends them, are ignored: the accounting never
    depends on them.
    """

    def __init__(
        self,
        producer: Any,
        consumer: Any,
        *,
        checkpoint_s: float = 2.0,
        flush_s: float = 0.5,
        max_flush_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._producer = producer
        self._consumer = consumer
        self._checkpoint_s = checkpoint_s
        self._flush_s = flush_s
        self._max_flush_s = max_flush_s
        #: the bound of the next checkpoint's flush (doubled after each that times out)
        self._next_flush_s = flush_s
        self._clock = clock
        #: the next offsets of the batches sent since the last checkpoint, merged
        self._pending: dict[tuple[str, int], int] = {}
        #: when the next checkpoint flushes (None: nothing pending)
        self._due: float | None = None
        self._refused: _Refusal | None = None

    def send(self, batch: OutBatch) -> None:
        hook = batch.on_too_large
        producer = self._producer
        budget = MAX_REPLACEMENTS * max(1, batch.n_outputs)
        replaced = 0

        def report(err: Any, msg: Any) -> None:
            nonlocal replaced
            if err is None:
                return
            if hook is not None and _is_too_large(err) and replaced < budget:
                # the broker refused it (its topic's limit is lower than the one read at
                # start): its replacement is produced in its place
                replaced += 1
                repl = _replacement(_out_message(msg), hook)
                if repl is not None:
                    try:
                        producer.produce(
                            repl.topic,
                            repl.value,
                            repl.key,
                            headers=repl.headers,
                            on_delivery=report,
                        )
                        return
                    except (BufferError, KafkaException) as exc:
                        log.error("cannot produce the replacement of a refused output: %s", exc)
            if self._refused is None:
                topic = msg.topic() if msg is not None else None
                self._refused = _Refusal(str(err), err, topic)

        _produce_batch(producer, batch, report, self.poll)
        self._pending.update(batch.offsets)
        if self._due is None:
            self._due = self._clock() + self._checkpoint_s
        self.poll(0)

    def poll(self, timeout: float = 0) -> None:
        self._producer.poll(timeout)
        self._checkpoint()

    def _checkpoint(self, *, drain_s: float | None = None) -> bool:
        """Store the pending offsets if every output is acknowledged: at once when the
        queue is empty, else after a flush when the checkpoint is due (bounded by the
        escalating bound) or when draining (bounded by ``drain_s``). True when nothing is
        left pending."""
        self._raise_if_refused()
        if self._due is None:
            return True
        if len(self._producer):
            if drain_s is None and self._clock() < self._due:
                return False
            left = self._producer.flush(self._next_flush_s if drain_s is None else drain_s)
            self._raise_if_refused()
            if left:
                if drain_s is None:  # a due checkpoint: the next one may wait longer
                    if self._next_flush_s >= self._max_flush_s:
                        log.warning(
                            "%d outputs still unacknowledged after a %.0f s flush: offsets "
                            "are not stored until the broker catches up",
                            left,
                            self._next_flush_s,
                        )
                    self._due = self._clock() + self._checkpoint_s
                    self._next_flush_s = min(2 * self._next_flush_s, self._max_flush_s)
                return False
        self._next_flush_s = self._flush_s
        offsets = _topic_partitions(self._pending)
        self._pending.clear()
        self._due = None
        if offsets:
            self._consumer.store_offsets(offsets=offsets)
        return True

    def _raise_if_refused(self) -> None:
        refused = self._refused
        if refused is None:
            return
        # never store offsets past an output the broker did not take
        self._pending.clear()
        self._due = None
        access = access_error(None, refused.err, topic=refused.topic)
        if access is not None:
            raise access
        raise DeliveryError(f"broker did not acknowledge an output: {refused.why}")

    @property
    def backlog(self) -> int:
        return len(self._producer)

    def drain(self, timeout: float = 30.0, *, commit: bool = True) -> None:
        """Wait for every acknowledgement, store their offsets, commit synchronously."""
        if not self._checkpoint(drain_s=timeout):
            left = len(self._producer)
            raise DeliveryError(f"{left} outputs still unacknowledged after {timeout}s")
        if commit:
            try:
                self._consumer.commit(asynchronous=False)
            except KafkaException as exc:
                # _NO_OFFSET: nothing stored since the last commit
                if exc.args and getattr(exc.args[0], "code", lambda: None)() != -168:
                    raise

    def discard(self) -> None:
        """Partitions were lost: their pending offsets must not be committed."""
        self._producer.flush(10)
        self._pending.clear()
        self._due = None


class _NeedsAbort(Exception):
    """The transaction cannot complete: abort it and consume the batch again."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class _Retriable(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class _Unusable(Exception):
    """The producer can do no more transactions: it is replaced by a new one with the same
    ``transactional.id`` (which fences it and ends its open transaction)."""

    def __init__(self, why: str, thread: threading.Thread | None = None, since: float = 0.0):
        super().__init__(why)
        self.why = why
        #: the thread still blocked in the producer's call (None: the call returned)
        self.thread = thread
        #: when the call was made (the sink's clock)
        self.since = since


class _Hung(_Unusable):
    """A transactional call still blocked well past its own timeout; ``thread`` is the
    one blocked in it."""

    def __init__(self, why: str, thread: threading.Thread, since: float = 0.0) -> None:
        super().__init__(why, thread, since)


class _Broken(_Unusable):
    """A fatal error that is not a fencing: the producer's own transactional state is
    lost (seen after a broker outage: the coordinator had aborted the transaction, and
    ``abort_transaction`` then failed with a fatal ``INVALID_TXN_STATE``)."""


#: Fatal errors that say another instance owns the ``transactional.id`` now (or that this
#: one may not use it): never answered by a new producer, which would fence the other.
_FENCING = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)


class RetryBatch(Exception):
    """The batch was aborted and will be consumed again."""


#: The timeout given to each transactional call (``init_transactions``,
#: ``send_offsets_to_transaction``, ``commit_transaction``, ``abort_transaction``).
TXN_CALL_TIMEOUT_S = 30.0
#: How long past its own timeout a transactional call may run before it is taken as hung:
#: librdkafka 2.16 can block in ``send_offsets_to_transaction`` forever, whatever its
#: timeout, once the group coordinator it cached was decommissioned (by a re-bootstrap
#: after every broker was away, which ``KafkaSettings.client_config`` turns off, or because
#: that broker left the metadata): confluentinc/librdkafka#5456, #5511.
HANG_GRACE_S = 10.0
#: How often a wait for the broker inside a transaction says how it goes (one log line).
WAIT_REPORT_S = 30.0
#: Producers abandoned (hung in a call, their thread still blocked, or broken by a fatal
#: error) a worker keeps before it exits instead (each holds a librdkafka client that is
#: never destroyed from the loop).
MAX_HUNG_PRODUCERS = 3


def send_bound_s(retry_s: float) -> float:
    """The longest one :meth:`TransactionalSink.send` can take with a ``retry_s`` budget:
    the budget, the call running when it ends, an abort, a replacement producer's
    ``init_transactions`` and reading the committed offsets (each a call timeout plus
    the hang grace). The consumer's ``max.poll.interval.ms`` is set above it, so a worker
    that waited out an outage inside a batch is still a member of its group."""
    return retry_s + 4 * (TXN_CALL_TIMEOUT_S + HANG_GRACE_S)


def _bounded(op: Callable[[], object], limit_s: float, name: str) -> Any:
    """``op()`` on a daemon thread, waited for at most ``limit_s`` seconds: its result is
    returned and its exception raised here, :class:`_Hung` if it is still running by
    then. A hung call's thread, and the client ``op`` holds, are left to themselves:
    never joined, never destroyed from the caller's thread (``rd_kafka_destroy`` of a
    client blocked in a call may block as well); the client is freed, in that thread, if
    its call ever returns."""
    failure: list[BaseException] = []
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(op())
        except BaseException as exc:  # raised again in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"txn-{name}", daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        raise _Hung(f"{name} still blocked {limit_s:.0f}s after it was called", thread)
    if failure:
        raise failure[0]
    return result[0] if result else None


#: A transactional call, given the producer and a timeout (seconds).
TxnOp = Callable[[Any, float], object]


class TransactionalSink:
    """One transaction per batch: its outputs and its consumed offsets.

    While the broker is away the transactional calls fail with retriable errors. Before
    any such call is made again the sink waits, with a backoff that doubles up to
    ``backoff_s[1]``, until a broker answers a metadata request (for up to ``retry_s``
    per batch). A timed-out ``send_offsets_to_transaction`` is never re-issued: the
    transaction is aborted, the consumer rewound to the batch's first offsets and
    :class:`RetryBatch` raised, so the batch is consumed and scored again (nothing was
    committed: no loss, no duplicate). ``commit_transaction`` and ``abort_transaction``,
    which may be called again after a timeout, are retried once the broker answers. An
    abortable error, a stop request or an exhausted budget also abort.

    Every call that talks to the broker runs on a watchdog thread: one still blocked
    ``hang_grace_s`` past its own timeout (librdkafka#5456 / #5511) is abandoned with its
    producer, and ``new_producer()`` builds a replacement with the same
    ``transactional.id``. Its ``init_transactions`` fences the old one and ends the old
    one's open transaction (aborted, or committed if its commit had already reached the
    coordinator); the consumer is then put at the group's committed offsets for the
    batch's partitions, which tell which: the batch is consumed again (:class:`RetryBatch`)
    unless it was committed. A fatal error that is not a fencing (the producer's own
    transactional state lost, e.g. ``INVALID_TXN_STATE`` from an abort after an outage) is
    answered the same way. A fencing (a newer instance owns the id), a non-retriable
    one, an abort that cannot complete, a hang without ``new_producer`` or more than
    :data:`MAX_HUNG_PRODUCERS` hung producers raise :class:`TransactionFailedError`: the
    worker exits non-zero and a new instance takes over (its ``init_transactions`` aborts
    what this one left open).

    ``metrics.transaction_retries{outcome}`` counts ``retried`` (a call made again once
    the broker answered), ``aborted`` (a batch aborted and consumed again) and
    ``producer_replaced``. Each batch that met trouble logs one warning when it starts
    and one line when it is over.
    """

    def __init__(
        self,
        producer: Any,
        consumer: Any,
        *,
        new_producer: Callable[[], Any] | None = None,
        timeout: float = TXN_CALL_TIMEOUT_S,
        retry_s: float = 240.0,
        backoff_s: tuple[float, float] = (0.5, 5.0),
        hang_grace_s: float = HANG_GRACE_S,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._producer = producer
        self._consumer = consumer
        self._new_producer = new_producer
        self._timeout = timeout
        self._retry_s = retry_s
        self._backoff_min_s, self._backoff_max_s = backoff_s
        self._hang_grace_s = hang_grace_s
        self._stop = stop
        self._clock = clock
        self._metrics = metrics
        #: threads still blocked in a call of an abandoned producer
        self._hung: list[threading.Thread] = []
        #: producers replaced after a fatal error that was not a fencing
        self._broken: list[Any] = []
        #: when this batch's trouble started, and what it was (None: no trouble)
        self._trouble: tuple[float, str] | None = None
        self._replacements = 0
        try:
            self._init_transactions(clock() + retry_s)
        except _NeedsAbort as exc:
            raise TransactionFailedError(f"cannot initialise transactions: {exc.why}") from None

    @property
    def producer(self) -> Any:
        """The producer in use (a hung one is replaced)."""
        return self._producer

    @property
    def replaced(self) -> int:
        """Producers replaced so far because a call hung."""
        return self._replacements

    def send(self, batch: OutBatch) -> None:
        """One transaction: outputs + offsets; :class:`RetryBatch` when it was aborted
        (the consumer rewound to where the batch starts: it is consumed again)."""
        deadline = self._clock() + self._retry_s
        self._trouble = None
        outcome = "committed"
        try:
            try:
                self._transaction(batch, deadline)
            except _NeedsAbort as exc:
                outcome = "aborted, the batch consumed again"
                log.warning("aborting transaction: %s", exc.why)
                self._abort(max(deadline, self._clock() + self._timeout))
                self._rewind(batch)
                self._count("aborted")
                raise RetryBatch(exc.why) from None
        except _Unusable as exc:
            self._replace(exc, deadline)
            if self._at_committed_offsets(batch, deadline):
                outcome = "producer replaced, the batch was committed"
                return
            outcome = "producer replaced, the batch consumed again"
            raise RetryBatch(exc.why) from None
        except TransactionFailedError as exc:
            outcome = f"giving up: {exc}"
            raise
        finally:
            if self._trouble is not None:
                since, what = self._trouble
                log.warning(
                    "exactly-once: trouble over after %.1fs (%s): %s",
                    self._clock() - since,
                    what,
                    outcome,
                )

    def _transaction(self, batch: OutBatch, deadline: float) -> None:
        self._call(lambda p, _t: p.begin_transaction(), "begin_transaction", bounded=False)
        p = self._producer
        _produce_batch(p, batch, None, p.poll)
        offsets = batch.topic_partitions()
        group = self._consumer.consumer_group_metadata()
        name = "send_offsets_to_transaction"
        try:
            self._call(lambda p, t: p.send_offsets_to_transaction(offsets, group, t), name)
        except _Retriable as exc:
            # never re-issued (it may hang): wait for the broker, then abort
            self._wait_for_broker(name, exc.why, deadline)
            raise _NeedsAbort(f"{name}: {exc.why}") from None
        self._retrying(lambda p, t: p.commit_transaction(t), "commit_transaction", deadline)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.transaction_retries.labels(outcome).inc()

    def _noticed(self, what: str, *, quiet: bool = False, since: float | None = None) -> None:
        """The first trouble of this batch (which started at ``since``, or now) gets one
        warning (unless ``quiet``: the caller says more); the rest is debug."""
        if self._trouble is None:
            self._trouble = (self._clock() if since is None else since, what)
            if quiet:
                return
            log.warning(
                "exactly-once: %s; the broker may be away: nothing is committed until it "
                "answers (waiting up to %.0fs, then the batch is aborted and consumed again)",
                what,
                self._retry_s,
            )

    def _init_transactions(self, deadline: float) -> None:
        """``init_transactions`` on the current producer; a hung one is replaced."""
        while True:
            try:
                self._retrying(lambda p, t: p.init_transactions(t), "init_transactions", deadline)
                return
            except _Unusable as exc:
                self._abandon(exc)

    def _retrying(self, op: TxnOp, name: str, deadline: float) -> None:
        """``op`` until it succeeds; after a retriable error it is called again once a
        broker answers, until ``deadline`` (or a stop request): then :class:`_NeedsAbort`,
        as for an abortable error."""
        failures = 0
        while True:
            try:
                self._call(op, name)
                if failures:
                    log.info("%s succeeded after %d retries", name, failures)
                return
            except _Retriable as exc:
                failures += 1
                self._wait_for_broker(name, exc.why, deadline)
                self._count("retried")

    def _wait_for_broker(self, name: str, why: str, deadline: float) -> None:
        """Back off until a broker answers a metadata request; :class:`_NeedsAbort` when
        ``deadline`` passes or a stop is requested first. The producer's calls made
        meanwhile (``poll``, ``list_topics``) are bounded like the transactional ones
        (:class:`_Hung`), and the wait says how it goes every :data:`WAIT_REPORT_S`."""
        self._noticed(f"{name} failed: {why}")
        delay = self._backoff_min_s
        attempts = 0
        started = reported = self._clock()
        last = why
        while True:
            if self._stop is not None and self._stop.is_set():
                raise _NeedsAbort(f"{name}: {why} (stopping)")
            now = self._clock()
            left = deadline - now
            if left <= 0:
                raise _NeedsAbort(
                    f"{name}: {why}; the broker still away after {self._retry_s:.0f}s of retries"
                )
            if now - reported >= WAIT_REPORT_S:
                reported = now
                log.info(
                    "exactly-once: still waiting for a broker to retry %s (%.0fs, %d "
                    "metadata requests, %.0fs left; last: %s)",
                    name, now - started, attempts, left, last,
                )  # fmt: skip
            wait_s = min(delay, left)
            log.debug("%s: %s (retriable), waiting %.1fs", name, why, wait_s)
            p = self._producer
            self._ask(partial(p.poll, wait_s), wait_s, "poll")  # serves callbacks meanwhile
            delay = min(2 * delay, self._backoff_max_s)
            attempts += 1
            ask_s = max(0.1, min(5.0, self._timeout, left))
            try:
                md = self._ask(partial(p.list_topics, timeout=ask_s), ask_s, "list_topics")
            except KafkaException as exc:
                last = str(exc.args[0] if exc.args else exc)
                continue
            if md.brokers:
                log.info("a broker answers again after %d checks: retrying %s", attempts, name)
                return
            last = "metadata without brokers"

    def _ask(self, op: Callable[[], Any], timeout_s: float, name: str) -> Any:
        """``op()``, a producer call bounded by ``timeout_s``, on the watchdog: one still
        blocked ``hang_grace_s`` past it is :class:`_Hung`, with when it was called."""
        since = self._clock()
        try:
            return _bounded(op, timeout_s + self._hang_grace_s, name)
        except _Hung as exc:
            exc.since = since
            raise

    def _call(self, op: TxnOp, name: str, *, bounded: bool = True) -> None:
        """``op(producer, timeout)`` (on a watchdog thread when ``bounded``), its
        KafkaException sorted by what may follow it; :class:`_Hung` if it hangs."""
        p, timeout = self._producer, self._timeout
        since = self._clock()
        try:
            if bounded:
                self._ask(partial(op, p, timeout), timeout, name)
            else:
                op(p, timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            why = str(err) if err is not None else str(exc)
            broken = err is not None and err.fatal() and err.code() not in _FENCING
            if broken and self._new_producer is not None:
                raise _Broken(f"{name} failed fatally: {why}", since=since) from None
            if err is None or err.fatal():
                raise TransactionFailedError(f"{name} failed fatally: {why}") from exc
            if err.txn_requires_abort():
                raise _NeedsAbort(f"{name}: {why}") from None
            if err.retriable():
                raise _Retriable(why) from None
            raise TransactionFailedError(f"{name} failed: {why}") from exc

    def _abort(self, deadline: float) -> None:
        try:
            self._retrying(lambda p, t: p.abort_transaction(t), "abort_transaction", deadline)
        except _NeedsAbort as exc:
            raise TransactionFailedError(
                f"cannot abort the transaction ({exc.why}); exiting so that a new instance "
                "fences this one and aborts it"
            ) from None

    def _abandon(self, exc: _Unusable) -> None:
        """Leave the unusable producer (to its thread, if hung) and build a new one (not
        initialised)."""
        self._noticed(exc.why, quiet=True, since=exc.since)
        if self._new_producer is None:
            raise TransactionFailedError(f"{exc.why}, and no producer to replace it with")
        self._hung = [t for t in self._hung if t.is_alive()]
        if exc.thread is not None:
            self._hung.append(exc.thread)
        else:  # kept, not destroyed here: nothing of it runs in the loop's thread
            self._broken.append(self._producer)
        abandoned = len(self._hung) + len(self._broken)
        if abandoned > MAX_HUNG_PRODUCERS:
            raise TransactionFailedError(
                f"{exc.why}; {abandoned} producers hung or broken: exiting so that a new "
                "instance starts clean"
            )
        log.warning(
            "exactly-once: %s%s: replacing the producer; the new one (same "
            "transactional.id) fences it and ends its open transaction",
            exc.why,
            " (librdkafka#5456/#5511)" if exc.thread is not None else "",
        )
        self._producer = self._new_producer()
        self._replacements += 1
        self._count("producer_replaced")

    def _replace(self, exc: _Unusable, deadline: float) -> None:
        self._abandon(exc)
        try:
            self._init_transactions(max(deadline, self._clock() + self._timeout))
        except _NeedsAbort as err:
            raise TransactionFailedError(
                f"cannot initialise the replacement producer: {err.why}"
            ) from None

    def _at_committed_offsets(self, batch: OutBatch, deadline: float) -> bool:
        """After a replacement the hung transaction is over, committed or aborted: put
        the consumer at the group's committed offsets for the batch's partitions (the
        batch's first offsets where none is committed). True when they are the batch's
        end offsets: the batch was committed and is not consumed again."""
        tps = [TopicPartition(t, p) for (t, p) in sorted(batch.first_offsets)]
        until = max(deadline, self._clock() + self._timeout)
        while True:
            try:
                got = self._consumer.committed(tps, timeout=self._timeout)
                if not any(tp.error for tp in got):
                    break
                why = "; ".join(str(tp.error) for tp in got if tp.error)
            except KafkaException as exc:
                why = str(exc)
            if self._clock() >= until:
                raise TransactionFailedError(
                    f"cannot read the committed offsets after replacing the producer ({why}); "
                    "exiting: a new instance resumes from them"
                )
            self._producer.poll(self._backoff_min_s)
        committed = {
            (tp.topic, tp.partition): (
                tp.offset if tp.offset >= 0 else batch.first_offsets[(tp.topic, tp.partition)]
            )
            for tp in got
        }
        if all(committed.get(k) == v for k, v in batch.offsets.items()):
            return True
        self._seek(committed)
        return False

    def _rewind(self, batch: OutBatch) -> None:
        self._seek(batch.first_offsets)

    def _seek(self, offsets: dict[tuple[str, int], int]) -> None:
        for (t, p), offset in offsets.items():
            try:
                self._consumer.seek(TopicPartition(t, p, offset))
            except KafkaException as exc:
                # no longer ours (lost while the broker was away): whoever owns it next
                # starts at the committed offset, which this batch did not move
                log.warning("cannot rewind %s[%d] to %d: %s", t, p, offset, exc)

    def poll(self, timeout: float = 0) -> None:
        self._producer.poll(timeout)

    @property
    def backlog(self) -> int:
        return len(self._producer)

    def drain(self, timeout: float = 30.0, *, commit: bool = True) -> None:
        self._producer.flush(timeout)

    def discard(self) -> None:
        pass
