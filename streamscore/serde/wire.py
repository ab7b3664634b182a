"""The Confluent wire format (magic 0, 4-byte big-endian schema id, Avro body), the writer
schemas it names, and the registry that holds them.

- :func:`split_header`: the schema id and Avro body of a message, or a typed error;
- :class:`WriterSchemaCache`: parsed writer schemas by id, fetched from the registry once;
  a registry that is away raises :class:`~streamscore.core.errors.RegistryUnavailableError`
  (retry, never a dead letter), an id it does not hold
  :class:`~streamscore.core.errors.UnknownSchemaError` (bad input);
- :func:`parse`: schemas parsed for fastavro, ``timestamp-*`` logical types read and
  written as plain epoch-millisecond integers (no datetime objects on the hot path);
- :func:`writer_header`: the header of the messages a writer writes (its schema
  registered, or looked up);
- :func:`registry_client`: the registry client (``mock://`` URLs for tests).

The codecs built on these: :mod:`.message` (one message at a time, and whole batches),
:mod:`.columnar_decode` and :mod:`.columnar_encode` (a batch column-wise).
"""

from __future__ import annotations

import copy
import json
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import fastavro

from ..core.errors import (
    EmptyMessageError,
    MagicByteError,
    RegistryUnavailableError,
    SchemaRegistrationError,
    SchemaResolutionError,
    StreamscoreError,
    TruncatedMessageError,
    UnknownSchemaError,
    UnreadableWriterSchemaError,
)

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size  # 5


class RegistryClient(Protocol):
    """The part of ``confluent_kafka.schema_registry.SchemaRegistryClient`` we use."""

    def get_schema(self, schema_id: int) -> Any: ...

    def register_schema(self, subject_name: str, schema: Any) -> int: ...


def strip_logical_types(schema: Any) -> Any:
    """A copy of ``schema`` without ``timestamp-*`` logical types (same binary encoding)."""
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        out = {k: strip_logical_types(v) for k, v in schema.items()}
        if str(out.get("logicalType", "")).startswith(("timestamp-", "local-timestamp-")):
            out.pop("logicalType")
        return out
    return schema


def parse(schema: dict[str, Any]) -> Any:
    """Parse for fastavro in its own namespace of named types (so two versions of one
    record name never collide), with timestamps kept as integers."""
    return fastavro.parse_schema(strip_logical_types(copy.deepcopy(schema)), named_schemas={})


def type_name(t: Any) -> str | None:
    """The type name of a schema (``"long"``, ``"record"``...), or None for a union or a
    type with a logical type."""
    if isinstance(t, str):
        return t
    if isinstance(t, dict) and "logicalType" not in t and isinstance(t.get("type"), str):
        return str(t["type"])
    return None


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


def _registry_failure(exc: Exception, schema_id: int) -> StreamscoreError:
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
    flood of messages with a bogus id does not become a flood of registry calls).

    A registry that is away raises :class:`RegistryUnavailableError` (retry, never a
    dead letter). So does a "not found" that only a registry in trouble gives: within
    ``recovery_grace_s`` of this cache last finding the registry away (it may answer
    before it has all its schemas back), or from a registry that holds no subject at all
    (restarted without its storage, or the wrong registry): dead-lettering every event
    then would turn an operator's incident into lost data. Such answers are never
    negatively cached."""

    def __init__(
        self,
        registry: RegistryClient,
        *,
        negative_ttl_s: float = 30.0,
        recovery_grace_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._parsed: dict[int, tuple[dict[str, Any], Any]] = {}
        self._unreadable: dict[int, UnreadableWriterSchemaError] = {}
        self._unknown: dict[int, float] = {}
        self._negative_ttl_s = negative_ttl_s
        self._recovery_grace_s = recovery_grace_s
        self._away_at: float | None = None  # when the registry was last found away
        # 404s met by require(), raised as they were to the first message that asks
        self._fresh_unknown: dict[int, UnknownSchemaError] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def __contains__(self, schema_id: int) -> bool:
        """Known and parsed already (no registry call needed)."""
        return schema_id in self._parsed

    def get(self, schema_id: int) -> tuple[dict[str, Any], Any]:
        """(schema as JSON, parsed schema) for ``schema_id``."""
        hit = self._parsed.get(schema_id)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._parsed.get(schema_id)
            if hit is not None:
                return hit
            if schema_id in self._unreadable:
                raise self._unreadable[schema_id]
            until = self._unknown.get(schema_id)
            if until is not None and self._clock() < until:
                fresh = self._fresh_unknown.pop(schema_id, None)
                if fresh is not None:
                    raise fresh
                raise UnknownSchemaError(
                    f"schema id {schema_id} is not in the registry (cached)", schema_id=schema_id
                )
            self._fresh_unknown.pop(schema_id, None)
            try:
                registered = self._registry.get_schema(schema_id)
            except Exception as exc:
                err = _registry_failure(exc, schema_id)
                if isinstance(err, UnknownSchemaError):
                    err = self._not_found(schema_id)
                else:
                    self._away_at = self._clock()
                if isinstance(err, UnknownSchemaError):
                    self._unknown[schema_id] = self._clock() + self._negative_ttl_s
                raise err from exc
            schema_type = getattr(registered, "schema_type", "AVRO") or "AVRO"
            if schema_type != "AVRO":
                raise SchemaResolutionError(f"schema id {schema_id} is {schema_type}, not AVRO")
            try:
                entry = _parse_writer(registered.schema_str, schema_id)
            except UnreadableWriterSchemaError as exc:
                self._unreadable[schema_id] = exc  # an id's schema never changes
                raise
            self._parsed[schema_id] = entry
            return entry

    def _not_found(self, schema_id: int) -> StreamscoreError:
        """What a 404 for ``schema_id`` means: bad input, or a registry in trouble."""
        if self._away_at is not None and self._clock() - self._away_at < self._recovery_grace_s:
            return RegistryUnavailableError(
                f"schema registry does not know schema id {schema_id} yet, "
                f"{self._clock() - self._away_at:.0f} s after it was away"
            )
        subjects = getattr(self._registry, "get_subjects", None)
        if subjects is not None:
            try:
                empty = not subjects()
            except Exception as exc:
                self._away_at = self._clock()
                return _registry_failure(exc, schema_id)
            if empty:
                return RegistryUnavailableError(
                    f"schema registry holds no subject at all (asked for schema id {schema_id}): "
                    "restarted without its storage?"
                )
        return UnknownSchemaError(
            f"schema id {schema_id} is not in the registry", schema_id=schema_id
        )

    def require(self, values: Sequence[bytes | None]) -> None:
        """Fetch the writer schema of every wire-format value in a batch that is not
        cached yet, raising :class:`RegistryUnavailableError` at the first lookup the
        registry cannot answer (before any per-message work). Unknown ids and malformed
        headers are left to the decoder, which reports them per message."""
        try:
            heads = {v[:HEADER_SIZE] for v in values}  # type: ignore[index]
        except TypeError:  # a None value, or bytes-like values
            heads = {bytes(v[:HEADER_SIZE]) for v in values if v is not None}
        for head in heads:
            if len(head) != HEADER_SIZE or head[0] != MAGIC_BYTE:
                continue
            schema_id = HEADER.unpack(head)[1]
            if schema_id in self._parsed:
                continue
            try:
                self.get(schema_id)
            except UnknownSchemaError as exc:  # the decoder reports it, worded as it was
                self._fresh_unknown[schema_id] = exc
            except RegistryUnavailableError:
                raise
            except StreamscoreError:
                continue  # that message's own error, reported by the decoder


#: JSON nesting of a writer schema beyond which it is refused before it is parsed (the
#: parsers recurse once or twice per level; a data nesting limit of 64 needs far less)
MAX_SCHEMA_JSON_DEPTH = 200


def _json_depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (iterative)."""
    deepest = 0
    todo = [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            todo.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


def _parse_writer(schema_str: str, schema_id: int) -> tuple[dict[str, Any], Any]:
    """(schema as JSON, parsed schema), or :class:`UnreadableWriterSchemaError`."""
    try:
        as_json = json.loads(schema_str)
        depth = _json_depth(as_json)
        if depth > MAX_SCHEMA_JSON_DEPTH:
            raise UnreadableWriterSchemaError(
                f"writer schema id {schema_id} nests {depth} levels of JSON, more than "
                f"{MAX_SCHEMA_JSON_DEPTH}",
                schema_id=schema_id,
            )
        return as_json, parse(as_json)
    except UnreadableWriterSchemaError:
        raise
    except Exception as exc:  # JSON, fastavro's SchemaParseException, RecursionError...
        raise UnreadableWriterSchemaError(
            f"writer schema id {schema_id} cannot be parsed: {type(exc).__name__}: "
            f"{str(exc)[:200]}",
            schema_id=schema_id,
        ) from exc


def registry_client(conf: dict[str, Any]) -> Any:
    """A ``SchemaRegistryClient`` (``mock://`` URLs give confluent's in-memory mock)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client(conf)


def _refusal_hint(status: int, auto_register: bool) -> str:
    """What to check when the registry refuses an output schema (HTTP ``status``)."""
    if status in (401, 403):
        return (
            "this client may not register schemas there: register the subject beforehand, "
            "or check the registry credentials (STREAMSCORE_REGISTRY_USER / _PASSWORD)"
        )
    if status == 409:
        return "the schema is incompatible with the subject's history: check its compatibility"
    if status == 404 and not auto_register:
        return "the subject or this schema is not registered: register it beforehand"
    return "check the subject and the schema"


def writer_header(
    registry: RegistryClient, subject: str, schema: dict[str, Any], *, auto_register: bool
) -> bytes:
    """The wire header of messages written with ``schema`` under ``subject``: the schema
    registered (or looked up when ``auto_register`` is off). A registry that refuses it
    raises :class:`SchemaRegistrationError`; one that is away,
    :class:`RegistryUnavailableError`."""
    from confluent_kafka.schema_registry import Schema

    as_registered = Schema(json.dumps(schema), "AVRO")
    try:
        if auto_register:
            schema_id = registry.register_schema(subject, as_registered)
        else:
            schema_id = registry.lookup_schema(subject, as_registered).schema_id  # type: ignore[attr-defined]
    except Exception as exc:
        status = getattr(exc, "http_status_code", None)
        if status is not None and status < 500:
            raise SchemaRegistrationError(
                f"registry refused the schema for subject {subject!r} "
                f"(status {status}): {getattr(exc, 'error_message', exc)}; "
                f"{_refusal_hint(status, auto_register)}"
            ) from exc
        raise RegistryUnavailableError(
            f"schema registry failed while registering subject {subject!r}: "
            f"{type(exc).__name__} (status {status})"
        ) from exc
    return HEADER.pack(MAGIC_BYTE, schema_id)
