"""The batch paths of the hot loop give exactly what the per-message paths give:
``AvroDeserializer.decode_many`` (column-wise with NumPy, or lean per message) against
calling the deserializer on each message, :class:`EventColumns` against event dicts,
and the whole :class:`BatchScorer` with its fast paths against it without them."""

from __future__ import annotations

import io
from typing import Any
from unittest import mock

import fastavro
import numpy as np
import pytest

from streamscore.core import errors
from streamscore.core.columns import EventColumns
from streamscore.core.config import LatePolicy, ScoringSettings
from streamscore.core.records import FeatureField, FeatureKind, FeatureSpec, MissingPolicy, Role
from streamscore.dev import synthetic
from streamscore.features.extract import extract
from streamscore.kafka.delivery import AtLeastOnceSink, OutBatch, OutMessage
from streamscore.models.container import sign_bundle
from streamscore.models.convert import build_bundle
from streamscore.models.runtime import LoadedModel, verify_and_load
from streamscore.models.store import ModelStore
from streamscore.score.batch import BatchScorer, InMessage, MessageBatch
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, parse, registry_client
from tests.avro_poison import corrupt, random_value

from .kafka_fakes import FakeMessage

FLAT = {
    "type": "record",
    "name": "Flat",
    "namespace": "t",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d0", "type": "double"},
        {"name": "d1", "type": "double"},
        {"name": "s", "type": "string"},
        {"name": "raw", "type": "bytes"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["x", "y", "z"]}},
        {"name": "nd", "type": ["null", "double"], "default": None},
        {"name": "ns", "type": ["string", "null"]},
        {"name": "nl", "type": ["null", "long"], "default": None},
        {"name": "nb", "type": ["null", "boolean"], "default": None},
        {"name": "d2", "type": "double"},
    ],
}


def flat_record(i: int, rng: np.random.Generator) -> dict[str, Any]:
    special = [0.0, -0.0, float("nan"), float("inf"), -1e300, 5e-324]
    return {
        "event_id": f"id-{i}" + "é" * (i % 3),
        "event_time": int(rng.integers(-(2**40), 2**61)),
        "b": bool(i % 2),
        "i": int(rng.integers(-(2**31), 2**31 - 1)),
        "l": int(rng.integers(-(2**62), 2**62)),
        "f": float(np.float32(rng.normal())),
        "d0": special[i % len(special)] if i % 4 == 0 else float(rng.normal()),
        "d1": float(rng.normal() * 1e9),
        "s": "x" * int(rng.integers(0, 200)),
        "raw": bytes(rng.integers(0, 256, int(rng.integers(0, 20)), dtype=np.uint8)),
        "e": ["x", "y", "z"][i % 3],
        "nd": None if i % 3 == 0 else float(rng.normal()),
        "ns": None if i % 4 == 1 else "ü" * (i % 5),
        "nl": None if i % 2 else int(rng.integers(-1000, 1000)),
        "nb": [None, True, False][i % 3],
        "d2": float(i),
    }


COLOUR = {"type": "enum", "name": "Colour", "symbols": ["red", "green", "blue"]}

#: unions other than ``[null, T]`` (the feedback schema's label is ``["double", "string"]``),
#: one with every kind of branch, beside a ``[null, T]``
UNIONS = {
    "type": "record",
    "name": "Unions",
    "namespace": "t",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "label", "type": ["double", "string"]},
        {"name": "nls", "type": ["null", "long", "string"]},
        {"name": "mix", "type": ["boolean", COLOUR, "bytes", "null", "int", "float"]},
        {"name": "nd", "type": ["null", "double"]},
        {"name": "t", "type": "long"},
    ],
}


def union_record(i: int, rng: np.random.Generator) -> dict[str, Any]:
    """A UNIONS record; ``mix`` takes its branches in turn (one of every 7 records each)."""
    mix = [
        True,
        False,
        "green",  # the enum
        bytes(rng.integers(0, 256, int(rng.integers(0, 20)), dtype=np.uint8)),
        None,
        int(rng.integers(-(2**31), 2**31 - 1)),
        float(np.float32(rng.normal())),
    ][i % 7]
    return {
        "event_id": f"id-{i}",
        "label": float(rng.normal()) if i % 2 else ["cat", "dög", ""][i % 3],
        "nls": [None, int(rng.integers(-(2**62), 2**62)), "s" * (i % 9) + "é"][i % 3],
        "mix": mix,
        "nd": None if i % 5 == 0 else float(i),
        "t": 1_700_000_000_000 + i,
    }


def random_branch_value(t: Any, rng: np.random.Generator) -> Any:
    """A random value of a random branch of ``t`` (a union), else of ``t``."""
    if not isinstance(t, list):
        return random_value(t, rng)
    b = t[int(rng.integers(len(t)))]
    return None if b == "null" else random_value(b, rng)


@pytest.fixture
def registry() -> Any:
    return registry_client({"url": f"mock://fast-decode-{id(object())}"})


def per_message(dec: AvroDeserializer, values: list[Any]) -> tuple[Any, Any, Any]:
    good, records, failed = [], [], []
    for i, v in enumerate(values):
        try:
            records.append(dec(v))
            good.append(i)
        except errors.StreamscoreError as exc:
            failed.append((i, type(exc), str(exc)))
    return good, records, failed


def assert_same(dec: AvroDeserializer, values: list[Any], *, columnar: bool | None) -> None:
    # each side with its own schema cache (their negative caches would tell apart)
    fresh = AvroDeserializer(WriterSchemaCache(dec._schemas._registry), dec._reader_json)
    exp_good, exp_records, exp_failed = per_message(fresh, values)
    good, records, failed = dec.decode_many(values)
    if columnar is not None:
        assert isinstance(records, EventColumns) == columnar
    assert good == exp_good
    assert [(i, type(e), str(e)) for i, e in failed] == exp_failed
    got = [dict(r) for r in records]
    assert len(got) == len(exp_records)
    for g, e in zip(got, exp_records, strict=True):
        assert list(g) == list(e)  # same fields, same order
        for k in e:
            assert type(g[k]) is type(e[k]), k
            if isinstance(e[k], float) and np.isnan(e[k]):
                assert np.isnan(g[k])
            else:
                assert g[k] == e[k], k


def test_flat_records_decode_column_wise_exactly_as_one_by_one(registry: Any) -> None:
    ser = AvroSerializer(registry, "flat-value", FLAT)
    dec = AvroDeserializer(WriterSchemaCache(registry), FLAT)
    rng = np.random.default_rng(0)
    values = [ser(flat_record(i, rng)) for i in range(300)]
    assert_same(dec, values, columnar=True)


def test_a_nullable_double_null_in_every_record_decodes_column_wise(registry: Any) -> None:
    """No row reads the double: an empty gather (it used to raise, and the batch went
    to the per-message path)."""
    ser = AvroSerializer(registry, "flat-value", FLAT)
    dec = AvroDeserializer(WriterSchemaCache(registry), FLAT)
    rng = np.random.default_rng(11)
    values = [ser({**flat_record(i, rng), "nd": None}) for i in range(40)]
    assert_same(dec, values, columnar=True)


def test_bad_messages_in_a_columnar_batch_get_their_own_errors(registry: Any) -> None:
    ser = AvroSerializer(registry, "flat-value", FLAT)
    dec = AvroDeserializer(WriterSchemaCache(registry), FLAT)
    rng = np.random.default_rng(1)
    good = [ser(flat_record(i, rng)) for i in range(40)]
    v = good[0]
    values = good[:10] + broken_versions(v) + good[10:]
    assert_same(dec, values, columnar=True)
    # every truncation point of a message
    assert_same(dec, good[:20] + [v[:k] for k in range(len(v))] + good[20:], columnar=True)


def broken_versions(v: bytes) -> list[bytes | None]:
    """One message of each broken kind, made from a valid message ``v`` whose first field
    is a string (the event id)."""
    return [
        b"",
        None,
        b"\x05garbage",
        v[:3],
        v[:5],
        v[:-1],  # truncated in the last field
        v[:12],  # truncated in a string
        v + b"\x00",  # trailing byte
        b"\x00\x00\x01\x00\x00" + v[5:],  # unknown schema id
        v[:6] + b"\xff" + v[7:],  # invalid UTF-8: the event id's first byte
        v[:5] + b"\x81" * 12 + v[5:],  # a string length that is not a varint
    ]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("layout", ["flat", "unions"])
def test_corrupted_messages_decode_exactly_as_one_by_one(
    registry: Any, layout: str, seed: int
) -> None:
    """Random byte flips, insertions, deletions and lengths blown up: whatever fastavro
    makes of each message (a record or a typed error), the batch decoder makes too."""
    schema, make = (FLAT, flat_record) if layout == "flat" else (UNIONS, union_record)
    ser = AvroSerializer(registry, f"{layout}-value", schema)
    dec = AvroDeserializer(WriterSchemaCache(registry), schema)
    rng = np.random.default_rng(100 + seed)
    values = []
    for i in range(200):
        values.append(corrupt(ser(make(i, rng)), rng, kinds=6))
    assert_same(dec, values, columnar=None)
    # in small batches most stay column-wise (a batch falls back to per-message decoding
    # when one of its messages is read by fastavro but not by the vectorised reader)
    columnar = 0
    for k in range(0, len(values), 20):
        assert_same(dec, values[k : k + 20], columnar=None)
        columnar += isinstance(dec.decode_many(values[k : k + 20])[1], EventColumns)
    assert columnar >= 3


def test_unions_of_flat_branches_decode_column_wise_exactly_as_one_by_one(
    registry: Any,
) -> None:
    ser = AvroSerializer(registry, "unions-value", UNIONS)
    dec = AvroDeserializer(WriterSchemaCache(registry), UNIONS)
    rng = np.random.default_rng(7)
    values = [ser(union_record(i, rng)) for i in range(300)]
    assert_same(dec, values, columnar=True)
    _good, records, failed = dec.decode_many(values)
    assert isinstance(records, EventColumns) and failed == []
    # every branch was written (and read with its own Python type)
    assert {type(v) for v in records.values_of("label")} == {float, str}
    assert {type(v) for v in records.values_of("nls")} == {type(None), int, str}
    mix = records.values_of("mix")
    assert {type(v) for v in mix} == {bool, str, bytes, type(None), int, float}
    assert {v for v in mix if type(v) is str} == {"green"}
    # batches in which a union takes one branch only
    assert_same(dec, values[1::2], columnar=True)  # every label a double
    assert_same(dec, values[::7], columnar=True)  # every mix True
    assert_same(dec, values[4::7], columnar=True)  # every mix None


def test_feedback_labels_decode_column_wise(registry: Any) -> None:
    """The project's own label schema: ``label`` is ``["double", "string"]``."""
    feedback = schemas.load("feedback")
    assert any(f["type"] == ["double", "string"] for f in feedback["fields"])
    ser = AvroSerializer(registry, "feedback-value", feedback)
    dec = AvroDeserializer(WriterSchemaCache(registry), feedback)
    rng = np.random.default_rng(8)
    labels: list[Any] = [float(x) for x in rng.normal(size=100)]
    labels += [["yes", "no", "peut-être"][i % 3] for i in range(100)]
    rng.shuffle(labels)
    values = [
        ser({"event_id": f"e{i}", "label": label, "observed_time": 1_700_000_000_000 + i})
        for i, label in enumerate(labels)
    ]
    assert_same(dec, values, columnar=True)
    _good, records, _failed = dec.decode_many(values)
    assert records.values_of("label") == labels
    numbers = [v for v, lab in zip(values, labels, strict=True) if type(lab) is float]
    assert_same(dec, numbers, columnar=True)


def test_bad_messages_with_unions_get_their_own_errors(registry: Any) -> None:
    ser = AvroSerializer(registry, "unions-value", UNIONS)
    dec = AvroDeserializer(WriterSchemaCache(registry), UNIONS)
    rng = np.random.default_rng(9)
    good = [ser(union_record(i, rng)) for i in range(40)]
    assert_same(dec, good[:10] + broken_versions(good[1]) + good[10:], columnar=True)
    # every truncation point of messages with each branch of mix (and of label, nls)
    for v in good[:7]:
        assert_same(dec, good[:20] + [v[:k] for k in range(len(v))] + good[20:], columnar=True)
    # a string branch whose length runs past the end, or is negative; trailing bytes
    v = ser({**union_record(0, rng), "event_id": "x", "label": "cat"})
    assert v[5:12] == b"\x02x\x02\x06cat"  # the label: branch 1, length 3
    odd = [
        v[:8] + b"\x7e" + v[9:],  # 63 bytes
        v[:8] + b"\x08" + v[9:],  # one byte too many, the rest misread
        v[:8] + b"\x00" + v[9:],  # empty, the rest misread
        v[:8] + b"\x01" + v[9:],  # -1
        v + b"\x00",
    ]
    values = good[:20] + odd + good[20:]
    _good, records, failed = dec.decode_many(values)
    assert isinstance(records, EventColumns) and [i for i, _e in failed] == list(range(20, 25))
    assert isinstance(failed[0][1], errors.TruncatedMessageError)
    assert_same(dec, values, columnar=True)


def test_a_union_branch_index_out_of_range_is_the_per_message_error(registry: Any) -> None:
    ser = AvroSerializer(registry, "unions-value", UNIONS)
    dec = AvroDeserializer(WriterSchemaCache(registry), UNIONS)
    rng = np.random.default_rng(10)
    values = [ser(union_record(i, rng)) for i in range(40)]
    rec = {"event_id": "x", "label": 1.5, "nls": None, "mix": None, "nd": None, "t": 0}
    v = ser(rec)
    # event id; label: branch 0, a double; nls: null; mix: null (branch 3); nd: null; t
    assert v[5:] == b"\x02x\x00" + np.float64(1.5).tobytes() + b"\x00\x06\x00\x00"
    label, mix = 7, 17  # where the branch indexes are
    odd = [
        v[:label] + b"\x04" + v[label + 1 :],  # label: branch 2 of 2
        v[:label] + b"\x80\x01" + v[label + 1 :],  # branch 64, a two-byte varint
        v[:mix] + b"\x0c" + v[mix + 1 :],  # mix: branch 6 of 6
        v[:mix] + b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01" + v[mix + 1 :],  # too long
        v[:mix] + b"\x02\x06" + v[mix + 1 :],  # mix: the enum, its symbol 3 of 3
    ]
    for o in odd:
        with pytest.raises(errors.StreamscoreError):
            AvroDeserializer(WriterSchemaCache(registry), UNIONS)(o)
    batch = values[:20] + odd + values[20:]
    good, records, failed = dec.decode_many(batch)
    assert isinstance(records, EventColumns) and len(good) == 40
    assert [i for i, _e in failed] == list(range(20, 25))
    assert_same(dec, batch, columnar=True)
    # a negative index: fastavro takes it from the end (branch -1 of the label is the
    # string), the vectorised reader leaves such a message, and its batch, to fastavro
    wrapped = v[:label] + b"\x01\x06cat" + v[label + 9 :]
    assert AvroDeserializer(WriterSchemaCache(registry), UNIONS)(wrapped)["label"] == "cat"
    assert_same(dec, [*values, wrapped], columnar=False)
    # so is a boolean byte other than 0 or 1 (fastavro reads it as True)
    odd_bool = v[:mix] + b"\x00\x05" + v[mix + 1 :]
    assert AvroDeserializer(WriterSchemaCache(registry), UNIONS)(odd_bool)["mix"] is True
    assert_same(dec, [*values, odd_bool], columnar=False)


def test_writer_schemas_that_need_resolution_decode_column_wise_too(registry: Any) -> None:
    """(More cases of schema resolution in test_fast_decode_resolution.py.)"""
    v1 = AvroSerializer(registry, "events-value", schemas.load("event", 1))
    v2 = AvroSerializer(registry, "events-value", schemas.load("event", 2))
    dec = AvroDeserializer(WriterSchemaCache(registry), schemas.load("event", 2))
    rng = np.random.default_rng(2)
    v1_events = [v1(e) for e, _y in synthetic.events(30, rng, with_c=False)]
    v2_events = [v2(e) for e, _y in synthetic.events(30, rng, with_c=True)]
    assert_same(dec, v2_events, columnar=True)  # the reader's own schema
    assert_same(dec, v1_events, columnar=True)  # v1 data read with v2: c defaulted
    assert_same(dec, v2_events[:15] + v1_events + v2_events[15:], columnar=True)  # mixed
    assert_same(dec, v2_events[:5], columnar=False)  # a small batch: per message


def test_without_a_reader_schema_each_writer_is_its_own_reader_column_wise(
    registry: Any,
) -> None:
    """The score worker's default (no reader schema): each message as written, still
    column-wise (an identity plan per writer schema id, made once); two writer versions
    with other fields in one batch: per message, each with its own fields."""
    ser = AvroSerializer(registry, "flat-value", FLAT)
    dec = AvroDeserializer(WriterSchemaCache(registry), None)
    rng = np.random.default_rng(3)
    values = [ser(flat_record(i, rng)) for i in range(100)]
    assert_same(dec, values, columnar=True)
    assert_same(dec, values[:20] + broken_versions(values[0]) + values[20:], columnar=True)
    assert list(dec._flat) == [ser.schema_id]  # one plan, cached
    v1 = AvroSerializer(registry, "events-value", schemas.load("event", 1))
    v2 = AvroSerializer(registry, "events-value", schemas.load("event", 2))
    olds = [v1(e) for e, _y in synthetic.events(20, rng, with_c=False)]
    news = [v2(e) for e, _y in synthetic.events(20, rng, with_c=True)]
    assert_same(dec, news, columnar=True)
    assert_same(dec, olds + news, columnar=False)  # records of two shapes
    _good, records, _failed = dec.decode_many(olds + news)
    assert "c" not in records[0] and "c" in records[-1]


def test_event_columns_behave_like_the_event_dicts() -> None:
    cols = EventColumns(
        3,
        {
            "a": np.array([1.5, 2.5, 3.5]),
            "n": np.array([1, 2, 3], dtype=np.int64),
            "s": ["x", None, "z"],
            "t": np.array([True, False, True]),
        },
    )
    rows: list[dict[str, Any]] = [
        {"a": 1.5, "n": 1, "s": "x", "t": True},
        {"a": 2.5, "n": 2, "s": None, "t": False},
        {"a": 3.5, "n": 3, "s": "z", "t": True},
    ]
    assert list(cols) == rows and cols.rows() == rows
    assert cols[-1] == rows[2] and cols[0:2] == rows[0:2]
    assert [type(v) for v in cols[0].values()] == [float, int, str, bool]
    assert cols.take([2, 0]).rows() == [rows[2], rows[0]]
    with pytest.raises(IndexError):
        cols[3]
    spec = FeatureSpec(
        (
            FeatureField("a"),
            FeatureField("n"),
            FeatureField("t"),  # a bool is not a number
            FeatureField("missing", missing=MissingPolicy.IMPUTE, impute_value=0.0),
            FeatureField("s", kind=FeatureKind.CATEGORICAL, categories=("z", "x")),
        )
    )
    got, want = extract(cols, spec), extract(rows, spec)
    for name in ("values", "missing", "unknown_category", "wrong_type"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def test_message_batch_is_a_sequence_of_in_messages() -> None:
    msgs = [InMessage(bytes([i]), b"k", "t", i % 2, 10 + i, 100 + i) for i in range(4)]
    mb = MessageBatch.of(msgs)
    assert len(mb) == 4 and list(mb) == msgs and mb[-1] == msgs[3] and mb[1:3] == msgs[1:3]
    assert mb.values == [m.value for m in msgs] and mb.keys == [b"k"] * 4
    with pytest.raises(IndexError):
        mb[4]


class AckingProducer:
    def __init__(self) -> None:
        self.waiting: list[Any] = []
        self.topics: list[str] = []

    def produce(  # the positional order of Producer.produce's C argument list
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: int = -1,
        callback: Any = None,
        on_delivery: Any = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None:
        on_delivery = callback or on_delivery
        assert partition == -1
        self.waiting.append(on_delivery)
        self.topics.append(topic)

    def ack(self, n: int) -> None:
        for cb in self.waiting[:n]:
            cb(None, None)
        del self.waiting[:n]

    def poll(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.waiting)


def test_bulk_outputs_are_acknowledged_like_the_others_before_offsets_move() -> None:
    p = AckingProducer()
    stored: list[Any] = []
    consumer = mock.Mock(store_offsets=lambda offsets: stored.append(offsets))
    sink = AtLeastOnceSink(p, consumer)
    batch = OutBatch(
        [OutMessage("telemetry", b"w", b"t")],
        {("events", 0): 5},
        bulk=[("predictions", [(b"k1", b"v1"), (b"k2", b"v2")], None)],
    )
    assert batch.n_outputs == 3
    sink.send(batch)
    assert p.topics == ["predictions", "predictions", "telemetry"]
    p.ack(2)
    sink.poll()
    assert stored == []  # telemetry not acknowledged yet
    p.ack(1)
    sink.poll()
    assert len(stored) == 1


# ------------------------------------------------------------- the whole batch scorer

KEY = b"fast-decode-test-key"


def _fit(with_c: bool, version: int) -> LoadedModel:
    from sklearn.linear_model import LinearRegression

    s = synthetic.sample(2000, np.random.default_rng(version))
    x = s.matrix(with_c)
    b = build_bundle(
        LinearRegression().fit(x, s.y),
        name="demo",
        version=version,
        feature_spec=synthetic.spec_abc() if with_c else synthetic.spec_ab(),
        X_train=x,
        X_reference=x[:64],
        created_at_ms=1,
    )
    signed = sign_bundle(b.to_bytes(), KEY, "k")
    return verify_and_load(signed.payload, signed.signature, "k", {"k": KEY})


def decode_prediction(data: bytes) -> dict[str, Any]:
    parsed = parse(schemas.load("prediction"))
    record = fastavro.schemaless_reader(io.BytesIO(data[5:]), parsed)
    assert isinstance(record, dict)
    return record


@pytest.mark.parametrize("policy", [LatePolicy.SCORE_AND_FLAG, LatePolicy.ROUTE])
def test_scorer_fast_paths_give_what_the_plain_paths_give(
    registry: Any, policy: LatePolicy
) -> None:
    v2 = AvroSerializer(registry, "events-value", schemas.load("event", 2))
    dec = AvroDeserializer(WriterSchemaCache(registry), schemas.load("event", 2))
    pred = AvroSerializer(registry, "predictions-value", schemas.load("prediction"))
    rng = np.random.default_rng(5)
    msgs = []
    for i, (e, _y) in enumerate(synthetic.events(400, rng, with_c=True, event_time_ms=1_000_000)):
        if i % 7 == 0:
            e["event_time"] = 500_000  # late
        if i % 11 == 0:
            e["c"] = None  # invalid for the abc shadow, fine for the ab primary
        if i % 13 == 0:
            e["a"] = 1e6  # out of range for everyone
        value = v2(e)
        if i % 17 == 0:
            value = value[:9]  # truncated
        key = None if i % 19 == 0 else (b"\xff\xfe" if i % 23 == 0 else e["key"].encode())
        msgs.append(InMessage(value, key, "events", i % 3, i, 999_000))
    store = ModelStore()
    store.offer(Role.PRIMARY, _fit(False, 1))
    store.offer(Role.SHADOW, _fit(True, 2))
    store.offer(Role.CANARY, _fit(False, 3))
    settings = ScoringSettings(late_after_ms=1000, late_policy=policy, canary_fraction=0.3)

    def clock() -> int:
        return 1_000_500

    fast = BatchScorer(dec, pred, settings, clock_ms=clock)
    plain = BatchScorer(lambda v: dec(v), lambda r: pred.encode_many(r), settings, clock_ms=clock)
    with mock.patch.object(pred, "encode_many", side_effect=AssertionError("slow encode")):
        got = fast.score(MessageBatch.of(msgs), store.snapshot())
    want = plain.score(msgs, store.snapshot())
    assert got.predictions == want.predictions
    assert len(got.predictions) > 300
    assert {decode_prediction(v)["role"] for _k, v in got.predictions} == {
        "primary",
        "shadow",
        "canary",
    }
    assert [(d.message, type(d.error), str(d.error)) for d in got.dead_letters] == [
        (d.message, type(d.error), str(d.error)) for d in want.dead_letters
    ]
    assert got.late_routed == want.late_routed
    assert (got.n_messages, got.n_scored, got.n_late) == (
        want.n_messages,
        want.n_scored,
        want.n_late,
    )
    assert got.shadow_skipped == want.shadow_skipped
    np.testing.assert_array_equal(got.event_times_ms, want.event_times_ms)
    assert [(o.model_version, o.role, o.count, o.degraded) for o in got.outputs] == [
        (o.model_version, o.role, o.count, o.degraded) for o in want.outputs
    ]


@pytest.mark.parametrize(("topics", "run"), [(["e"], 1), (["e"], 40), (["e", "f"], 1)])
def test_offset_ranges_are_the_first_and_last_offset_seen_per_partition(
    topics: list[str], run: int
) -> None:
    """Partitions interleaved message by message, or in runs (as fetches deliver them);
    one topic given (the loop's), or several asked message by message."""
    from streamscore.score.worker import _offset_ranges

    rng = np.random.default_rng(len(topics) + run)
    next_offset: dict[tuple[str, int], int] = {}
    msgs = []
    tp = (topics[0], 0)
    for i in range(300):
        if i % run == 0 or rng.random() < 1 / run:
            tp = (topics[int(rng.integers(len(topics)))], int(rng.integers(4)))
        next_offset[tp] = next_offset.get(tp, int(rng.integers(100))) + 1
        msgs.append(FakeMessage(tp[0], tp[1], next_offset[tp], None))
    first: dict[tuple[str, int], int] = {}
    last: dict[tuple[str, int], int] = {}
    for m in msgs:
        first.setdefault((m.topic(), m.partition()), m.offset())
        last[(m.topic(), m.partition())] = m.offset()
    assert _offset_ranges(msgs) == (first, last)
    if len(topics) == 1:
        assert _offset_ranges(msgs, topics[0]) == (first, last)
