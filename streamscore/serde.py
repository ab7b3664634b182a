"""Confluent wire format (magic 0, 4-byte big-endian schema id, Avro body) with fastavro.

Serializers and deserializers are plain callables ``(value, ctx) -> bytes | dict``, in the
manner of confluent-kafka-python's own; ``ctx`` is accepted for parity and ignored.

Writer schemas are fetched from the registry by id once and cached parsed; each message is
resolved from its writer schema to the caller's reader schema. ``timestamp-millis`` fields
are read and written as plain epoch-millisecond integers (no datetime objects on the hot
path). Every failure is a typed :class:`~streamscore.errors.SerdeError`.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import fastavro
from fastavro.read import SchemaResolutionError as _FastavroResolutionError

from .errors import (
    AvroDecodeError,
    EmptyMessageError,
    EncodeError,
    MagicByteError,
    RegistryUnavailableError,
    SchemaRegistrationError,
    SchemaResolutionError,
    TruncatedMessageError,
    UnknownSchemaError,
    WriterMissingFieldError,
    WriterTypeMismatchError,
)

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size  # 5


class RegistryClient(Protocol):
    """The part of ``confluent_kafka.schema_registry.SchemaRegistryClient`` we use."""

    def get_schema(self, schema_id: int) -> Any: ...

    def register_schema(self, subject_name: str, schema: Any) -> int: ...


def _strip_logical_types(schema: Any) -> Any:
    """A copy of ``schema`` without ``timestamp-*`` logical types (same binary encoding)."""
    if isinstance(schema, list):
        return [_strip_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        out = {k: _strip_logical_types(v) for k, v in schema.items()}
        if str(out.get("logicalType", "")).startswith(("timestamp-", "local-timestamp-")):
            out.pop("logicalType")
        return out
    return schema


def parse(schema: dict[str, Any]) -> Any:
    """Parse for fastavro in its own namespace of named types (so two versions of one
    record name never collide), with timestamps kept as integers."""
    return fastavro.parse_schema(_strip_logical_types(copy.deepcopy(schema)), named_schemas={})


def split_header(data: bytes | None) -> tuple[int, memoryview]:
    """Check the wire-format header; return the schema id and the Avro body."""
    if not data:
        raise EmptyMessageError("message value is empty or null")
    if data[0] != MAGIC_BYTE:
        raise MagicByteError(
            f"first byte is {data[0]}, not the wire-format magic byte {MAGIC_BYTE}",
            magic=data[0],
        )
    if len(data) < HEADER_SIZE:
        raise TruncatedMessageError(
            f"message is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    _, schema_id = HEADER.unpack_from(data)
    return schema_id, memoryview(data)[HEADER_SIZE:]


def _registry_failure(exc: Exception, schema_id: int) -> Exception:
    status = getattr(exc, "http_status_code", None)
    if status == 404:
        return UnknownSchemaError(
            f"schema id {schema_id} is not in the registry", schema_id=schema_id
        )
    return RegistryUnavailableError(
        f"schema registry failed while fetching schema id {schema_id}: "
        f"{type(exc).__name__} (status {status})"
    )


class WriterSchemaCache:
    """Parsed writer schemas by id, with a short negative cache for unknown ids (so a
    flood of messages with a bogus id does not become a flood of registry calls)."""

    def __init__(
        self,
        registry: RegistryClient,
        *,
        negative_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._parsed: dict[int, tuple[dict[str, Any], Any]] = {}
        self._unknown: dict[int, float] = {}
        self._negative_ttl_s = negative_ttl_s
        self._clock = clock
        self._lock = threading.Lock()

    def get(self, schema_id: int) -> tuple[dict[str, Any], Any]:
        """(schema as JSON, parsed schema) for ``schema_id``."""
        hit = self._parsed.get(schema_id)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._parsed.get(schema_id)
            if hit is not None:
                return hit
            until = self._unknown.get(schema_id)
            if until is not None and self._clock() < until:
                raise UnknownSchemaError(
                    f"schema id {schema_id} is not in the registry (cached)", schema_id=schema_id
                )
            try:
                registered = self._registry.get_schema(schema_id)
            except Exception as exc:
                err = _registry_failure(exc, schema_id)
                if isinstance(err, UnknownSchemaError):
                    self._unknown[schema_id] = self._clock() + self._negative_ttl_s
                raise err from exc
            schema_type = getattr(registered, "schema_type", "AVRO") or "AVRO"
            if schema_type != "AVRO":
                raise SchemaResolutionError(f"schema id {schema_id} is {schema_type}, not AVRO")
            as_json = json.loads(registered.schema_str)
            entry = (as_json, parse(as_json))
            self._parsed[schema_id] = entry
            return entry


class AvroDeserializer:
    """``(bytes, ctx) -> dict`` decoding with the caller's reader schema."""

    def __init__(self, schemas: WriterSchemaCache, reader_schema: dict[str, Any]) -> None:
        self._schemas = schemas
        self._reader_json = _strip_logical_types(reader_schema)
        self._reader = parse(reader_schema)
        # schema id -> parsed reader to resolve against, or None when writer == reader
        self._resolution: dict[int, tuple[Any, Any]] = {}

    @property
    def reader_schema(self) -> Any:
        return self._reader

    def _plan(self, schema_id: int) -> tuple[Any, Any]:
        plan = self._resolution.get(schema_id)
        if plan is None:
            writer_json, writer = self._schemas.get(schema_id)
            stripped = _strip_logical_types(writer_json)
            if stripped == self._reader_json:
                plan = (writer, None)
            else:
                _check_top_level(stripped, self._reader_json, schema_id)
                plan = (writer, self._reader)
            self._resolution[schema_id] = plan
        return plan

    def __call__(self, data: bytes | None, ctx: object | None = None) -> dict[str, Any]:
        schema_id, body = split_header(data)
        writer, reader = self._plan(schema_id)
        buf = io.BytesIO(body)
        try:
            record: Any = fastavro.schemaless_reader(buf, writer, reader)
        except EOFError as exc:
            raise TruncatedMessageError(
                f"Avro body ended early (schema id {schema_id}, {len(body)} bytes)"
            ) from exc
        except _FastavroResolutionError as exc:
            raise SchemaResolutionError(
                f"writer schema id {schema_id} does not resolve to the reader schema: {exc}",
                field=_field_in(str(exc)),
            ) from exc
        except Exception as exc:  # fastavro raises ValueError, IndexError, UnicodeDecodeError...
            if buf.tell() >= len(body):
                # ran out of bytes mid-value (fastavro says so with struct/ValueErrors too)
                raise TruncatedMessageError(
                    f"Avro body ended early (schema id {schema_id}, {len(body)} bytes)"
                ) from exc
            raise AvroDecodeError(
                f"malformed Avro body for schema id {schema_id}: {type(exc).__name__}: {exc}"
            ) from exc
        if buf.tell() != len(body):
            raise AvroDecodeError(
                f"{len(body) - buf.tell()} trailing bytes after the Avro record "
                f"(schema id {schema_id})"
            )
        if not isinstance(record, dict):
            raise AvroDecodeError(f"schema id {schema_id} is not a record schema")
        return record


_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}


def _branches(t: Any) -> set[str]:
    """Primitive type names a (possibly union) schema can take; 'complex' otherwise."""
    items = t if isinstance(t, list) else [t]
    out = set()
    for item in items:
        if isinstance(item, dict):
            item = item.get("type")
        out.add(item if isinstance(item, str) else "complex")
    return out


def _check_top_level(writer: Any, reader: Any, schema_id: int) -> None:
    """Name the field when a writer record cannot resolve to the reader record, before
    any message is read (fastavro's own messages do not always say which field)."""
    if not (isinstance(writer, dict) and isinstance(reader, dict)):
        return
    if writer.get("type") != "record" or reader.get("type") != "record":
        return
    w_fields = {f["name"]: f for f in writer["fields"]}
    for rf in reader["fields"]:
        name = rf["name"]
        wf = w_fields.get(name)
        if wf is None:
            if "default" not in rf:
                raise WriterMissingFieldError(
                    f"writer schema id {schema_id} has no field {name!r}, which the reader "
                    "requires (no default)",
                    field=name,
                )
            continue
        w_types, r_types = _branches(wf["type"]), _branches(rf["type"])
        if "complex" in w_types or "complex" in r_types:
            continue
        for wt in w_types:
            if not (_PROMOTIONS.get(wt, {wt}) & r_types):
                raise WriterTypeMismatchError(
                    f"field {name!r} is {wt!r} in writer schema id {schema_id}, "
                    f"which cannot be read as {sorted(r_types)}",
                    field=name,
                )


def _field_in(message: str) -> str | None:
    # fastavro: "No default value for field b in Event"
    marker = "for field "
    if marker in message:
        return message.split(marker, 1)[1].split()[0].strip("'\"")
    return None


class AvroSerializer:
    """``(dict, ctx) -> bytes`` in the wire format under ``subject``. The schema is
    registered on first use (or looked up when ``auto_register`` is off)."""

    def __init__(
        self,
        registry: RegistryClient,
        subject: str,
        schema: dict[str, Any],
        *,
        auto_register: bool = True,
    ) -> None:
        self._registry = registry
        self._subject = subject
        self._schema_json = schema
        self._parsed = parse(schema)
        self._auto_register = auto_register
        self._header: bytes | None = None

    @property
    def schema_id(self) -> int:
        return int(HEADER.unpack(self._ensure_header())[1])

    def _ensure_header(self) -> bytes:
        if self._header is None:
            from confluent_kafka.schema_registry import Schema

            schema = Schema(json.dumps(self._schema_json), "AVRO")
            try:
                if self._auto_register:
                    schema_id = self._registry.register_schema(self._subject, schema)
                else:
                    schema_id = self._registry.lookup_schema(self._subject, schema).schema_id  # type: ignore[attr-defined]
            except Exception as exc:
                status = getattr(exc, "http_status_code", None)
                if status is not None and status < 500:
                    raise SchemaRegistrationError(
                        f"registry refused the schema for subject {self._subject!r} "
                        f"(status {status}): {getattr(exc, 'error_message', exc)}"
                    ) from exc
                raise RegistryUnavailableError(
                    f"schema registry failed while registering subject {self._subject!r}: "
                    f"{type(exc).__name__} (status {status})"
                ) from exc
            self._header = HEADER.pack(MAGIC_BYTE, schema_id)
        return self._header

    def __call__(self, obj: dict[str, Any], ctx: object | None = None) -> bytes:
        header = self._ensure_header()
        buf = io.BytesIO()
        buf.write(header)
        try:
            fastavro.schemaless_writer(buf, self._parsed, obj)
        except Exception as exc:
            raise EncodeError(
                f"record does not fit schema of subject {self._subject!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return buf.getvalue()

    def encode_many(self, objs: list[dict[str, Any]]) -> list[bytes]:
        """Encode a batch (one header lookup, one buffer reused)."""
        header = self._ensure_header()
        out = []
        buf = io.BytesIO()
        parsed = self._parsed
        write = fastavro.schemaless_writer
        for obj in objs:
            buf.seek(0)
            buf.truncate()
            buf.write(header)
            try:
                write(buf, parsed, obj)
            except Exception as exc:
                raise EncodeError(
                    f"record does not fit schema of subject {self._subject!r}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            out.append(buf.getvalue())
        return out


def registry_client(conf: dict[str, Any]) -> Any:
    """A ``SchemaRegistryClient`` (``mock://`` URLs give confluent's in-memory mock)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client(conf)
