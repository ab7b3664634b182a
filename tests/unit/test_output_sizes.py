"""Outputs larger than their topics take (issue 10, case 2), without a broker: the sizing
and cutting decisions, the scorer's oversized predictions, and a worker whose producer
or broker refuses an output anyway."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from streamscore.core import errors
from streamscore.core.config import KafkaSettings, ScoringSettings, TopicSettings
from streamscore.core.records import Role
from streamscore.dev import synthetic
from streamscore.feedback.router import FeedbackRouter, RouteTopics
from streamscore.kafka.clients import score_consumer, score_producer
from streamscore.kafka.dead_letters import (
    ORIGINAL_KEY_SIZE_HEADER,
    ORIGINAL_SIZE_HEADER,
    TRUNCATED_HEADER,
    fit,
)
from streamscore.kafka.delivery import AtLeastOnceSink, OutBatch, OutMessage
from streamscore.kafka.output_limits import RECORD_OVERHEAD, OutputLimits, wire_size
from streamscore.metrics.series import Metrics
from streamscore.models.store import ModelStore
from streamscore.score.batch import BatchScorer, InMessage
from streamscore.score.worker import ScoreLoop
from streamscore.serde import schemas
from streamscore.serde.event_ids import EventIdReader
from streamscore.serde.message import AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, registry_client

from .kafka_fakes import FakeMessage, FakeSink
from .test_scoring import decode_prediction, env, v1  # noqa: F401 (fixtures)

TOPICS = TopicSettings()
KAFKA = KafkaSettings()
SEGMENT = "s" * 200_000  # an event field the model does not use: predictions carry it


# ------------------------------------------------------------------ pure decisions


def test_a_message_that_fits_is_forwarded_whole_with_its_headers_only() -> None:
    headers = [("streamscore.error.reason", b"truncated")]
    key, value, out = fit(b"k", b"v" * 1000, headers, 10_000)
    assert (key, value, out) == (b"k", b"v" * 1000, headers)


@pytest.mark.parametrize("limit", [4_096, 50_000, 1_000_000])
def test_a_message_too_large_is_cut_to_fit_and_says_so(limit: int) -> None:
    value = bytes(range(256)) * 12_000  # 3,072,000 bytes
    headers = [("streamscore.source.offset", b"17")]
    key, cut, out = fit(b"entity-1", value, headers, limit)
    assert key == b"entity-1"
    assert cut is not None and value.startswith(cut)  # a prefix of the original
    h = dict(out)
    assert h[TRUNCATED_HEADER] == b"true"
    assert h[ORIGINAL_SIZE_HEADER] == b"3072000"
    assert h["streamscore.source.offset"] == b"17"
    assert wire_size(key, cut, out) <= limit
    assert wire_size(key, cut, out) > limit - 64  # and no smaller than it needs to be


def test_a_huge_key_is_cut_too_and_its_size_kept() -> None:
    key, value, out = fit(b"K" * 20_000, b"V" * 20_000, [], 8_192)
    h = dict(out)
    assert h[ORIGINAL_KEY_SIZE_HEADER] == b"20000"
    assert h[ORIGINAL_SIZE_HEADER] == b"20000"
    assert key is not None and 0 < len(key) < 8_192
    assert wire_size(key, value, out) <= 8_192


def test_limits_per_topic_lowered_by_a_refusal_and_producer_settings_from_them() -> None:
    limits = OutputLimits({"predictions": 4_194_304, "events.dlq": 1_048_588}, default=1_000_000)
    assert limits.limit("predictions") == 4_194_304
    assert limits.limit("telemetry") == 1_000_000  # not read: the default
    assert limits.fits("events.dlq", b"k", b"v" * (1_048_588 - RECORD_OVERHEAD - 1))
    assert not limits.fits("events.dlq", b"k", b"v" * (1_048_588 - RECORD_OVERHEAD))
    assert limits.producer_max_bytes() == 4_194_304 + RECORD_OVERHEAD
    assert limits.batch_bytes() == 1_000_000 - RECORD_OVERHEAD
    limits.lower("predictions", 2_000_000)
    assert limits.limit("predictions") == 1_500_000
    limits.lower("predictions", 3_000_000)  # never raised by a refusal
    assert limits.limit("predictions") == 1_500_000

    s = ScoringSettings()
    conf = score_producer(KAFKA, s, limits)
    assert conf["message.max.bytes"] == 1_500_000 + RECORD_OVERHEAD
    assert conf["batch.size"] == 1_000_000 - RECORD_OVERHEAD
    assert "message.max.bytes" not in score_producer(KAFKA, s)
    # a consumer takes a message as large as its topic allows
    assert "fetch.max.bytes" not in score_consumer(KAFKA, s, max_input_bytes=4 << 20)
    big = score_consumer(KAFKA, s, max_input_bytes=200 << 20)
    assert big["fetch.max.bytes"] >= 200 << 20
    assert big["receive.message.max.bytes"] >= big["fetch.max.bytes"] + 512


# ------------------------------------------------------------- the scorer's share


def _messages(codecs: dict[str, Any], n: int, big: set[int]) -> list[InMessage]:
    rng = np.random.default_rng(3)
    out = []
    events = synthetic.events(n, rng, with_c=False, event_time_ms=1_000_000)
    for i, (e, _y) in enumerate(events):
        if i in big:
            e["segment"] = SEGMENT
        out.append(InMessage(codecs["v1"](e), e["key"].encode(), "events", 0, i, 1_000_000))
    return out


def test_an_event_whose_prediction_is_too_large_is_dead_lettered_not_predicted(
    env: dict[str, Any],  # noqa: F811
    v1: Any,  # noqa: F811
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    store.offer(Role.SHADOW, v1)  # a second prediction per event: both must go
    msgs = _messages(env, 20, big={3, 11})
    limit = 100_000
    scorer = BatchScorer(env["dec"], env["pred"], ScoringSettings(), prediction_limit=lambda: limit)
    out = scorer.score(msgs, store.snapshot())
    assert out.n_scored == 18
    assert {dl.message.offset for dl in out.dead_letters} == {3, 11}
    assert {type(dl.error) for dl in out.dead_letters} == {errors.OutputTooLargeError}
    err = out.dead_letters[0].error
    assert isinstance(err, errors.OutputTooLargeError)
    assert err.reason == "output_too_large" and err.limit == limit and err.size > 200_000
    preds = [decode_prediction(v) for _k, v in out.predictions]
    assert len(preds) == 36  # 18 events x (primary + shadow)
    heads = out.prediction_headers
    assert all(wire_size(k, v, heads.at(i)) <= limit for i, (k, v) in enumerate(out.predictions))
    assert {p["role"] for p in preds} == {"primary", "shadow"}
    assert sum(o.count for o in out.outputs if o.role is Role.PRIMARY) == 18
    assert sum(o.count for o in out.outputs if o.role is Role.SHADOW) == 18
    assert all(o.scores.size == 18 for o in out.outputs)
    assert out.event_times_ms.size == 18
    # every prediction still points at the message it answers
    for i, (_k, v) in enumerate(out.predictions):
        source = out.prediction_source(i)
        assert source.offset not in {3, 11}
        assert decode_prediction(v)["event_id"] == env["dec"](source.value)["event_id"]

    # no limit, or one they fit: every event predicted (the check costs one len() pass)
    whole = BatchScorer(env["dec"], env["pred"], ScoringSettings()).score(msgs, store.snapshot())
    assert whole.n_scored == 20 and whole.dead_letters == []

    # a limit the batch's predictions together exceed, each one fitting: the cheap
    # per-batch bound fails, nothing is dropped; one byte less, only the largest goes
    # (sizes with the prediction headers, as the producer counts them)
    heads = whole.prediction_headers
    sizes = [wire_size(k, v, heads.at(i)) for i, (k, v) in enumerate(whole.predictions)]
    largest = max(sizes)
    assert sum(sizes) > largest  # the whole batch would not fit one record
    tight = BatchScorer(
        env["dec"], env["pred"], ScoringSettings(), prediction_limit=lambda: largest
    ).score(msgs, store.snapshot())
    assert tight.n_scored == 20 and tight.dead_letters == []
    under = BatchScorer(
        env["dec"], env["pred"], ScoringSettings(), prediction_limit=lambda: largest - 1
    ).score(msgs, store.snapshot())
    too_big = {whole.prediction_source(i).offset for i, s in enumerate(sizes) if s == largest}
    assert {dl.message.offset for dl in under.dead_letters} == too_big
    assert under.n_scored == 20 - len(too_big)


# ----------------------------------------------------------- the worker's share


def _too_large() -> KafkaException:
    return KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))


class SizedProducer:
    """A producer that refuses, in ``produce()``, a message larger than ``max_bytes``,
    and whose broker refuses (in the delivery report) one larger than ``broker[topic]``."""

    def __init__(self, max_bytes: int, broker: dict[str, int] | None = None) -> None:
        self.max_bytes = max_bytes
        self.broker = broker or {}
        self.waiting: list[tuple[Any, FakeMessage]] = []
        self.delivered: list[FakeMessage] = []
        self.raised = 0
        self.refused = 0

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        callback: Any = None,
        on_delivery: Any = None,
        timestamp: int = 0,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        on_delivery = callback or on_delivery
        if wire_size(key, value, headers) - RECORD_OVERHEAD > self.max_bytes:
            self.raised += 1
            raise _too_large()
        self.waiting.append(
            (on_delivery, FakeMessage(topic, 0, 0, value, key=key, headers=headers))
        )

    def poll(self, timeout: float = 0) -> int:
        n = 0
        while self.waiting:
            cb, m = self.waiting.pop(0)
            n += 1
            if wire_size(m.key(), m.value(), m.headers()) > self.broker.get(m.topic(), 1 << 40):
                self.refused += 1
                cb(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), m)
            else:
                self.delivered.append(m)
                if cb is not None:
                    cb(None, m)
        return n

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0

    def __len__(self) -> int:
        return len(self.waiting)

    def on(self, topic: str) -> list[FakeMessage]:
        return [m for m in self.delivered if m.topic() == topic]


class OneBatchConsumer:
    def __init__(self, batch: list[FakeMessage], stop: threading.Event) -> None:
        self.batch: list[FakeMessage] | None = batch
        self.stop = stop
        self.stored: list[list[tuple[str, int, int]]] = []

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if self.batch is None:
            self.stop.set()
            return []
        batch, self.batch = self.batch, None
        return batch

    def store_offsets(self, offsets: Any) -> None:
        self.stored.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def commit(self, asynchronous: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def _run(
    codecs: dict[str, Any],
    model: Any,
    producer: SizedProducer,
    limits: OutputLimits,
    consumed: list[FakeMessage],
) -> tuple[Metrics, OneBatchConsumer]:
    store = ModelStore()
    store.offer(Role.PRIMARY, model)
    metrics = Metrics(CollectorRegistry())
    stop = threading.Event()
    consumer = OneBatchConsumer(consumed, stop)
    ScoreLoop(
        consumer=consumer,
        sink=AtLeastOnceSink(producer, consumer),
        scorer=BatchScorer(
            codecs["dec"],
            codecs["pred"],
            ScoringSettings(),
            prediction_limit=lambda: limits.limit(TOPICS.predictions),
        ),
        store=store,
        metrics=metrics,
        settings=ScoringSettings(worker_id="w"),
        topics=TOPICS,
        encode_telemetry=lambda _t: b"telemetry",
        stop=stop,
        limits=limits,
    ).run()
    return metrics, consumer


def _batch(codecs: dict[str, Any]) -> list[FakeMessage]:
    """10 valid events, one of them (offset 4) with a 200 kB string the prediction
    carries, and a 300 kB message that is not Avro at all (offset 10)."""
    msgs = [
        FakeMessage("events", 0, m.offset, m.value, key=m.key)
        for m in _messages(codecs, 10, big={4})
    ]
    msgs.append(FakeMessage("events", 0, 10, b"\x07" * 300_000, key=b"bad"))
    return msgs


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def _check(metrics: Metrics, producer: SizedProducer, consumer: OneBatchConsumer) -> None:
    preds = producer.on(TOPICS.predictions)
    dlq = producer.on(TOPICS.dlq)
    assert len(preds) == 9
    assert len(dlq) == 2
    by_offset = {dict(m.headers() or [])["streamscore.source.offset"]: m for m in dlq}
    assert set(by_offset) == {b"4", b"10"}
    too_large = dict(by_offset[b"4"].headers() or [])
    assert too_large["streamscore.error.reason"] == b"output_too_large"
    assert too_large["streamscore.error.class"] == b"OutputTooLargeError"
    not_avro = dict(by_offset[b"10"].headers() or [])
    assert not_avro["streamscore.error.reason"] == b"bad_magic_byte"
    assert not_avro[TRUNCATED_HEADER] == b"true"
    assert not_avro[ORIGINAL_SIZE_HEADER] == b"300000"
    assert by_offset[b"10"].key() == b"bad"
    assert b"\x07" * 1000 in (by_offset[b"10"].value() or b"")
    # consumed = predicted + dead-lettered, on /metrics too; offsets past all of it
    assert _sample(metrics, "streamscore_events_consumed_total", topic="events") == 11
    assert (
        sum(
            _sample(
                metrics,
                "streamscore_predictions_total",
                model_name="demo",
                model_version="1",
                role=r,
            )
            for r in ("primary",)
        )
        == 9
    )
    assert _sample(metrics, "streamscore_dead_letters_total", reason="output_too_large") == 1
    assert _sample(metrics, "streamscore_dead_letters_total", reason="bad_magic_byte") == 1
    assert consumer.stored == [[("events", 0, 11)]]


def test_worker_sizes_outputs_before_producing(
    env: dict[str, Any],  # noqa: F811
    v1: Any,  # noqa: F811
) -> None:
    limits = OutputLimits({TOPICS.predictions: 100_000, TOPICS.dlq: 50_000})
    producer = SizedProducer(max_bytes=limits.producer_max_bytes())
    metrics, consumer = _run(env, v1, producer, limits, _batch(env))
    _check(metrics, producer, consumer)
    assert producer.raised == 0 and producer.refused == 0  # decided before produce
    assert all(
        wire_size(m.key(), m.value(), m.headers()) <= 50_000 for m in producer.on("events.dlq")
    )
    cut = next(m for m in producer.on(TOPICS.dlq) if dict(m.headers() or []).get(TRUNCATED_HEADER))
    assert cut is not None


def test_worker_survives_produce_raising_msg_size_too_large(
    env: dict[str, Any],  # noqa: F811
    v1: Any,  # noqa: F811
) -> None:
    # the limits read at start say 10 MB, but the producer takes only 100 kB
    limits = OutputLimits({TOPICS.predictions: 10 << 20, TOPICS.dlq: 10 << 20})
    producer = SizedProducer(max_bytes=100_000)
    metrics, consumer = _run(env, v1, producer, limits, _batch(env))
    _check(metrics, producer, consumer)
    assert producer.raised >= 2  # the prediction, then the whole 300 kB dead letter
    assert limits.limit(TOPICS.predictions) < 200_000  # learned from the refusal


def test_worker_survives_a_delivery_report_of_msg_size_too_large(
    env: dict[str, Any],  # noqa: F811
    v1: Any,  # noqa: F811
) -> None:
    # the broker's topics take less than the limits read at start (changed since)
    limits = OutputLimits({TOPICS.predictions: 10 << 20, TOPICS.dlq: 10 << 20})
    producer = SizedProducer(
        max_bytes=limits.producer_max_bytes(),
        broker={TOPICS.predictions: 100_000, TOPICS.dlq: 60_000},
    )
    metrics, consumer = _run(env, v1, producer, limits, _batch(env))
    assert producer.refused >= 2
    preds = producer.on(TOPICS.predictions)
    assert len(preds) == 9
    dlq = producer.on(TOPICS.dlq)
    assert sorted(dict(m.headers() or [])["streamscore.source.offset"] for m in dlq) == [
        b"10",
        b"4",
    ]
    assert all(wire_size(m.key(), m.value(), m.headers()) <= 60_000 for m in dlq)
    assert _sample(metrics, "streamscore_dead_letters_total", reason="output_too_large") == 1
    assert consumer.stored == [[("events", 0, 11)]]  # acknowledged: offsets move on


def test_without_a_replacement_a_refusal_stays_an_error() -> None:
    producer = SizedProducer(max_bytes=10)
    sink = AtLeastOnceSink(producer, OneBatchConsumer([], threading.Event()))
    with pytest.raises(KafkaException):
        sink.send(OutBatch([OutMessage("out", b"k", b"v" * 100)], {("events", 0): 1}))
    replaced: list[OutMessage] = []

    def smaller(m: OutMessage) -> OutMessage:
        replaced.append(m)
        return OutMessage("dlq", m.key, b"cut")

    def same(m: OutMessage) -> OutMessage:
        return m  # not smaller: refused, so a chain of refusals cannot loop

    sink.send(OutBatch([OutMessage("out", b"k", b"v" * 100)], {}, on_too_large=smaller))
    assert [m.value for m in replaced] == [b"v" * 100]
    with pytest.raises(KafkaException):
        sink.send(OutBatch([OutMessage("out", b"k", b"v" * 100)], {}, on_too_large=same))


# ------------------------------------------------------- the feedback router's share


def test_feedback_router_cuts_dead_letters_and_dead_letters_what_the_join_topic_refuses() -> None:
    reg = registry_client({"url": f"mock://router-sizes-{id(object())}"})
    ser = AvroSerializer(reg, "fb-value", schemas.load("feedback"))
    big_label = ser({"event_id": "e-big", "label": "x" * 300_000, "observed_time": 1})
    small_label = ser({"event_id": "e-small", "label": "1.0", "observed_time": 1})
    topics = RouteTopics(predictions="preds", feedback="fb", join="g.join", dlq="dlq")
    limits = OutputLimits({"g.join": 100_000, "dlq": 50_000})
    metrics = Metrics(CollectorRegistry())
    router = FeedbackRouter(
        consumer=None,
        sink=FakeSink(),  # type: ignore[arg-type]
        topics=topics,
        event_id=EventIdReader(WriterSchemaCache(reg)),
        metrics=metrics,
        worker_id="fb",
        stop=threading.Event(),
        limits=limits,
    )
    batch = router.route(
        [
            FakeMessage("fb", 0, 0, small_label, key=b"e-small"),
            FakeMessage("fb", 0, 1, big_label, key=b"e-big"),  # too large for the join
            FakeMessage("fb", 0, 2, b"\x09" * 200_000, key=b"junk"),  # not Avro, too large
        ]
    )
    by_topic = Counter(m.topic for m in batch.outputs())
    assert by_topic == {"g.join": 1, "dlq": 2}
    dlq = {m.key: m for m in batch.outputs() if m.topic == "dlq"}
    big = dict(dlq[b"e-big"].headers or [])
    assert big["streamscore.error.reason"] == b"output_too_large"
    assert big[ORIGINAL_SIZE_HEADER] == str(len(big_label)).encode()
    junk = dict(dlq[b"junk"].headers or [])
    assert junk["streamscore.error.reason"] == b"bad_magic_byte"
    assert junk[TRUNCATED_HEADER] == b"true"
    assert all(wire_size(m.key, m.value, m.headers) <= 50_000 for m in dlq.values())
    assert batch.offsets == {("fb", 0): 3}
    assert router.routed == 1 and router.dead_lettered == 2
