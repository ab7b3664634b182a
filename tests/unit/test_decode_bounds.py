"""Decoding is bounded before anything is allocated or recursed into (issue 10): nesting
depth, claimed item counts and claimed lengths, each with its own typed error; nullable
writer unions resolved per record; no exception but a :class:`StreamscoreError` out of a
decoder, whatever fastavro does with a message."""

from __future__ import annotations

import io
import time
from typing import Any
from unittest import mock

import fastavro
import numpy as np
import pytest

from streamscore.core import errors
from streamscore.core.columns import EventColumns
from streamscore.core.config import ScoringSettings
from streamscore.core.records import Role
from streamscore.dev import synthetic
from streamscore.models.store import ModelStore
from streamscore.score.batch import BatchScorer, InMessage, MessageBatch
from streamscore.serde import schemas
from streamscore.serde.avro_scan import ZERO_WIDTH_ALLOWANCE, BoundedScan
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import MAX_SCHEMA_JSON_DEPTH, WriterSchemaCache, parse, registry_client
from tests.avro_poison import (
    NESTED_WRITER,
    NULL_ARRAY_WRITER,
    NULLABLE_A_WRITER,
    RICH,
    chain,
    corrupt,
    deep_tree,
    event_with,
    field,
    null_array_bomb,
    rich_value,
    varint,
)

from .test_fast_decode import _fit, assert_same

READER = schemas.load("event", 2)


@pytest.fixture
def registry() -> Any:
    return registry_client({"url": f"mock://decode-bounds-{id(object())}"})


def deserializer(registry: Any, **kw: Any) -> AvroDeserializer:
    return AvroDeserializer(WriterSchemaCache(registry), READER, **kw)


def event_dicts(n: int, seed: int = 0) -> list[dict[str, Any]]:
    return [e for e, _y in synthetic.events(n, np.random.default_rng(seed), with_c=False)]


def events(ser: AvroSerializer, n: int, seed: int = 0, **fields: Any) -> list[bytes]:
    return [ser({**e, **fields}) for e in event_dicts(n, seed)]


def failure(dec: AvroDeserializer, value: bytes) -> errors.StreamscoreError:
    """The error of ``value``, the same from the per-message and the batch decoder."""
    with pytest.raises(errors.StreamscoreError) as info:
        dec(value)
    good, _records, failed = dec.decode_many([value])
    assert good == [] and [(type(e), str(e)) for _i, e in failed] == [
        (type(info.value), str(info.value))
    ]
    return info.value


# ---------------------------------------------------------------------------- nesting


def test_a_message_nested_20000_levels_is_too_deep_not_a_crash(registry: Any) -> None:
    """The issue's case 1: fastavro alone dies with SIGSEGV on this message."""
    ser = AvroSerializer(registry, "nested-value", NESTED_WRITER)
    dec = deserializer(registry)
    poison = deep_tree(events(ser, 1)[0], 20_000)
    assert len(poison) > 40_000
    err = failure(dec, poison)
    assert type(err) is errors.NestingTooDeepError and err.reason == "too_deep"
    assert err.limit == 64


@pytest.mark.parametrize("limit", [3, 8, 64])
def test_nesting_is_refused_exactly_past_the_limit(registry: Any, limit: int) -> None:
    """The event record is level 1 and each node one more: ``limit - 1`` nodes read."""
    ser = AvroSerializer(registry, "nested-value", NESTED_WRITER)
    dec = deserializer(registry, max_depth=limit)
    event = event_dicts(1)[0]
    base = ser(event)
    ok = deep_tree(base, limit - 1)
    assert ok == ser({**event, "tree": chain(limit - 1)})  # what a producer would write
    assert dec(ok)["event_id"] == event["event_id"]
    assert type(failure(dec, deep_tree(base, limit))) is errors.NestingTooDeepError


def test_a_record_that_contains_itself_without_a_union_is_too_deep(registry: Any) -> None:
    """No message of such a schema ends: fastavro would recurse for ever on any bytes."""
    loop = {"type": "record", "name": "Loop", "fields": [{"name": "again", "type": "Loop"}]}
    sid = registry.register_schema("self-value", _schema(event_with("self", field("loop", loop))))
    v1 = AvroSerializer(registry, "v1-value", schemas.load("event", 1))
    body = events(v1, 1)[0][5:]
    err = failure(deserializer(registry), b"\x00" + sid.to_bytes(4, "big") + body)
    assert type(err) is errors.NestingTooDeepError


def _schema(writer: dict[str, Any]) -> Any:
    import json

    from confluent_kafka.schema_registry import Schema

    return Schema(json.dumps(writer), "AVRO")


# ------------------------------------------------------------------------------ counts


def test_an_array_of_nulls_claiming_2_62_items_is_a_bad_count_at_once(registry: Any) -> None:
    """The issue's case 3 (fastavro alone spends about 70 ns per claimed null)."""
    ser = AvroSerializer(registry, "bomb-value", NULL_ARRAY_WRITER)
    dec = deserializer(registry)
    poison = null_array_bomb(events(ser, 1)[0])
    t0 = time.perf_counter()
    err = failure(dec, poison)
    assert time.perf_counter() - t0 < 1.0
    assert type(err) is errors.ClaimedCountTooLargeError and err.reason == "bad_count"
    assert err.count == 2**62


def test_items_that_take_no_bytes_are_bounded_by_the_message_length(registry: Any) -> None:
    ser = AvroSerializer(registry, "bomb-value", NULL_ARRAY_WRITER)
    dec = deserializer(registry)
    event = event_dicts(1)[0]
    base = ser(event)
    # a short valid array of nulls reads (the allowance), one more null past it does not
    assert dec(ser({**event, "pad": [None] * 3}))["event_id"] == event["event_id"]
    assert dec(null_array_bomb(base, ZERO_WIDTH_ALLOWANCE))["event_id"] == event["event_id"]
    assert type(failure(dec, null_array_bomb(base, ZERO_WIDTH_ALLOWANCE + 1))) is (
        errors.ClaimedCountTooLargeError
    )
    # blocks add up: two blocks of the allowance each are one too many
    two = base[:-1] + varint(ZERO_WIDTH_ALLOWANCE) * 2 + b"\x00"
    assert type(failure(dec, two)) is errors.ClaimedCountTooLargeError


@pytest.mark.parametrize(
    ("items", "width"), [("double", 8), ("float", 4), ("boolean", 1), ("long", 1), ("string", 1)]
)
def test_a_block_cannot_claim_more_items_than_the_bytes_left_can_hold(
    registry: Any, items: str, width: int
) -> None:
    """Property: for every claimed count around the bytes left, the count is refused
    exactly when ``count * smallest item`` exceeds them."""
    writer = event_with(f"array-{items}", field("xs", {"type": "array", "items": items}))
    ser = AvroSerializer(registry, f"array-{items}-value", writer)
    dec = deserializer(registry)
    base = events(ser, 1, xs=[])[0]
    payload = bytes(40)  # zeros: valid items of every kind above (0, 0.0, False, "")
    for count in range(1, 60):
        msg = base[:-1] + varint(count) + payload  # no terminating block: 40 bytes left
        left = len(payload)
        if count * width > left:
            err = failure(dec, msg)
            assert type(err) is errors.ClaimedCountTooLargeError, count
            assert (err.count, err.bytes_left) == (count, left)
            continue
        try:  # read (the zeros left end the array), or trailing bytes, or truncated
            dec(msg)
        except errors.StreamscoreError as exc:
            assert exc.reason in ("truncated", "avro_decode"), (count, exc)


def test_a_map_block_claiming_too_many_entries_is_a_bad_count(registry: Any) -> None:
    writer = event_with("map", field("m", {"type": "map", "values": "double"}))
    ser = AvroSerializer(registry, "map-value", writer)
    dec = deserializer(registry)
    event = event_dicts(1)[0]
    base = ser({**event, "m": {}})
    assert dec(ser({**event, "m": {"k": 1.0}}))["event_id"] == event["event_id"]
    # each entry takes at least 9 bytes (key length + a double): 2 entries in 10 bytes
    err = failure(dec, base[:-1] + varint(2) + bytes(10))
    assert type(err) is errors.ClaimedCountTooLargeError and err.bytes_left == 10
    # a negative count is a block with its size in bytes; that size is bounded too
    err = failure(dec, base[:-1] + varint(-1) + varint(1000) + bytes(10))
    assert type(err) is errors.ClaimedLengthTooLargeError and err.reason == "bad_length"


# ----------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_a_string_length_past_the_end_is_a_bad_length(registry: Any, nested: bool) -> None:
    """Flat schemas too: fastavro reads them safely (an EOFError, nothing allocated) and
    the scan then names the flaw the same way."""
    writer = NESTED_WRITER if nested else schemas.load("event", 1)
    ser = AvroSerializer(registry, f"len-{nested}-value", writer)
    dec = deserializer(registry)
    base = events(ser, 1)[0]
    assert base[5] < 0x80  # the event id's length: one byte
    for length in (2**62, 2**31, len(base)):
        msg = base[:5] + varint(length) + base[6:]
        err = failure(dec, msg)
        assert type(err) is errors.ClaimedLengthTooLargeError and err.reason == "bad_length"
        assert err.length == length and err.bytes_left == len(msg) - 5 - len(varint(length))
        assert isinstance(err, errors.TruncatedMessageError)  # the body ends before it
    err = failure(dec, base[:5] + varint(-3) + base[6:])
    assert type(err) is errors.AvroDecodeError and "negative" in str(err)


def test_varints_longer_than_a_long_and_union_indexes_out_of_range(registry: Any) -> None:
    ser = AvroSerializer(registry, "nested-value", NESTED_WRITER)
    dec = deserializer(registry)
    base = events(ser, 1)[0]
    err = failure(dec, base[:5] + b"\x80" * 10 + b"\x00" + base[6:])
    assert type(err) is errors.AvroDecodeError and "varint" in str(err)
    err = failure(dec, base[:-1] + b"\x04")  # tree: branch 2 of a 2-branch union
    assert type(err) is errors.AvroDecodeError and "out of range" in str(err)


# ---------------------------------------------------------------- property: valid data


def test_valid_messages_of_a_schema_that_nests_and_repeats_read_as_fastavro_reads_them(
    registry: Any,
) -> None:
    ser = AvroSerializer(registry, "rich-value", RICH)
    dec = deserializer(registry)
    scan = BoundedScan(parse(RICH))
    assert scan.guard
    rng = np.random.default_rng(3)
    values = [ser({**e, **rich_value(rng)}) for e, _y in synthetic.events(200, rng, with_c=False)]
    parsed, reader = parse(RICH), parse(READER)
    for v in values:
        assert scan.scan(v, 5, 0) == len(v)  # the scan ends where the value ends
        assert dec(v) == fastavro.schemaless_reader(io.BytesIO(v[5:]), parsed, reader)
    assert_same(dec, values, columnar=False)


@pytest.mark.parametrize("seed", range(4))
def test_corrupted_nested_messages_fail_with_typed_errors_in_bounded_time(
    registry: Any, seed: int
) -> None:
    """Property: random flaws (corrupt() of the fast-decode tests) in messages of a
    schema that nests and repeats give a record or a StreamscoreError, the same from both
    paths, quickly: nothing hangs, nothing crashes."""
    ser = AvroSerializer(registry, "rich-value", RICH)
    dec = deserializer(registry)
    rng = np.random.default_rng(200 + seed)
    values = [
        corrupt(ser({**e, **rich_value(rng)}), rng)
        for e, _y in synthetic.events(150, rng, with_c=False)
    ]
    t0 = time.perf_counter()
    assert_same(dec, values, columnar=False)
    assert time.perf_counter() - t0 < 30  # a few ms each on a loaded machine
    _good, _records, failed = dec.decode_many(values)
    reasons = {e.reason for _i, e in failed}
    assert len(failed) > 30 and "bad_length" in reasons


def test_flat_schemas_are_not_scanned_before_fastavro(registry: Any) -> None:
    """The hot path stays as it was: the reader's own flat schema has no guard."""
    assert not BoundedScan(parse(schemas.load("event", 2))).guard
    assert not BoundedScan(parse(NULLABLE_A_WRITER)).guard
    assert BoundedScan(parse(NESTED_WRITER)).guard
    assert BoundedScan(parse(NULL_ARRAY_WRITER)).guard
    ser = AvroSerializer(registry, "events-value", READER)
    dec = deserializer(registry)
    values = [ser(e) for e, _y in synthetic.events(100, np.random.default_rng(1), with_c=True)]
    with mock.patch.object(BoundedScan, "scan", side_effect=AssertionError("scanned")):
        good, records, _failed = dec.decode_many(values)
        assert len(good) == 100 and isinstance(records, EventColumns)
        assert len(dec.decode_many(values[:5])[0]) == 5  # the per-message path


def test_arrays_read_as_written_are_not_scanned_first_but_skipped_ones_are(
    registry: Any,
) -> None:
    """Read as written (a prediction's arrays and map, its own schema), fastavro stops at
    the end of the bytes whatever a block claims: no pure Python walk per message first,
    and a claim too large still fails at once with the scan's typed error. Resolved to a
    reader that skips the array (fastavro's skips do not stop at the end), the same
    message is scanned first: a claim of 2**62 items is refused before fastavro."""
    prediction = BoundedScan(parse(schemas.load("prediction")))
    assert prediction.guard and not prediction.guard_read
    assert BoundedScan(parse(NULL_ARRAY_WRITER)).guard_read  # items that take no bytes
    writer = event_with("array-bomb", field("xs", {"type": "array", "items": "double"}))
    ser = AvroSerializer(registry, "array-bomb-value", writer)
    base = events(ser, 1, xs=[1.5])[0]
    bomb = base[:-10] + varint(2**62) + bytes(40)  # [count 1, 8 bytes, end 0] replaced
    as_written = AvroDeserializer(WriterSchemaCache(registry), writer)
    skipping = deserializer(registry)  # the demo reader: xs is skipped
    for dec in (as_written, skipping):
        t0 = time.perf_counter()
        err = failure(dec, bomb)
        assert type(err) is errors.ClaimedCountTooLargeError and err.count == 2**62
        assert time.perf_counter() - t0 < 1.0
    scan = BoundedScan.scan
    with mock.patch.object(BoundedScan, "scan", autospec=True, side_effect=scan) as scanned:
        good, records, _failed = as_written.decode_many([base])
        assert good == [0] and records[0]["xs"] == [1.5] and scanned.call_count == 0
        good, _records, _failed = skipping.decode_many([base])
        assert good == [0] and scanned.call_count == 1


# -------------------------------------------------------- nullable writer unions (case 9)


def test_a_nullable_writer_field_read_as_required_fails_only_where_null(registry: Any) -> None:
    """The issue's case 9: ``["null", "double"]`` read as ``double``."""
    ser = AvroSerializer(registry, "nullable-value", NULLABLE_A_WRITER)
    dec = deserializer(registry)
    rng = np.random.default_rng(9)
    values = []
    for i, (e, _y) in enumerate(synthetic.events(60, rng, with_c=False)):
        values.append(ser({**e, "a": None if i % 4 == 1 else e["a"]}))
    good, records, failed = dec.decode_many(values)
    assert isinstance(records, EventColumns)  # the non-null ones column-wise
    assert good == [i for i in range(60) if i % 4 != 1]
    assert [i for i, _e in failed] == [i for i in range(60) if i % 4 == 1]
    assert {(type(e), e.reason, e.field) for _i, e in failed} == {
        (errors.UnexpectedNullError, "unexpected_null", "a")
    }
    assert_same(dec, values, columnar=True)  # the same, record by record
    assert_same(dec, values[:10], columnar=False)  # a small batch: per message


def test_a_writer_union_resolves_per_record_and_fails_whole_only_if_no_branch_reads(
    registry: Any,
) -> None:
    string_or_double = AvroSerializer(
        registry, "sd-value", event_with("sd", a=["string", "double"])
    )
    dec = deserializer(registry)
    base = dec(events(string_or_double, 1)[0])
    ok, bad = string_or_double({**base, "a": 1.5}), string_or_double({**base, "a": "x"})
    assert dec(ok)["a"] == 1.5
    err = failure(dec, bad)
    assert type(err) is errors.WriterTypeMismatchError and err.field == "a"
    null_or_string = AvroSerializer(registry, "ns-value", event_with("ns", a=["null", "string"]))
    err = failure(dec, null_or_string({**base, "a": "1.5"}))
    assert type(err) is errors.WriterTypeMismatchError and err.field == "a"  # up front


# -------------------------------------------------------------- unreadable writer schema


def test_a_writer_schema_nested_too_deep_to_parse_is_refused_once(registry: Any) -> None:
    t: Any = "double"
    for i in range(MAX_SCHEMA_JSON_DEPTH // 3):  # three JSON levels a record
        t = {"type": "record", "name": f"R{i}", "fields": [field("f", t)]}
    sid = registry.register_schema("deep-value", _schema(event_with("deep", field("d", t))))
    calls = 0
    real = registry.get_schema

    def counting(schema_id: int) -> Any:
        nonlocal calls
        calls += 1
        return real(schema_id)

    registry.get_schema = counting
    dec = deserializer(registry)
    msg = b"\x00" + sid.to_bytes(4, "big") + b"\x00"
    for _ in range(3):
        err = failure(dec, msg)
        assert type(err) is errors.UnreadableWriterSchemaError
        assert err.reason == "bad_writer_schema" and err.schema_id == sid
    assert calls == 1  # an id's schema never changes: cached


# ------------------------------------------------- nothing but typed errors, ever


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (RecursionError("maximum recursion depth exceeded"), errors.NestingTooDeepError),
        (MemoryError(), errors.AvroDecodeError),
        (OverflowError("Python int too large to convert to C long"), errors.AvroDecodeError),
        (IndexError("list index out of range"), errors.AvroDecodeError),
        (ValueError("bad"), errors.AvroDecodeError),
    ],
)
def test_whatever_fastavro_raises_on_one_message_is_that_messages_typed_error(
    registry: Any, raised: Exception, expected: type
) -> None:
    ser = AvroSerializer(registry, "nested-value", NESTED_WRITER)
    dec = deserializer(registry)
    values = events(ser, 20, tree=chain(2))
    with mock.patch.object(fastavro, "schemaless_reader", side_effect=raised):
        err = failure(dec, values[0])
        assert type(err) is expected
        _good, _records, failed = dec.decode_many(values)
    assert [(i, type(e)) for i, e in failed] == [(i, expected) for i in range(20)]


def test_the_scorer_dead_letters_whatever_a_decoder_raises(registry: Any) -> None:
    """A decoder without ``decode_many`` that raises anything at all on some messages:
    those are dead letters with a typed error, the others are scored."""
    ser = AvroSerializer(registry, "events-value", schemas.load("event", 1))
    dec = deserializer(registry)

    def fragile(value: bytes | None) -> dict[str, Any]:
        if value is not None and value[-1] % 3 == 0:
            raise [OverflowError, MemoryError, IndexError][value[-1] % 9 // 3]("boom")
        return dec(value)

    values = events(ser, 90, seed=4)
    msgs = [InMessage(v, b"k", "events", 0, i, 0) for i, v in enumerate(values)]
    store = ModelStore()
    store.offer(Role.PRIMARY, _fit(False, 1))
    out = BatchScorer(fragile, lambda r: [b"p"] * len(r), ScoringSettings()).score(
        MessageBatch.of(msgs), store.snapshot()
    )
    bad = [i for i, v in enumerate(values) if v[-1] % 3 == 0]
    assert bad and [d.message.offset for d in out.dead_letters] == bad
    assert {type(d.error) for d in out.dead_letters} == {errors.AvroDecodeError}
    assert out.n_scored == 90 - len(bad)


@pytest.mark.parametrize("broken", ["_decode_columnar", "decode_many"])
def test_a_failing_batch_decoder_falls_back_to_one_message_at_a_time(
    registry: Any, broken: str
) -> None:
    ser = AvroSerializer(registry, "events-value", schemas.load("event", 1))
    dec = deserializer(registry)
    values = events(ser, 30, seed=5)
    values[7] = values[7][:-3]
    msgs = [InMessage(v, b"k", "events", 0, i, 0) for i, v in enumerate(values)]
    store = ModelStore()
    store.offer(Role.PRIMARY, _fit(False, 1))
    with mock.patch.object(dec, broken, side_effect=ValueError("a bug")):
        scorer = BatchScorer(dec, lambda r: [b"p"] * len(r), ScoringSettings())
        out = scorer.score(MessageBatch.of(msgs), store.snapshot())
    assert out.n_scored == 29
    assert [d.message.offset for d in out.dead_letters] == [7]
    assert isinstance(out.dead_letters[0].error, errors.TruncatedMessageError)
