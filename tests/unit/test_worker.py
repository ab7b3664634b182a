"""The scoring loop with fake Kafka clients: backpressure, rebalances, stop."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from confluent_kafka import KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from streamscore.core.config import ScoringSettings, TopicSettings
from streamscore.core.errors import RegistryUnavailableError
from streamscore.metrics.series import Metrics
from streamscore.models.store import ModelStore
from streamscore.score.batch import ScoredBatch
from streamscore.score.worker import ScoreLoop

from .kafka_fakes import FakeConsumer, FakeMessage, FakeSink


def msg(partition: int, offset: int) -> FakeMessage:
    return FakeMessage("events", partition, offset, b"v", key=b"k", timestamp_ms=1000)


class FakeScorer:
    def score(self, msgs: list[Any], snapshot: Any) -> ScoredBatch:
        return ScoredBatch(
            n_messages=len(msgs),
            n_scored=len(msgs),
            event_times_ms=np.full(len(msgs), 1000, dtype=np.int64),
        )


class RegistryDownScorer(FakeScorer):
    """The registry is unreachable for the first ``down`` batches: scoring raises
    RegistryUnavailableError before any work, as the decoder does at its first lookup."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.scored = 0

    def score(self, msgs: list[Any], snapshot: Any) -> ScoredBatch:
        if self.down <= 0:
            self.scored += 1
            return super().score(msgs, snapshot)
        self.down -= 1
        raise RegistryUnavailableError("schema registry failed while fetching schema id 1")


def make_loop(
    consumer: FakeConsumer,
    sink: FakeSink,
    stop: threading.Event,
    reg: CollectorRegistry,
    max_in_flight: int = 100,
    scorer: Any = None,
) -> ScoreLoop:
    return ScoreLoop(
        consumer=consumer,
        sink=sink,
        scorer=scorer or FakeScorer(),
        store=ModelStore(),  # type: ignore[arg-type]
        metrics=Metrics(reg),
        settings=ScoringSettings(max_in_flight=max_in_flight),
        topics=TopicSettings(),
        encode_telemetry=lambda d: b"t",
        stop=stop,
        lag_interval_s=0.0,
        registry_backoff_s=(0.01, 0.04),
    )


def test_offsets_of_each_batch_are_the_next_offset_per_partition() -> None:
    stop = threading.Event()
    c = FakeConsumer(
        [[msg(0, 3), msg(1, 7), msg(0, 4)]], on_consume=lambda n: stop.set() if n > 1 else None
    )
    sink = FakeSink()
    reg = CollectorRegistry()
    stats = make_loop(c, sink, stop, reg).run()
    assert stats.consumed == 3
    (b,) = sink.sent
    assert b.offsets == {("events", 0): 5, ("events", 1): 8}
    assert b.first_offsets == {("events", 0): 3, ("events", 1): 7}
    assert sink.drains == 1 and c.closed  # stop: drain, commit, leave
    assert reg.get_sample_value("streamscore_events_consumed_total", {"topic": "events"}) == 3


def test_a_registry_outage_puts_the_batch_back_paused_and_polling_not_dead_lettered() -> None:
    stop = threading.Event()
    batch = [msg(0, 3), msg(1, 7), msg(0, 4)]
    sink = FakeSink()
    paused_polls: list[int] = []

    def step(n: int) -> None:
        if c.paused:
            paused_polls.append(n)  # polled while paused: the member stays in its group
        if sink.sent:
            stop.set()

    # the consumer hands the batch again after each seek, as the broker would
    c = FakeConsumer([batch, batch, batch], on_consume=step)
    reg = CollectorRegistry()
    scorer = RegistryDownScorer(down=2)
    make_loop(c, sink, stop, reg, scorer=scorer).run()

    # twice put back to where the batch started, then scored once, nothing dead-lettered
    assert c.seeks == [("events", 0, 3), ("events", 1, 7)] * 2
    assert scorer.scored == 1
    (sent,) = sink.sent
    assert not [m for m in sent.messages if m.topic == TopicSettings().dlq]
    assert sent.offsets == {("events", 0): 5, ("events", 1): 8}
    assert len(paused_polls) >= 2 and not c.paused  # paused while waiting, resumed after
    assert reg.get_sample_value("streamscore_registry_unavailable_batches_total") == 2
    assert (
        reg.get_sample_value("streamscore_dead_letters_total", {"reason": "registry_unavailable"})
        is None
    )


def test_backpressure_pauses_while_the_producer_queue_is_full_and_resumes() -> None:
    stop = threading.Event()
    sink = FakeSink()
    seen_paused: list[bool] = []

    def step(n: int) -> None:
        seen_paused.append(bool(c.paused))
        if n == 1:
            sink.backlog = 500  # queue fills up
        elif n == 4:
            sink.backlog = 10  # drains below half
        elif n == 6:
            stop.set()

    c = FakeConsumer([[msg(0, i)] for i in range(10)], on_consume=step)
    reg = CollectorRegistry()
    make_loop(c, sink, stop, reg, max_in_flight=100).run()
    assert seen_paused[:6] == [False, True, True, True, False, False]
    assert reg.get_sample_value("streamscore_backpressure_pauses_total") == 1


def test_revoke_drains_and_drops_lag_series_of_lost_partitions() -> None:
    stop = threading.Event()
    c = FakeConsumer([], on_consume=lambda n: stop.set() if n > 2 else None)
    sink = FakeSink()
    reg = CollectorRegistry()
    loop = make_loop(c, sink, stop, reg)
    tps = [TopicPartition("events", 0), TopicPartition("events", 1)]
    loop._on_assign(c, tps)
    assert (
        reg.get_sample_value("streamscore_consumer_lag", {"topic": "events", "partition": "1"})
        is None
    )  # nothing recorded yet: no series
    loop.partitions.record(c)
    assert (
        reg.get_sample_value("streamscore_consumer_lag", {"topic": "events", "partition": "1"}) == 7
    )
    loop._on_revoke(c, [tps[1]])
    assert sink.drains == 1
    assert (
        reg.get_sample_value("streamscore_consumer_lag", {"topic": "events", "partition": "1"})
        is None
    )
    assert (
        reg.get_sample_value("streamscore_consumer_lag", {"topic": "events", "partition": "0"}) == 7
    )
    assert loop.partitions.owned == {("events", 0)}


def test_drift_tracker_flags_the_shifted_feature_and_follows_the_primary() -> None:
    from streamscore.dev import synthetic
    from streamscore.dev.synthetic import demo_bundle
    from streamscore.models.runtime import load_bundle
    from streamscore.score.drift import PSI_ALERT_THRESHOLD
    from streamscore.score.worker import DriftTracker

    reg = CollectorRegistry()
    tracker = DriftTracker(Metrics(reg), window=4000)
    v1 = load_bundle(demo_bundle("ab", version=1))
    rng = np.random.default_rng(3)
    for _ in range(10):
        s = synthetic.sample(500, rng, b_shift_sd=2.0)
        x = s.matrix(with_c=False)
        tracker.observe(v1, x, v1.predict(x.astype(np.float32)).score())

    def psi(feature: str, version: str) -> float | None:
        return reg.get_sample_value(
            "streamscore_feature_drift_psi", {"feature": feature, "model_version": version}
        )

    assert psi("b", "1") > PSI_ALERT_THRESHOLD
    assert psi("a", "1") < PSI_ALERT_THRESHOLD
    v2 = load_bundle(demo_bundle("ab", version=2, seed=2))
    s = synthetic.sample(500, rng)
    tracker.observe(
        v2, s.matrix(with_c=False), v2.predict(s.matrix(False).astype(np.float32)).score()
    )
    assert psi("b", "1") is None  # no stale series for the model that left
    assert psi("b", "2") is not None and psi("b", "2") < PSI_ALERT_THRESHOLD


def test_the_loop_records_offsets_after_each_poll_and_a_scrape_computes_the_lag() -> None:
    stop = threading.Event()
    reg = CollectorRegistry()
    seen: list[float | None] = []

    def lag(partition: int) -> float | None:
        return reg.get_sample_value(
            "streamscore_consumer_lag", {"topic": "events", "partition": str(partition)}
        )

    def step(n: int) -> None:
        if n == 1:  # librdkafka runs the rebalance callbacks inside consume()
            c.callbacks["on_assign"](c, [TopicPartition("events", 0), TopicPartition("events", 1)])
        elif n == 2:
            seen.append(lag(0))
            c._high = 30  # the next fetch response moves the high watermark
        elif n == 3:
            seen.append(lag(1))
            stop.set()

    c = FakeConsumer([[msg(0, 3)], [msg(0, 4)], [msg(1, 5)]], on_consume=step)
    make_loop(c, FakeSink(), stop, reg).run()
    assert seen == [12 - 5, 30 - 5]


class _Offsets:
    """A consumer whose offsets the test sets; ``broken`` makes every call raise."""

    def __init__(self) -> None:
        self.positions = {0: 5, 1: -1001}  # partition 1: no position yet
        self.high = {0: 12, 1: 40}
        self.broken = False

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        if self.broken:
            raise KafkaException("broker away")
        return [TopicPartition(tp.topic, tp.partition, self.positions[tp.partition]) for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, **_kw: Any) -> tuple[int, int]:
        if self.broken:
            raise KafkaException("broker away")
        return (0, self.high[tp.partition])


def test_a_scrape_reads_recorded_offsets_and_never_calls_the_consumer() -> None:
    from streamscore.score.worker import PartitionTracker

    reg = CollectorRegistry()
    tracker = PartitionTracker(Metrics(reg))
    c = _Offsets()
    tracker.assigned([TopicPartition("events", 0), TopicPartition("events", 1)])
    tracker.record(c)

    def lag(partition: int) -> float | None:
        return reg.get_sample_value(
            "streamscore_consumer_lag", {"topic": "events", "partition": str(partition)}
        )

    assert (lag(0), lag(1)) == (7, 40)  # no position yet: the whole partition
    c.positions[0] = 20  # past the recorded high watermark: never a negative lag
    c.high[0] = 15
    tracker.record(c)
    assert lag(0) == 0
    c.broken = True  # a scrape does not touch the consumer; a failed record keeps values
    tracker.record(c)
    assert (lag(0), lag(1)) == (0, 40)
    tracker.revoked([TopicPartition("events", 1)])
    assert (lag(0), lag(1)) == (0, None)


class _AbortOnceSink(FakeSink):
    """The first send is aborted (an exactly-once transaction that must be retried)."""

    def __init__(self) -> None:
        super().__init__()
        self.aborts = 0

    def send(self, batch: Any) -> None:
        from streamscore.kafka.delivery import RetryBatch

        if not self.aborts:
            self.aborts += 1
            raise RetryBatch("transaction aborted")
        super().send(batch)


class _Drift:
    def __init__(self, sink: FakeSink) -> None:
        self.sink = sink
        self.seen_after_sends: list[int] = []

    def observe(self, model: Any, x: Any, scores: Any) -> None:
        self.seen_after_sends.append(len(self.sink.sent))


def test_drift_is_observed_once_per_batch_after_it_is_sent_and_timed_as_its_own_stage() -> None:
    stop = threading.Event()
    batch = [msg(0, 3), msg(0, 4)]
    # the aborted batch is consumed again (the sink rewound the consumer)
    c = FakeConsumer([batch, batch], on_consume=lambda n: stop.set() if n > 2 else None)
    sink = _AbortOnceSink()
    reg = CollectorRegistry()
    loop = make_loop(c, sink, stop, reg)
    drift = _Drift(sink)
    loop.drift = drift  # type: ignore[assignment]
    loop.run()
    assert sink.aborts == 1 and len(sink.sent) == 1
    assert drift.seen_after_sends == [1]  # not for the aborted send; after the sent one

    def count(stage: str) -> float | None:
        return reg.get_sample_value("streamscore_stage_seconds_count", {"stage": stage})

    assert count("produce") == 1 and count("drift") == 1
