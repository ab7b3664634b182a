"""Serde error paths, one typed error per kind of bad input, on confluent's mock registry."""

from __future__ import annotations

import copy
import struct
from collections.abc import Callable
from typing import Any

import pytest

from streamscore.core import errors
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, registry_client


@pytest.fixture
def registry() -> Any:
    # a fresh in-memory registry per test (mock:// is fine in unit tests)
    return registry_client({"url": f"mock://unit-{id(object())}"})


@pytest.fixture
def make_event() -> Callable[..., dict[str, Any]]:
    def make(**overrides: Any) -> dict[str, Any]:
        event = {
            "event_id": "e-1",
            "key": "k-1",
            "event_time": 1_700_000_000_123,
            "a": -30.5,
            "b": 40.25,
            "segment": "pro",
        }
        event.update(overrides)
        return event

    return make


@pytest.fixture
def v1_bytes(registry: Any, make_event: Callable[..., dict[str, Any]]) -> bytes:
    return AvroSerializer(registry, "events-value", schemas.load("event", 1))(make_event())


def decoder(registry: Any, version: int = 2) -> AvroDeserializer:
    return AvroDeserializer(WriterSchemaCache(registry), schemas.load("event", version))


def test_round_trip_same_schema_keeps_timestamps_as_epoch_millis(
    registry: Any, make_event: Callable[..., dict[str, Any]]
) -> None:
    ser = AvroSerializer(registry, "events-value", schemas.load("event", 2))
    data = ser(make_event(c=2.5))
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == ser.schema_id
    assert decoder(registry)(data) == make_event(c=2.5)


def test_v1_data_read_with_v2_reader_gets_default(registry: Any, v1_bytes: bytes) -> None:
    event = decoder(registry, 2)(v1_bytes)
    assert event["c"] is None
    assert event["a"] == -30.5


def test_v2_data_read_with_v1_reader_drops_new_field(
    registry: Any, make_event: Callable[..., dict[str, Any]]
) -> None:
    data = AvroSerializer(registry, "events-value", schemas.load("event", 2))(make_event(c=1.0))
    event = decoder(registry, 1)(data)
    assert "c" not in event
    assert event["b"] == 40.25


def test_empty_message(registry: Any) -> None:
    with pytest.raises(errors.EmptyMessageError):
        decoder(registry)(b"")
    with pytest.raises(errors.EmptyMessageError):
        decoder(registry)(None)


def test_wrong_magic_byte(registry: Any, v1_bytes: bytes) -> None:
    with pytest.raises(errors.MagicByteError) as info:
        decoder(registry)(b"\x07" + v1_bytes[1:])
    assert info.value.magic == 7
    assert info.value.reason == "bad_magic_byte"


def test_plain_json_is_not_wire_format(registry: Any) -> None:
    with pytest.raises(errors.MagicByteError):
        decoder(registry)(b'{"a": 1}')


@pytest.mark.parametrize("length", [1, 2, 4])
def test_truncated_header(registry: Any, v1_bytes: bytes, length: int) -> None:
    with pytest.raises(errors.TruncatedMessageError):
        decoder(registry)(v1_bytes[:length])


def test_truncated_body(registry: Any, v1_bytes: bytes) -> None:
    with pytest.raises(errors.TruncatedMessageError) as info:
        decoder(registry)(v1_bytes[:-4])
    assert isinstance(info.value, errors.SerdeError)


def test_trailing_garbage(registry: Any, v1_bytes: bytes) -> None:
    with pytest.raises(errors.AvroDecodeError, match="trailing"):
        decoder(registry)(v1_bytes + b"\x00\x01")


def test_malformed_body(registry: Any, v1_bytes: bytes) -> None:
    # a string length prefix that is negative (zig-zag 0x01 = -1) is not valid Avro
    bad = v1_bytes[:5] + b"\x01" + v1_bytes[6:]
    with pytest.raises((errors.AvroDecodeError, errors.TruncatedMessageError)):
        decoder(registry)(bad)


def test_invalid_utf8_in_string(registry: Any, v1_bytes: bytes) -> None:
    # event_id "e-1" -> replace its bytes with invalid UTF-8 of the same length
    bad = v1_bytes.replace(b"e-1", b"\xff\xfe\xfd", 1)
    with pytest.raises(errors.AvroDecodeError):
        decoder(registry)(bad)


def test_unknown_schema_id(registry: Any, v1_bytes: bytes) -> None:
    bad = b"\x00" + struct.pack(">I", 424242) + v1_bytes[5:]
    with pytest.raises(errors.UnknownSchemaError) as info:
        decoder(registry)(bad)
    assert info.value.schema_id == 424242


def test_unknown_schema_id_is_negatively_cached(v1_bytes: bytes) -> None:
    calls = []

    class CountingRegistry:
        def get_schema(self, schema_id: int) -> Any:
            calls.append(schema_id)
            exc = Exception("not found")
            exc.http_status_code = 404  # type: ignore[attr-defined]
            raise exc

        def register_schema(self, subject_name: str, schema: Any) -> int:
            raise NotImplementedError

    now = [0.0]
    cache = WriterSchemaCache(CountingRegistry(), negative_ttl_s=10, clock=lambda: now[0])
    d = AvroDeserializer(cache, schemas.load("event", 2))
    for _ in range(5):
        with pytest.raises(errors.UnknownSchemaError):
            d(v1_bytes)
    assert calls == [1]
    now[0] = 11.0
    with pytest.raises(errors.UnknownSchemaError):
        d(v1_bytes)
    assert calls == [1, 1]


def test_registry_unreachable(v1_bytes: bytes) -> None:
    # nothing listens on port 9 of loopback: a real connection failure
    unreachable = registry_client({"url": "http://127.0.0.1:9", "timeout": 2})
    with pytest.raises(errors.RegistryUnavailableError) as info:
        decoder(unreachable)(v1_bytes)
    assert info.value.reason == "registry_unavailable"


def test_registry_server_error_is_unavailable_not_unknown(v1_bytes: bytes) -> None:
    class Failing:
        def get_schema(self, schema_id: int) -> Any:
            exc = Exception("boom")
            exc.http_status_code = 503  # type: ignore[attr-defined]
            raise exc

        def register_schema(self, subject_name: str, schema: Any) -> int:
            raise NotImplementedError

    d = AvroDeserializer(WriterSchemaCache(Failing()), schemas.load("event", 2))
    with pytest.raises(errors.RegistryUnavailableError):
        d(v1_bytes)


def test_writer_missing_required_field_names_it(
    registry: Any, make_event: Callable[..., dict[str, Any]]
) -> None:
    writer = copy.deepcopy(schemas.load("event", 1))
    writer["fields"] = [f for f in writer["fields"] if f["name"] != "b"]
    event = make_event()
    del event["b"]
    data = AvroSerializer(registry, "other-value", writer)(event)
    with pytest.raises(errors.WriterMissingFieldError) as info:
        decoder(registry)(data)
    assert info.value.field == "b"
    assert isinstance(info.value, errors.SchemaResolutionError)


def test_writer_wrong_type_names_the_field(
    registry: Any, make_event: Callable[..., dict[str, Any]]
) -> None:
    writer = copy.deepcopy(schemas.load("event", 1))
    next(f for f in writer["fields"] if f["name"] == "a")["type"] = "string"
    data = AvroSerializer(registry, "other-value", writer)(make_event(a="minus thirty"))
    with pytest.raises(errors.WriterTypeMismatchError) as info:
        decoder(registry)(data)
    assert info.value.field == "a"


def test_int_writer_promotes_to_double_reader(
    registry: Any, make_event: Callable[..., dict[str, Any]]
) -> None:
    writer = copy.deepcopy(schemas.load("event", 1))
    next(f for f in writer["fields"] if f["name"] == "a")["type"] = "int"
    data = AvroSerializer(registry, "other-value", writer)(make_event(a=-30))
    event = decoder(registry)(data)
    assert event["a"] == -30.0
    assert isinstance(event["a"], float)


def test_non_avro_schema_id(registry: Any, v1_bytes: bytes) -> None:
    from confluent_kafka.schema_registry import Schema

    sid = registry.register_schema("json-value", Schema('{"type": "object"}', "JSON"))
    bad = b"\x00" + struct.pack(">I", sid) + v1_bytes[5:]
    with pytest.raises(errors.SchemaResolutionError, match="JSON"):
        decoder(registry)(bad)


def test_encode_error_is_typed(registry: Any, make_event: Callable[..., dict[str, Any]]) -> None:
    ser = AvroSerializer(registry, "events-value", schemas.load("event", 1))
    with pytest.raises(errors.EncodeError):
        ser(make_event(a="not a number"))
    bad = make_event()
    del bad["event_id"]
    with pytest.raises(errors.EncodeError):
        ser.encode_many([make_event(), bad])


def test_encode_many_matches_single(
    registry: Any, make_event: Callable[..., dict[str, Any]]
) -> None:
    ser = AvroSerializer(registry, "events-value", schemas.load("event", 1))
    events = [make_event(event_id=f"e-{i}", a=float(i)) for i in range(5)]
    assert ser.encode_many(events) == [ser(e) for e in events]


def test_every_serde_error_has_its_own_reason() -> None:
    kinds = [
        errors.EmptyMessageError,
        errors.MagicByteError,
        errors.TruncatedMessageError,
        errors.UnknownSchemaError,
        errors.SchemaResolutionError,
        errors.WriterMissingFieldError,
        errors.WriterTypeMismatchError,
        errors.AvroDecodeError,
        errors.UnexpectedNullError,
        errors.UnreadableWriterSchemaError,
        errors.NestingTooDeepError,
        errors.ClaimedCountTooLargeError,
        errors.ClaimedLengthTooLargeError,
        errors.EncodeError,
        errors.SchemaRegistrationError,
    ]
    reasons = [k.reason for k in kinds] + [errors.RegistryUnavailableError.reason]
    assert len(set(reasons)) == len(reasons)
    assert all(issubclass(k, errors.SerdeError) for k in kinds)
    # a registry away is not bad data: never a SerdeError (those are dead-lettered)
    assert issubclass(errors.RegistryUnavailableError, errors.InfrastructureError)
    assert not issubclass(errors.RegistryUnavailableError, errors.SerdeError)


def test_every_truncation_point_is_reported_as_truncated(registry: Any, v1_bytes: bytes) -> None:
    d = decoder(registry)
    for cut in range(1, len(v1_bytes)):
        with pytest.raises(errors.TruncatedMessageError):
            d(v1_bytes[:cut])
