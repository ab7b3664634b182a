"""Confluent wire format (magic 0, 4-byte big-endian schema id, Avro body) with fastavro.

Serializers and deserializers are plain callables ``(value, ctx) -> bytes | dict``, in the
manner of confluent-kafka-python's own; ``ctx`` is accepted for parity and ignored.

Writer schemas are fetched from the registry by id once and cached parsed; each message is
resolved from its writer schema to the caller's reader schema. ``timestamp-millis`` fields
are read and written as plain epoch-millisecond integers (no datetime objects on the hot
path). Every failure is a typed :class:`~streamscore.core.errors.SerdeError`.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Protocol

import fastavro
import numpy as np
from fastavro.read import SchemaResolutionError as _FastavroResolutionError

from ..core.errors import (
    AvroDecodeError,
    EmptyMessageError,
    EncodeError,
    MagicByteError,
    RegistryUnavailableError,
    SchemaRegistrationError,
    SchemaResolutionError,
    StreamscoreError,
    TruncatedMessageError,
    UnexpectedNullError,
    UnknownSchemaError,
    UnreadableWriterSchemaError,
    WriterMissingFieldError,
    WriterTypeMismatchError,
    unexpected_decode_error,
)
from ..features.extract import EventColumns
from .avro_scan import DEFAULT_MAX_DEPTH, BoundedScan, SchemaTooComplexError

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


@dataclass(frozen=True, slots=True)
class _Plan:
    """How messages of one writer schema id are read."""

    writer: Any  # parsed writer schema
    reader: Any  # parsed reader schema to resolve to, or None when writer == reader
    scan: BoundedScan  # bounds checked before fastavro (``scan.guard``) or to name a flaw
    #: top-level writer unions with branches the reader cannot take (resolved per
    #: record): (writer field, reader field, the writer's branch names it can take)
    unions: tuple[tuple[str, str, frozenset[str]], ...] = ()


class AvroDeserializer:
    """``(bytes, ctx) -> dict`` decoding with the caller's reader schema."""

    def __init__(
        self,
        schemas: WriterSchemaCache,
        reader_schema: dict[str, Any],
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self._schemas = schemas
        self._reader_json = _strip_logical_types(reader_schema)
        self._reader = parse(reader_schema)
        self._max_depth = max_depth
        # schema id -> how its messages are read
        self._resolution: dict[int, _Plan] = {}
        # schema id -> column-wise decoding plan (None: left to the per-message path)
        self._flat: dict[int, _Resolution | None] = {}

    @property
    def reader_schema(self) -> Any:
        return self._reader

    def require(self, values: Sequence[bytes | None]) -> None:
        """See :meth:`WriterSchemaCache.require`: the registry away raises here."""
        self._schemas.require(values)

    def _plan(self, schema_id: int) -> _Plan:
        plan = self._resolution.get(schema_id)
        if plan is None:
            writer_json, writer = self._schemas.get(schema_id)
            try:
                scan = BoundedScan(writer, max_depth=self._max_depth)
            except SchemaTooComplexError as exc:
                raise UnreadableWriterSchemaError(
                    f"writer schema id {schema_id} cannot be scanned: {exc}",
                    schema_id=schema_id,
                ) from exc
            stripped = _strip_logical_types(writer_json)
            if stripped == self._reader_json:
                plan = _Plan(writer, None, scan)
            else:
                unions = _check_top_level(stripped, self._reader_json, schema_id)
                plan = _Plan(writer, self._reader, scan, unions)
            self._resolution[schema_id] = plan
        return plan

    def __call__(self, data: bytes | None, ctx: object | None = None) -> dict[str, Any]:
        """The record in ``data``, or a :class:`StreamscoreError` (never another
        exception: whatever else goes wrong reading one message is that message's)."""
        try:
            return self._decode(data)
        except StreamscoreError:
            raise
        except Exception as exc:  # RecursionError, MemoryError...: this message's problem
            raise unexpected_decode_error(exc, limit=self._max_depth) from exc

    def _decode(self, data: bytes | None) -> dict[str, Any]:
        schema_id, body = split_header(data)
        plan = self._plan(schema_id)
        if plan.scan.guard:  # nests or repeats: bounds checked before fastavro recurses
            plan.scan.scan(body, 0, schema_id)
        buf = io.BytesIO(body)
        try:
            record: Any = fastavro.schemaless_reader(buf, plan.writer, plan.reader)
        except _FastavroResolutionError as exc:
            raise self._resolution_failure(plan, body, schema_id, exc) from exc
        except Exception as exc:  # fastavro raises ValueError, IndexError, UnicodeDecodeError...
            if isinstance(exc, (RecursionError, MemoryError)):
                raise unexpected_decode_error(exc, limit=self._max_depth) from exc
            if not plan.scan.guard:
                plan.scan.scan(body, 0, schema_id)  # names a broken bound, as for the others
            if isinstance(exc, EOFError):
                raise TruncatedMessageError(
                    f"Avro body ended early (schema id {schema_id}, {len(body)} bytes)"
                ) from exc
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

    def _resolution_failure(
        self, plan: _Plan, body: memoryview, schema_id: int, exc: Exception
    ) -> SchemaResolutionError:
        """fastavro's resolution error for one record, made precise where a writer union
        is resolved per record: a null written for a field the reader requires, or a
        branch of another type the reader cannot take."""
        if plan.unions:
            try:
                written = fastavro.schemaless_reader(io.BytesIO(body), plan.writer, None)
            except Exception:  # the generic error below says enough
                written = None
            if isinstance(written, dict):
                for w_name, r_name, readable in plan.unions:
                    value = written.get(w_name)
                    if value is None and "null" not in readable:
                        return UnexpectedNullError(
                            f"field {r_name!r} is null in this record (writer schema id "
                            f"{schema_id}), and the reader requires a value",
                            field=r_name,
                        )
                    branches = _PY_BRANCHES.get(type(value), set())
                    if value is not None and branches and not branches & readable:
                        return WriterTypeMismatchError(
                            f"field {r_name!r} holds a {type(value).__name__} in this record "
                            f"(writer schema id {schema_id}), which the reader cannot take",
                            field=r_name,
                        )
        return SchemaResolutionError(
            f"writer schema id {schema_id} does not resolve to the reader schema: {exc}",
            field=_field_in(str(exc)),
        )

    def _flat_plan(self, schema_id: int) -> _Resolution | None:
        """How to decode messages written with ``schema_id`` column-wise, or None when
        the per-message path must read them (not a flat record, or a resolution this
        module does not mirror). Raises what ``__call__`` raises for a bad writer."""
        if schema_id not in self._flat:
            reader = self._plan(schema_id).reader
            plan: _Resolution | None = None
            if reader is None:  # written with the reader schema: nothing to resolve
                fields = _flat_fields(self._reader_json)
                if fields is not None:
                    plan = _Resolution(
                        fields, tuple(_Output(f.name, source=f.name) for f in fields)
                    )
            else:
                writer_json = _strip_logical_types(self._schemas.get(schema_id)[0])
                plan = _resolve_flat(writer_json, self._reader)
            self._flat[schema_id] = plan
        return self._flat[schema_id]

    def _decode_columnar(
        self, values: Sequence[bytes | None], known: dict[int, StreamscoreError]
    ) -> tuple[list[int], EventColumns, list[tuple[int, StreamscoreError]]] | None:
        """The whole batch at once, or None to say "use the per-message path".

        Messages are grouped by schema id; each group is decoded column-wise with its
        writer's layout and resolved to the reader's fields, and the groups are merged
        back in the batch's order. Every message the vectorised reader does not take
        cleanly (bad header, unknown id, corrupt body...) is handed to ``__call__``.

        Errors found on the way are put in ``known`` (index -> error), for the
        per-message path to reuse when this one gives up: decoding a message again would
        not always give the same error (the registry's negative cache words the second
        "unknown schema id" differently). A writer schema that fails to plan (unknown
        id, does not resolve) has raised, here, what ``__call__`` raises for the first
        message that looks that id up, so its error is that message's."""
        datas: Sequence[Any] = values
        try:
            raw = b"".join(datas)
        except TypeError:  # a None value: left empty here, decoded alone
            if any(v is not None and type(v) is not bytes for v in values):
                return None  # bytes-like values: the per-message path reads them as they are
            datas = [b"" if v is None else v for v in values]
            raw = b"".join(datas)
        n = len(datas)
        lens = np.fromiter(map(len, datas), dtype=np.int64, count=n)
        buf = np.frombuffer(raw + _PAD, dtype=np.uint8)
        ends = np.cumsum(lens)
        starts = ends - lens
        head = buf[starts[:, None] + _HEADER_RANGE]
        ok = (lens > HEADER_SIZE) & (head[:, 0] == MAGIC_BYTE)
        if not ok.any():
            return None
        ids = head[:, 1:].astype(np.uint32) @ _ID_WEIGHTS  # big-endian schema ids
        bad = ~ok
        ok_ids = ids[ok]
        present = [int(ok_ids[0])] if (ok_ids == ok_ids[0]).all() else np.unique(ok_ids).tolist()
        groups: list[tuple[_Resolution, np.ndarray]] = []
        for schema_id in present:
            # one id (the usual batch): every row, the bad ones flagged already
            rows = np.arange(n) if len(present) == 1 else np.flatnonzero(ok & (ids == schema_id))
            try:
                plan = self._flat_plan(schema_id)
            except StreamscoreError as exc:
                # the first message whose __call__ gets as far as looking this id up
                reach = (lens >= HEADER_SIZE) & (head[:, 0] == MAGIC_BYTE) & (ids == schema_id)
                known[int(np.argmax(reach))] = exc
                bad[rows] = True
                continue
            if plan is None:
                return None
            groups.append((plan, rows))
        if not groups:
            return None  # no message decodes: the per-message path says why, in order
        names = groups[0][0].names
        if any(plan.names != names for plan, _rows in groups):
            return None  # the records' keys would come in another order: per message
        parts: list[tuple[np.ndarray, dict[str, np.ndarray | list[Any]]]] = []
        for plan, rows in groups:
            sub_bad = bad[rows]
            decoded = _decode_flat(
                plan.fields, raw, buf, starts[rows] + HEADER_SIZE, ends[rows], sub_bad
            )
            columns = _resolve_columns(plan, decoded, sub_bad)
            bad[rows] = sub_bad
            parts.append((rows, columns))
        if len(parts) == 1 and parts[0][0].size == n:
            merged = parts[0][1]
        else:
            merged = {name: _merge([(r, c[name]) for r, c in parts], n) for name in names}
        bad_rows = np.flatnonzero(bad).tolist()
        for i in bad_rows:
            if i in known:
                continue
            try:
                self(values[i])
            except StreamscoreError as exc:
                known[i] = exc
                continue
            return None  # a message only the per-message path reads: let it read them all
        failed = [(i, known[i]) for i in bad_rows]
        good = np.flatnonzero(~bad)
        events = EventColumns(n, merged)
        return good.tolist(), (events if not failed else events.take(good)), failed

    def decode_many(
        self, values: Sequence[bytes | None]
    ) -> tuple[list[int], Sequence[Mapping[str, Any]], list[tuple[int, StreamscoreError]]]:
        """Decode a batch: (indices of the values decoded, their records, and
        ``(index, error)`` for each value that failed, in order).

        Same results as calling the deserializer on each value (the same records, the
        same typed errors; exceptions that are not :class:`StreamscoreError` propagate).
        When the writer schemas of the batch are flat records (primitive, enum or
        nullable fields) that resolve plainly to a flat reader record (the reader schema
        itself, or an older or newer version of it), the whole batch is decoded at once
        with NumPy, one group per schema id, and the records come back as
        :class:`EventColumns`; otherwise each message takes a lean per-message path.
        Anything unusual (an error, an edge case of the encoding or of schema
        resolution) is handed to ``__call__`` for its exact result.

        The writer schemas of the batch are fetched first: a registry that cannot
        answer raises :class:`RegistryUnavailableError` before anything is decoded."""
        self.require(values)  # a registry away: raised here, nothing decoded
        known: dict[int, StreamscoreError] = {}  # errors already raised (_decode_columnar)
        if len(values) >= _MIN_COLUMNAR:
            try:
                done = self._decode_columnar(values, known)
            except Exception:  # whatever it is, each message then says for itself
                done = None
            if done is not None:
                return done
        good: list[int] = []
        records: list[dict[str, Any]] = []
        failed: list[tuple[int, StreamscoreError]] = []
        read = fastavro.schemaless_reader
        bytes_io = io.BytesIO
        last_header: bytes | None = None
        writer: Any = None
        reader: Any = None
        guard: BoundedScan | None = None
        for i, data in enumerate(values):
            if known and i in known:
                failed.append((i, known[i]))
                continue
            try:
                # cheap pre-checks; anything odd goes to the slow path for its exact error
                if type(data) is not bytes or len(data) <= HEADER_SIZE or data[0] != MAGIC_BYTE:
                    raise _SlowPath
                header = data[:HEADER_SIZE]
                if header != last_header:
                    last_header = None
                    try:
                        plan = self._plan(HEADER.unpack(header)[1])
                    except StreamscoreError as exc:  # what __call__ raises for this header
                        failed.append((i, exc))
                        continue
                    writer, reader = plan.writer, plan.reader
                    guard = plan.scan if plan.scan.guard else None
                    last_header = header
                if guard is not None:  # nests or repeats: bounds first (raises typed errors)
                    guard.scan(data, HEADER_SIZE, 0)
                buf = bytes_io(data)
                buf.seek(HEADER_SIZE)
                record = read(buf, writer, reader)
                if buf.tell() != len(data) or type(record) is not dict:
                    raise _SlowPath
            except Exception:
                last_header = None
                try:
                    record = self(data)
                except StreamscoreError as exc:
                    failed.append((i, exc))
                    continue
            good.append(i)
            records.append(record)
        return good, records, failed


class _SlowPath(Exception):
    """A message the batch decoder leaves to the single-message path."""


# ------------------------------------------------------- column-wise record decoding

_MIN_COLUMNAR = 16  # below this, per-message decoding is as fast
_PAD = bytes(16)  # reads a little past the last message stay inside the buffer
_HEADER_RANGE = np.arange(HEADER_SIZE)
_FLAT_KINDS = frozenset({"boolean", "int", "long", "float", "double", "string", "bytes", "enum"})
_MAX_VARINT = 9  # longer varints (|value| >= 2**62) are left to fastavro
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_ID_WEIGHTS = np.array([1 << 24, 1 << 16, 1 << 8, 1], dtype=np.uint32)


@dataclass(frozen=True, slots=True)
class _FlatField:
    name: str
    kind: str  # one of _FLAT_KINDS
    null_index: int = -1  # position of "null" in a two-branch union; -1: not nullable
    symbols: tuple[str, ...] = ()
    enum_name: str = ""  # enum: its name, unqualified (what fastavro matches on)
    #: a writer field the reader does not have: parsed (to move on), never kept, and
    #: checked only as fastavro's skip functions check it (no UTF-8, enum or int range)
    skip: bool = False


def _flat_fields(schema: Any) -> tuple[_FlatField, ...] | None:
    """A plan for a record of primitive / enum / ``[null, T]`` fields, else None."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    out = []
    for f in schema.get("fields", ()):
        t, null_index = f.get("type"), -1
        if isinstance(t, list):
            if len(t) != 2 or t.count("null") != 1:
                return None
            null_index = t.index("null")
            t = t[1 - null_index]
        kind = _type_name(t)
        if kind not in _FLAT_KINDS:
            return None
        symbols, enum_name = (), ""
        if kind == "enum":
            symbols, enum_name = tuple(t["symbols"]), _unqualified(t["name"])
        out.append(_FlatField(str(f["name"]), str(kind), null_index, symbols, enum_name))
    return tuple(out)


def _unqualified(name: Any) -> str:
    return str(name).rsplit(".", 1)[-1]


# --- schema resolution, column-wise
#
# fastavro's ``read_record`` with a reader schema (which ``__call__`` runs) works so:
#   * the writer's fields are read in the writer's order; a writer field goes to the
#     reader field of the same name, else to the reader field that lists it among its
#     ``aliases``, else it is skipped (parsed with the writer's type, value dropped);
#   * each reader field is filled once (a second writer field claiming it is a
#     KeyError inside fastavro); the reader fields no writer field filled then take
#     their ``default``, in the reader's order, or raise "No default value";
#   * so the record's keys come in the writer's order, then the defaulted fields.
# A value is resolved by ``match_types``: the writer's type, or the first branch of a
# reader union it matches; promotions int -> long/float/double, long -> float/double,
# float -> double, string <-> bytes, with the value converted by ``maybe_promote``
# (float(), .encode(), .decode()); an enum matches an enum of the same unqualified
# name, and a symbol the reader lacks reads as the reader enum's default (if truthy),
# else raises. A null written in a ``[null, T]`` union needs a null branch in the reader.
# Anything else (aliases of named types, logical types, named references, nested
# types...) is left to the per-message path.

_NUMBER_PROMOTIONS = {
    "int": ("int", "long", "float", "double"),
    "long": ("long", "float", "double"),
    "float": ("float", "double"),
    "string": ("string", "bytes"),
    "bytes": ("bytes", "string"),
}


@dataclass(frozen=True, slots=True)
class _Output:
    """One key of the records the reader gets: read from writer field ``source``, or,
    when ``source`` is None, the reader field's ``default`` (the parsed schema's own
    object, as fastavro returns it)."""

    name: str
    source: str | None = None
    default: Any = None
    #: "" as read | "float": int/long -> float/double | "encode": string -> bytes |
    #: "decode": bytes -> string | "enum": writer symbol -> reader symbol (``symbol_map``)
    convert: str = ""
    null_ok: bool = True  # False: a null written is an error for the reader
    symbol_map: Mapping[str, str | None] | None = None  # None value: the symbol errors


@dataclass(frozen=True, slots=True)
class _Resolution:
    """Column-wise decoding of one writer schema for one reader schema: the writer's
    layout (``fields``, unread ones marked ``skip``), then the record keys in order."""

    fields: tuple[_FlatField, ...]
    outputs: tuple[_Output, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)


def _resolve_flat(writer: Any, reader: Any) -> _Resolution | None:
    """How a flat writer record (stripped JSON) reads as the parsed ``reader`` record,
    or None when the per-message path must decide (see the rules above)."""
    fields = _flat_fields(writer)
    if fields is None or not isinstance(reader, dict) or reader.get("type") != "record":
        return None
    if _unqualified(writer.get("name")) != _unqualified(reader.get("name")):
        return None  # fastavro may still match on the reader's aliases: its call
    reader_fields = reader.get("fields")
    if not isinstance(reader_fields, list):
        return None
    unread = {f["name"]: f for f in reader_fields}
    by_alias = {a: f for f in reader_fields for a in f.get("aliases", ())}
    layout: list[_FlatField] = []
    outputs: list[_Output] = []
    for wf in fields:
        rf = unread.get(wf.name, by_alias.get(wf.name))
        if rf is None:
            layout.append(_FlatField(wf.name, wf.kind, wf.null_index, wf.symbols, skip=True))
            continue
        if rf["name"] not in unread:
            return None  # a reader field claimed twice (through an alias): fastavro fails
        del unread[rf["name"]]
        out = _read_as(wf, rf["type"], str(rf["name"]))
        if out is None:
            return None
        layout.append(wf)
        outputs.append(out)
    for rf in unread.values():
        if "default" not in rf:
            return None  # "No default value": per message (``_plan`` usually said so)
        outputs.append(_Output(str(rf["name"]), default=rf["default"]))
    return _Resolution(tuple(layout), tuple(outputs))


def _matches(wf: _FlatField, branch: Any) -> bool | None:
    """fastavro's ``match_types`` of the writer field's (non-null) type against one
    reader type; None when this module does not mirror the case."""
    kind = _type_name(branch)
    if kind is None or (kind not in _FLAT_KINDS and kind != "null"):
        return None  # logical type, named reference, nested type...
    if wf.kind == "enum" or kind == "enum":
        if wf.kind != kind:
            return False
        if not isinstance(branch, dict):
            return None
        if _unqualified(branch.get("name")) == wf.enum_name:
            return True
        return None if branch.get("aliases") else False
    return kind in _NUMBER_PROMOTIONS.get(wf.kind, (wf.kind,))


def _read_as(wf: _FlatField, reader_type: Any, name: str) -> _Output | None:
    """How writer field ``wf`` reads as ``reader_type``, or None to leave it to
    fastavro (a case not mirrored here, or a writer value that can never be read)."""
    branches = reader_type if isinstance(reader_type, list) else [reader_type]
    target = None
    for b in branches:
        hit = _matches(wf, b)
        if hit is None:
            return None
        if hit:
            target = b  # fastavro reads the value as the first branch that matches
            break
    if target is None:
        return None  # every non-null value errors: not worth mirroring
    # a null written needs a null branch in the reader (checked only where one can be)
    null_ok = wf.null_index < 0 or any(_type_name(b) == "null" for b in branches)
    kind = _type_name(target)
    if wf.kind in ("int", "long") and kind in ("float", "double"):
        return _Output(name, wf.name, convert="float", null_ok=null_ok)
    if wf.kind != kind and kind in ("string", "bytes"):
        convert = "encode" if kind == "bytes" else "decode"
        return _Output(name, wf.name, convert=convert, null_ok=null_ok)
    if wf.kind == "enum":
        symbols = target["symbols"]
        default = target.get("default") or None  # fastavro: ``if default:``
        mapping = {s: s if s in symbols else default for s in wf.symbols}
        if any(mapping[s] != s for s in wf.symbols):
            return _Output(name, wf.name, convert="enum", null_ok=null_ok, symbol_map=mapping)
    return _Output(name, wf.name, null_ok=null_ok)


def _resolve_columns(
    plan: _Resolution, decoded: Mapping[str, np.ndarray | list[Any]], bad: np.ndarray
) -> dict[str, np.ndarray | list[Any]]:
    """The reader's columns from the writer's (``decoded``); rows whose value the reader
    cannot take (a null it does not accept, a symbol it lacks, bytes that are not UTF-8)
    are flagged in ``bad``, for ``__call__`` to raise fastavro's own error."""
    n = bad.size
    out: dict[str, np.ndarray | list[Any]] = {}
    for o in plan.outputs:
        if o.source is None:
            out[o.name] = _constant_column(o.default, n)
            continue
        col = decoded[o.source]
        if isinstance(col, list):
            if not o.null_ok:  # a nullable writer field read as non-nullable
                bad |= np.fromiter((v is None for v in col), dtype=bool, count=n)
            if o.convert == "float":
                col = [None if v is None else float(v) for v in col]
            elif o.convert == "encode":
                col = [None if v is None else v.encode() for v in col]
            elif o.convert == "decode":
                col = _decode_utf8(col, bad)
            elif o.convert == "enum":
                assert o.symbol_map is not None
                get, written = o.symbol_map.get, col
                col = [None if v is None else get(v) for v in written]
                # a symbol the reader lacks, without a default to read instead: an error
                lost = (w is not None and v is None for w, v in zip(written, col, strict=True))
                bad |= np.fromiter(lost, dtype=bool, count=n)
        elif o.convert == "float":  # a NumPy column of ints, never null
            col = col.astype(np.float64)
        out[o.name] = col
    return out


def _decode_utf8(col: list[Any], bad: np.ndarray) -> list[Any]:
    out: list[Any] = []
    for r, v in enumerate(col):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(v.decode())
        except UnicodeDecodeError:
            bad[r] = True
            out.append(None)
    return out


def _constant_column(value: Any, n: int) -> np.ndarray | list[Any]:
    """A default, once per record: a NumPy array for plain numbers (``.item()`` gives
    the value back with its type), else the very object, repeated."""
    t = type(value)
    if t is float:
        return np.full(n, value, dtype=np.float64)
    if t is bool:
        return np.full(n, value, dtype=bool)
    if t is int and _INT64_MIN <= value <= _INT64_MAX:
        return np.full(n, value, dtype=np.int64)
    return [value] * n


def _merge(pieces: list[tuple[np.ndarray, np.ndarray | list[Any]]], n: int) -> Any:
    """One column of ``n`` rows from the columns of row groups (``rows``, column);
    rows in no group (bad messages, dropped later) hold a filler."""
    arrays = [c for _rows, c in pieces if isinstance(c, np.ndarray)]
    if len(arrays) == len(pieces):
        kinds = {a.dtype.kind for a in arrays}
        # same dtype, or floats of several widths (float32 -> float64 is exact)
        if len({a.dtype for a in arrays}) == 1 or kinds == {"f"}:
            out = np.zeros(n, dtype=np.result_type(*arrays))
            for rows, c in pieces:
                out[rows] = c
            return out
    full = np.full(n, None, dtype=object)
    for rows, c in pieces:
        if isinstance(c, np.ndarray):
            c = c.tolist()  # Python values (an int column next to a float one stays int)
        full[rows] = np.fromiter(c, dtype=object, count=len(c))
    return full.tolist()


def _varints(buf: np.ndarray, pos: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zigzag varints at ``pos``: (values, positions after them). Rows whose varint is
    longer than ``_MAX_VARINT`` bytes are flagged in ``bad``."""
    last = buf.size - 1
    acc = np.zeros(pos.size, dtype=np.uint64)
    cur = pos.copy()
    active = np.ones(pos.size, dtype=bool)
    for k in range(_MAX_VARINT):
        b = buf[np.minimum(cur, last)].astype(np.uint64)
        acc |= np.where(active, (b & np.uint64(0x7F)) << np.uint64(7 * k), np.uint64(0))
        cur += active
        active &= (b & np.uint64(0x80)) != 0
        if not active.any():
            break
    bad |= active
    signed = (acc >> np.uint64(1)).astype(np.int64) ^ -(acc & np.uint64(1)).astype(np.int64)
    return signed, cur


def _fixed(buf: np.ndarray, pos: np.ndarray, width: int, dtype: str) -> np.ndarray:
    """``width``-byte little-endian values at ``pos`` (one per row)."""
    idx = np.minimum(pos[:, None] + np.arange(width), buf.size - 1)
    return np.ascontiguousarray(buf[idx]).view(dtype).reshape(pos.size, -1)


def _decode_flat(
    plan: tuple[_FlatField, ...],
    raw: bytes,
    buf: np.ndarray,
    pos: np.ndarray,
    ends: np.ndarray,
    bad: np.ndarray,
) -> dict[str, np.ndarray | list[Any]]:
    """Decode every message of the batch with ``plan``; rows that do not decode cleanly
    (truncated, trailing bytes, invalid UTF-8, out-of-range index, an edge case the
    vectorised reader does not take) are flagged in ``bad`` (their columns hold junk)."""
    n = pos.size
    pos = pos.copy()
    pending: list[tuple[_FlatField, np.ndarray, Any, Any]] = []  # decoded after all fields
    i = 0
    while i < len(plan):
        f = plan[i]
        rows = np.arange(n)
        if f.null_index >= 0:
            branch, pos = _varints(buf, pos, bad)
            bad |= (branch != 0) & (branch != 1)
            rows = np.flatnonzero(branch != f.null_index)
        p = pos[rows]
        if f.kind in ("double", "float") and f.null_index < 0:
            # a run of non-null doubles (or floats) is one gather
            j = i
            while j < len(plan) and plan[j].kind == f.kind and plan[j].null_index < 0:
                j += 1
            width = 8 if f.kind == "double" else 4
            block = _fixed(buf, p, width * (j - i), "<f8" if width == 8 else "<f4")
            for k in range(i, j):
                pending.append((plan[k], rows, block[:, k - i].copy(), None))
            pos[rows] = p + width * (j - i)
            i = j
            continue
        if f.kind in ("double", "float"):
            width = 8 if f.kind == "double" else 4
            vals: Any = _fixed(buf, p, width, "<f8" if width == 8 else "<f4")[:, 0]
            p = p + width
        elif f.kind == "boolean":
            vals = buf[np.minimum(p, buf.size - 1)]
            if not f.skip:  # fastavro's reading of other bytes: its business
                bad[rows[vals > 1]] = True
            vals = vals == 1
            p = p + 1
        elif f.kind in ("int", "long", "enum"):
            sub_bad = np.zeros(rows.size, dtype=bool)
            vals, p = _varints(buf, p, sub_bad)
            if f.skip:
                pass  # fastavro skips any varint here
            elif f.kind == "int":
                sub_bad |= (vals < _INT32_MIN) | (vals > _INT32_MAX)
            elif f.kind == "enum":
                sub_bad |= (vals < 0) | (vals >= len(f.symbols))
            bad[rows[sub_bad]] = True
        else:  # string, bytes: a length, then the bytes (turned into objects at the end)
            sub_bad = np.zeros(rows.size, dtype=bool)
            length, p = _varints(buf, p, sub_bad)
            # a length past the message's end is truncation (and must not carry the
            # position anywhere: it is clamped, the row is already bad)
            sub_bad |= (length < 0) | (length > ends[rows] - p)
            bad[rows[sub_bad]] = True
            length[sub_bad] = 0
            vals = p
            p = p + length
            pending.append((f, rows, vals, p))
            pos[rows] = p
            i += 1
            continue
        pending.append((f, rows, vals, None))
        pos[rows] = p
        i += 1
    bad |= pos != ends  # ran past its end (truncated), or bytes left over (trailing)

    ok = ~bad
    columns: dict[str, np.ndarray | list[Any]] = {}
    for f, rows, vals, stop in pending:
        if f.skip:  # parsed and checked as fastavro skips it: nothing to keep
            continue
        if stop is not None:  # string / bytes: slice the good rows only
            keep = ok[rows]
            starts, stops = vals[keep].tolist(), stop[keep].tolist()
            if f.kind == "string":
                try:
                    objs: list[Any] = [
                        raw[a:b].decode() for a, b in zip(starts, stops, strict=True)
                    ]
                except UnicodeDecodeError:
                    objs = []
                    for r, a, b in zip(rows[keep].tolist(), starts, stops, strict=True):
                        try:
                            objs.append(raw[a:b].decode())
                        except UnicodeDecodeError:
                            bad[r] = True
                            objs.append(None)
            else:
                objs = [raw[a:b] for a, b in zip(starts, stops, strict=True)]
            if len(objs) == n:  # every row: nothing to scatter
                columns[f.name] = objs
                continue
            full: list[Any] = [None] * n
            for r, o in zip(rows[keep].tolist(), objs, strict=True):
                full[r] = o
            columns[f.name] = full
            continue
        if f.kind == "enum":
            symbols = f.symbols
            vals = [symbols[v] if 0 <= v < len(symbols) else None for v in vals.tolist()]
        if f.null_index < 0:
            columns[f.name] = vals if isinstance(vals, list) else np.asarray(vals)
        else:
            full = [None] * n
            for r, v in zip(
                rows.tolist(), vals if isinstance(vals, list) else vals.tolist(), strict=True
            ):
                full[r] = v
            columns[f.name] = full
    return {f.name: columns[f.name] for f in plan if not f.skip}


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


#: the writer types (as :func:`_branches` names them) a decoded value may come from
_PY_BRANCHES: dict[type, set[str]] = {
    str: {"string", "enum"},
    bytes: {"bytes", "fixed"},
    bool: {"boolean"},
    int: {"int", "long"},
    float: {"float", "double"},
}


def _check_top_level(
    writer: Any, reader: Any, schema_id: int
) -> tuple[tuple[str, str, frozenset[str]], ...]:
    """Name the field when a writer record cannot resolve to the reader record, before
    any message is read (fastavro's own messages do not always say which field).

    A writer union is resolved per record, as Avro does: it fails here only when none
    of its branches can be read as the reader's type; otherwise only the records that
    hold another branch (a null for a field the reader requires) fail. Returns those
    unions: (writer field, reader field, the branches the reader can take)."""
    if not (isinstance(writer, dict) and isinstance(reader, dict)):
        return ()
    if writer.get("type") != "record" or reader.get("type") != "record":
        return ()
    unions: list[tuple[str, str, frozenset[str]]] = []
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
        readable = {wt for wt in w_types if _PROMOTIONS.get(wt, {wt}) & r_types}
        if not readable:
            raise WriterTypeMismatchError(
                f"field {name!r} is {' or '.join(map(repr, sorted(w_types)))} in writer "
                f"schema id {schema_id}, which cannot be read as {sorted(r_types)}",
                field=name,
            )
        if readable != w_types:
            unions.append((name, name, frozenset(readable)))
    return tuple(unions)


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
        self._columns_plan: Any = None

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

    def encode_columns(self, cols: RecordColumns) -> list[bytes]:
        """``encode_many(cols.rows())``, byte for byte, without building the dicts.

        Avro binary is a plain concatenation of the fields, so constant fields are encoded
        once; columns are encoded a field at a time (float arrays and arrays of arrays
        vectorised with NumPy); each record is then one ``b"".join``. A field left out
        takes its schema default, as in fastavro. Anything the fast path does not handle
        (nested records, ``bytes`` or ``fixed`` fields, unions of non-primitive types; a
        value whose type fastavro would convert or refuse) falls back to ``encode_many``,
        which also raises the same :class:`EncodeError` for values that do not fit."""
        header = self._ensure_header()
        plan = self._columns_plan
        if plan is None:
            plan = self._columns_plan = _compile_record(self._schema_json)
        if plan is not _UNSUPPORTED and cols.n > 0:
            try:
                return _encode_columns(plan, header, cols)
            except Exception:  # _Unsupported, or a value only fastavro may judge
                pass
        return self.encode_many(cols.rows())


# ------------------------------------------------------- column-wise record encoding


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """``n`` records of one record schema, given column-wise.

    Every field of the schema is either in ``constants`` (the same value in every record)
    or in ``columns`` (one value per record: a list, or a NumPy array, 1-d for scalar
    fields and 2-d ``(n, k)`` for arrays of numbers)."""

    n: int
    constants: Mapping[str, Any]
    columns: Mapping[str, Any]

    def rows(self) -> list[dict[str, Any]]:
        """The records as plain dicts (NumPy values converted with ``tolist()``)."""
        names = list(self.constants) + list(self.columns)
        if not names:
            return [{} for _ in range(self.n)]
        consts = [repeat(v, self.n) for v in self.constants.values()]
        cols = [c.tolist() if isinstance(c, np.ndarray) else c for c in self.columns.values()]
        return [dict(zip(names, vals, strict=True)) for vals in zip(*consts, *cols, strict=False)]


class _Unsupported(Exception):
    """A schema or a value the column encoder leaves to fastavro."""


_UNSUPPORTED: Any = object()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: zigzag varints of -64..63, indexed by the value itself (negative values wrap around)
_SMALL_VARINT = tuple(bytes([(i << 1) ^ (i >> 63)]) for i in [*range(64), *range(-64, 0)])
_BOOL = (b"\x00", b"\x01")
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")


def _long(n: int) -> bytes:
    """Zigzag varint of a long, exactly as Avro (and fastavro) write it."""
    if type(n) is not int and type(n) is not bool:
        raise _Unsupported
    if -64 <= n < 64:
        return _SMALL_VARINT[n]
    if not _INT64_MIN <= n <= _INT64_MAX:
        raise _Unsupported
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(v: Any) -> bytes:
    if type(v) is not str:
        raise _Unsupported
    try:
        b = v.encode()
    except UnicodeError:
        raise _Unsupported from None
    n = len(b)
    return (_SMALL_VARINT[n] if n < 64 else _long(n)) + b


def _double(v: Any) -> bytes:
    if type(v) is not float:
        raise _Unsupported
    return _DOUBLE.pack(v)


def _float(v: Any) -> bytes:
    if type(v) is not float:
        raise _Unsupported
    return _FLOAT.pack(v)


def _boolean(v: Any) -> bytes:
    if type(v) is not bool:
        raise _Unsupported
    return _BOOL[v]


def _null(v: Any) -> bytes:
    if v is not None:
        raise _Unsupported
    return b""


_PRIMITIVES: dict[str, Callable[[Any], bytes]] = {
    "null": _null,
    "boolean": _boolean,
    "int": _long,
    "long": _long,
    "float": _float,
    "double": _double,
    "string": _string,
}
_NUMERIC_ITEMS = {"double": "<f8", "float": "<f4"}


@dataclass(frozen=True, slots=True)
class _FieldCodec:
    """How to encode one field: one value (``one``) and, where it pays, a whole column
    given as a float NumPy array (``array_dtype``; 1-d for scalars, 2-d for arrays)."""

    name: str
    one: Callable[[Any], bytes]
    kind: str  # "scalar" | "array" | "nullable" | "other"
    array_dtype: str | None = None
    union_prefix: bytes = b""  # nullable numbers: the index of the non-null branch
    has_default: bool = False
    default: Any = None
    #: a whole list column at once, for the common types (else ``one`` per value)
    column: Callable[[list[Any]], list[bytes]] | None = None


def _type_name(t: Any) -> str | None:
    if isinstance(t, str):
        return t
    if isinstance(t, dict) and "logicalType" not in t and isinstance(t.get("type"), str):
        return str(t["type"])
    return None


def _union_codec(branches: list[Any]) -> Callable[[Any], bytes]:
    """A union of primitives, branch chosen by the value's exact Python type (None, bool,
    int, float, str); ambiguous or unknown cases are left to fastavro."""
    names = [_type_name(b) for b in branches]
    if any(n not in _PRIMITIVES for n in names):
        raise _Unsupported
    by_type: dict[type, tuple[bytes, Callable[[Any], bytes]]] = {}

    def pick(py: type, *candidates: str) -> None:
        found = [i for i, n in enumerate(names) if n in candidates]
        if len(found) == 1:
            by_type[py] = (_long(found[0]), _PRIMITIVES[names[found[0]] or ""])

    pick(type(None), "null")
    pick(bool, "boolean")
    pick(str, "string")
    pick(float, "double", "float")
    if "double" not in names and "float" not in names:
        pick(int, "long", "int")

    def union(v: Any) -> bytes:
        hit = by_type.get(type(v))
        if hit is None:
            raise _Unsupported
        return hit[0] + hit[1](v)

    return union


def _one_codec(t: Any) -> Callable[[Any], bytes]:
    if isinstance(t, list):
        return _union_codec(t)
    name = _type_name(t)
    if name in _PRIMITIVES:
        return _PRIMITIVES[name]
    if name == "enum":
        index = {sym: _long(i) for i, sym in enumerate(t["symbols"])}

        def enum(v: Any) -> bytes:
            try:
                return index[v]
            except (KeyError, TypeError):
                raise _Unsupported from None

        return enum
    if name == "array":
        item = _one_codec(t["items"])

        def array(v: Any) -> bytes:
            if type(v) is not list:
                raise _Unsupported
            if not v:
                return b"\x00"
            return _long(len(v)) + b"".join([item(x) for x in v]) + b"\x00"

        return array
    if name == "map":
        value = _one_codec(t["values"])

        def map_(v: Any) -> bytes:
            if type(v) is not dict:
                raise _Unsupported
            if not v:
                return b"\x00"
            body = b"".join([_string(k) + value(x) for k, x in v.items()])
            return _long(len(v)) + body + b"\x00"

        return map_
    raise _Unsupported


def _strings(col: list[Any]) -> list[bytes]:
    if not set(map(type, col)) <= {str}:
        raise _Unsupported
    small, long_ = _SMALL_VARINT, _long
    return [(small[n] if (n := len(b)) < 64 else long_(n)) + b for b in [v.encode() for v in col]]


def _nullable_strings(null: bytes, prefix: bytes) -> Callable[[list[Any]], list[bytes]]:
    heads = tuple(prefix + b for b in _SMALL_VARINT[:64])  # branch + short length

    def one(v: str | None) -> bytes:
        if v is None:
            return null
        b = v.encode()
        return heads[n] + b if (n := len(b)) < 64 else prefix + _long(n) + b

    def column(col: list[Any]) -> list[bytes]:
        if not set(map(type, col)) <= {str, type(None)}:
            raise _Unsupported
        if _few_distinct(col):  # labels: a handful of classes
            memo = {v: one(v) for v in dict.fromkeys(col)}
            return list(map(memo.__getitem__, col))
        long_ = _long
        return [
            null
            if v is None
            else (heads[n] + b if (n := len(b := v.encode())) < 64 else prefix + long_(n) + b)
            for v in col
        ]

    return column


def _few_distinct(col: list[Any], probe: int = 32, most: int = 4) -> bool:
    """Whether a column looks like it repeats a handful of values (judged on its head)."""
    return len(col) > 2 * probe and len(set(col[:probe])) <= most


def _longs(col: list[Any]) -> list[bytes]:
    memo: dict[Any, bytes] = {}  # times and versions repeat within a batch
    out = []
    for v in col:
        b = memo.get(v)
        if b is None:
            b = memo[v] = _long(v)
        out.append(b)
    return out


def _booleans(col: list[Any]) -> list[bytes]:
    if not set(map(type, col)) <= {bool}:
        raise _Unsupported
    return [_BOOL[v] for v in col]


_COLUMNS: dict[str, Callable[[list[Any]], list[bytes]]] = {
    "string": _strings,
    "long": _longs,
    "int": _longs,
    "boolean": _booleans,
}


def _field_codec(f: Mapping[str, Any]) -> _FieldCodec:
    t, name = f["type"], str(f["name"])
    default: dict[str, Any] = {"has_default": "default" in f, "default": f.get("default")}
    one = _one_codec(t)
    if isinstance(t, list):
        non_null = [b for b in t if b != "null"]
        if len(t) == 2 and len(non_null) == 1:
            other = _type_name(non_null[0]) or ""
            prefix, null = _long(t.index(non_null[0])), _long(t.index("null"))
            if other in _NUMERIC_ITEMS:
                return _FieldCodec(name, one, "nullable", _NUMERIC_ITEMS[other], prefix, **default)
            if other == "string":
                column = _nullable_strings(null, prefix)
                return _FieldCodec(name, one, "other", column=column, **default)
        return _FieldCodec(name, one, "other", **default)
    tname = _type_name(t) or ""
    if tname == "array":
        items = _NUMERIC_ITEMS.get(_type_name(t["items"]) or "")
        return _FieldCodec(name, one, "array", items, **default)
    return _FieldCodec(
        name, one, "scalar", _NUMERIC_ITEMS.get(tname), column=_COLUMNS.get(tname), **default
    )


def _compile_record(schema: Any) -> Any:
    """Field codecs for a record schema, or ``_UNSUPPORTED``."""
    stripped = _strip_logical_types(schema)
    if not isinstance(stripped, dict) or stripped.get("type") != "record":
        return _UNSUPPORTED
    try:
        return tuple(_field_codec(f) for f in stripped["fields"])
    except (_Unsupported, KeyError, TypeError, ValueError):
        return _UNSUPPORTED


def _rows_bytes(mat: np.ndarray) -> list[bytes]:
    """Each row of a 2-d uint8 array as one bytes object."""
    mat = np.ascontiguousarray(mat)
    out: Any = mat.view(np.dtype((np.void, mat.shape[1]))).ravel().tolist()
    return out  # type: ignore[no-any-return]


def _numeric_column(codec: _FieldCodec, col: np.ndarray, n: int) -> list[bytes]:
    """A column of doubles/floats (or of arrays of them, 2-d) as bytes per row."""
    assert codec.array_dtype is not None
    if col.dtype.kind != "f":
        raise _Unsupported
    vals = np.ascontiguousarray(col, dtype=codec.array_dtype)
    if codec.kind == "array":
        if vals.ndim != 2 or vals.shape[0] != n:
            raise _Unsupported
        k = vals.shape[1]
        if k == 0:
            return [b"\x00"] * n
        head = np.frombuffer(_long(k), dtype=np.uint8)
        body = vals.view(np.uint8).reshape(n, -1)
        mat = np.empty((n, head.size + body.shape[1] + 1), dtype=np.uint8)
        mat[:, : head.size] = head
        mat[:, head.size : -1] = body
        mat[:, -1] = 0
        return _rows_bytes(mat)
    if vals.ndim != 1 or vals.shape[0] != n:
        raise _Unsupported
    body = vals.view(np.uint8).reshape(n, -1)
    if codec.kind == "nullable":
        head = np.frombuffer(codec.union_prefix, dtype=np.uint8)
        mat = np.empty((n, head.size + body.shape[1]), dtype=np.uint8)
        mat[:, : head.size] = head
        mat[:, head.size :] = body
        return _rows_bytes(mat)
    return _rows_bytes(body)


def _column(codec: _FieldCodec, col: Any, n: int) -> list[bytes]:
    if isinstance(col, np.ndarray):
        if codec.array_dtype is not None:
            return _numeric_column(codec, col, n)
        col = col.tolist()
    if len(col) != n:
        raise _Unsupported
    if codec.column is not None:
        return codec.column(col)
    one = codec.one
    return [one(v) for v in col]


def _encode_columns(
    plan: tuple[_FieldCodec, ...], header: bytes, cols: RecordColumns
) -> list[bytes]:
    n = cols.n
    given = 0
    parts: list[Any] = []
    pending = [header]  # adjacent constants are merged into one piece
    for codec in plan:
        if codec.name in cols.constants:
            pending.append(codec.one(cols.constants[codec.name]))
            given += 1
            continue
        if codec.name not in cols.columns:
            if not codec.has_default:
                raise _Unsupported  # fastavro says what is missing
            pending.append(codec.one(codec.default))  # as fastavro: absent -> default
            continue
        given += 1
        if pending:
            parts.append(repeat(b"".join(pending), n))
            pending = []
        parts.append(_column(codec, cols.columns[codec.name], n))
    if given != len(cols.constants) + len(cols.columns):
        raise _Unsupported  # a name that is not a field of the schema
    if pending:
        parts.append(repeat(b"".join(pending), n))
    return list(map(b"".join, zip(*parts, strict=False)))  # repeat() is endless


def registry_client(conf: dict[str, Any]) -> Any:
    """A ``SchemaRegistryClient`` (``mock://`` URLs give confluent's in-memory mock)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client(conf)
