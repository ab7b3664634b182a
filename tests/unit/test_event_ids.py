"""Reading the event id of an encoded prediction or label (the feedback router's key)."""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
import pytest

from streamscore.core.errors import (
    AvroDecodeError,
    EmptyMessageError,
    MagicByteError,
    MissingFieldError,
    TruncatedMessageError,
    UnknownSchemaError,
)
from streamscore.serde import schemas
from streamscore.serde.event_ids import EventIdReader, read_leading_string
from streamscore.serde.message import AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, registry_client

from .kafka_fakes import prediction_record

FEEDBACK = {"event_id": "evt-42", "label": "3.5", "observed_time": 1_700_000_000_000}

# a writer schema whose first field is not the event id: the reader decodes it in full
OTHER_ORDER = {
    "type": "record",
    "name": "Feedback",
    "namespace": "other",
    "fields": [
        {"name": "label", "type": "string"},
        {"name": "event_id", "type": "string"},
    ],
}


@pytest.fixture
def registry() -> Any:
    return registry_client({"url": f"mock://event-ids-{id(object())}"})


def make_reader(registry: Any) -> EventIdReader:
    return EventIdReader(WriterSchemaCache(registry))


def encode(registry: Any, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    return AvroSerializer(registry, "t-value", schema)(record)


def test_reads_the_leading_event_id_of_a_label(registry: Any) -> None:
    data = encode(registry, schemas.load("feedback"), FEEDBACK)
    assert make_reader(registry)(data) == "evt-42"


def test_reads_the_event_id_of_a_prediction(registry: Any) -> None:
    pred = prediction_record("évènement-7")  # non-ASCII: the length is in bytes
    data = encode(registry, schemas.load("prediction"), pred)
    assert make_reader(registry)(data) == "évènement-7"


def test_a_writer_schema_with_the_id_elsewhere_is_decoded_in_full(registry: Any) -> None:
    data = encode(registry, OTHER_ORDER, {"label": "x", "event_id": "evt-9"})
    assert make_reader(registry)(data) == "evt-9"


def test_a_long_id_needs_a_multi_byte_length() -> None:
    eid = "x" * 300  # zig-zag 600: a two-byte varint
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "string", eid)
    body = buf.getvalue() + b"rest of the record"
    assert body[:2] == bytes([0xD8, 0x04])
    assert read_leading_string(memoryview(body)) == eid


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, EmptyMessageError),
        (b"", EmptyMessageError),
        (b"\x07\x00\x00\x00\x01\x02a", MagicByteError),
        (b"\x00\x00\x00", TruncatedMessageError),
        (b"\x00\x00\x00\x7f\x7f\x02a", UnknownSchemaError),
    ],
)
def test_bad_headers_raise_their_own_error(registry: Any, value: Any, error: type) -> None:
    # a registry in use (an empty one is a registry in trouble: retried, not bad input)
    encode(registry, schemas.load("feedback"), FEEDBACK)
    with pytest.raises(error):
        make_reader(registry)(value)


def test_bad_bodies_raise_their_own_error(registry: Any) -> None:
    good = encode(registry, schemas.load("feedback"), FEEDBACK)
    header = good[:5]
    reader = make_reader(registry)
    with pytest.raises(TruncatedMessageError):
        reader(header)  # no body at all
    with pytest.raises(TruncatedMessageError):
        reader(header + b"\x14evt")  # announces 10 bytes, has 3
    with pytest.raises(AvroDecodeError):
        reader(header + b"\x03")  # negative length
    with pytest.raises(AvroDecodeError):
        reader(header + b"\x04\xff\xfe")  # not UTF-8
    with pytest.raises(AvroDecodeError):
        reader(header + b"\xff" * 11)  # a varint that never ends
    with pytest.raises(MissingFieldError) as exc:
        reader(header + b"\x00")  # an empty id
    assert exc.value.field == "event_id"


def test_full_decode_errors_are_typed(registry: Any) -> None:
    good = encode(registry, OTHER_ORDER, {"label": "x", "event_id": "evt-9"})
    reader = make_reader(registry)
    with pytest.raises(TruncatedMessageError):
        reader(good[:-2])
    with pytest.raises(AvroDecodeError):
        reader(good + b"\x00")  # trailing bytes


def test_the_shortcut_is_decided_once_per_schema_id(registry: Any) -> None:
    calls = []
    cache = WriterSchemaCache(registry)
    real = cache.get

    def counting(schema_id: int) -> Any:
        calls.append(schema_id)
        return real(schema_id)

    cache.get = counting  # type: ignore[method-assign]
    reader = EventIdReader(cache)
    data = encode(registry, schemas.load("feedback"), FEEDBACK)
    assert [reader(data) for _ in range(3)] == ["evt-42"] * 3
    assert calls == [struct.unpack(">I", data[1:5])[0]]
