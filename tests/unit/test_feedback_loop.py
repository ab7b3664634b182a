"""The join loop with a fake consumer: dispatch on the router's kind header, a label
joined with its prediction into one stored row, bad messages dead-lettered and settled,
and promote_shadow left alone when another worker has already promoted."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamscore.core.errors import (
    DeliveryError,
    MagicByteError,
    StreamscoreError,
    TruncatedMessageError,
    UnknownKindError,
)
from streamscore.core.records import Prediction, Role
from streamscore.feedback.groundtruth import GroundTruthStore, read_rows, read_unmatched
from streamscore.feedback.loop import FeedbackLoop, _kind, promote_shadow
from streamscore.feedback.promotion import PromotionDecision
from streamscore.feedback.router import KIND_HEADER
from streamscore.metrics.series import Metrics
from streamscore.models.envelope import Action
from streamscore.models.signing import HmacSigner, as_verifier
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer, LayoutDeserializer
from streamscore.serde.wire import WriterSchemaCache, registry_client

from .kafka_fakes import (
    FakeConsumer,
    FakeMessage,
    FlakyRegistry,
    feedback_loop,
    nest_detail,
    prediction_record,
)
from .model_records import RECORD_KEY, RECORD_KEYRING, signed_record

T0 = 1_700_000_000_000
JOIN = "g.join"


@pytest.fixture
def registry() -> Any:
    return registry_client({"url": f"mock://feedback-loop-{id(object())}"})


def prediction(registry: Any, eid: str) -> bytes:
    ser = AvroSerializer(registry, "p-value", schemas.load("prediction"))
    return ser(nest_detail(prediction_record(eid, event_time_ms=T0)))


def label(registry: Any, eid: str, y: str = "2.5") -> bytes:
    ser = AvroSerializer(registry, "f-value", schemas.load("feedback"))
    return ser({"event_id": eid, "label": y, "observed_time": T0 + 1000})


def kind(k: bytes) -> list[tuple[str, bytes]]:
    return [(KIND_HEADER, k)]


def make_loop(
    registry: Any,
    batches: list[list[FakeMessage]],
    tmp_path: Path,
    *,
    heads: bool = False,
    **kw: Any,
) -> tuple[FeedbackLoop, FakeConsumer, Metrics, list[tuple[int, StreamscoreError]]]:
    """A join loop over a fake consumer handing out ``batches``, its writer schemas from
    ``registry``, its store in ``tmp_path``; dead letters as ``(offset, error)``.
    ``heads``: predictions checked and held by their heads (as the worker does)."""
    metrics = Metrics(CollectorRegistry())
    store = GroundTruthStore(str(tmp_path))
    store.open()
    stop = threading.Event()
    consumer = FakeConsumer(batches, stop, topic=JOIN, partitions=(0,))
    dead: list[tuple[int, StreamscoreError]] = []
    loop = feedback_loop(
        registry,
        consumer,
        store,
        metrics,
        stop,
        window_ms=60_000,
        heads=heads,
        dead_letter=lambda msg, err: dead.append((msg.offset(), err)),
        checkpoint_s=60.0,
        **kw,
    )
    return loop, consumer, metrics, dead


def test_join_topic_messages_dispatch_on_the_kind_header(registry: Any, tmp_path: Path) -> None:
    batch = [
        FakeMessage(JOIN, 0, 0, prediction(registry, "e1"), key=b"e1", headers=kind(b"prediction")),
        FakeMessage(JOIN, 0, 1, label(registry, "e1"), key=b"e1", headers=kind(b"label")),
        FakeMessage(JOIN, 0, 2, label(registry, "e2"), key=b"e2"),  # no kind header
        FakeMessage(JOIN, 0, 3, label(registry, "e3")[:-4], key=b"e3", headers=kind(b"label")),
    ]
    loop, consumer, metrics, dead = make_loop(registry, [batch], tmp_path)
    stats = loop.run()

    assert consumer.subscribed == [JOIN]
    assert (stats.predictions, stats.labels, stats.undecodable) == (1, 1, 2)
    assert [(off, type(err)) for off, err in dead] == [
        (2, UnknownKindError),
        (3, TruncatedMessageError),
    ]
    rows = read_rows(str(tmp_path))
    assert [(r["event_id"], r["label"], r["prediction_value"]) for r in rows] == [
        ("e1", "2.5", 2.0)
    ]
    # every message is settled (joined, or dead-lettered): the final commit covers them all
    assert consumer.commits[-1] == [(JOIN, 0, 4)]
    joined = metrics.registry.get_sample_value(
        "streamscore_feedback_labels_total", {"outcome": "joined"}
    )
    assert joined == 1


def test_the_kind_is_read_wherever_the_header_is_and_whatever_bytes_hold_it() -> None:
    """The router writes the kind as the only header (read first); a join topic written
    otherwise (other headers first, a bytes-like value) reads the same."""

    def msg(headers: Any) -> FakeMessage:
        return FakeMessage(JOIN, 0, 0, b"", key=b"e1", headers=headers)

    assert _kind(msg(kind(b"label"))) == b"label"
    assert _kind(msg([("trace", b"x"), *kind(b"prediction")])) == b"prediction"
    assert _kind(msg([("streamscore.kind", bytearray(b"label"))])) == b"label"
    assert _kind(msg([("streamscore.kind", None)])) is None
    assert _kind(msg([("trace", b"x")])) is None
    assert _kind(msg([])) is None
    assert _kind(msg(None)) is None


def test_a_dead_letter_that_fails_leaves_its_message_and_the_rest_unconsumed(
    registry: Any, tmp_path: Path
) -> None:
    """The dead-letter topic refusing a bad message stops the batch there: the messages
    before it are applied and their partition resumes at the bad one (its offset is the
    next to consume), nothing after it is applied."""
    batch = [
        FakeMessage(JOIN, 0, 0, prediction(registry, "e1"), key=b"e1", headers=kind(b"prediction")),
        FakeMessage(JOIN, 1, 0, label(registry, "e1"), key=b"e1", headers=kind(b"label")),
        FakeMessage(JOIN, 0, 1, label(registry, "e2")[:-4], key=b"e2", headers=kind(b"label")),
        FakeMessage(JOIN, 0, 2, prediction(registry, "e3"), key=b"e3", headers=kind(b"prediction")),
    ]
    loop, _consumer, _metrics, _dead = make_loop(registry, [batch], tmp_path)

    def refused(_msg: Any, _err: StreamscoreError) -> None:
        raise DeliveryError("the dead-letter topic did not acknowledge")

    loop._dead_letter = refused
    with pytest.raises(DeliveryError):
        loop._handle(batch)
    parts = loop.join.partitions()
    assert parts[(JOIN, 0)].meta.input_offset == 1  # the refused one is consumed again
    assert parts[(JOIN, 1)].meta.input_offset == 1
    assert loop.stats.predictions == 1 and loop.join.peek((JOIN, 0), "e3") is None


def test_a_registry_outage_puts_the_batch_back_and_joins_it_once_it_answers(
    registry: Any, tmp_path: Path
) -> None:
    """The registry away at the batch's first lookup: nothing decoded, dead-lettered or
    settled; the consumer paused and polled during the backoff, then resumed and sought
    back; the same batch, handed again, is joined once."""
    batch = [
        FakeMessage(JOIN, 0, 7, prediction(registry, "e1"), key=b"e1", headers=kind(b"prediction")),
        FakeMessage(JOIN, 0, 8, label(registry, "e1"), key=b"e1", headers=kind(b"label")),
    ]
    flaky = FlakyRegistry(registry, down=1)
    loop, consumer, metrics, dead = make_loop(
        flaky, [batch, batch], tmp_path, registry_backoff_s=(0.01, 0.02)
    )
    stats = loop.run()

    assert consumer.seeks == [(JOIN, 0, 7)]
    assert consumer.paused_polls >= 1 and not consumer.paused
    assert dead == [] and stats.undecodable == 0
    assert (stats.predictions, stats.labels) == (1, 1)
    assert [r["event_id"] for r in read_rows(str(tmp_path))] == ["e1"]
    assert consumer.commits[-1] == [(JOIN, 0, 9)]
    put_back = metrics.registry.get_sample_value("streamscore_registry_unavailable_batches_total")
    assert put_back == 1


class FakeModelTopic:
    def __init__(self, envelopes: list[Any]) -> None:
        self.envelopes = envelopes
        self.published: list[Any] = []
        self.retired: list[Any] = []

    def read_all(self) -> list[Any]:
        return self.envelopes

    def publish(self, *args: Any, **kwargs: Any) -> None:
        self.published.append(args)

    def retire(self, *args: Any, **kwargs: Any) -> None:
        self.retired.append(args)


def promote_v2(topic: FakeModelTopic) -> str:
    decision = PromotionDecision(
        model_name="demo",
        primary_version=1,
        shadow_version=2,
        promote=True,
        metric="mae",
        primary_value=1.0,
        shadow_value=0.1,
        improvement=0.9,
        margin=0.05,
        n_labels=600,
    )
    signer = HmacSigner(RECORD_KEY, "k1")
    return promote_shadow(topic, decision, signer=signer, verifier=as_verifier(RECORD_KEYRING))


def test_promote_shadow_does_nothing_when_the_shadow_was_already_promoted() -> None:
    # another feedback worker promoted v2 first: v2 is primary, the shadow is retired
    topic = FakeModelTopic(
        [
            signed_record(Role.PRIMARY, 1),
            signed_record(Role.SHADOW, 2),
            signed_record(Role.PRIMARY, 2),
            signed_record(Role.SHADOW, 2, Action.RETIRE, target=2),
        ]
    )
    note = promote_v2(topic)
    assert "no longer the shadow" in note and "primary is v2" in note
    assert topic.published == [] and topic.retired == []


def test_promote_shadow_publishes_the_archived_shadow_and_retires_the_role() -> None:
    archive = signed_record(Role.SHADOW, 2, Action.ARCHIVE)
    topic = FakeModelTopic([signed_record(Role.PRIMARY, 1), archive, signed_record(Role.SHADOW, 2)])
    assert promote_v2(topic) == "published v2 as primary, shadow retired"
    assert topic.published == [(archive.artifact, Role.PRIMARY)]
    assert topic.retired == [("demo", Role.SHADOW)]


def test_promote_shadow_is_not_steered_by_forged_or_replayed_records() -> None:
    shadow_v2 = signed_record(Role.SHADOW, 2)
    forged_primary = dataclasses.replace(
        signed_record(Role.PRIMARY, 9), envelope_signature=b"x" * 32
    )
    # the shadow moved on to v3; v2's shadow record replayed after it is stale
    topic = FakeModelTopic(
        [signed_record(Role.PRIMARY, 1), shadow_v2, signed_record(Role.SHADOW, 3), shadow_v2]
    )
    note = promote_v2(topic)
    assert "no longer the shadow" in note and "primary is v1" in note
    # a forged primary record does not count as the primary either
    topic = FakeModelTopic(
        [signed_record(Role.PRIMARY, 1), forged_primary, signed_record(Role.SHADOW, 3)]
    )
    assert "primary is v1" in promote_v2(topic)
    # a forged shadow record naming v2 is not a shadow to promote
    forged_shadow = dataclasses.replace(shadow_v2, envelope_signature=b"x" * 32)
    topic = FakeModelTopic([signed_record(Role.PRIMARY, 1), forged_shadow])
    assert "no longer the shadow" in promote_v2(topic)
    assert topic.published == [] and topic.retired == []


def test_the_feedback_side_reads_v2_and_v3_predictions_with_their_detail(registry: Any) -> None:
    """A v3 prediction nests its arrays in ``detail``; a v2 one (written before an
    upgrade) has them at the top level, which the v3 reader cannot follow: each is read
    with the reader of its layout, and both give the same Prediction."""
    record = prediction_record("e1") | {"feature_names": ["a", "b"], "features": [1.0, 2.0]}
    record |= {"inputs": {"c": "x"}}
    v2 = AvroSerializer(registry, "p-value", schemas.load("prediction", 2))(record)
    v3 = AvroSerializer(registry, "p-value", schemas.load("prediction", 3))(nest_detail(record))
    cache = WriterSchemaCache(registry)
    dec = LayoutDeserializer(
        cache, schemas.load("prediction"), schemas.load("prediction", 2), "detail"
    )
    old, new = Prediction.from_avro(dec(v2)), Prediction.from_avro(dec(v3))
    assert old == new
    assert new.features == (1.0, 2.0) and new.inputs == {"c": "x"} and new.value == 2.0
    # the v3 reader alone would have lost the v2 record's arrays
    plain = Prediction.from_avro(AvroDeserializer(cache, schemas.load("prediction"))(v2))
    assert plain.features == () and plain.feature_names == ()
    # in one batch (the join's batch decode): each layout with its reader, in order, a
    # bad value typed at its place
    good, records, failed = dec.decode_many([v3, v2, b"\x07bad", v2, v3])
    assert good == [0, 1, 3, 4] and len(failed) == 1 and failed[0][0] == 2
    assert isinstance(failed[0][1], MagicByteError)
    assert all(Prediction.from_avro(r) == new for r in records)


def test_a_ground_truth_outage_keeps_rows_and_offsets_until_the_table_answers(
    registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table cannot be written at a checkpoint: nothing is committed, the rows stay
    buffered, and the next checkpoint writes them and commits."""
    from streamscore.feedback.groundtruth import GroundTruthUnavailableError

    batch = [
        FakeMessage(JOIN, 0, 0, prediction(registry, "e1"), key=b"e1", headers=kind(b"prediction")),
        FakeMessage(JOIN, 0, 1, label(registry, "e1"), key=b"e1", headers=kind(b"label")),
    ]
    loop, consumer, _metrics, _dead = make_loop(registry, [batch], tmp_path)
    real_write = loop.store.write
    down = [True]

    def flaky_write(batch: Any) -> Any:
        if down[0]:
            raise GroundTruthUnavailableError("storage away")
        return real_write(batch)

    monkeypatch.setattr(loop.store, "write", flaky_write)
    loop._handle(consumer.consume(10, 0.1))
    loop.checkpoint()
    assert consumer.commits == [] and loop.store.buffered == 1
    assert read_rows(str(tmp_path)) == []
    down[0] = False
    loop.checkpoint()
    assert [r["event_id"] for r in read_rows(str(tmp_path))] == ["e1"]
    assert consumer.commits[-1] == [(JOIN, 0, 2)]


def test_an_assignment_goes_on_when_the_recent_rows_cannot_be_read(
    registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recently written ids are a shortcut: a table that cannot be read at an
    assignment is logged, the partitions are assigned and joined all the same."""
    from confluent_kafka import TopicPartition

    from streamscore.feedback.groundtruth import GroundTruthUnavailableError

    batch = [
        FakeMessage(JOIN, 0, 0, prediction(registry, "e1"), key=b"e1", headers=kind(b"prediction")),
        FakeMessage(JOIN, 0, 1, label(registry, "e1"), key=b"e1", headers=kind(b"label")),
    ]
    loop, consumer, _metrics, _dead = make_loop(registry, [batch], tmp_path)

    def away() -> int:
        raise GroundTruthUnavailableError("the rows of the table joined recently could not be read")

    monkeypatch.setattr(loop.store, "refresh", away)
    loop._on_assign(consumer, [TopicPartition(JOIN, 0)])
    assert (JOIN, 0) in loop.join.partitions()
    loop._handle(consumer.consume(10, 0.1))
    loop.checkpoint()
    assert [r["event_id"] for r in read_rows(str(tmp_path))] == ["e1"]


def test_the_join_goes_on_while_a_checkpoint_is_in_flight(
    registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint merging on its thread does not hold the join: the next batch is
    joined meanwhile (its label meets a prediction the checkpoint sealed); the offsets
    committed are the sealed ones, and the next checkpoint takes the rest, each row once.
    The table away at a checkpoint in flight: everything sealed comes back for the next."""
    from streamscore.feedback.groundtruth import GroundTruthUnavailableError

    first = [
        FakeMessage(JOIN, 0, 0, prediction(registry, "e1"), key=b"e1", headers=kind(b"prediction")),
        FakeMessage(JOIN, 0, 1, prediction(registry, "e2"), key=b"e2", headers=kind(b"prediction")),
        FakeMessage(JOIN, 0, 2, label(registry, "e1"), key=b"e1", headers=kind(b"label")),
    ]
    second = [FakeMessage(JOIN, 0, 3, label(registry, "e2"), key=b"e2", headers=kind(b"label"))]
    third = [
        FakeMessage(JOIN, 0, 4, prediction(registry, "e3"), key=b"e3", headers=kind(b"prediction")),
        FakeMessage(JOIN, 0, 5, label(registry, "e3"), key=b"e3", headers=kind(b"label")),
    ]
    loop, consumer, _metrics, _dead = make_loop(registry, [first, second, third], tmp_path)
    real_write = loop.store.write
    gate = threading.Event()
    down = [False]

    def held_write(batch: Any) -> Any:
        assert gate.wait(30), "never released"
        if down[0]:
            raise GroundTruthUnavailableError("storage away")
        return real_write(batch)

    monkeypatch.setattr(loop.store, "write", held_write)
    loop._handle(consumer.consume(10, 0.1))
    loop.checkpoint(wait=False)
    loop._handle(consumer.consume(10, 0.1))  # joined while the checkpoint waits
    assert loop.join.stats.joined == 2 and consumer.commits == []
    gate.set()
    loop._finish()
    assert [r["event_id"] for r in read_rows(str(tmp_path))] == ["e1"]
    assert consumer.commits == [[(JOIN, 0, 3)]]  # the sealed offsets, not the batch since
    gate.clear()
    loop.checkpoint(wait=False)  # e2's row and offset 4, held
    loop._handle(consumer.consume(10, 0.1))
    down[0] = True
    gate.set()
    loop._finish()  # the table away: nothing committed, everything back
    assert consumer.commits == [[(JOIN, 0, 3)]] and loop.store.buffered == 2
    down[0] = False
    loop.checkpoint()
    assert sorted(r["event_id"] for r in read_rows(str(tmp_path))) == ["e1", "e2", "e3"]
    assert consumer.commits[-1] == [(JOIN, 0, 6)]
    assert loop.stats.rows_written == 3 and loop.stats.checkpoints == 2


def test_an_unmatched_label_then_a_row_of_its_event_do_not_depend_on_where_a_batch_ends(
    registry: Any, tmp_path: Path
) -> None:
    """An event's label expires unmatched (its prediction comes after its window), then a
    second label joins that late prediction: the unmatched table keeps the first label and
    the rows table the row, whether the four messages come in one batch or in two (a
    replay cuts its batches differently from the first reading)."""
    from confluent_kafka import TopicPartition

    enc_p = AvroSerializer(registry, "p-value", schemas.load("prediction"))
    enc_f = AvroSerializer(registry, "f-value", schemas.load("feedback"))
    late = T0 + 120_000  # two windows on

    def msg(off: int, eid: str, k: bytes, value: bytes) -> FakeMessage:
        return FakeMessage(JOIN, 0, off, value, key=eid.encode(), headers=kind(k))

    msgs = [
        msg(0, "x", b"label", enc_f({"event_id": "x", "label": 1.0, "observed_time": T0})),
        # another event's prediction moves the watermark past x's label: unmatched
        msg(1, "o", b"prediction", enc_p(nest_detail(prediction_record("o", event_time_ms=late)))),
        msg(2, "x", b"prediction", enc_p(nest_detail(prediction_record("x", event_time_ms=late)))),
        msg(3, "x", b"label", enc_f({"event_id": "x", "label": 2.0, "observed_time": late})),
    ]
    seen = []
    for batches in ([msgs], [msgs[:2], msgs[2:]]):
        where = tmp_path / str(len(batches))
        loop, consumer, _m, _dead = make_loop(registry, [], where)
        loop._on_assign(consumer, [TopicPartition(JOIN, 0)])
        for b in batches:
            loop._handle(b)
        loop.checkpoint()
        unmatched = [(u["event_id"], u["label"]) for u in read_unmatched(str(where))]
        seen.append((unmatched, [r["event_id"] for r in read_rows(str(where))]))
    assert seen[0] == seen[1] == ([("x", 1.0)], ["x"])


class AbortingChangelog:
    """A changelog whose transactions abort while ``down`` (and that restores nothing:
    a fresh group); the committed ones are kept by partition."""

    def __init__(self) -> None:
        self.down = True
        self.committed: list[dict[tuple[str, int], int]] = []

    def look_up_ends(self, _tps: Any) -> None:
        pass

    def restore(self, _state: Any, _topic: str, _partition: int) -> int:
        return 0

    def commit(self, changes: Any, offsets: Any, _group: Any) -> dict[tuple[str, int], int]:
        from streamscore.kafka.changelog import TransactionAborted

        if self.down:
            raise TransactionAborted("checkpoint aborted: broker away")
        self.committed.append(dict(offsets))
        return {tp: len(recs) - 1 for tp, recs in changes.items()}


def test_an_aborted_checkpoint_in_flight_rolls_state_and_positions_back(
    registry: Any, tmp_path: Path
) -> None:
    """The changelog transaction of a checkpoint in flight aborts after the rows were
    merged: the join state goes back to the last checkpoint (none: empty) and each
    partition is sought back to where it resumes from (never checkpointed: where the
    group starts, its last commit or the beginning), so nothing consumed is skipped."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    batch = [
        FakeMessage(JOIN, 0, 0, prediction(registry, "e1"), key=b"e1", headers=kind(b"prediction")),
        FakeMessage(JOIN, 0, 1, label(registry, "e1"), key=b"e1", headers=kind(b"label")),
    ]
    changelog = AbortingChangelog()
    loop, consumer, _metrics, _dead = make_loop(
        registry, [batch], tmp_path / "gt", changelog=changelog, state_dir=tmp_path / "state"
    )
    consumer.consumer_group_metadata = lambda: "group"  # type: ignore[attr-defined]
    loop._on_assign(consumer, [TopicPartition(JOIN, 0)])
    loop._handle(consumer.consume(10, 0.1))
    loop.checkpoint(wait=False)
    loop._finish()
    assert consumer.seeks == [(JOIN, 0, OFFSET_BEGINNING)]
    state = loop.join.partitions()[(JOIN, 0)]
    assert state.get("e1") is None and state.meta.input_offset == -1
    assert loop.stats.checkpoints == 0 and changelog.committed == []
    assert [r["event_id"] for r in read_rows(str(tmp_path / "gt"))] == ["e1"]  # merged first
    changelog.down = False  # the same messages again: the label's row is known written
    loop._handle(batch)
    loop.checkpoint()
    assert changelog.committed == [{(JOIN, 0): 2}] and loop.join.stats.duplicate == 1
    assert [r["event_id"] for r in read_rows(str(tmp_path / "gt"))] == ["e1"]  # not doubled


class Counted:
    """A head reader that counts what it accepts and the records it reads."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.accepted: list[int] = []
        self.records_read = 0

    def __call__(self, values: Any) -> Any:
        h = self.inner(values)
        self.accepted.append(len(h.rows))
        return h

    def columns(self, values: Any) -> Any:
        rows, cols = self.inner.columns(values)
        self.records_read += len(rows)
        return rows, cols

    def columns_of(self, heads: Any, which: Any) -> Any:
        self.records_read += len(which)
        return self.inner.columns_of(heads, which)


def test_predictions_held_by_their_heads_join_and_dead_letter_as_decoded_ones(
    registry: Any, tmp_path: Path
) -> None:
    """The head reader's path (predictions checked whole in one pass, decoded only when
    their label comes) gives the rows, dead letters, counts and commits of the decoder's
    path: labels before and after their predictions, across batches and a checkpoint,
    v2 predictions, shadows, and broken messages among them."""
    v2 = AvroSerializer(registry, "p2-value", schemas.load("prediction", 2))
    first: list[FakeMessage] = []
    second: list[FakeMessage] = []
    for j in range(40):
        eid = f"e{j}"
        raw = prediction(registry, eid) if j % 5 else v2(prediction_record(eid, event_time_ms=T0))
        if j == 7:
            raw = raw[:-3]  # truncated
        elif j == 8:
            raw = raw + b"\x00"  # a trailing byte
        elif j == 9:
            raw = raw[:5] + b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f" + raw[6:]  # a huge length
        msg_p = FakeMessage(JOIN, 0, 0, raw, key=eid.encode(), headers=kind(b"prediction"))
        msg_l = FakeMessage(
            JOIN, 0, 0, label(registry, eid), key=eid.encode(), headers=kind(b"label")
        )
        if j % 3 == 0:  # the label first, its prediction in the next batch
            first.append(msg_l)
            second.append(msg_p)
        elif j % 3 == 1:  # both in the first batch
            first += [msg_p, msg_l]
        else:  # the prediction first, its label after a checkpoint
            first.append(msg_p)
            second.append(msg_l)
    shadow = nest_detail(prediction_record("e1", event_time_ms=T0)) | {"role": "shadow"}
    v3 = AvroSerializer(registry, "p-value", schemas.load("prediction"))
    first.append(FakeMessage(JOIN, 0, 0, v3(shadow), key=b"e1", headers=kind(b"prediction")))
    for off, m in enumerate(first + second):
        m._offset = off
    results = []
    for heads in (False, True):
        where = tmp_path / str(heads)
        loop, consumer, _metrics, dead = make_loop(
            registry, [list(first), list(second)], where, heads=heads
        )
        counted = Counted(loop._read_heads)
        if heads:
            loop._read_heads = counted  # type: ignore[assignment]
        loop._handle(consumer.consume(1000, 0.1))
        loop.checkpoint()
        loop._handle(consumer.consume(1000, 0.1))
        loop.checkpoint()
        rows = sorted(
            (r["event_id"], r["label"], r["prediction_value"], r["model_role"])
            for r in read_rows(str(where))
        )
        results.append(
            (
                rows,
                [(off, type(err)) for off, err in dead],
                dataclasses.astuple(loop.stats),
                dataclasses.astuple(loop.join.stats),
                consumer.commits[-1],
            )
        )
        if heads:  # the v3 ones, less the three broken
            assert sum(counted.accepted) == 32 - 3 + 1
            assert counted.records_read > 0  # labels met predictions decoded column-wise
    assert results[0] == results[1]
    rows, dead, *_ = results[1]
    assert len(rows) == 37 and len(dead) == 3
