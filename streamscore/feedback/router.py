"""The feedback router (a thin Kafka loop): predictions and labels, re-keyed by event id
onto one internal join topic, so that any number of feedback workers join correctly.

Why a router
------------
Predictions are keyed by entity key (they keep the partition affinity of their events)
and labels by event id, so the prediction and the label of one event land in unrelated
partitions of two topics. One consumer that reads everything can join them; a consumer
*group* cannot, because the members would own unrelated halves. The router fixes this
the way Kafka Streams fixes a key change (a repartition topic): it consumes
``predictions`` and ``feedback`` in its own consumer group, reads each message's event
id (:class:`~streamscore.serde.event_ids.EventIdReader`, usually without decoding the record)
and produces the **original bytes** to the join topic keyed by that event id, with a
``streamscore.kind`` header (``prediction`` / ``label``). Both sides of an event then
share a key, hence a partition of one topic, and the join consumer group
(:mod:`streamscore.feedback.loop`) can spread that topic's partitions over its members.

Delivery: at least once, through the same :class:`~streamscore.kafka.delivery.AtLeastOnceSink`
the score workers use (a batch's offsets are stored only when all its outputs are
acknowledged). A crash re-routes the uncommitted tail; the join counts the repeats as
duplicates and writes one row per event id whatever happens.

Bad input: a message whose event id cannot be read (not the wire format, unknown schema
id, truncated, no id) goes to the dead-letter topic with its key and bytes untouched and
the usual ``streamscore.error.*`` / ``streamscore.source.*`` headers. A schema registry
that cannot be reached is not bad input: the whole batch is put back at the first lookup
that fails (:class:`~streamscore.kafka.putback.PutBack`: paused, polled so the router stays in
its group, consumed again after a backoff), nothing of it produced or committed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..core.config import FEEDBACK_BATCH
from ..core.errors import InfrastructureError, OutputTooLargeError, StreamscoreError
from ..core.records import HeaderList
from ..kafka.dead_letters import Consumed, dead_letter
from ..kafka.delivery import AtLeastOnceSink, OutBatch, OutMessage
from ..kafka.headers import RowHeaders
from ..kafka.output_limits import OutputLimits, wire_size
from ..kafka.putback import PutBack, first_offsets
from ..metrics.series import Metrics
from ..serde.event_ids import EventIdReader

log = logging.getLogger(__name__)

KIND_HEADER = "streamscore.kind"
PREDICTION = b"prediction"
LABEL = b"label"
#: a routed record's headers: only its own, the kind (:class:`RowHeaders`)
_NO_SHARED: HeaderList = []
#: what a join-topic record counts beyond its key and value (:func:`wire_size`), by kind
_FIXED_SIZE = {kind: wire_size(None, None, [(KIND_HEADER, kind)]) for kind in (PREDICTION, LABEL)}


def join_topic_for(group_id: str) -> str:
    """The default join topic of a feedback application (one per consumer group, as
    Kafka Streams names its internal topics after the application id)."""
    return f"{group_id}.join"


@dataclass(frozen=True, slots=True)
class RouteTopics:
    predictions: str
    feedback: str
    join: str
    dlq: str
    #: the shadow models' predictions (None: not read)
    predictions_shadow: str | None = None

    def sources(self) -> list[str]:
        """The topics the router reads: predictions (answers, then shadows), labels."""
        shadow = [self.predictions_shadow] if self.predictions_shadow else []
        return [self.predictions, *shadow, self.feedback]


class FeedbackRouter:
    def __init__(
        self,
        *,
        consumer: Any,
        sink: AtLeastOnceSink,
        topics: RouteTopics,
        event_id: EventIdReader,
        label_id: EventIdReader | None = None,
        metrics: Metrics,
        worker_id: str,
        stop: threading.Event,
        batch_size: int = FEEDBACK_BATCH,
        batch_wait_s: float = 0.2,
        registry_backoff_s: tuple[float, float] = (0.5, 10.0),
        limits: OutputLimits | None = None,
    ) -> None:
        self._c = consumer
        #: the join and dead-letter topics' record limits (None: not checked)
        self._limits = limits
        self._sink = sink
        self.topics = topics
        self._event_id = event_id
        #: the label topic's id field (the project's ``[labels] id_field``); default: as
        #: predictions (``event_id``, the feedback schema's)
        self._label_id = label_id or event_id
        self._m = metrics
        self._worker_id = worker_id
        self._stop = stop
        self._batch = batch_size
        self._wait_s = batch_wait_s
        self._put_back = PutBack(consumer, stop=stop, backoff_s=registry_backoff_s, serve=sink.poll)
        self.routed = 0
        self.dead_lettered = 0

    def run(self) -> None:
        self._c.subscribe(
            self.topics.sources(),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not self._stop.is_set():
                self._sink.poll(0)
                msgs = self._c.consume(num_messages=self._batch, timeout=self._wait_s)
                if not msgs:
                    continue
                try:
                    batch = self.route(msgs)
                except InfrastructureError as exc:
                    self._m.registry_unavailable_batches.inc()
                    self._put_back(first_offsets(msgs), f"{type(exc).__name__}: {exc}")
                    continue
                self._put_back.ok()
                self._sink.send(batch)
        finally:
            try:
                self._sink.drain()
            except StreamscoreError as exc:
                log.error("router could not drain on shutdown: %s", exc)
            finally:
                self._c.close()

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("router assigned %s", [(p.topic, p.partition) for p in partitions])
        if self._put_back.waiting:
            consumer.pause(partitions)

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        log.info("router revoked %s", [(p.topic, p.partition) for p in partitions])
        self._sink.drain()
        self._put_back.revoked(partitions)

    def _on_lost(self, _consumer: Any, partitions: list[Any]) -> None:
        log.warning("router lost %s", [(p.topic, p.partition) for p in partitions])
        self._sink.discard()
        self._put_back.revoked(partitions)

    def route(self, msgs: list[Any]) -> OutBatch:
        """The outputs of one consumed batch: each message re-keyed onto the join topic
        (given column-wise, as the batch's ``bulk``: its (key, value) pairs, in order,
        and each one's kind header; no object per message), or dead-lettered; plus the
        offsets to store once they are all acknowledged. Raises
        :class:`InfrastructureError` (the registry away) before anything."""
        require = getattr(self._event_id, "require", None)
        if require is not None:  # one schema cache serves both readers
            require([m.value() for m in msgs if m.error() is None])
        out: list[OutMessage] = []  # the dead letters
        pairs: list[tuple[bytes | None, bytes | None]] = []
        kinds: list[bytes | str] = []
        offsets: dict[tuple[str, int], int] = {}
        join = self.topics.join
        join_limit = None if self._limits is None else self._limits.limit(join)
        routed = {PREDICTION: 0, LABEL: 0}
        for msg in msgs:
            if msg.error() is not None:
                continue  # partition EOF and transient errors: nothing consumed
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            offsets[(topic, partition)] = offset + 1
            value = msg.value()
            kind = LABEL if topic == self.topics.feedback else PREDICTION
            try:
                eid = (self._event_id if kind is PREDICTION else self._label_id)(value)
            except InfrastructureError:
                raise
            except StreamscoreError as exc:
                out.append(self._dead_letter(msg, exc))
                continue
            key = eid.encode()
            # wire_size(key, value, headers), the headers' share counted once per kind
            size = len(key) + len(value or b"") + _FIXED_SIZE[kind]
            if join_limit is not None and size > join_limit:
                limit = join_limit
                err = OutputTooLargeError(
                    f"{size} bytes, more than the join topic accepts ({limit} bytes)",
                    size=size,
                    limit=limit,
                    topic=self.topics.join,
                )
                out.append(self._dead_letter(msg, err))
                continue
            pairs.append((key, value))
            kinds.append(kind)
            routed[kind] += 1
        for kind, n in routed.items():
            if n:
                self._m.feedback_routed.labels(kind.decode()).inc(n)
        self.routed += routed[PREDICTION] + routed[LABEL]
        if not pairs:
            return OutBatch(out, offsets)
        headers = RowHeaders(KIND_HEADER)
        headers.add(_NO_SHARED, kinds)
        return OutBatch(out, offsets, bulk=[(join, pairs, headers)])

    def _dead_letter(self, msg: Any, exc: StreamscoreError) -> OutMessage:
        self._m.dead_letters.labels(exc.reason).inc()
        self._m.invalid_events.labels(f"feedback_{exc.reason}").inc()
        self.dead_lettered += 1
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            type(exc).__name__,
            exc,
        )
        limit = None if self._limits is None else self._limits.limit(self.topics.dlq)
        return dead_letter(
            Consumed(msg), exc, dlq_topic=self.topics.dlq, worker_id=self._worker_id, limit=limit
        )
