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

Durable join state, and how offsets and state are committed together
--------------------------------------------------------------------
Each assigned join partition's state (pending predictions, early labels, written
markers) lives in an embedded RocksDB store under ``--state-dir``
(:class:`~streamscore.feedback.state.PartitionState`), mirrored to a compacted changelog
topic ``<join topic>.changelog`` (:mod:`streamscore.kafka.changelog`). At each checkpoint
(every ``checkpoint_s``, when the changes since the last one exceed the cache, and on
shutdown / revocation):

1. the ground-truth store makes the rows and unmatched labels produced so far durable
   (:meth:`GroundTruthStore.flush`: one Delta merge per table, committed to the table's
   log; if the table cannot be written, nothing else happens until the next checkpoint);
2. one Kafka transaction carries every partition's state changes (and its meta record:
   next input offset, watermark, pending counts) to the changelog **and** the consumer's
   offsets (``send_offsets_to_transaction``);
3. only once it is committed does the local store apply the same changes (one
   ``WriteBatch``, recording the changelog offset reached).

Steps 1 and 2 run on a checkpoint thread while the loop goes on joining: the checkpoint
seals the buffered rows (:meth:`GroundTruthStore.seal`), each changed partition's state
(:meth:`PartitionState.seal`: read through until applied, new changes gathering apart)
and the offsets reached, and step 3 applies exactly what was sealed, on the loop's thread,
once the thread is done (:meth:`FeedbackLoop._finish`). One checkpoint is in flight at a
time; the next one, a revocation, an assignment and the shutdown finish it first.

A crash (even SIGKILL) before step 2 commits rolls state and offsets back together: the
next owner resumes from the previous checkpoint and replays the same messages onto the
same state, which gives the same rows again (expiry is per-partition event time, checked
as each message is applied); rows made durable in step 1 before the crash are refused by
the store's one-row-per-event-id check, so **no row is lost and none is doubled**. The
local store is never ahead of the changelog: on assignment it is opened and caught up
from the changelog after its recorded offset (nothing to read after a clean stop; the
whole changelog on a fresh host), then the partition is consumed from the state's own
next offset. Nothing of the window is re-read from the join topic.

A message the loop cannot decode (or without a known ``streamscore.kind``) never blocks
its partition: it is handed to ``dead_letter`` (the CLI writes it to the dead-letter
topic), counted, and consumed. A schema registry that cannot answer is not bad input: the
batch, from the first message not yet joined, is put back
(:class:`~streamscore.kafka.putback.PutBack`: paused, polled so the worker stays in its
group, consumed again after a backoff).

One concern, hence its length: the feedback join's consume loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from ..core.config import FEEDBACK_BATCH
from ..core.errors import (
    AvroDecodeError,
    InfrastructureError,
    SerdeError,
    StateStoreError,
    StreamscoreError,
    UnknownKindError,
    ValidationError,
)
from ..core.records import Feedback, Position, Prediction, Role, Telemetry
from ..kafka.changelog import Changelog, TransactionAborted
from ..kafka.putback import PutBack, first_offsets
from ..metrics.series import Metrics
from ..serde.record_heads import HeadReader, Heads
from .groundtruth import FlushReport, GroundTruthStore, Sealed
from .join import JoinOutput, JoinState
from .labels import LabelReader
from .promotion import LiveQuality, PromotionDecision, PromotionPolicy
from .router import KIND_HEADER, LABEL, PREDICTION
from .state import PartitionState

if TYPE_CHECKING:
    from ..models.signing import Signer, Verifier

log = logging.getLogger(__name__)

_ROLES = {r.value: r for r in Role}
#: the head fields of a prediction the join holds it by (the prediction schema's names)
PREDICTION_HEAD = ("event_id", "event_time", "model_version", "role")

Decoder = Callable[[bytes | None], dict[str, Any]]


def _timestamp_ms(msg: Any) -> int | None:
    """The message's timestamp (epoch ms), None when it has none."""
    ts_type, ts = msg.timestamp()
    return int(ts) if ts_type != 0 and ts >= 0 else None


def _kind(msg: Any) -> bytes | None:
    hs = msg.headers()
    if not hs:
        return None
    k, v = hs[0]  # the router writes the kind as the only header
    if k != KIND_HEADER or type(v) is not bytes:
        for k, v in hs:
            if k == KIND_HEADER:
                return bytes(v) if v is not None else None
        return None
    return v


@dataclass
class FeedbackStats:
    predictions: int = 0
    labels: int = 0
    undecodable: int = 0
    rows_written: int = 0
    rows_already_stored: int = 0  # rows the table held already (re-read after a restart)
    checkpoints: int = 0


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    """A checkpoint in flight: what its thread returns, and what it sealed."""

    future: Future[tuple[FlushReport, dict[tuple[str, int], int] | None]]
    rows: Sealed
    states: dict[tuple[str, int], PartitionState]
    offsets: dict[tuple[str, int], int]


class FeedbackLoop:
    def __init__(
        self,
        *,
        consumer: Any,
        join_topic: str,
        decode_prediction: Decoder,
        decode_feedback: Decoder,
        read_label: LabelReader | None = None,
        read_heads: HeadReader | None = None,
        join: JoinState,
        store: GroundTruthStore,
        metrics: Metrics,
        quality: LiveQuality,
        policy: PromotionPolicy | None = None,
        on_decision: Callable[[PromotionDecision], bool] | None = None,
        stop: threading.Event,
        dead_letter: Callable[[Any, StreamscoreError], None] | None = None,
        changelog: Changelog | None = None,
        state_dir: Path | None = None,
        cache_entries: int = 20_000,
        max_changes: int = 50_000,
        checkpoint_s: float = 1.0,
        batch_size: int = FEEDBACK_BATCH,
        registry_backoff_s: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self._c = consumer
        self._topic = join_topic
        self._dead_letter = dead_letter
        self._dec_pred = decode_prediction
        self._dec_fb = decode_feedback
        #: the decoded label record -> Feedback, by the project's ``[labels]`` field names
        self._read_label = read_label or LabelReader()
        #: predictions checked whole in one vectorised pass, their head fields read
        #: (:class:`~streamscore.serde.record_heads.HeadReader`); the rest are decoded
        self._read_heads = read_heads
        self.join = join
        self.store = store
        self._m = metrics
        self._quality = quality
        self._policy = policy
        self._on_decision = on_decision
        self._stop = stop
        self._changelog = changelog
        self._state_dir = state_dir
        #: committed entries kept in memory (encoded), shared by the assigned partitions
        self._cache_entries = cache_entries
        self._assigned = 1
        #: state changes held in memory over every partition, a checkpoint in flight included
        #: (one starts at half of them: JoinState.needs_commit)
        self._max_changes = max_changes
        self._checkpoint_s = checkpoint_s
        self._batch = batch_size
        self._committed: dict[tuple[str, int], int] = {}
        self.stats = FeedbackStats()
        self._last_checkpoint = time.monotonic()
        self._put_back = PutBack(consumer, stop=stop, backoff_s=registry_backoff_s)
        #: the checkpoint in flight (one at a time) and the thread that writes it
        self._inflight: _Checkpoint | None = None
        self._checkpoints = ThreadPoolExecutor(1, thread_name_prefix="feedback-checkpoint")

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> FeedbackStats:
        self._c.subscribe(
            [self._topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not self._stop.is_set():
                msgs = self._c.consume(num_messages=self._batch, timeout=0.2)
                if msgs:
                    self._handle(msgs)
                self._after_batch()
                inflight = self._inflight
                if inflight is not None and inflight.future.done():
                    self._finish()
                if time.monotonic() - self._last_checkpoint >= self._checkpoint_s:
                    self.checkpoint(wait=False)
        finally:
            try:
                self.checkpoint()
            finally:
                self._close_partitions(list(self.join.partitions()))
                self._c.close()
                self._checkpoints.shutdown(wait=True)
        return self.stats

    def open_partition(self, topic: str, partition: int) -> PartitionState:
        """The partition's state: the local store, caught up from the changelog."""
        path = None if self._state_dir is None else self._state_dir / f"{topic}-{partition}"
        cache = max(1, self._cache_entries // self._assigned)
        state = PartitionState(path, cache_entries=cache)
        if self._changelog is not None:
            t0 = time.monotonic()
            try:
                n = self._changelog.restore(state, topic, partition)
            except StateStoreError as exc:
                log.warning("%s: restoring from scratch", exc)
                state.close()
                state = PartitionState(path, cache_entries=cache, fresh=True)
                n = self._changelog.restore(state, topic, partition)
            log.info(
                "join state %s[%d]: %d changelog records applied in %.2fs; resumes at "
                "offset %d with %d pending predictions, %d pending labels",
                topic,
                partition,
                n,
                time.monotonic() - t0,
                state.meta.input_offset,
                state.meta.pending_predictions,
                state.meta.pending_labels,
            )
        self.join.open_partition((topic, partition), state)
        # labels received = from the topic, or restored pending with a partition's state
        self._m.feedback_received.inc(state.meta.pending_labels)
        return state

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])
        self._finish()  # (a revocation has finished it already, unless none came first)
        # rows recently written by any worker: a re-read message of theirs settles at once
        try:
            n = self.store.refresh()
            log.info("%d row(s) joined within the last %d ms are known", n, self.store.recent_ms)
        except InfrastructureError as exc:  # a shortcut only: the table's merge decides
            log.warning(
                "%s; re-read messages whose row is written wait for their window instead "
                "of settling at once (the table still keeps one row per event id)",
                exc,
            )
        self._assigned = max(1, len(partitions))
        if self._changelog is not None:
            self._changelog.look_up_ends([(tp.topic, tp.partition) for tp in partitions])
        for tp in partitions:
            state = self.open_partition(tp.topic, tp.partition)
            if state.meta.input_offset >= 0:
                tp.offset = state.meta.input_offset
                self._committed[(tp.topic, tp.partition)] = state.meta.input_offset
        consumer.assign(partitions)
        if self._put_back.waiting:
            consumer.pause(partitions)
        self._refresh_pending()

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        log.info("revoked %s: checkpoint, then close their state", len(partitions))
        self._put_back.revoked(partitions)
        try:
            self.checkpoint()
        except StreamscoreError as exc:  # never raise out of a rebalance callback
            log.error("checkpoint on revoke failed: %s", exc)
            self._rollback()
        self._close_partitions([(p.topic, p.partition) for p in partitions])

    def _on_lost(self, _consumer: Any, partitions: list[Any]) -> None:
        log.warning("lost %s: their uncommitted state is dropped", len(partitions))
        self._put_back.revoked(partitions)
        self._rollback()
        self._close_partitions([(p.topic, p.partition) for p in partitions])

    def _close_partitions(self, tps: list[tuple[str, int]]) -> None:
        before = self.join.stats.released
        for tp in tps:
            self.join.close_partition(tp)
            self._committed.pop(tp, None)
        self._m.feedback_labels.labels("released").inc(self.join.stats.released - before)
        self._refresh_pending()

    # -------------------------------------------------------------------- work
    def _registry_away(self, msgs: list[Any], exc: InfrastructureError) -> None:
        self._m.registry_unavailable_batches.inc()
        self._put_back(first_offsets(msgs), f"{type(exc).__name__}: {exc}")

    def _handle(self, msgs: list[Any]) -> None:
        kinds: list[bytes | None] = []
        positions: list[Position | None] = []
        pred_i: list[int] = []
        label_i: list[int] = []
        keys: dict[tuple[str, int], list[bytes]] = {}
        for i, msg in enumerate(msgs):
            if msg.error() is not None:
                kinds.append(None)
                positions.append(None)
                continue
            tp = (msg.topic(), msg.partition())
            positions.append((*tp, msg.offset()))
            kind = _kind(msg)
            kinds.append(kind)
            if kind == PREDICTION:
                pred_i.append(i)
            elif kind == LABEL:
                label_i.append(i)
            else:
                continue
            key = msg.key()
            if key is not None:  # the router's key: the event id
                ks = keys.get(tp)
                if ks is None:
                    ks = keys[tp] = []
                ks.append(key)
        heads, checked, pred_i = self._heads(msgs, pred_i)
        try:  # batch decode; a registry away puts the whole batch back
            decoded: dict[int, Any] = _decode_batch(self._dec_pred, msgs, pred_i)
            decoded.update(self._labels(msgs, label_i))
        except InfrastructureError as exc:
            self._registry_away(msgs, exc)
            return
        self._put_back.ok()
        for tp, ks in keys.items():  # one multi-get per partition, not one get per message
            self.join.prefetch(tp, (k.decode("utf-8", "replace") for k in ks))
        if self._read_heads is not None and (label_i or heads):
            self._predecode(msgs, heads, checked, label_i, decoded)
        out = JoinOutput()
        join = self.join
        duplicate = join.stats.duplicate
        n_labels = 0
        done = 0  # messages applied (whatever they were): their partitions resume after
        try:
            for i, msg in enumerate(msgs):
                done = i  # the messages before this one are applied
                pos = positions[i]
                if pos is None:
                    err = msg.error()
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", err)
                    continue
                try:
                    kind = kinds[i]
                    rec = decoded.get(i)
                    if isinstance(rec, Exception):  # the typed error of a bad message
                        raise rec
                    if kind == PREDICTION:
                        h = heads.get(i)
                        if h is not None:
                            eid, t, version, role = h
                            join.add_head(eid, t, _ROLES[role], version, msg.value(), pos, out)
                        else:
                            assert isinstance(rec, dict)
                            p = Prediction.from_avro(rec, pos)
                            join.add_prediction(p, msg.value(), out=out)
                        self.stats.predictions += 1
                    elif kind == LABEL:
                        assert isinstance(rec, Feedback)
                        n_labels += 1
                        join.add_label(rec, out=out)
                    else:
                        raise UnknownKindError(
                            f"join-topic message without a known {KIND_HEADER} header ({kind!r})",
                            field=KIND_HEADER,
                        )
                except (SerdeError, ValidationError, KeyError, ValueError, TypeError) as exc:
                    # never blocks the partition: dead-lettered, counted, logged, consumed
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
            done = len(msgs)
        finally:
            self._consumed(positions[:done])
        join.predecode({})
        if n_labels:
            self.stats.labels += n_labels
            self._m.feedback_received.inc(n_labels)
        if join.stats.duplicate > duplicate:
            self._m.feedback_labels.labels("duplicate").inc(join.stats.duplicate - duplicate)
        self._apply(out)

    def _consumed(self, positions: list[Position | None]) -> None:
        """The partitions of ``positions`` resume after the last of each."""
        last: dict[tuple[str, int], int] = {}
        for pos in positions:
            if pos is not None:
                last[(pos[0], pos[1])] = pos[2]
        for (t, part), offset in last.items():
            self.join.consumed((t, part, offset))

    def _heads(
        self, msgs: list[Any], idx: list[int]
    ) -> tuple[dict[int, tuple[str, int, int, str]], Heads | None, list[int]]:
        """The predictions of the batch the head reader accepts, by index: (event id,
        event time, model version, role); what the reader made of the batch; and the
        indices left to the decoder."""
        if self._read_heads is None or not idx:
            return {}, None, idx
        h = self._read_heads([msgs[i].value() for i in idx])
        if not h.rows:
            return {}, None, idx
        c = h.columns
        heads = {
            idx[j]: (eid, t, v, r)
            for j, eid, t, v, r in zip(
                h.rows, c["event_id"], c["event_time"], c["model_version"], c["role"], strict=True
            )
        }
        return heads, h, [i for i in idx if i not in heads]

    def _predecode(
        self,
        msgs: list[Any],
        heads: dict[int, tuple[str, int, int, str]],
        checked: Heads | None,
        label_i: list[int],
        decoded: dict[int, Any],
    ) -> None:
        """The predictions the batch's labels will meet (held by the state, or in the
        batch), and the batch's predictions whose label the state holds, decoded at once,
        column-wise, for the join to take (:meth:`JoinState.predecode`). The batch's own
        were checked as they were read (``checked``); the state's are checked again."""
        reader = self._read_heads
        assert reader is not None
        join = self.join
        labelled: set[tuple[str, int, str]] = set()
        stored: list[bytes] = []
        for i in label_i:
            lab = decoded.get(i)
            if not isinstance(lab, Feedback) or lab.position is None:
                continue
            t, part = lab.position[0], lab.position[1]
            labelled.add((t, part, lab.event_id))
            e = join.peek((t, part), lab.event_id)
            if e is not None and e.label is None:
                for slot in e.preds.values():
                    raw = slot[0]
                    if slot[1] is None and isinstance(raw, bytes) and raw:
                        stored.append(raw)
        mine: list[int] = []  # positions in checked.rows
        values: list[bytes] = []
        for j, (i, h) in enumerate(heads.items()):  # a label of the batch, or the state's
            m = msgs[i]
            tp = (m.topic(), m.partition())
            if (*tp, h[0]) not in labelled:
                e = join.peek(tp, h[0])
                if e is None or e.label is None:
                    continue
            mine.append(j)
            values.append(m.value())
        ready: dict[bytes, Prediction] = {}
        if stored:
            rows, columns = reader.columns(stored)
            if rows:
                preds = Prediction.many_from_columns(columns)
                ready.update((stored[r], p) for r, p in zip(rows, preds, strict=True))
        if mine and checked is not None:
            preds = Prediction.many_from_columns(reader.columns_of(checked, mine))
            ready.update(zip(values, preds, strict=True))
        if ready:
            join.predecode(ready)

    def _labels(self, msgs: list[Any], idx: list[int]) -> dict[int, Feedback | StreamscoreError]:
        """The batch's labels decoded and read as :class:`Feedback` at once, by index (a
        message that is not a label: its typed error). The decoder's records go to the
        label reader as they come (column-wise, when the decoder read the batch so).
        Raises :class:`InfrastructureError` (the registry away) before anything."""
        out: dict[int, Feedback | StreamscoreError] = {}
        if not idx:
            return out
        many = getattr(self._dec_fb, "decode_many", None)
        if many is None:
            good_i: list[int] = []
            records: Any = []
            for i, rec in _decode_batch(self._dec_fb, msgs, idx).items():
                if isinstance(rec, StreamscoreError):
                    out[i] = rec
                else:
                    good_i.append(i)
                    records.append(rec)
        else:
            good, records, failed = many([msgs[i].value() for i in idx])
            for j, exc in failed:
                if isinstance(exc, InfrastructureError):
                    raise exc
                out[idx[j]] = exc
            good_i = [idx[j] for j in good]
        if not good_i:
            return out
        positions: list[Position | None] = []
        stamps: list[int | None] = []
        for i in good_i:
            m = msgs[i]
            positions.append((m.topic(), m.partition(), m.offset()))
            stamps.append(_timestamp_ms(m))
        try:
            labels: list[Any] = self._read_label.read_many(records, positions, stamps)
        except (KeyError, ValueError, TypeError):  # then each record says for itself
            labels = []
            for rec, pos, ts in zip(records, positions, stamps, strict=True):
                try:
                    labels.append(self._read_label(rec, pos, ts))
                except (StreamscoreError, KeyError, ValueError, TypeError) as exc:
                    labels.append(exc)
        for i, lab in zip(good_i, labels, strict=True):
            out[i] = lab
        return out

    def _apply(self, out: JoinOutput) -> None:
        n_joined_labels = sum(1 for p in out.pairs if p.first_for_label)
        if n_joined_labels:
            self._m.feedback_labels.labels("joined").inc(n_joined_labels)
        self._quality.observe(out.pairs)
        if self._policy is not None:
            self._policy.observe(out.pairs)
        # unmatched labels first: an event's label that expired unmatched came before any
        # row of its event made in the same batch (a row's later labels are duplicates),
        # and appended in that order the store keeps what it keeps across two batches
        for lab in out.unmatched:
            self._m.feedback_unmatched.inc()
            self._m.feedback_labels.labels("unmatched").inc()
            self.store.append_unmatched(lab.to_avro())
        for row in out.rows:
            if self.store.append(row):
                self.stats.rows_written += 1
        if self.store.needs_flush or self.join.needs_commit(self._max_changes):
            self.checkpoint(wait=False)

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

    def checkpoint(self, *, wait: bool = True) -> None:
        """Rows durable, then state changes and offsets committed together (module doc).
        The checkpoint in flight, if any, is finished first. ``wait=False``: the rows
        are merged and the changelog written on the checkpoint thread while the join
        goes on (:meth:`_finish` completes it once it is done)."""
        self._last_checkpoint = time.monotonic()
        self._finish()
        if self._start() and wait:
            self._finish()

    def _start(self) -> bool:
        """Seal the rows, the changed partitions' state and their offsets, and hand them
        to the checkpoint thread. False when there was nothing to commit."""
        rows = self.store.seal()
        parts = self.join.partitions()
        offsets = {
            tp: s.meta.input_offset
            for tp, s in parts.items()
            if s.meta.input_offset >= 0 and self._committed.get(tp) != s.meta.input_offset
        }
        changed = {tp: s for tp, s in parts.items() if s.dirty or tp in offsets}
        if not changed and not rows.rows and not rows.unmatched:
            self.store.maintain()  # compaction / vacuum when their interval has passed
            return False
        changes = {tp: s.seal() for tp, s in changed.items()}
        group = self._c.consumer_group_metadata() if self._changelog is not None else None
        future = self._checkpoints.submit(self._persist, rows, changes, offsets, group)
        self._inflight = _Checkpoint(future, rows, changed, offsets)
        return True

    def _persist(
        self,
        rows: Sealed,
        changes: dict[tuple[str, int], list[tuple[bytes, bytes | None]]],
        offsets: dict[tuple[str, int], int],
        group: Any,
    ) -> tuple[FlushReport, dict[tuple[str, int], int] | None]:
        """The checkpoint thread's part: the rows merged (durable), then, only then, the
        state changes and the offsets in one changelog transaction."""
        took = self._m.checkpoint_seconds
        t0 = time.monotonic()
        flushed = self.store.write(rows)
        t1 = time.monotonic()
        if flushed.rows or flushed.unmatched:
            took.labels("groundtruth").observe(t1 - t0)
        if self._changelog is None or not changes:
            return flushed, None
        at = self._changelog.commit(changes, offsets, group)
        took.labels("changelog").observe(time.monotonic() - t1)
        return flushed, at

    def _finish(self) -> None:
        """Complete the checkpoint in flight (waiting for its thread): on success the
        sealed state is applied to the local stores; with the table away everything
        sealed goes back, for the next checkpoint; an aborted transaction rolls state
        and offsets back to the last checkpoint."""
        c, self._inflight = self._inflight, None
        if c is None:
            return
        try:
            flushed, at = c.future.result()
        except InfrastructureError as exc:  # storage away: keep everything, retry later
            log.error("ground truth not written (retried at the next checkpoint): %s", exc)
            self._unseal(c)
            return
        except TransactionAborted as exc:
            log.warning("%s: state and offsets roll back to the last checkpoint", exc)
            self.store.written(c.rows)  # durable before the transaction was tried
            self._rollback()
            return
        except BaseException:  # e.g. the changelog producer fenced: raised, nothing applied
            self._unseal(c)
            raise
        self.store.written(c.rows)
        if flushed.already_stored:
            log.info("%d row(s) were already in the table (re-read)", flushed.already_stored)
        self.stats.rows_already_stored += flushed.already_stored
        if c.states:
            t0 = time.monotonic()
            for tp, s in c.states.items():
                s.applied(s.meta.changelog_offset if at is None else at[tp])
            self._m.checkpoint_seconds.labels("state").observe(time.monotonic() - t0)
            if self._changelog is None and c.offsets:
                tps = [TopicPartition(t, p, off) for (t, p), off in c.offsets.items()]
                try:
                    self._c.commit(offsets=tps, asynchronous=False)
                except Exception as exc:  # KafkaException: e.g. rebalance in progress
                    log.warning("offset commit failed (retried at the next checkpoint): %s", exc)
                    return
            self._committed.update(c.offsets)
            self.stats.checkpoints += 1
        self.store.maintain()  # compaction / vacuum when their interval has passed

    def _unseal(self, c: _Checkpoint) -> None:
        """A checkpoint that committed nothing: what it sealed goes back, for the next."""
        self.store.unseal(c.rows)
        for s in c.states.values():
            s.unseal()

    def _rollback(self) -> None:
        """Forget what was not committed and resume every partition from its state."""
        self._finish()  # what is in flight: applied if committed, else sealed back
        parts = self.join.partitions()
        for tp in list(parts):
            self.join.close_partition(tp)
            self._committed.pop(tp, None)
            state = self.open_partition(*tp)
            offset = state.meta.input_offset
            with contextlib.suppress(Exception):
                if offset < 0:  # no checkpoint yet: from the group's commit, if any
                    offset = self._last_commit(tp)
                self._c.seek(TopicPartition(tp[0], tp[1], offset))

    def _last_commit(self, tp: tuple[str, int]) -> int:
        """The offset the group last committed for ``tp``; none: the beginning (the
        consumer's ``auto.offset.reset``), so nothing consumed since is skipped."""
        (got,) = self._c.committed([TopicPartition(tp[0], tp[1])], timeout=10)
        return int(got.offset) if got.offset >= 0 else OFFSET_BEGINNING


def _decode_batch(
    dec: Decoder, msgs: list[Any], idx: list[int]
) -> dict[int, dict[str, Any] | StreamscoreError]:
    """Decode ``msgs[i]`` for ``i`` in ``idx`` in one batch when the decoder can (the
    score worker's :meth:`AvroDeserializer.decode_many`), else one by one. A registry
    that cannot answer raises; other failures are returned per message."""
    out: dict[int, dict[str, Any] | StreamscoreError] = {}
    if not idx:
        return out
    values = [msgs[i].value() for i in idx]
    many = getattr(dec, "decode_many", None)
    if many is not None:
        good, records, failed = many(values)
        for j, rec in zip(good, records, strict=True):
            out[idx[j]] = dict(rec)
        for j, exc in failed:
            if isinstance(exc, InfrastructureError):
                raise exc
            out[idx[j]] = exc
        return out
    require = getattr(dec, "require", None)
    if require is not None:
        require(values)
    for j, v in zip(idx, values, strict=True):
        try:
            out[j] = dec(v)
        except InfrastructureError:
            raise
        except SerdeError as exc:
            out[j] = exc
    return out


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
