"""The scoring loop: poll a micro-batch, score it, hand outputs to the sink, repeat.

Wiring lives in ``cli.py``, batch logic in :mod:`streamscore.score.batch`, delivery and
commits in :mod:`streamscore.kafka.delivery`, model updates in
:mod:`streamscore.models.watcher` / :mod:`streamscore.models.updates`; this module only
loops, and handles rebalances, backpressure, put-backs, output refusals and the stop
signal between batches (one concern: the score worker's loop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from ..core.config import ScoringSettings, TopicSettings
from ..core.errors import AccessError, InfrastructureError, OutputTooLargeError, StreamscoreError
from ..core.records import Telemetry
from ..kafka.access import access_error
from ..kafka.dead_letters import dead_letter, source_headers
from ..kafka.delivery import (
    AtLeastOnceSink,
    Bulk,
    OutBatch,
    OutMessage,
    RetryBatch,
    TooLarge,
    TransactionalSink,
)
from ..kafka.output_limits import OutputLimits, wire_size
from ..kafka.putback import PutBack
from ..metrics.collectors import Row
from ..metrics.series import Metrics
from ..models.runtime import LoadedModel
from ..models.store import ModelStore
from .batch import (
    BatchScorer,
    DeadLetter,
    InMessage,
    MessageBatch,
    ScoredBatch,
)
from .drift import DriftMonitor, DriftReport

log = logging.getLogger(__name__)

Sink = AtLeastOnceSink | TransactionalSink


@dataclass
class LoopStats:
    batches: int = 0
    consumed: int = 0


class PartitionTracker:
    """Owned partitions and the last position and high watermark the loop recorded for
    each; ``lag_rows`` (bound to ``streamscore_consumer_lag``) computes the lag from them
    at scrape time, on the HTTP server's thread, without calling the consumer. A
    partition revoked or lost leaves no series."""

    def __init__(self, metrics: Metrics) -> None:
        self._lock = threading.Lock()
        self._owned: set[tuple[str, int]] = set()
        #: (topic, partition) -> (position, high watermark), as last recorded
        self._last: dict[tuple[str, int], tuple[int, int]] = {}
        metrics.consumer_lag.bind(self.lag_rows)

    @property
    def owned(self) -> set[tuple[str, int]]:
        with self._lock:
            return set(self._owned)

    def assigned(self, partitions: Sequence[Any]) -> None:
        with self._lock:
            for tp in partitions:
                self._owned.add((tp.topic, tp.partition))

    def revoked(self, partitions: Sequence[Any]) -> None:
        with self._lock:
            for tp in partitions:
                key = (tp.topic, tp.partition)
                self._owned.discard(key)
                self._last.pop(key, None)

    def record(self, consumer: Any, *, cached: bool = False) -> None:
        """Record each owned partition's position and high watermark (the loop's thread).

        ``cached=True`` takes the high watermarks from the consumer's latest fetch
        responses (no broker round trip: what the loop records after every poll while it
        consumes); ``cached=False`` asks the broker (one blocking round trip per
        partition: only while consumption is paused, when no fetch updates the cache).
        A partition whose offsets cannot be read keeps its last recorded values."""
        with self._lock:
            owned = sorted(self._owned)
        if not owned:
            return
        try:
            positions = consumer.position([TopicPartition(t, p) for t, p in owned])
        except KafkaException:
            return
        seen: dict[tuple[str, int], tuple[int, int]] = {}
        for tp in positions:
            try:
                _lo, hi = consumer.get_watermark_offsets(tp, timeout=0.5, cached=cached)
            except KafkaException:
                continue
            if hi >= 0:
                seen[(tp.topic, tp.partition)] = (tp.offset, hi)
        with self._lock:  # a partition revoked meanwhile stays out
            self._last.update((k, v) for k, v in seen.items() if k in self._owned)

    def lag_rows(self) -> tuple[list[Row]]:
        """High watermark minus position per owned partition (the high watermark when
        there is no position yet), from the last recorded values."""
        with self._lock:
            last = sorted(self._last.items())
        return (
            [
                ((topic, str(part)), float(max(0, hi - pos) if pos >= 0 else hi))
                for (topic, part), (pos, hi) in last
            ],
        )


def _offset_ranges(
    msgs: list[Any], topic: str | None = None
) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    """First and last offset seen per (topic, partition). ``topic``: the one topic every
    message is from (the loop subscribes to one), so that a message's topic is not asked;
    offsets are then read only where a run of one partition starts or ends (a partition's
    offsets only grow through a batch)."""
    first: dict[tuple[str, int], int] = {}
    last: dict[tuple[str, int], int] = {}
    if topic is None:
        for m in msgs:
            tp = (m.topic(), m.partition())
            if tp not in first:
                first[tp] = m.offset()
            last[tp] = m.offset()
        return first, last
    parts = np.fromiter([m.partition() for m in msgs], dtype=np.int64, count=len(msgs))
    breaks = (np.flatnonzero(parts[1:] != parts[:-1]) + 1).tolist()
    for a, b in zip([0, *breaks], [*breaks, len(msgs)], strict=True):
        tp = (topic, int(parts[a]))
        if tp not in first:
            first[tp] = msgs[a].offset()
        last[tp] = msgs[b - 1].offset()
    return first, last


class DriftTracker:
    """One drift monitor for the active primary version, fed once per batch (a few
    vectorised NumPy calls); ``gauge_rows`` (bound to the drift gauges) reads its report
    at scrape time, so only the current version has series."""

    def __init__(self, metrics: Metrics, *, window: int = 5000) -> None:
        self._window = window
        self._lock = threading.Lock()  # the loop updates, the scrape thread reads
        self._version: tuple[str, int] | None = None
        self._monitor: DriftMonitor | None = None
        metrics.drift.bind(self.gauge_rows)

    def observe(self, model: LoadedModel | None, x: Any, scores: Any) -> None:
        if model is None or x is None or scores is None:
            return
        key = (model.meta.name, model.meta.version)
        if key != self._version:
            monitor: DriftMonitor | None
            try:
                monitor = DriftMonitor.from_meta(model.meta, window=self._window)
            except (ValueError, KeyError) as exc:  # a bundle without reference histograms
                log.warning("no drift monitoring for %s v%s: %s", key[0], key[1], exc)
                monitor = None
            with self._lock:
                self._version, self._monitor = key, monitor
        if self._monitor is None:
            return
        with self._lock:
            self._monitor.update(x, scores)

    def report(self) -> DriftReport | None:
        """The current window's report (None before the first batch of a monitored model)."""
        with self._lock:
            return self._monitor.report() if self._monitor is not None else None

    def gauge_rows(self) -> tuple[list[Row], ...]:
        rep = self.report()
        return rep.gauge_rows() if rep is not None else ()


class ScoreLoop:
    def __init__(
        self,
        *,
        consumer: Any,
        sink: Sink,
        scorer: BatchScorer,
        store: ModelStore,
        metrics: Metrics,
        settings: ScoringSettings,
        topics: TopicSettings,
        encode_telemetry: Callable[[dict[str, Any]], bytes],
        stop: threading.Event,
        lag_interval_s: float = 1.0,
        registry_backoff_s: tuple[float, float] = (0.5, 10.0),
        limits: OutputLimits | None = None,
    ) -> None:
        self._consumer = consumer
        self._sink = sink
        self._scorer = scorer
        #: whether the scorer copies event headers to predictions (reads them per message)
        self._copies_headers = bool(getattr(scorer, "copies_headers", False))
        self._store = store
        self._m = metrics
        self._s = settings
        self._topics = topics
        self._encode_telemetry = encode_telemetry
        self._stop = stop
        self._lag_interval_s = lag_interval_s
        self._put_back = PutBack(consumer, stop=stop, backoff_s=registry_backoff_s, serve=sink.poll)
        self.partitions = PartitionTracker(metrics)
        self.stats = LoopStats()
        self.drift = DriftTracker(metrics) if settings.drift else None
        self._paused = False
        #: the largest record each output topic takes (outputs are sized before produce)
        self._limits = limits or OutputLimits()

    # ---- rebalance callbacks: run inside consume(), i.e. between batches
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])
        self.partitions.assigned(partitions)
        if self._paused or self._put_back.waiting:
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("revoked %s", [(p.topic, p.partition) for p in partitions])
        self._sink.drain()  # every output acknowledged, offsets committed
        self.partitions.revoked(partitions)
        self._put_back.revoked(partitions)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        log.warning("lost %s", [(p.topic, p.partition) for p in partitions])
        self._sink.discard()
        self.partitions.revoked(partitions)
        self._put_back.revoked(partitions)

    def run(self) -> LoopStats:
        c = self._consumer
        c.subscribe(
            [self._topics.events],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        wait_s = self._s.batch_wait_ms / 1000.0
        next_broker_lag = 0.0
        try:
            while not self._stop.is_set():
                self._sink.poll(0)
                self._backpressure()
                msgs = c.consume(num_messages=self._s.batch_size, timeout=wait_s)
                if msgs:
                    self._batch(msgs)
                # the lag gauge's inputs: from the last fetch after every poll while
                # consuming (local calls); from the broker while paused, once a while
                if not self._paused:
                    self.partitions.record(c, cached=True)
                elif (now := time.monotonic()) >= next_broker_lag:
                    self.partitions.record(c, cached=False)
                    next_broker_lag = now + self._lag_interval_s
        finally:
            self._shutdown()
        return self.stats

    def _backpressure(self) -> None:
        backlog = self._sink.backlog
        high = self._s.max_in_flight
        if not self._paused and backlog > high:
            self._consumer.pause(self._consumer.assignment())
            self._paused = True
            self._m.backpressure_pauses.inc()
            log.info("producer queue at %d messages: consumption paused", backlog)
        elif self._paused and backlog < high // 2:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False
            log.info("producer queue drained to %d: consumption resumed", backlog)
        if self._paused:
            self._sink.poll(0.05)

    def _batch(self, msgs: list[Any]) -> None:
        good = [m for m in msgs if m.error() is None]
        if len(good) != len(msgs):
            for m in msgs:
                err = m.error()
                if err is None:
                    continue
                refused = access_error(None, err, topic=m.topic())
                if refused is not None:  # credentials, TLS, an ACL: no retry can help
                    raise refused
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
        if not good:
            return
        values: list[bytes | None] = [m.value() for m in good]
        keys: list[bytes | None] = [m.key() for m in good]
        first, last = _offset_ranges(good, self._topics.events)

        def make(i: int) -> InMessage:  # only for dead letters and late routing
            m = good[i]
            return InMessage(
                values[i], keys[i], m.topic(), m.partition(), m.offset(), m.timestamp()[1]
            )

        snapshot = self._store.snapshot()
        sources: list[tuple[OutMessage, DeadLetter]] = []
        try:
            # the registry away: raised before any scoring work (decode fetches first)
            headers = [m.headers() for m in good] if self._copies_headers else None
            scored = self._scorer.score(MessageBatch(values, keys, make, headers), snapshot)
            t0 = time.perf_counter()
            out = self._outputs(scored, snapshot.versions(), first, last, sources)
        except InfrastructureError as exc:
            self._m.registry_unavailable_batches.inc()
            self._put_back(first, f"{type(exc).__name__}: {exc}")
            if self._paused:  # backpressure still on: the put-back resumed everything
                self._consumer.pause(self._consumer.assignment())
            return
        self._put_back.ok()
        batch = OutBatch(
            out,
            {k: v + 1 for k, v in last.items()},
            first,
            bulk=self._prediction_bulk(scored),
            on_too_large=self._rescuer(scored, sources, snapshot.versions().get("primary")),
        )
        try:
            self._sink.send(batch)
        except RetryBatch:
            self._m.batches_aborted.inc()
            return
        produce_s = time.perf_counter() - t0
        # drift after the batch is sent, timed as its own stage: a batch that an
        # exactly-once abort sends again (RetryBatch above) is observed once, when it is sent
        drift_s: float | None = None
        if self.drift is not None:
            self.drift.observe(snapshot.primary, scored.primary_raw_x, scored.primary_scores)
            drift_s = time.perf_counter() - t0 - produce_s
        self._record(scored, produce_s, drift_s)

    def _prediction_bulk(self, scored: ScoredBatch) -> list[Bulk]:
        """The answers to the predictions topic, the shadow's to the shadow topic (both
        in the batch's transaction, under exactly-once)."""
        t = self._topics
        preds, headers, k = scored.predictions, scored.prediction_headers, scored.n_answers
        if k == len(preds):
            return [(t.predictions, preds, headers)]
        answers, shadows = headers.split(k)
        return [(t.predictions, preds[:k], answers), (t.predictions_shadow, preds[k:], shadows)]

    def _outputs(
        self,
        scored: ScoredBatch,
        versions: dict[str, int],
        first: dict[tuple[str, int], int],
        last: dict[tuple[str, int], int],
        sources: list[tuple[OutMessage, DeadLetter]] | None = None,
    ) -> list[OutMessage]:
        t = self._topics
        out: list[OutMessage] = []  # the predictions go in bulk
        sources = [] if sources is None else sources
        primary_version = versions.get("primary")
        late: list[OutMessage] = []
        for m in scored.late_routed:
            headers = source_headers(m.topic, m.partition, m.offset)
            size = wire_size(m.key, m.value, headers)
            if size <= self._limits.limit(t.late):
                late.append(OutMessage(t.late, m.key, m.value, headers))
                sources.append((late[-1], DeadLetter(m, self._too_large(t.late, size))))
            else:  # larger than the late topic takes: a dead letter (cut to fit) instead
                scored.dead_letters.append(DeadLetter(m, self._too_large(t.late, size)))
        for dl in scored.dead_letters:
            out.append(self._dead_letter(dl, primary_version))
            sources.append((out[-1], dl))
        out.extend(late)
        tele = Telemetry(
            worker_id=self._s.worker_id,
            kind="batch",
            time_ms=int(time.time() * 1000),
            topic=t.events,
            partition_offsets={p: (first[(tp, p)], last[(tp, p)]) for (tp, p) in first},
            batch_size=scored.n_messages,
            valid=scored.n_scored,
            invalid=len(scored.dead_letters),
            late=scored.n_late,
            timings=scored.timings,
            model_versions=versions,
        )
        out.append(
            OutMessage(
                t.telemetry, self._s.worker_id.encode(), self._encode_telemetry(tele.to_avro())
            )
        )
        return out

    def _dead_letter(self, dl: DeadLetter, primary_version: int | None) -> OutMessage:
        """The dead letter of ``dl``, cut to fit the dead-letter topic if it is larger
        than the topic takes (:func:`~streamscore.kafka.dead_letters.dead_letter`)."""
        return dead_letter(
            dl.message,
            dl.error,
            dlq_topic=self._topics.dlq,
            worker_id=self._s.worker_id,
            model_version=primary_version,
            limit=self._limits.limit(self._topics.dlq),
        )

    def _rescuer(
        self,
        scored: ScoredBatch,
        sources: list[tuple[OutMessage, DeadLetter]],
        primary_version: int | None,
    ) -> TooLarge:
        """What replaces an output that the producer or the broker refused as too large
        although it was sized against the limits read at start (they were lowered since,
        or the client's own limit is lower): the limit is lowered to below the refused
        size, and the message the output came from is dead-lettered (a dead letter is
        cut again, to the lowered limit). The batch goes on; nothing is lost."""
        t = self._topics
        unpredicted: set[int] = set()

        def rescue(refused: OutMessage) -> OutMessage | None:
            size = wire_size(refused.key, refused.value, refused.headers)
            self._limits.lower(refused.topic, size)
            dl: DeadLetter | None = None
            if refused.topic in (t.predictions, t.predictions_shadow):
                for i, (k, v) in enumerate(scored.predictions):
                    if i not in unpredicted and v == refused.value and k == refused.key:
                        unpredicted.add(i)
                        scored.unpredict(i)  # counted as a dead letter instead
                        dl = DeadLetter(
                            scored.prediction_source(i), self._too_large(refused.topic, size)
                        )
                        break
            else:
                for o, source in sources:
                    if o is refused or (
                        o.topic == refused.topic
                        and o.key == refused.key
                        and o.value == refused.value
                    ):
                        dl = source
                        break
            if dl is None:
                return None
            if refused.topic != t.dlq:
                self._m.invalid_events.labels(dl.error.reason).inc()
                self._m.dead_letters.labels(dl.error.reason).inc()
            repl = self._dead_letter(dl, primary_version)
            sources.append((repl, dl))
            log.warning(
                "%s[%d]@%d: an output of %d bytes refused by %s: dead-lettered (%s)",
                dl.message.topic,
                dl.message.partition,
                dl.message.offset,
                size,
                refused.topic,
                dl.error.reason,
            )
            return repl

        return rescue

    def _too_large(self, topic: str, size: int) -> OutputTooLargeError:
        limit = self._limits.limit(topic)
        return OutputTooLargeError(
            f"an output of {size} bytes is more than topic {topic} accepts ({limit} bytes)",
            size=size,
            limit=limit,
            topic=topic,
        )

    def _record(self, scored: ScoredBatch, produce_s: float, drift_s: float | None = None) -> None:
        m = self._m
        self.stats.batches += 1
        self.stats.consumed += scored.n_messages
        m.events_consumed.labels(self._topics.events).inc(scored.n_messages)
        m.batch_size.observe(scored.n_messages)
        tm = scored.timings
        for stage, secs in (
            ("decode", tm.decode_s),
            ("validate", tm.validate_s),
            ("features", tm.features_s),
            ("predict", tm.predict_s),
            ("encode", tm.encode_s),
            ("produce", produce_s),
        ):
            m.stage_seconds.labels(stage).observe(secs)
        if drift_s is not None:
            m.stage_seconds.labels("drift").observe(drift_s)
        for ro in scored.outputs:
            if ro.count:
                m.predictions.labels(ro.model_name, str(ro.model_version), ro.role.value).inc(
                    ro.count
                )
            if ro.degraded and ro.scores.size == 0:
                m.degraded_predictions.labels(ro.model_name).inc(ro.degraded)
            sample = (
                ro.scores if ro.scores.size <= 64 else ro.scores[:: max(1, ro.scores.size // 64)]
            )
            if sample.size:
                m.scores.labels(ro.role.value).observe_many(sample)
        for dl in scored.dead_letters:
            m.invalid_events.labels(dl.error.reason).inc()
            m.dead_letters.labels(dl.error.reason).inc()
        if scored.n_late:
            m.late_events.labels(self._s.late_policy.value).inc(scored.n_late)
        for role, n in scored.shadow_skipped.items():
            m.shadow_skipped.labels(role).inc(n)
        if scored.event_times_ms.size:
            now_ms = time.time() * 1000.0
            lat = (now_ms - scored.event_times_ms) / 1000.0
            # a bounded sample per batch keeps metrics cost O(1) per batch
            step = max(1, lat.size // 64)
            m.end_to_end_latency.observe_many(lat[::step])

    def _shutdown(self) -> None:
        log.info("stopping: draining outputs, committing, leaving the group")
        try:
            self._sink.drain()
        except AccessError:  # the cause is reported once, by whoever stops the worker
            log.info("outputs refused on shutdown too: their input offsets stay uncommitted")
        except StreamscoreError as exc:
            log.error("could not drain outputs on shutdown: %s", exc)
        finally:
            self._consumer.close()
