"""The column-wise record encoder (``AvroSerializer.encode_columns``) writes exactly the
bytes fastavro writes for the same records, and falls back to fastavro (same bytes, same
``EncodeError``) for anything outside its fast path."""

from __future__ import annotations

import io
from typing import Any
from unittest import mock

import fastavro
import numpy as np
import pytest

from streamscore.core import errors
from streamscore.core.columns import RecordColumns
from streamscore.serde import schemas
from streamscore.serde.message import AvroSerializer
from streamscore.serde.wire import HEADER, MAGIC_BYTE, parse, registry_client

SPECIAL = [0.0, -0.0, 1.5, -1e308, 5e-324, float("nan"), float("inf"), float("-inf")]


@pytest.fixture
def registry() -> Any:
    return registry_client({"url": f"mock://fast-encode-{id(object())}"})


def fastavro_bytes(schema: dict[str, Any], header: bytes, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(header)
    fastavro.schemaless_writer(buf, parse(schema), record)
    return buf.getvalue()


def same_as_fastavro(
    ser: AvroSerializer, schema: dict[str, Any], cols: Any, *, fast_path: bool = True
) -> None:
    if fast_path:  # and it really is the fast path: no fallback to encode_many
        with mock.patch.object(ser, "encode_many", side_effect=AssertionError("fell back")):
            fast = ser.encode_columns(cols)
    else:
        fast = ser.encode_columns(cols)
    header = HEADER.pack(MAGIC_BYTE, ser.schema_id)
    reference = [fastavro_bytes(schema, header, r) for r in cols.rows()]
    assert fast == reference
    assert fast == ser.encode_many(cols.rows())


def prediction_columns(
    n: int, rng: np.random.Generator, *, classifier: bool, k: int = 10, odd: bool = False
) -> RecordColumns:
    """Like the scorer's: constants once, per-row lists and NumPy arrays."""
    feats = rng.normal(size=(n, k)) * 10.0 ** rng.integers(-3, 4, size=(n, k))
    if odd and n and k:
        feats.flat[: len(SPECIAL)] = SPECIAL[: feats.size]
    keys = [None if i % 5 == 0 else ("é-" * (i % 40) if odd else f"entity-{i}") for i in range(n)]
    ids = [("x" * (60 + i % 200)) if odd else f"{i:016x}" for i in range(n)]
    times = [int(t) for t in rng.integers(-(2**40), 2**62, n)] if odd else [1_763_700_000_000] * n
    constants: dict[str, Any] = {
        "scored_time": 1_763_700_000_123,
        "model_name": "bench-ü" if odd else "bench",
        "role": "shadow",
        "feature_names": [f"f{i}" for i in range(k)],
    }
    columns: dict[str, Any] = {"event_id": ids, "key": keys, "event_time": times, "features": feats}
    if odd:
        columns["model_version"] = [int(v) for v in rng.integers(1, 2**31 - 1, n)]
        columns["degraded"] = (rng.random(n) < 0.5).tolist()
        columns["late"] = (rng.random(n) < 0.5).tolist()
    else:
        constants.update(model_version=3, degraded=False, late=False)
    if classifier:
        probs = rng.dirichlet(np.ones(3), size=n)
        if odd and n:
            probs[0] = [float("nan"), 0.0, -0.0]
        columns["probabilities"] = probs
        columns["label"] = [["a", "bé", "c"][i] for i in probs.argmax(axis=1).tolist()]
        constants.update(value=None, classes=["a", "bé", "c"])
    else:
        values = rng.normal(size=n) * 1e6
        if odd and n:
            values[: min(n, len(SPECIAL))] = SPECIAL[: min(n, len(SPECIAL))]
        columns["value"] = values
        constants.update(label=None, probabilities=[], classes=[])
    return RecordColumns(n, constants, columns)


_DETAIL = ("probabilities", "classes", "feature_names", "features", "inputs")


def nested(cols: RecordColumns, rng: np.random.Generator) -> RecordColumns:
    """``cols`` in the v3 shape: a ``score`` column, the arrays in the nested ``detail``."""
    constants = {k: v for k, v in cols.constants.items() if k not in _DETAIL}
    columns = {k: v for k, v in cols.columns.items() if k not in _DETAIL}
    columns["score"] = rng.random(cols.n)
    detail = RecordColumns(
        cols.n,
        {k: v for k, v in cols.constants.items() if k in _DETAIL},
        {k: v for k, v in cols.columns.items() if k in _DETAIL},
    )
    columns["detail"] = detail
    return RecordColumns(cols.n, constants, columns)


@pytest.mark.parametrize("version", schemas.versions("prediction"))
@pytest.mark.parametrize("classifier", [True, False])
@pytest.mark.parametrize("odd", [False, True])
def test_predictions_match_fastavro_byte_for_byte(
    registry: Any, version: int, classifier: bool, odd: bool
) -> None:
    schema = schemas.load("prediction", version)
    ser = AvroSerializer(registry, "predictions-value", schema)
    rng = np.random.default_rng(version * 10 + classifier + 2 * odd)
    for n in (1, 7, 300):
        cols = prediction_columns(n, rng, classifier=classifier, odd=odd)
        if version >= 3:
            cols = nested(cols, rng)
        same_as_fastavro(ser, schema, cols)


def test_a_nested_record_given_whole_as_a_constant_or_left_to_its_default(
    registry: Any,
) -> None:
    schema = schemas.load("prediction", 3)
    ser = AvroSerializer(registry, "predictions-value", schema)
    rng = np.random.default_rng(3)
    cols = nested(prediction_columns(9, rng, classifier=True), rng)
    detail = cols.columns["detail"].rows()[0]
    whole = {k: v for k, v in cols.columns.items() if k != "detail"}
    same_as_fastavro(ser, schema, RecordColumns(9, {**cols.constants, "detail": detail}, whole))
    same_as_fastavro(ser, schema, RecordColumns(9, cols.constants, whole))  # the default
    # a nested record of constants only: every record's detail the same
    only = RecordColumns(9, detail, {})
    same_as_fastavro(ser, schema, RecordColumns(9, cols.constants, {**whole, "detail": only}))


@pytest.mark.parametrize("k", [0, 1, 64])
def test_feature_vectors_of_any_width(registry: Any, k: int) -> None:
    schema = schemas.load("prediction", 1)
    ser = AvroSerializer(registry, "predictions-value", schema)
    cols = prediction_columns(20, np.random.default_rng(k), classifier=False, k=k)
    same_as_fastavro(ser, schema, cols)


def test_every_constant_and_an_empty_batch(registry: Any) -> None:
    schema = schemas.load("prediction", 1)
    ser = AvroSerializer(registry, "predictions-value", schema)
    cols = prediction_columns(5, np.random.default_rng(1), classifier=True)
    # everything constant
    const = RecordColumns(5, {**cols.constants, **cols.rows()[0]}, {})
    same_as_fastavro(ser, schema, const)
    assert ser.encode_columns(RecordColumns(0, cols.constants, {})) == []


GENERIC = {
    "type": "record",
    "name": "Generic",
    "namespace": "t",
    "fields": [
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "s", "type": "string"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["x", "y", "z"]}},
        {"name": "n", "type": "null"},
        {"name": "u3", "type": ["null", "double", "string"]},
        {"name": "ul", "type": ["long", "null"]},
        {"name": "nd", "type": ["null", "double"]},
        {"name": "af", "type": {"type": "array", "items": "float"}},
        {"name": "as", "type": {"type": "array", "items": "string"}},
        {"name": "m", "type": {"type": "map", "values": ["null", "double", "string"]}},
        {"name": "dflt", "type": ["null", "string"], "default": None},
    ],
}


def generic_columns(n: int, rng: np.random.Generator) -> RecordColumns:
    pick = rng.integers(0, 3, n).tolist()
    return RecordColumns(
        n,
        {"n": None, "e": "y"},
        {
            "b": (rng.random(n) < 0.5).tolist(),
            "i": [int(v) for v in rng.integers(-(2**31), 2**31 - 1, n)],
            "l": [int(v) for v in rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)],
            "f": rng.normal(size=n).astype(np.float32),
            "d": rng.normal(size=n),
            "s": ["ünï" * (i % 30) for i in range(n)],
            "u3": [[None, 1.25, "s"][p] for p in pick],
            "ul": [None if p == 0 else int(p) for p in pick],
            "nd": rng.normal(size=n),
            "af": rng.normal(size=(n, 3)).astype(np.float32),
            "as": [["a", "b"][:p] for p in pick],
            "m": [{"k": 1.0, "j": None, "s": "v"} if p else {} for p in pick],
        },
    )


def test_generic_flat_schema_matches_fastavro(registry: Any) -> None:
    ser = AvroSerializer(registry, "generic-value", GENERIC)
    same_as_fastavro(ser, GENERIC, generic_columns(200, np.random.default_rng(0)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("l", np.int64(5)),  # a NumPy integer: left to fastavro
        ("l", 2.0),  # fastavro truncates floats into longs; so must we
        ("d", 3),  # an int into a double
        ("b", 1),  # not a bool
        ("u3", 7),  # an int into [null, double, string]
        ("s", 5),  # not a string: EncodeError from both
        ("e", "nope"),  # not a symbol: EncodeError from both
        ("l", 2**63),  # out of range: EncodeError from both
        ("s", "\ud800"),  # not encodable as UTF-8: EncodeError from both
    ],
)
def test_values_outside_the_fast_path_fall_back_to_fastavro(
    registry: Any, field: str, value: Any
) -> None:
    ser = AvroSerializer(registry, "generic-value", GENERIC)
    cols = generic_columns(4, np.random.default_rng(1))
    col = list(cols.rows()[i][field] for i in range(4))
    col[2] = value
    odd = RecordColumns(4, cols.constants, {**cols.columns, field: col})
    try:
        expected: Any = ser.encode_many(odd.rows())
    except errors.EncodeError as exc:
        expected = type(exc)
    try:
        got: Any = ser.encode_columns(odd)
    except errors.EncodeError as exc:
        got = type(exc)
    assert got == expected


def test_a_missing_field_without_default_is_an_encode_error(registry: Any) -> None:
    schema = schemas.load("prediction", 1)
    ser = AvroSerializer(registry, "predictions-value", schema)
    cols = prediction_columns(3, np.random.default_rng(2), classifier=True)
    columns = dict(cols.columns)
    del columns["event_id"]
    with pytest.raises(errors.EncodeError):
        ser.encode_columns(RecordColumns(3, cols.constants, columns))


def test_an_unsupported_schema_is_encoded_by_fastavro(registry: Any) -> None:
    schema = {
        "type": "record",
        "name": "Nested",
        "fields": [
            {"name": "inner", "type": {"type": "record", "name": "I", "fields": [
                {"name": "x", "type": "long"}]}},
            {"name": "raw", "type": "bytes"},
        ],
    }  # fmt: skip
    ser = AvroSerializer(registry, "nested-value", schema)
    cols = RecordColumns(3, {"inner": {"x": 4}}, {"raw": [b"a", b"", b"\x00\xff"]})
    same_as_fastavro(ser, schema, cols, fast_path=False)


def test_rows_are_the_dicts_the_columns_describe() -> None:
    cols = RecordColumns(
        2, {"c": [1]}, {"a": np.array([1.5, 2.5]), "b": ["x", None], "m": np.eye(2)}
    )
    assert cols.rows() == [
        {"c": [1], "a": 1.5, "b": "x", "m": [1.0, 0.0]},
        {"c": [1], "a": 2.5, "b": None, "m": [0.0, 1.0]},
    ]


SAME_WIDTH = {
    "type": "record",
    "name": "SameWidth",
    "namespace": "t",
    "fields": [
        {"name": "s", "type": "string"},
        {"name": "ns", "type": ["null", "string"]},
        {"name": "l", "type": "long"},
        {"name": "i", "type": "int"},
        {"name": "d", "type": "double"},
    ],
}


@pytest.mark.parametrize(
    ("strings", "longs"),
    [
        (["ab12"] * 6, [1_763_700_000_000 + i for i in range(6)]),  # ids, times of one era
        ([f"{i:016x}" for i in range(6)], [0, 1, -1, 63, -64, 5]),  # one varint byte each
        (["x" * 63] * 6, [-(2**63), -(2**63) + 1, -(2**62) - 7, 2**63 - 1, 2**62 + 9, -(2**63)]),
        (["x" * 64] * 6, [64, 64, 8191, 100, 127, 128]),  # a length of two varint bytes
        (["é1"] * 6, [1, 100, 10_000, 1_000_000, 2**40, -(2**40)]),  # not ASCII; mixed widths
        (["a", "bb", "a", "", "ccc", "a"], [7] * 6),  # mixed lengths
        ([""] * 6, [-65, -65, -65, -65, 64, 64]),  # empty strings; two-byte varints
        (["q"] * 6, [64] * 6),  # every value the first to take two varint bytes
        (["q"] * 6, [8192, -8193, 8192, 8192, -8193, 8192]),  # ... three bytes
        (["q"] * 6, [63, -64, 0, 1, -1, 2]),  # ... the last ones taking one
    ],
)
def test_columns_of_one_width_match_fastavro(
    registry: Any, strings: list[str], longs: list[int]
) -> None:
    """Columns whose values all take the same number of bytes (same-length ASCII text,
    varints of one width) are laid out as one matrix: same bytes as fastavro's, on each
    side of every width boundary, and the others take the value-by-value path."""
    ser = AvroSerializer(registry, "same-width-value", SAME_WIDTH)
    n = len(strings)
    ints = [max(-(2**31), min(2**31 - 1, v)) for v in longs]
    cols = RecordColumns(
        n,
        {},
        {"s": strings, "ns": strings, "l": longs, "i": ints, "d": np.linspace(-1, 1, n)},
    )
    same_as_fastavro(ser, SAME_WIDTH, cols)
    with_null = RecordColumns(n, {}, {**cols.columns, "ns": [None, *strings[1:]]})
    same_as_fastavro(ser, SAME_WIDTH, with_null)
    # every field of one width: each record is one row of one matrix
    const = RecordColumns(n, {"s": "k", "ns": None, "i": 3}, {"l": longs, "d": np.zeros(n)})
    same_as_fastavro(ser, SAME_WIDTH, const)
