"""Prediction headers (model name, version, role, event id) and where each role's
predictions go: answers to ``predictions``, the shadow's to ``predictions.shadow``."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from streamscore.core.config import EventFields, ScoringSettings, TopicSettings
from streamscore.core.errors import OutputTooLargeError
from streamscore.core.records import (
    EVENT_ID_HEADER,
    MODEL_NAME_HEADER,
    MODEL_ROLE_HEADER,
    MODEL_VERSION_HEADER,
    Role,
    model_headers,
    prediction_headers,
)
from streamscore.feedback.router import KIND_HEADER, FeedbackRouter, RouteTopics
from streamscore.kafka.delivery import AtLeastOnceSink, OutBatch
from streamscore.kafka.headers import RowHeaders
from streamscore.kafka.output_limits import wire_size
from streamscore.metrics.series import Metrics
from streamscore.models.runtime import LoadedModel
from streamscore.models.store import ModelStore
from streamscore.score.batch import BatchScorer, InMessage, MessageBatch, ScoredBatch
from streamscore.score.worker import ScoreLoop

from . import test_scoring
from .kafka_fakes import FakeConsumer, FakeMessage, FakeSink
from .test_scoring import _fit, _log_model, decode_prediction

# the fixtures of test_scoring (a mock registry, its codecs, two fitted models)
env = test_scoring.env
make_messages = test_scoring.make_messages
v1 = test_scoring.v1
v2 = test_scoring.v2

HEADER_NAMES = [MODEL_NAME_HEADER, MODEL_VERSION_HEADER, MODEL_ROLE_HEADER, EVENT_ID_HEADER]


def _three_roles(v1: LoadedModel, v2: LoadedModel) -> ModelStore:
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    store.offer(Role.CANARY, _fit(False, 3))
    store.offer(Role.SHADOW, v2)
    return store


def test_header_names_follow_the_dead_letter_headers_and_values_are_utf8_text() -> None:
    assert HEADER_NAMES == [
        "streamscore.model.name",
        "streamscore.model.version",
        "streamscore.model.role",
        "streamscore.event.id",
    ]
    assert prediction_headers("fraud", 12, "canary", "evt-1") == [
        ("streamscore.model.name", b"fraud"),
        ("streamscore.model.version", b"12"),
        ("streamscore.model.role", b"canary"),
        ("streamscore.event.id", b"evt-1"),
    ]
    assert prediction_headers("m", 1, "primary", 42)[-1] == ("streamscore.event.id", b"42")


def test_every_prediction_has_headers_matching_its_record_answers_first(
    env: dict[str, Any],
    make_messages: Callable[..., list[InMessage]],
    v1: LoadedModel,
    v2: LoadedModel,
) -> None:
    msgs = make_messages(600, with_c=True)
    out = BatchScorer(env["dec"], env["pred"], ScoringSettings(canary_fraction=0.3)).score(
        msgs, _three_roles(v1, v2).snapshot()
    )
    assert len(out.predictions) == len(out.prediction_headers) == 1200
    for (_k, value), headers in zip(out.predictions, out.prediction_headers, strict=True):
        p = decode_prediction(value)
        assert headers == [
            (MODEL_NAME_HEADER, p["model_name"].encode()),
            (MODEL_VERSION_HEADER, str(p["model_version"]).encode()),
            (MODEL_ROLE_HEADER, p["role"].encode()),
            (EVENT_ID_HEADER, p["event_id"].encode()),
        ]
    answers = [decode_prediction(v) for _k, v in out.predictions[: out.n_answers]]
    shadows = [decode_prediction(v) for _k, v in out.predictions[out.n_answers :]]
    # one answer per event (primary or canary), then one shadow prediction per event
    assert out.n_answers == 600
    assert sorted(p["event_id"] for p in answers) == sorted(p["event_id"] for p in shadows)
    assert len({p["event_id"] for p in answers}) == 600
    assert {p["role"] for p in answers} == {"primary", "canary"}
    assert 0.2 < sum(p["role"] == "canary" for p in answers) / 600 < 0.4
    assert {(p["role"], p["model_version"]) for p in shadows} == {("shadow", 2)}


def test_headers_of_degraded_predictions_name_the_version_that_answered(
    env: dict[str, Any], make_messages: Callable[..., list[InMessage]], v1: LoadedModel
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    store.offer(Role.PRIMARY, _log_model(2))  # fails on these events: v1 answers
    out = BatchScorer(env["dec"], env["pred"], ScoringSettings()).score(
        make_messages(30, with_c=False), store.snapshot()
    )
    assert len(out.prediction_headers) == 30
    for (_k, value), headers in zip(out.predictions, out.prediction_headers, strict=True):
        p = decode_prediction(value)
        assert p["degraded"] and p["model_version"] == 1
        assert dict(headers)[MODEL_VERSION_HEADER] == b"1"
        assert dict(headers)[MODEL_NAME_HEADER] == p["model_name"].encode()


def test_a_shadow_prediction_larger_than_the_shadow_topic_takes_dead_letters_its_event(
    env: dict[str, Any],
    make_messages: Callable[..., list[InMessage]],
    v1: LoadedModel,
    v2: LoadedModel,
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    store.offer(Role.SHADOW, v2)
    msgs = make_messages(20, with_c=True)
    free = BatchScorer(env["dec"], env["pred"], ScoringSettings()).score(msgs, store.snapshot())
    n = free.n_answers
    answer_sizes = [
        wire_size(k, v, h)
        for (k, v), h in zip(free.predictions[:n], list(free.prediction_headers)[:n], strict=True)
    ]
    shadow_sizes = [
        wire_size(k, v, h)
        for (k, v), h in zip(free.predictions[n:], list(free.prediction_headers)[n:], strict=True)
    ]
    # no shadow prediction fits the shadow topic: their events are dead-lettered
    # (consumed = predicted + dead-lettered), the answers' topic takes everything
    shadow_limit = min(shadow_sizes) - 1

    def limited(answers: int, shadows: int) -> ScoredBatch:
        return BatchScorer(
            env["dec"],
            env["pred"],
            ScoringSettings(),
            prediction_limit=lambda: answers,
            shadow_limit=lambda: shadows,
        ).score(msgs, store.snapshot())

    out = limited(1 << 20, shadow_limit)
    assert out.predictions == [] and list(out.prediction_headers) == []
    assert out.n_answers == 0 and out.n_scored == 0
    assert len(out.dead_letters) == 20
    err = out.dead_letters[0].error
    assert isinstance(err, OutputTooLargeError)
    assert "shadow predictions topic" in str(err) and err.limit == shadow_limit
    # each topic exactly as large as its largest record: nothing is lost
    out = limited(max(answer_sizes), max(shadow_sizes))
    assert out.dead_letters == [] and len(out.predictions) == 40 and out.n_answers == 20
    # the headers count: records that would fit without them do not
    bare = max(wire_size(k, v) for k, v in free.predictions[:n])
    out = limited(bare, 1 << 20)
    assert len(out.dead_letters) == 20 and out.predictions == []
    assert "the predictions topic" in str(out.dead_letters[0].error)


class _Scored:
    """A scorer that returns a prepared batch (answers first, then a shadow)."""

    def __init__(self, scored: ScoredBatch) -> None:
        self.scored = scored

    def score(self, msgs: list[Any], snapshot: Any) -> ScoredBatch:
        return self.scored


def test_the_worker_sends_answers_to_predictions_and_the_shadow_to_its_topic() -> None:
    topics = TopicSettings(predictions="p", predictions_shadow="p.shadow")
    heads = [prediction_headers("m", 1, r, f"e{i}") for i, r in enumerate("ps")]
    scored = ScoredBatch(
        predictions=[(b"k", b"answer"), (b"k", b"shadow")],
        prediction_headers=RowHeaders.of(heads),
        n_answers=1,
        n_messages=1,
        n_scored=1,
        event_times_ms=np.full(1, 1000, dtype=np.int64),
    )
    stop = threading.Event()
    consumer = FakeConsumer([[FakeMessage("events", 0, 7, b"v", key=b"k")]], stop)
    sink = FakeSink()
    ScoreLoop(
        consumer=consumer,
        sink=sink,  # type: ignore[arg-type]
        scorer=_Scored(scored),  # type: ignore[arg-type]
        store=ModelStore(),
        metrics=Metrics(CollectorRegistry()),
        settings=ScoringSettings(),
        topics=topics,
        encode_telemetry=lambda d: b"t",
        stop=stop,
    ).run()
    (batch,) = sink.sent
    assert [(t, list(pairs), list(h or [])) for t, pairs, h in batch.bulk] == [
        ("p", [(b"k", b"answer")], [heads[0]]),
        ("p.shadow", [(b"k", b"shadow")], [heads[1]]),
    ]
    assert batch.n_outputs == 3  # both predictions and the telemetry record


def test_a_real_producer_takes_the_bulk_headers_in_its_positional_order() -> None:
    """librdkafka's in-process mock cluster: every prediction, with its headers, is
    acknowledged (a wrong positional order raises TypeError in ``produce``), and read
    back with them."""
    producer = Producer({"test.mock.num.brokers": 1, "log_level": 0})
    consumer = FakeConsumer()
    sink = AtLeastOnceSink(producer, consumer)
    heads = RowHeaders()
    heads.add(model_headers("m", 3, "shadow"), [f"e{i}" for i in range(25)])  # str: as is
    heads.add(model_headers("m", 3, "shadow"), [f"e{i}".encode() for i in range(25, 50)])
    pairs = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(50)]
    sink.send(OutBatch([], {("events", 0): 50}, bulk=[("preds.shadow", pairs, heads)]))
    sink.drain(10, commit=False)
    assert consumer.stored == [[("events", 0, 50)]]


def test_the_router_reads_both_prediction_topics_as_predictions() -> None:
    topics = RouteTopics(
        predictions="preds", feedback="fb", join="g.join", dlq="dlq", predictions_shadow="shadow"
    )
    assert topics.sources() == ["preds", "shadow", "fb"]
    assert RouteTopics(predictions="preds", feedback="fb", join="j", dlq="d").sources() == [
        "preds",
        "fb",
    ]

    def event_id(value: bytes) -> str:
        return value.decode()

    router = FeedbackRouter(
        consumer=FakeConsumer(),
        sink=FakeSink(),  # type: ignore[arg-type]
        topics=topics,
        event_id=event_id,
        metrics=Metrics(CollectorRegistry()),
        worker_id="fb-test",
        stop=threading.Event(),
    )
    batch = router.route(
        [
            FakeMessage("preds", 0, 1, b"e1"),
            FakeMessage("shadow", 0, 1, b"e1"),
            FakeMessage("fb", 0, 1, b"e1"),
        ]  # type: ignore[list-item]
    )
    assert [(m.key, dict(m.headers or [])[KIND_HEADER]) for m in batch.outputs()] == [
        (b"e1", b"prediction"),
        (b"e1", b"prediction"),
        (b"e1", b"label"),
    ]


class _RecordingProducer:
    """Keeps what each ``produce`` call was given, headers copied at the call (as
    librdkafka does): the bulk path reuses one header list per run of records."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    def produce(self, topic: str, value: bytes, key: bytes, *args: Any) -> None:
        headers = args[4] if len(args) > 4 else None  # partition, 2 callbacks, time, headers
        self.sent.append(
            (topic, value, [(k, v.encode() if isinstance(v, str) else v) for k, v in headers or []])
        )

    def poll(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:  # acknowledged at once
        return 0


def test_row_headers_give_each_record_its_own_event_id_over_shared_model_headers() -> None:
    a = [("streamscore.model.name", b"m"), ("streamscore.model.version", b"1")]
    b = [("streamscore.model.name", b"m"), ("streamscore.model.version", b"2")]
    rh = RowHeaders()
    rh.add(a, [b"e0", b"e1"])
    rh.add(a, [b"e2"])  # the same shared list: one run
    rh.add(b, [b"e3"])
    assert rh.runs == [(3, a), (1, b)] and len(rh) == 4
    want = [[*a, (EVENT_ID_HEADER, b"e0")], [*a, (EVENT_ID_HEADER, b"e1")]]
    want += [[*a, (EVENT_ID_HEADER, b"e2")], [*b, (EVENT_ID_HEADER, b"e3")]]
    assert list(rh) == want and [rh.at(i) for i in range(4)] == want
    head, tail = rh.split(2)
    assert list(head) == want[:2] and list(tail) == want[2:]
    assert list(rh.select([1, 3])) == [want[1], want[3]]
    copied = RowHeaders()
    copied.add(a, [b"x", b"y"], [[("traceparent", b"t0")], []])
    assert list(copied) == [
        [*a, (EVENT_ID_HEADER, b"x"), ("traceparent", b"t0")],
        [*a, (EVENT_ID_HEADER, b"y")],
    ]
    assert list(copied.split(1)[1]) == [[*a, (EVENT_ID_HEADER, b"y")]]


def test_the_bulk_path_produces_every_record_with_its_own_headers() -> None:
    a = [("streamscore.model.name", b"m"), ("streamscore.model.role", b"primary")]
    b = [("streamscore.model.name", b"m"), ("streamscore.model.role", b"canary")]
    rh = RowHeaders()
    rh.add(a, [f"e{i}".encode() for i in range(5)])
    rh.add(b, [f"e{i}".encode() for i in range(5, 8)])
    pairs = [(b"k", f"v{i}".encode()) for i in range(8)]
    producer = _RecordingProducer()
    sink = AtLeastOnceSink(producer, FakeConsumer())  # type: ignore[arg-type]
    sink.send(OutBatch([], {("events", 0): 8}, bulk=[("preds", pairs, rh), ("x", pairs[:1], None)]))
    assert [v for _t, v, _h in producer.sent] == [v for _k, v in pairs] + [b"v0"]
    assert [h for _t, _v, h in producer.sent[:8]] == list(rh)
    assert producer.sent[8] == ("x", b"v0", [])


def test_the_event_headers_the_project_names_are_copied_to_each_of_its_predictions(
    env: dict[str, Any],
    make_messages: Callable[..., list[InMessage]],
    v1: LoadedModel,
    v2: LoadedModel,
) -> None:
    plain = make_messages(40, with_c=True)
    msgs = [
        dataclasses.replace(
            m,
            headers=[
                ("traceparent", f"00-{i:032x}-01".encode()),
                ("other", b"not copied"),
                ("traceparent", b"second, not copied"),
            ]
            if i % 4
            else None,
        )
        for i, m in enumerate(plain)
    ]
    events = EventFields(copy_headers=("traceparent",))
    scorer = BatchScorer(
        env["dec"], env["pred"], ScoringSettings(canary_fraction=0.3), events=events
    )
    assert scorer.copies_headers
    out = scorer.score(MessageBatch.of(msgs), _three_roles(v1, v2).snapshot())
    assert len(out.predictions) == 80
    by_id = {env["dec"](m.value)["event_id"]: i for i, m in enumerate(msgs)}
    for (_k, value), headers in zip(out.predictions, out.prediction_headers, strict=True):
        i = by_id[decode_prediction(value)["event_id"]]
        copied = [h for h in headers if not h[0].startswith("streamscore.")]
        assert copied == ([("traceparent", f"00-{i:032x}-01".encode())] if i % 4 else [])
        assert [h[0] for h in headers[:4]] == HEADER_NAMES
    # copied headers count towards the size check: they may make a prediction too large
    sizes = [
        wire_size(k, v, h)
        for (k, v), h in zip(out.predictions, out.prediction_headers, strict=True)
    ]
    bare = BatchScorer(env["dec"], env["pred"], ScoringSettings(canary_fraction=0.3)).score(
        MessageBatch.of(msgs), _three_roles(v1, v2).snapshot()
    )
    assert not BatchScorer(env["dec"], env["pred"], ScoringSettings()).copies_headers
    assert all(len(h) == 4 for h in bare.prediction_headers)
    assert max(sizes) > max(
        wire_size(k, v, h)
        for (k, v), h in zip(bare.predictions, bare.prediction_headers, strict=True)
    )
