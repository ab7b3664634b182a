"""The event id of an encoded prediction or label, for the feedback router. Pure: no
Kafka imports.

The router re-keys every prediction and label by event id (see
:mod:`streamscore.feedback.router`), so it reads the id of each message without decoding
the rest of it when it can: both shipped schemas (``prediction``, ``feedback``) start
with ``event_id: string``, and an Avro string is a zig-zag varint length followed by
UTF-8 bytes, right after the 5-byte wire-format header. A writer schema that does not
start that way is decoded in full. Either way a message whose id cannot be read raises
the typed :class:`~streamscore.core.errors.SerdeError` that says why, and a message with an
empty id raises :class:`~streamscore.core.errors.MissingFieldError`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import fastavro

from ..core.errors import AvroDecodeError, MissingFieldError, TruncatedMessageError, WrongTypeError
from .wire import WriterSchemaCache, split_header

FIELD = "event_id"


def _starts_with_string(writer: Any, field: str) -> bool:
    fields = writer.get("fields") if isinstance(writer, dict) else None
    if not fields:
        return False
    first = fields[0]
    t = first.get("type")
    return bool(first.get("name") == field and (t == "string" or t == {"type": "string"}))


def read_leading_string(body: memoryview) -> str:
    """The Avro string at the start of ``body`` (zig-zag varint length, UTF-8 bytes)."""
    n = shift = pos = 0
    while True:
        if pos >= len(body):
            raise TruncatedMessageError("Avro body ends inside the event_id length")
        b = body[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise AvroDecodeError("event_id length is not a valid varint")
    length = (n >> 1) ^ -(n & 1)
    if length < 0:
        raise AvroDecodeError(f"event_id has a negative length ({length})")
    if pos + length > len(body):
        raise TruncatedMessageError(
            f"Avro body ends inside the event_id ({length} bytes announced, {len(body) - pos} left)"
        )
    try:
        return bytes(body[pos : pos + length]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AvroDecodeError(f"event_id is not valid UTF-8: {exc}") from None


class EventIdReader:
    """``reader(value) -> event id`` for values in the Confluent wire format.

    ``field`` is the record's id field: ``event_id`` in the prediction and feedback
    schemas, the project's ``[labels] id_field`` on the user's label topic (a string, or
    an int/long, read as its decimal string). When the writer schema does not start with
    ``<field>: string``, the record is decoded with its writer schema and the field read.
    The shortcut is decided once per schema id."""

    def __init__(self, schemas: WriterSchemaCache, field: str = FIELD) -> None:
        self._schemas = schemas
        self.field = field
        self._leading: dict[int, bool] = {}

    def require(self, values: Sequence[bytes | None]) -> None:
        """Fetch the batch's writer schemas first: a registry that is away raises
        :class:`~streamscore.core.errors.RegistryUnavailableError` before any message is read
        (see :meth:`WriterSchemaCache.require`)."""
        self._schemas.require(values)

    def __call__(self, data: bytes | None) -> str:
        schema_id, body = split_header(data)
        leading = self._leading.get(schema_id)
        if leading is None:
            writer, _parsed = self._schemas.get(schema_id)
            leading = self._leading[schema_id] = _starts_with_string(writer, self.field)
        if leading:
            eid: Any = read_leading_string(body)
        else:
            eid = _decode_field(body, self._schemas.get(schema_id)[1], self.field)
            if isinstance(eid, int) and not isinstance(eid, bool):
                eid = str(eid)
            if eid is not None and not isinstance(eid, str):
                raise WrongTypeError(
                    f"{self.field} is {type(eid).__name__}, not a string or an integer",
                    field=self.field,
                )
        if not eid:
            raise MissingFieldError(f"the message has no event id ({self.field})", field=self.field)
        return str(eid)


def _decode_field(body: memoryview, writer: Any, field: str) -> Any:
    buf = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buf, writer, None)
    except EOFError:
        raise TruncatedMessageError("Avro body ends before the record does") from None
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise AvroDecodeError(f"cannot decode the record: {type(exc).__name__}: {exc}") from None
    if buf.tell() != len(body):
        raise AvroDecodeError(f"{len(body) - buf.tell()} trailing bytes after the Avro record")
    return record.get(field) if isinstance(record, dict) else None
