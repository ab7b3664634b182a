"""The batch head reader (:class:`HeadReader`) against fastavro's per-message decode: every
message it accepts is one the feedback join's decoder reads without error, to the same
head values; sound records it accepts all; corrupted ones it leaves to the decoder."""

from __future__ import annotations

import copy
import io
from typing import Any

import fastavro
import numpy as np
import pytest

from streamscore.core.errors import StreamscoreError
from streamscore.core.records import Prediction
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, LayoutDeserializer
from streamscore.serde.record_heads import MAX_ITEMS, HeadReader
from streamscore.serde.wire import HEADER, WriterSchemaCache, parse, registry_client
from tests.avro_poison import corrupt, varint

HEAD = ("event_id", "event_time", "model_version", "role")
SCHEMA = schemas.load("prediction")


def text(rng: np.random.Generator, ascii_only: bool) -> str:
    chars = list("abcXYZ09-_ ") + ([] if ascii_only else list("é€😀"))
    return "".join(rng.choice(chars, int(rng.integers(0, 30))).tolist())


def value(t: Any, rng: np.random.Generator, ascii_only: bool) -> Any:
    """A random value of Avro type ``t`` (logical types stripped)."""
    if isinstance(t, list):
        return value(t[int(rng.integers(len(t)))], rng, ascii_only)
    if isinstance(t, dict):
        kind = t["type"]
        if kind == "enum":
            return t["symbols"][int(rng.integers(len(t["symbols"])))]
        if kind == "record":
            return {f["name"]: value(f["type"], rng, ascii_only) for f in t["fields"]}
        if kind == "array":
            return [value(t["items"], rng, ascii_only) for _ in range(int(rng.integers(0, 6)))]
        if kind == "map":
            n = int(rng.integers(0, 5))
            keys = [text(rng, ascii_only) + str(j) for j in range(n)]
            return {k: value(t["values"], rng, ascii_only) for k in keys}
        return value(kind, rng, ascii_only)
    return {
        "null": lambda: None,
        "string": lambda: text(rng, ascii_only),
        "int": lambda: int(rng.integers(-(2**31), 2**31 - 1)),
        "long": lambda: int(rng.integers(-(2**62), 2**62)),
        "double": lambda: float(rng.normal() * 1e6),
        "boolean": lambda: bool(rng.integers(2)),
    }[t]()


class Fixture:
    def __init__(self) -> None:
        self.registry = registry_client({"url": f"mock://record-heads-{id(object())}"})
        self.cache = WriterSchemaCache(self.registry)
        self.schema_id = self.register(SCHEMA)
        self.parsed = parse(SCHEMA)
        self.reader = HeadReader(SCHEMA, HEAD, lambda sid: self.cache.get(sid)[0])
        self.decode = LayoutDeserializer(
            self.cache, SCHEMA, schemas.load("prediction", 2), "detail"
        )

    def register(self, schema: dict[str, Any]) -> int:
        from confluent_kafka.schema_registry import Schema

        name = f"s{id(schema)}-{len(str(schema))}"
        return int(self.registry.register_schema(f"{name}-value", Schema(json(schema), "AVRO")))

    def wire(self, record: dict[str, Any], schema_id: int | None = None) -> bytes:
        buf = io.BytesIO()
        buf.write(HEADER.pack(0, self.schema_id if schema_id is None else schema_id))
        fastavro.schemaless_writer(buf, self.parsed, record)
        return buf.getvalue()


def json(schema: dict[str, Any]) -> str:
    import json as _json

    return _json.dumps(schema)


@pytest.fixture
def fx() -> Fixture:
    return Fixture()


def check(fx: Fixture, values: list[bytes]) -> list[int]:
    """Every accepted message decodes (fastavro, through the join's decoder) to the head
    values the reader gave, and to the record :meth:`HeadReader.records` gave; returns
    the accepted indices."""
    heads = fx.reader(values)
    assert heads.rows == sorted(set(heads.rows))
    rows, records = fx.reader.records(values)
    assert rows == heads.rows
    rows_c, columns = fx.reader.columns(values)
    assert rows_c == rows
    for name, col in columns["detail"].items():  # empty ones: one shared object, read-only
        empty = [v for v in col if not v]
        assert all(v is empty[0] for v in empty), name
        assert not empty or empty[0] == () or not hasattr(empty[0], "__setitem__"), name
    if rows:
        assert Prediction.many_from_columns(columns) == [Prediction.from_avro(r) for r in records]
        some = list(range(len(rows)))[::-3]  # any of them, in any order, without a re-check
        picked = Prediction.many_from_columns(fx.reader.columns_of(heads, some))
        assert picked == [Prediction.from_avro(records[j]) for j in some]
    for j, i in enumerate(heads.rows):
        rec = fx.decode(values[i])  # raises if the reader accepted a message it should not
        for name in HEAD:
            assert heads.columns[name][j] == rec[name], (i, name)
        assert records[j] == rec, i
        assert records[j] == fastavro.schemaless_reader(io.BytesIO(values[i][5:]), fx.parsed, None)
    return heads.rows


def test_sound_ascii_records_are_all_accepted_with_their_heads(fx: Fixture) -> None:
    rng = np.random.default_rng(1)
    stripped = fastavro.parse_schema(SCHEMA)  # the field types, for random values
    assert stripped
    t = _stripped()
    values = [fx.wire(value(t, rng, ascii_only=True)) for _ in range(400)]
    assert check(fx, values) == list(range(400))


def test_non_ascii_strings_are_left_to_the_decoder_and_decode_there(fx: Fixture) -> None:
    rng = np.random.default_rng(2)
    t = _stripped()
    values = [fx.wire(value(t, rng, ascii_only=i % 2 == 0)) for i in range(400)]
    accepted = check(fx, values)
    for i in set(range(400)) - set(accepted):
        fx.decode(values[i])  # sound records all the same: the decoder reads them
    assert set(range(0, 400, 2)) <= set(accepted)
    assert len(accepted) < 400


@pytest.mark.parametrize("seed", range(6))
def test_corrupted_records_are_never_accepted_wrongly(fx: Fixture, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    t = _stripped()
    values = [corrupt(fx.wire(value(t, rng, ascii_only=True)), rng, kinds=6) for _ in range(500)]
    accepted = set(check(fx, values))
    refused = 0
    for i in set(range(500)) - accepted:
        try:
            fx.decode(values[i])
        except StreamscoreError:
            refused += 1
    assert refused > 100  # the flaws were seen (and left to the decoder, which types them)


def test_other_writer_schemas_bad_headers_and_rare_encodings_are_not_accepted(
    fx: Fixture,
) -> None:
    rng = np.random.default_rng(3)
    rec = value(_stripped(), rng, ascii_only=True)
    good = fx.wire(rec)
    other = copy.deepcopy(SCHEMA)
    other["fields"].append({"name": "extra", "type": "long", "default": 0})
    other_id = fx.register(other)
    body = good[5:]
    two_blocks = _with_two_blocks(fx)
    values = [
        good,
        HEADER.pack(0, other_id) + body + varint(7),  # another writer: resolved elsewhere
        b"\x01" + good[1:],  # not the magic byte
        HEADER.pack(0, 999_999) + body,  # unknown id
        good[:4],  # shorter than the header
        good + b"\x00",  # a trailing byte
        two_blocks,  # an array in two blocks: valid Avro, left to fastavro
        None,
    ]
    heads = fx.reader(values)  # type: ignore[arg-type]
    assert heads.rows == []  # a None in the batch: the decoder reads it all
    assert check(fx, values[:-1]) == [0]
    assert fx.decode(two_blocks)["event_id"] == "two"


def test_lengths_and_counts_are_bounded_before_they_are_trusted(fx: Fixture) -> None:
    rng = np.random.default_rng(4)
    rec = value(_stripped(), rng, ascii_only=True)
    rec["detail"]["features"] = [1.0] * (MAX_ITEMS + 1)
    too_many = fx.wire(rec)
    rec["detail"]["features"] = [1.0, 2.0]
    fine = fx.wire(rec)
    eid = rec["event_id"].encode()
    # the event id claims 2**62 bytes
    huge = fine[:5] + varint(2**62) + fine[5 + len(varint(len(eid))) :]
    assert check(fx, [too_many, fine, huge]) == [1]
    fx.decode(too_many)  # sound: the decoder reads it


def _stripped() -> Any:
    from streamscore.serde.wire import strip_logical_types

    return strip_logical_types(SCHEMA)


def _with_two_blocks(fx: Fixture) -> bytes:
    """A sound prediction whose ``features`` array is written as two blocks."""
    parts = [
        varint(3) + b"two",  # event_id
        varint(5),  # event_time
        varint(1) + b"m",  # model_name
        varint(1),  # model_version
        varint(0),  # role
        varint(0),  # score: null
        varint(0),  # label: null
        b"\x00\x00",  # degraded, late
        varint(0),  # key: null
        varint(6),  # scored_time
        varint(0),  # value: null
        varint(0),  # probabilities
        varint(0),  # classes
        varint(0),  # feature_names
        varint(1) + np.float64(1).tobytes() + varint(1) + np.float64(2).tobytes() + varint(0),
        varint(0),  # inputs
    ]
    return HEADER.pack(0, fx.schema_id) + b"".join(parts)


def test_a_schema_the_walker_cannot_take_is_refused_at_construction() -> None:
    named = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "a", "type": {"type": "fixed", "name": "F", "size": 2}},
        ],
    }
    with pytest.raises(ValueError, match="head reader"):
        HeadReader(named, ("a",), lambda _sid: named)
    with pytest.raises(ValueError, match="head field"):
        HeadReader(SCHEMA, ("detail",), lambda _sid: SCHEMA)


def test_the_per_message_decoder_is_the_reference(fx: Fixture) -> None:
    """The reference itself: AvroDeserializer reads these records as written."""
    rng = np.random.default_rng(5)
    rec = value(_stripped(), rng, ascii_only=True)
    assert AvroDeserializer(fx.cache, SCHEMA)(fx.wire(rec)) == rec
