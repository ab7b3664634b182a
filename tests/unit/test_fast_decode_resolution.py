"""``AvroDeserializer.decode_many`` on batches whose writer schemas are not the reader
schema (a schema migration in flight): each writer's messages are decoded column-wise with
that writer's layout and resolved to the reader as fastavro resolves them (defaults,
skipped fields, promotions, enums, aliases), and batches mixing writers are merged back in
order. Whatever the batch, the results are exactly the per-message deserializer's: the same
records (same keys, in the same order, same Python types) and the same typed errors at the
same indices."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from streamscore.core import errors
from streamscore.core.columns import EventColumns
from streamscore.dev import synthetic
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, registry_client
from tests.avro_poison import corrupt, random_value

from .test_fast_decode import COLOUR, assert_same, broken_versions, random_branch_value

KIND = {"type": "enum", "name": "Kind", "symbols": ["a", "b", "c"], "default": "a"}

#: the reader; the last five fields are "newer" (defaults), as a v2 adds them at the end
READER: dict[str, Any] = {
    "type": "record",
    "name": "Ev",
    "namespace": "r",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "x", "type": "double"},
        {"name": "n", "type": ["null", "long"], "default": None},
        {"name": "s", "type": ["null", "string"], "default": None},
        {"name": "kind", "type": KIND},
        {"name": "y", "type": "double", "default": 1.5, "aliases": ["y_old"]},
        {"name": "k", "type": "int", "default": 7},
        {"name": "flag", "type": "boolean", "default": False},
        {"name": "blob", "type": ["null", "bytes"], "default": None},
        {"name": "z", "type": ["null", "double"], "default": None},
    ],
}


def record(name: str, fields: list[dict[str, Any]], namespace: str = "w") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": namespace, "fields": fields}


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


#: the first six fields only, with x written as an int (int -> double)
W_OLD = record(
    "Ev",
    [
        field("id", "string"),
        field("t", "long"),
        field("x", "int"),
        field("n", ["null", "long"]),
        field("s", ["null", "string"]),
        field("kind", KIND),
    ],
)

#: every reader field, with fields the reader lacks in between (parsed, then dropped)
W_EXTRA = record(
    "Ev",
    [
        field("id", "string"),
        field("extra_s", "string"),
        field("t", "long"),
        field("x", "double"),
        field("extra_e", {"type": "enum", "name": "Other", "symbols": ["p", "q"]}),
        field("n", ["long", "null"]),  # branches in the other order
        field("extra_nd", ["null", "double"]),
        field("s", ["null", "string"]),
        field("kind", KIND),
        field("y", "double"),
        field("extra_i", "int"),
        field("k", "int"),
        field("flag", "boolean"),
        field("blob", ["null", "bytes"]),
        field("extra_b", "boolean"),
        field("extra_raw", "bytes"),
        field("z", ["null", "double"]),
    ],
    namespace="elsewhere",  # the unqualified names match
)

#: every promotion Avro allows, and an enum with a symbol the reader lacks
W_PROMOTE = record(
    "Ev",
    [
        field("id", "bytes"),  # bytes -> string
        field("t", "int"),  # int -> long
        field("x", "long"),  # long -> double
        field("n", ["null", "int"]),  # int -> long inside unions
        field("s", "string"),  # non-null -> [null, string]
        field("kind", {"type": "enum", "name": "Kind", "symbols": ["c", "z", "b", "a"]}),
        field("y", "float"),  # float -> double
        field("k", "int"),
        field("flag", "boolean"),
        field("blob", "string"),  # string -> [null, bytes]
        field("z", ["null", "long"]),  # long -> double inside unions
    ],
)

#: y written under the name the reader lists among its aliases
W_ALIAS = record(
    "Ev",
    [
        *copy.deepcopy(READER["fields"][:6]),
        field("y_old", "int"),  # alias, and int -> double
        field("k", "int"),
    ],
)

#: written with x before t: the records' keys come in another order (fastavro's order is
#: the writer's): decoded column-wise alone, per message when mixed with other writers
W_REORDERED = record(
    "Ev",
    [field("id", "string"), field("x", "double"), field("t", "long"), field("kind", KIND)],
)

#: without x, which the reader requires (no default): every message is an error
W_NO_X = record("Ev", [field("id", "string"), field("t", "long"), field("kind", KIND)])

WRITERS = {"same": READER, "old": W_OLD, "extra": W_EXTRA, "promote": W_PROMOTE, "alias": W_ALIAS}


def random_record(schema: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    rec = {f["name"]: random_value(f["type"], rng) for f in schema["fields"]}
    if schema is W_PROMOTE and rng.random() < 0.95:  # id: bytes read as a string
        rec["id"] = random_value("string", rng).encode()
    return rec


def fresh(registry: Any, reader: dict[str, Any] = READER) -> AvroDeserializer:
    return AvroDeserializer(WriterSchemaCache(registry), reader)


def check(
    registry: Any, values: list[Any], *, columnar: bool | None, reader: dict[str, Any] = READER
) -> None:
    # a new deserializer each time: the registry's negative cache is state
    assert_same(fresh(registry, reader), values, columnar=columnar)


@pytest.fixture
def registry() -> Any:
    return registry_client({"url": f"mock://fast-decode-resolution-{id(object())}"})


def serializers(registry: Any) -> dict[str, AvroSerializer]:
    return {
        name: AvroSerializer(registry, f"{name}-value", schema)
        for name, schema in {
            **WRITERS,
            "reordered": W_REORDERED,
            "no_x": W_NO_X,
        }.items()
    }


def encoded(ser: AvroSerializer, schema: dict[str, Any], n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [ser(random_record(schema, rng)) for _ in range(n)]


# ------------------------------------------------------- the demo's v1 -> v2 migration


EVENT_V2 = schemas.load("event", 2)


def demo_events(registry: Any, n: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    v1 = AvroSerializer(registry, "events-value", schemas.load("event", 1))
    v2 = AvroSerializer(registry, "events-value", schemas.load("event", 2))
    rng = np.random.default_rng(seed)
    return (
        [v1(e) for e, _y in synthetic.events(n, rng, with_c=False)],
        [v2(e) for e, _y in synthetic.events(n, rng, with_c=True)],
    )


def test_v1_events_read_with_the_v2_reader_decode_column_wise_with_c_defaulted(
    registry: Any,
) -> None:
    old, _new = demo_events(registry, 200, 0)
    dec = AvroDeserializer(WriterSchemaCache(registry), schemas.load("event", 2))
    good, records, failed = dec.decode_many(old)
    assert isinstance(records, EventColumns) and failed == [] and good == list(range(200))
    assert records.names == ("event_id", "key", "event_time", "a", "b", "segment", "c")
    assert records.values_of("c") == [None] * 200
    assert isinstance(records.column("a"), np.ndarray)  # numbers stay an array
    assert records[3] == dec(old[3])
    assert_same(dec, old, columnar=True)


def test_a_batch_mixing_v1_and_v2_events_decodes_column_wise_in_order(registry: Any) -> None:
    old, new = demo_events(registry, 300, 1)
    pick = np.random.default_rng(1).random(300) < 0.5
    mixed = [o if p else n for o, n, p in zip(old, new, pick.tolist(), strict=True)]
    dec = AvroDeserializer(WriterSchemaCache(registry), schemas.load("event", 2))
    good, records, failed = dec.decode_many(mixed)
    assert isinstance(records, EventColumns) and failed == [] and good == list(range(300))
    c = records.values_of("c")
    assert [v is None for v in c] == pick.tolist()  # v1 events: c defaulted, in place
    assert records.column("event_time").dtype == np.int64
    assert_same(dec, mixed, columnar=True)
    assert_same(dec, new[:50] + old[:1] + new[50:100], columnar=True)  # one stray v1 event


def test_corrupt_messages_inside_a_mixed_batch_get_their_own_errors(registry: Any) -> None:
    old, new = demo_events(registry, 40, 2)
    v = old[0]
    bad = [*broken_versions(v), new[0][:-3]]  # and a v2 event truncated in c
    values = old[:10] + new[:10] + bad + new[10:] + old[10:]
    check(registry, values, columnar=True, reader=EVENT_V2)
    # every truncation point of a v1 and of a v2 message, among both
    cut = [v[:k] for k in range(len(v))] + [new[1][:k] for k in range(len(new[1]))]
    check(registry, old[:20] + new[:20] + cut + old[20:] + new[20:], columnar=True, reader=EVENT_V2)


def test_an_unknown_schema_id_first_in_a_mixed_batch_reads_as_one_by_one(registry: Any) -> None:
    """The first "unknown schema id" error names no cache; the later ones say "(cached)"
    (the registry's negative cache): the batch decoder gives each message its own."""
    old, new = demo_events(registry, 30, 3)
    unknown = [b"\x00\x00\x00\x30\x39" + m[5:] for m in old[:3]]
    values = [unknown[0], *new[:10], unknown[1], *old[10:], unknown[2]]
    check(registry, values, columnar=True, reader=EVENT_V2)
    five_bytes = values[0][:5]  # its __call__ looks the id up too, before the others
    check(registry, [five_bytes, *values], columnar=True, reader=EVENT_V2)
    # and when the batch falls back to per message: event_time written as a 10-byte
    # varint (valid for fastavro, longer than the vectorised reader takes)
    v2 = AvroSerializer(registry, "events-value", EVENT_V2)
    event = {"event_id": "e", "key": "k", "event_time": 1, "a": 1.0, "b": 2.0, "segment": None}
    plain = v2({**event, "c": None})
    assert plain[5:10] == b"\x02e\x02k\x02"
    odd = plain[:9] + b"\x82" + b"\x80" * 8 + b"\x00" + plain[10:]
    assert fresh(registry, EVENT_V2)(odd)["event_time"] == 1
    check(registry, [*values, odd], columnar=False, reader=EVENT_V2)


# ------------------------------------------------------- resolution rules, one by one


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_each_writer_decodes_column_wise_as_fastavro_resolves_it(
    registry: Any, writer: str
) -> None:
    ser = serializers(registry)[writer]
    values = encoded(ser, WRITERS[writer], 200, seed=len(writer))
    check(registry, values, columnar=True)


def test_writer_fields_the_reader_lacks_are_skipped(registry: Any) -> None:
    ser = serializers(registry)["extra"]
    values = encoded(ser, W_EXTRA, 50, seed=4)
    _good, records, _failed = fresh(registry).decode_many(values)
    assert isinstance(records, EventColumns)
    assert records.names == tuple(f["name"] for f in READER["fields"])
    assert records.values_of("id") == [fresh(registry)(v)["id"] for v in values]


def test_skipped_fields_are_checked_only_as_fastavro_skips_them(registry: Any) -> None:
    """fastavro's skip functions read no UTF-8, no enum symbol, no int range and take
    any byte for a boolean: such values in fields the reader drops are no errors."""
    writer = record(
        "Ev",
        [
            field("extra_e", {"type": "enum", "name": "Other", "symbols": ["p", "q"]}),
            field("extra_s", "string"),
            field("extra_i", "int"),
            field("extra_b", "boolean"),
            *copy.deepcopy(READER["fields"][:6]),
        ],
    )
    ser = AvroSerializer(registry, "skip-value", writer)
    rng = np.random.default_rng(12)
    values = []
    for _ in range(40):
        rec = {**random_record(writer, rng), "extra_e": "p", "extra_s": "ab", "extra_i": 0}
        v = ser({**rec, "extra_b": False})
        assert v[5:11] == b"\x00\x04ab\x00\x00"
        values.append(v)
    odd = [
        v[:5] + b"\x0e" + v[6:],  # enum index 7 of 2
        v[:6] + b"\x04\xff\xfe" + v[9:],  # not UTF-8
        v[:9] + b"\xfe\xff\xff\xff\xff\x01" + v[10:],  # beyond an int
        v[:10] + b"\x05" + v[11:],  # a boolean byte of 5
    ]
    for o in odd:
        assert fresh(registry)(o)["id"] == fresh(registry)(v)["id"]
    check(registry, values[:20] + odd + values[20:], columnar=True)


def test_int_long_and_float_promote_to_double(registry: Any) -> None:
    sers = serializers(registry)
    promote = encoded(sers["promote"], W_PROMOTE, 100, seed=5)
    dec = fresh(registry)
    _good, records, _failed = dec.decode_many(promote)
    assert isinstance(records, EventColumns)
    x = records.column("x")
    assert isinstance(x, np.ndarray) and x.dtype == np.float64
    assert all(type(v) is float for v in records.values_of("y"))
    assert {type(v) for v in records.values_of("z")} == {float, type(None)}
    assert all(type(v) is str for v in records.values_of("id"))  # bytes -> string
    assert all(v is None or type(v) is bytes for v in records.values_of("blob"))
    assert set(records.values_of("kind")) <= {"a", "b", "c"}  # z reads as the default, a
    check(registry, promote, columnar=True)
    # a long beyond 2**53 rounds as float() rounds it
    rec = random_record(W_PROMOTE, np.random.default_rng(5))
    rec["x"] = 2**60 + 2**7 + 1
    check(registry, [sers["promote"](rec)] * 20, columnar=True)
    # bytes that are not UTF-8, read as a string: an error for that message alone
    bad = sers["promote"]({**rec, "id": b"\xff\xfe"})
    check(registry, [*promote[:30], bad, *promote[30:]], columnar=True)


def test_a_reader_field_without_default_missing_from_the_writer_errors_as_one_by_one(
    registry: Any,
) -> None:
    sers = serializers(registry)
    same = encoded(sers["same"], READER, 40, seed=6)
    no_x = encoded(sers["no_x"], W_NO_X, 10, seed=6)
    dec = fresh(registry)
    good, records, failed = dec.decode_many(same[:20] + no_x + same[20:])
    assert isinstance(records, EventColumns) and len(good) == 40
    assert [i for i, _e in failed] == list(range(20, 30))
    assert all(isinstance(e, errors.WriterMissingFieldError) for _i, e in failed)
    check(registry, same[:20] + no_x + same[20:], columnar=True)
    check(registry, no_x * 3, columnar=None)  # nothing decodes


def test_enum_symbols_the_reader_lacks_error_without_a_default(registry: Any) -> None:
    reader = copy.deepcopy(READER)
    reader["fields"][5]["type"] = {"type": "enum", "name": "Kind", "symbols": ["a", "b", "c"]}
    ser = serializers(registry)["promote"]
    values = encoded(ser, W_PROMOTE, 80, seed=7)
    dec = fresh(registry, reader)
    _good, records, failed = dec.decode_many(values)
    assert isinstance(records, EventColumns)
    assert any(isinstance(e, errors.SchemaResolutionError) for _i, e in failed)  # z
    check(registry, values, columnar=True, reader=reader)


def test_a_nullable_writer_field_for_a_required_reader_field_errors_as_one_by_one(
    registry: Any,
) -> None:
    reader = copy.deepcopy(READER)
    reader["fields"][3] = field("n", "long", default=0)
    sers = serializers(registry)
    values = encoded(sers["same"], READER, 40, seed=8)
    check(registry, values, columnar=None, reader=reader)
    mixed = encoded(sers["extra"], W_EXTRA, 40, seed=8)[:20] + values
    check(registry, mixed, columnar=None, reader=reader)


def test_records_whose_keys_come_in_another_order_are_decoded_per_message_when_mixed(
    registry: Any,
) -> None:
    sers = serializers(registry)
    reordered = encoded(sers["reordered"], W_REORDERED, 40, seed=9)
    check(registry, reordered, columnar=True)  # alone: one layout, one order
    dec = fresh(registry)
    assert list(dec.decode_many(reordered)[1][0]) == [
        "id",
        "x",
        "t",
        "kind",
        "n",
        "s",
        "y",
        "k",
        "flag",
        "blob",
        "z",
    ]
    same = encoded(sers["same"], READER, 40, seed=9)
    check(registry, same[:20] + reordered + same[20:], columnar=False)


def test_a_reader_union_takes_the_first_branch_the_writer_matches(registry: Any) -> None:
    """An int read as ``[null, long, double]`` is a long (an int), not a double; the
    reader's own schema need not be flat for writers to resolve column-wise to it."""
    reader = record("Ev", [field("id", "string"), field("w", ["null", "long", "double"])])
    for i, w_type in enumerate(["int", ["null", "int"], "float", ["string", "null"]]):
        writer = record("Ev", [field("id", "string"), field("w", w_type)])
        ser = AvroSerializer(registry, f"union-{i}-value", writer)
        values = encoded(ser, writer, 30, seed=13)
        columnar = w_type != ["string", "null"]  # a string matches no branch: fastavro's
        check(registry, values, columnar=columnar, reader=reader)
        if w_type == "int":
            _good, records, _failed = fresh(registry, reader).decode_many(values)
            assert {type(v) for v in records.values_of("w")} == {int}


def test_a_reader_field_claimed_twice_through_an_alias_is_left_to_fastavro(
    registry: Any,
) -> None:
    """y, then y_old (an alias of y): fastavro fills y, then trips over y_old."""
    writer = record(
        "Ev", [*copy.deepcopy(READER["fields"][:6]), field("y", "double"), field("y_old", "int")]
    )
    ser = AvroSerializer(registry, "twice-value", writer)
    check(registry, encoded(ser, writer, 30, seed=14), columnar=None)
    # the other way round, y_old fills y and y is skipped: no error
    writer["fields"][6:] = [field("y_old", "int"), field("y", "double")]
    ser = AvroSerializer(registry, "twice-reversed-value", writer)
    values = encoded(ser, writer, 30, seed=14)
    check(registry, values, columnar=True)
    assert all(type(r["y"]) is float for r in fresh(registry).decode_many(values)[1])


def test_nulls_written_for_a_reader_field_that_takes_none_error_as_one_by_one(
    registry: Any,
) -> None:
    """y_old (an alias of y, so no type check before reading) is nullable; y is not:
    each null is fastavro's resolution error, the other messages decode column-wise."""
    writer = record("Ev", [*copy.deepcopy(READER["fields"][:6]), field("y_old", ["null", "int"])])
    ser = AvroSerializer(registry, "nullable-alias-value", writer)
    values = encoded(ser, writer, 60, seed=15)
    _good, records, failed = fresh(registry).decode_many(values)
    assert isinstance(records, EventColumns) and failed
    assert all(isinstance(e, errors.SchemaResolutionError) for _i, e in failed)
    check(registry, values, columnar=True)


def test_a_writer_of_another_record_name_is_left_to_fastavro(registry: Any) -> None:
    other = record("NotEv", copy.deepcopy(READER["fields"]))
    ser = AvroSerializer(registry, "other-value", other)
    values = encoded(ser, other, 30, seed=10)
    check(registry, values, columnar=None)


def test_a_default_of_another_type_is_given_as_fastavro_gives_it(registry: Any) -> None:
    """A double field's default written as an int reads as that int (fastavro does not
    convert defaults)."""
    reader = copy.deepcopy(READER)
    reader["fields"][6] = field("y", "double", default=2)
    reader["fields"][7] = field("k", "int", default=2**40)
    ser = serializers(registry)["old"]
    values = encoded(ser, W_OLD, 30, seed=11)
    dec = fresh(registry, reader)
    _good, records, _failed = dec.decode_many(values)
    assert isinstance(records, EventColumns)
    assert records[0]["y"] == 2 and type(records[0]["y"]) is int
    check(registry, values, columnar=True, reader=reader)


# ------------------------------------------------------- unions other than [null, T]

#: unions as the feedback schema's label (``["double", "string"]``), with three branches, and
#: with an enum among every kind of branch
UNION_FIELDS = [
    field("id", "string"),
    field("label", ["double", "string"]),
    field("nls", ["null", "long", "string"]),
    field("mix", ["boolean", COLOUR, "bytes", "null", "int", "float"]),
]
#: the same unions, in a reader that adds a field (so the writer is resolved to it)
U_READER = record("U", [*copy.deepcopy(UNION_FIELDS), field("extra", "int", default=3)], "r")
#: the reader's fields with union fields the reader lacks in between (parsed, dropped)
U_WRITER = record(
    "U",
    [
        *copy.deepcopy(UNION_FIELDS[:2]),
        field("gone", ["string", "null", "double", "boolean"]),
        *copy.deepcopy(UNION_FIELDS[2:]),
        field("gone_e", [{"type": "enum", "name": "Other", "symbols": ["p", "q"]}, "long"]),
    ],
)


def union_values(ser: AvroSerializer, schema: dict[str, Any], n: int, seed: int) -> list[bytes]:
    """``n`` messages, each union field taking a branch at random."""
    rng = np.random.default_rng(seed)
    return [
        ser({f["name"]: random_branch_value(f["type"], rng) for f in schema["fields"]})
        for _ in range(n)
    ]


def test_the_same_unions_in_writer_and_reader_decode_column_wise(registry: Any) -> None:
    """The writer's unions are the reader's (so read as written), and the writer's
    unions the reader lacks are parsed to move on, whatever their branch."""
    ser = AvroSerializer(registry, "unions-value", U_WRITER)
    values = union_values(ser, U_WRITER, 200, seed=20)
    check(registry, values, columnar=True, reader=U_READER)
    _good, records, _failed = fresh(registry, U_READER).decode_many(values)
    assert isinstance(records, EventColumns)
    assert records.names == ("id", "label", "nls", "mix", "extra")
    assert {type(v) for v in records.values_of("label")} == {float, str}
    assert {type(v) for v in records.values_of("mix")} == {bool, str, bytes, type(None), int, float}
    # bad messages, every truncation point of a few, among good ones
    bad = [b for v in values[:3] for b in broken_versions(v)]
    cut = [v[:k] for v in values[3:6] for k in range(len(v))]
    check(registry, values[:100] + bad + cut + values[100:], columnar=True, reader=U_READER)


def test_a_skipped_union_with_a_branch_index_out_of_range_errors_as_one_by_one(
    registry: Any,
) -> None:
    writer = record("U", [field("id", "string"), field("gone", ["null", "string", "long"])])
    reader = record("U", [field("id", "string")], "r")
    ser = AvroSerializer(registry, "skip-union-value", writer)
    values = union_values(ser, writer, 40, seed=21)
    v = ser({"id": "x", "gone": None})
    assert v[5:] == b"\x02x\x00"
    odd = [v[:7] + b"\x06", v[:7] + b"\x01", v[:7] + b"\x04"]  # branch 3, -1; no long
    for o in odd:
        with pytest.raises(errors.StreamscoreError):
            fresh(registry, reader)(o)
    check(registry, values[:20] + odd + values[20:], columnar=True, reader=reader)
    # a skipped string longer than the message, last: fastavro's skip reads what there is
    # and takes it; the vectorised reader leaves the batch to it
    lenient = v[:7] + b"\x02\x7e"
    assert fresh(registry, reader)(lenient) == {"id": "x"}
    check(registry, [*values[:20], lenient, *values[20:]], columnar=False, reader=reader)


@pytest.mark.parametrize(
    ("written", "read"),
    [
        (["double", "string"], ["string", "double"]),  # other order
        (["null", "long", "string"], ["null", "long", "string", "double"]),  # more branches
        (["null", "long", "string"], ["null", "double", "string"]),  # a long read as double
        (["long", "string"], ["null", "long", "string"]),
        (["double", "string"], "string"),  # a double is an error for this reader
        # the same union, but fastavro reads the bytes branch as the first that matches
        (["string", "bytes"], ["string", "bytes"]),
        (["null", "int", "long"], ["null", "long", "int"]),
        (["null", COLOUR, "string"], ["null", {**COLOUR, "symbols": ["blue", "red"]}, "string"]),
    ],
)
def test_writer_unions_the_reader_takes_otherwise_are_left_to_fastavro(
    registry: Any, written: Any, read: Any
) -> None:
    writer = record("U", [field("id", "string"), field("u", written)])
    reader = record("U", [field("id", "string"), field("u", read)], "r")
    ser = AvroSerializer(registry, "union-mismatch-value", writer)
    values = union_values(ser, writer, 60, seed=22)
    if written == ["string", "bytes"]:  # bytes written (branch 1), read as a string
        values.append(ser({"id": "x", "u": b"abc"}))
        assert values[-1][-5:] == b"\x02\x06abc"
        assert fresh(registry, reader)(values[-1])["u"] == "abc"
    check(registry, values, columnar=False, reader=reader)


# ------------------------------------------------------- random mixed batches


@pytest.mark.parametrize("seed", range(8))
def test_random_mixed_batches_decode_exactly_as_one_by_one(registry: Any, seed: int) -> None:
    """Messages of every writer, interleaved at random, some corrupted (byte flips,
    insertions, deletions, lengths blown up, truncations), with now and then a message
    fastavro cannot resolve, an unknown schema id, or an empty value: decode_many gives
    what the per-message deserializer gives, whichever path it takes."""
    rng = np.random.default_rng(1000 + seed)
    sers = serializers(registry)
    names = sorted(WRITERS)
    # each batch draws from a few of the writers, mostly intact, sometimes corrupted
    columnar = 0
    for batch in range(6):
        chosen = rng.choice(names, size=int(rng.integers(1, len(names) + 1)), replace=False)
        corrupt_rate = [0.0, 0.02, 0.3][batch % 3]
        values: list[Any] = []
        for _ in range(int(rng.integers(16, 120))):
            u = rng.random()
            if u < 0.01:
                values.append(None)
            elif u < 0.02:
                values.append(b"\x00\x00\x00\x30\x39" + bytes(6))  # unknown id
            elif u < 0.03:
                values.append(sers["no_x"](random_record(W_NO_X, rng)))
            else:
                name = str(chosen[int(rng.integers(len(chosen)))])
                v = sers[name](random_record(WRITERS[name], rng))
                values.append(corrupt(v, rng) if rng.random() < corrupt_rate else v)
        check(registry, values, columnar=None)
        columnar += isinstance(fresh(registry).decode_many(values)[1], EventColumns)
    assert columnar >= 2  # intact batches stay column-wise
