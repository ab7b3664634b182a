"""The feedback worker's Kafka loop (thin): consume, join, measure, store, commit.

One consumer in its own group (``streamscore feedback``) reads the **join topic**, where
the router (:mod:`streamscore.feedback.router`) has put every prediction and label keyed
by event id, with a ``streamscore.kind`` header. Each polled message is decoded into a
:class:`~streamscore.core.records.Prediction` / :class:`~streamscore.core.records.Feedback`
and fed to the pure :class:`~streamscore.feedback.join.JoinState`; joined pairs update the
live quality metrics and the promotion policy; rows and unmatched labels go to the
:class:`~streamscore.feedback.groundtruth.GroundTruthStore`. Because both sides of an event share
a key, they share a partition, and the members of the group each join their own
partitions: feedback workers scale out up to the join topic's partition count.

Restart safety (the choice, and why)
------------------------------------
Offsets are committed **only for settled messages**, and only **after** the store has
made their rows durable:

1. every consumed message is tracked by :class:`~streamscore.feedback.join.OffsetTracker`;
2. the join state says when a message is settled: its label's row is written, or the
   label is written as unmatched, or the prediction was evicted without a label, or it
   was a duplicate (see :mod:`streamscore.feedback.join`);
3. at each checkpoint (every ``checkpoint_s`` and on shutdown / revocation) the loop
   first calls :meth:`GroundTruthStore.flush` (files written under ``_inprogress/``,
   ``fsync``-ed, atomically renamed into their partition), and only then marks the
   positions settled up to that point and commits, per partition, the offset after the
   longest settled prefix (synchronous commit).

On a crash (even SIGKILL) the next worker resumes from the committed offsets and
re-reads everything not settled: the pending labels and the predictions still waiting
in the window, so **no label is lost**. Rows already finalized before the crash are in
the store's event-id index (rebuilt from the finalized files at start), so a re-read
label of an already-written event is a *duplicate* and **no row is written twice**;
half-written files are ``_inprogress`` leftovers that are deleted at start (their rows
had not been committed, so they are re-read). Persisting the join state instead would
need its own atomic snapshots and offsets inside them; re-reading is simpler and the
cost is bounded by the window: a prediction waiting for its label holds its partition's
commit back by at most ``window`` of event time (or until the memory cap evicts it).

Rebalances use an eager assignor: on revocation the loop checkpoints, then drops the
whole join state (its pending labels are counted ``released``) and the new assignment
resumes from the committed offsets.

A message the loop cannot decode (or without a known ``streamscore.kind``) never blocks
its partition: it is handed to ``dead_letter`` (the CLI writes it to the dead-letter
topic), counted, and settled. A schema registry that cannot answer is not bad input: the
batch, from the first message not yet joined, is put back
(:class:`~streamscore.kafka.putback.PutBack`: paused, polled so the worker stays in its
group, consumed again after a backoff).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, TopicPartition

from ..core.errors import (
    AvroDecodeError,
    InfrastructureError,
    SerdeError,
    StreamscoreError,
    UnknownKindError,
    ValidationError,
)
from ..core.records import Position, Prediction, Role, Telemetry
from ..kafka.putback import PutBack, first_offsets
from ..metrics.series import Metrics
from .groundtruth import GroundTruthStore
from .join import JoinOutput, JoinState, OffsetTracker
from .labels import LabelReader
from .promotion import LiveQuality, PromotionDecision, PromotionPolicy
from .router import KIND_HEADER, LABEL, PREDICTION

if TYPE_CHECKING:
    from ..models.signing import Signer, Verifier

log = logging.getLogger(__name__)

Decoder = Callable[[bytes | None], dict[str, Any]]


def _timestamp_ms(msg: Any) -> int | None:
    """The message's timestamp (epoch ms), None when it has none."""
    ts_type, ts = msg.timestamp()
    return int(ts) if ts_type != 0 and ts >= 0 else None


def _kind(msg: Any) -> bytes | None:
    for k, v in msg.headers() or ():
        if k == KIND_HEADER:
            return bytes(v) if v is not None else None
    return None


@dataclass
class FeedbackStats:
    predictions: int = 0
    labels: int = 0
    undecodable: int = 0
    rows_written: int = 0
    checkpoints: int = 0


class FeedbackLoop:
    def __init__(
        self,
        *,
        consumer: Any,
        join_topic: str,
        decode_prediction: Decoder,
        decode_feedback: Decoder,
        read_label: LabelReader | None = None,
        join: JoinState,
        store: GroundTruthStore,
        metrics: Metrics,
        quality: LiveQuality,
        policy: PromotionPolicy | None = None,
        on_decision: Callable[[PromotionDecision], bool] | None = None,
        stop: threading.Event,
        dead_letter: Callable[[Any, StreamscoreError], None] | None = None,
        checkpoint_s: float = 1.0,
        batch_size: int = 1000,
        registry_backoff_s: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self._c = consumer
        self._topic = join_topic
        self._dead_letter = dead_letter
        self._dec_pred = decode_prediction
        self._dec_fb = decode_feedback
        #: the decoded label record -> Feedback, by the project's ``[labels]`` field names
        self._read_label = read_label or LabelReader()
        self.join = join
        self.store = store
        self._m = metrics
        self._quality = quality
        self._policy = policy
        self._on_decision = on_decision
        self._stop = stop
        self._checkpoint_s = checkpoint_s
        self._batch = batch_size
        self.tracker = OffsetTracker()
        self._to_settle: list[Position] = []
        self.stats = FeedbackStats()
        self._last_checkpoint = time.monotonic()
        self._put_back = PutBack(consumer, stop=stop, backoff_s=registry_backoff_s)

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> FeedbackStats:
        self._c.subscribe(
            [self._topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        try:
            while not self._stop.is_set():
                msgs = self._c.consume(num_messages=self._batch, timeout=0.2)
                if msgs:
                    self._handle(msgs)
                self._after_batch()
                if time.monotonic() - self._last_checkpoint >= self._checkpoint_s:
                    self.checkpoint()
        finally:
            try:
                self.checkpoint()
            finally:
                self._c.close()
        return self.stats

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])
        if self._put_back.waiting:
            consumer.pause(partitions)
        # rows other workers finalized for these partitions' event ids (store module doc)
        n = self.store.refresh()
        if n:
            log.info("indexed %d rows written by other feedback workers", n)

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        log.info("revoked %s: checkpoint, then drop the join state", len(partitions))
        self._put_back.revoked(partitions)
        try:
            self.checkpoint()
        except StreamscoreError as exc:  # never raise out of a rebalance callback
            log.error("checkpoint on revoke failed: %s", exc)
        released = self.join.clear()
        self._m.feedback_labels.labels("released").inc(released)
        self.tracker.clear()
        self._to_settle.clear()
        self._refresh_pending()

    # -------------------------------------------------------------------- work
    def _registry_away(self, msgs: list[Any], exc: InfrastructureError) -> None:
        self._m.registry_unavailable_batches.inc()
        self._put_back(first_offsets(msgs), f"{type(exc).__name__}: {exc}")

    def _handle(self, msgs: list[Any]) -> None:
        values = [m.value() for m in msgs if m.error() is None]
        try:  # the batch's writer schemas first: a registry away puts it all back
            for dec in (self._dec_pred, self._dec_fb):
                require = getattr(dec, "require", None)
                if require is not None:
                    require(values)
        except InfrastructureError as exc:
            self._registry_away(msgs, exc)
            return
        self._put_back.ok()
        out = JoinOutput()
        for i, msg in enumerate(msgs):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            pos: Position = (msg.topic(), msg.partition(), msg.offset())
            self.tracker.track(pos)
            try:
                kind = _kind(msg)
                if kind == PREDICTION:
                    p = Prediction.from_avro(self._dec_pred(msg.value()), pos)
                    self.stats.predictions += 1
                    out.extend(self.join.add_prediction(p))
                elif kind == LABEL:
                    lab = self._read_label(self._dec_fb(msg.value()), pos, _timestamp_ms(msg))
                    self.stats.labels += 1
                    self._m.feedback_received.inc()
                    before = self.join.stats.duplicate
                    out.extend(self.join.add_label(lab))
                    if self.join.stats.duplicate > before:
                        self._m.feedback_labels.labels("duplicate").inc()
                else:
                    raise UnknownKindError(
                        f"join-topic message without a known {KIND_HEADER} header ({kind!r})",
                        field=KIND_HEADER,
                    )
            except InfrastructureError as exc:  # away since the check above: the rest back
                self.tracker.untrack(pos)
                self._registry_away(msgs[i:], exc)
                break
            except (SerdeError, ValidationError, KeyError, ValueError, TypeError) as exc:
                # never blocks the partition: dead-lettered, counted, logged, settled
                err = (
                    exc
                    if isinstance(exc, StreamscoreError)
                    else AvroDecodeError(
                        f"decoded record does not fit: {type(exc).__name__}: {exc}"
                    )
                )
                self.stats.undecodable += 1
                self._m.invalid_events.labels(f"feedback_{err.reason}").inc()
                log.warning("undecodable message at %s: %s", pos, err)
                if self._dead_letter is not None:
                    self._dead_letter(msg, err)
                out.settled.append(pos)
        out.extend(self.join.advance())
        self._apply(out)

    def _apply(self, out: JoinOutput) -> None:
        n_joined_labels = sum(1 for p in out.pairs if p.first_for_label)
        if n_joined_labels:
            self._m.feedback_labels.labels("joined").inc(n_joined_labels)
        self._quality.observe(out.pairs)
        if self._policy is not None:
            self._policy.observe(out.pairs)
        for row in out.rows:
            if self.store.append(row):
                self.stats.rows_written += 1
        for lab in out.unmatched:
            self._m.feedback_unmatched.inc()
            self._m.feedback_labels.labels("unmatched").inc()
            self.store.append_unmatched(lab.to_avro())
        self._to_settle.extend(out.settled)
        if self.store.needs_flush:
            self.checkpoint()

    def _after_batch(self) -> None:
        self._quality.publish()
        self._refresh_pending()
        if self._policy is None:
            return
        decision = self._policy.decide()
        if decision is None:
            return
        log.info("promotion decision: %s", decision.detail)
        ok = True
        if self._on_decision is not None:
            ok = self._on_decision(decision)
        if not ok:
            self._policy.failed(decision)

    def _refresh_pending(self) -> None:
        s = self.join.stats
        self._m.feedback_pending.labels("label").set(s.pending_labels)
        self._m.feedback_pending.labels("prediction").set(s.pending_predictions)

    def checkpoint(self) -> None:
        """Make buffered rows durable, then commit what is settled (module doc)."""
        self._last_checkpoint = time.monotonic()
        settle = self._to_settle
        self._to_settle = []
        self.store.flush()
        self.tracker.settle(settle)
        offsets = self.tracker.committable()
        if not offsets:
            return
        tps = [TopicPartition(t, p, off) for (t, p), off in offsets.items()]
        try:
            self._c.commit(offsets=tps, asynchronous=False)
        except Exception as exc:  # KafkaException: e.g. rebalance in progress
            log.warning("offset commit failed (will retry at the next checkpoint): %s", exc)
            return
        self.tracker.committed(offsets)
        self.stats.checkpoints += 1


def make_telemetry(worker_id: str, decision: PromotionDecision, note: str = "") -> Telemetry:
    return Telemetry(
        worker_id=worker_id,
        kind=decision.kind,
        time_ms=int(time.time() * 1000),
        model_versions={"primary": decision.primary_version, "shadow": decision.shadow_version},
        detail=decision.detail + (f"; {note}" if note else ""),
    )


def promote_shadow(
    topic: Any,
    decision: PromotionDecision,
    *,
    signer: Signer,
    verifier: Verifier,
) -> str:
    """Re-publish the shadow's signed artifact as ``<name>/primary`` (its archive copy is
    the source, else the shadow record itself; its own signature is verified first), then
    retire the shadow role. The old primary stays archived, so ``ModelTopic.rollback``
    restores it.

    Several feedback workers may reach the same decision (each sees its share of the
    labels): the topic's current state is read first, by the workers' rules
    (:func:`~streamscore.models.topic_state.fold`: forged or replayed records do not
    count), and a shadow that is no longer the shadow (already promoted, retired or
    replaced) is left alone. Returns what was done."""
    from ..models.container import verify_signature
    from ..models.topic_state import fold

    name, version = decision.model_name, decision.shadow_version
    state = fold(topic.read_all(), verifier, name=name)
    shadow = state.role(name, Role.SHADOW)
    if shadow.current != version or shadow.record is None:
        primary = state.role(name, Role.PRIMARY).current
        now = "none" if primary is None else f"v{primary}"
        return f"v{version} is no longer the shadow (primary is {now}): nothing to do"
    env = state.archive(name, version) or shadow.record
    verify_signature(env.artifact, env.signature, env.key_id, verifier)
    topic.publish(env.artifact, Role.PRIMARY, key=signer, publisher="auto-promotion")
    topic.retire(name, Role.SHADOW, key=signer, publisher="auto-promotion", keyring=verifier)
    return f"published v{version} as primary, shadow retired"
