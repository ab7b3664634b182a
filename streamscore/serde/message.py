"""The per-message codecs: :class:`AvroDeserializer` and :class:`AvroSerializer`.

Plain callables ``(value, ctx) -> dict | bytes``, in the manner of confluent-kafka-python's
own; ``ctx`` is accepted for parity and ignored. Each also works a batch at a time, the
batch-codec interface the scorer uses (:mod:`streamscore.score.codecs`):
:meth:`AvroDeserializer.decode_many` (column-wise through :mod:`.columnar_decode` when it
can, else a lean per-message loop) and :meth:`AvroSerializer.encode_columns` (column-wise
through :mod:`.columnar_encode` when it can, else :meth:`AvroSerializer.encode_many`); the
results are those of the per-message calls either way.

Each message is resolved from its writer schema (fetched by id once:
:class:`~streamscore.serde.wire.WriterSchemaCache`) to the caller's reader schema; a writer
schema that cannot resolve is named precisely, per field, before any message is read.
Every failure is a typed :class:`~streamscore.core.errors.SerdeError`; a registry that is
away raises :class:`~streamscore.core.errors.RegistryUnavailableError` (retry).

One concern, hence its length: the Avro codecs as plain callables (one message at a
time, and their batch entry points).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError as _FastavroResolutionError

from ..core.columns import EventColumns, RecordColumns
from ..core.config import RegistrySettings
from ..core.errors import (
    AvroDecodeError,
    EncodeError,
    InfrastructureError,
    SchemaResolutionError,
    StreamscoreError,
    TruncatedMessageError,
    UnexpectedNullError,
    UnreadableWriterSchemaError,
    WriterMissingFieldError,
    WriterTypeMismatchError,
    unexpected_decode_error,
)
from .avro_scan import DEFAULT_MAX_DEPTH, BoundedScan, SchemaTooComplexError
from .columnar_decode import MIN_COLUMNAR, Resolution, decode_columnar, resolution
from .columnar_encode import ColumnarEncoder
from .wire import (
    HEADER,
    HEADER_SIZE,
    MAGIC_BYTE,
    RegistryClient,
    WriterSchema,
    WriterSchemaCache,
    parse,
    split_header,
    strip_logical_types,
    writer_schema,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Plan:
    """How messages of one writer schema id are read."""

    writer: Any  # parsed writer schema
    reader: Any  # parsed reader schema to resolve to, or None when writer == reader
    scan: BoundedScan  # bounds checked before fastavro (``guard``) or to name a flaw
    #: top-level writer unions with branches the reader cannot take (resolved per
    #: record): (writer field, reader field, the writer's branch names it can take)
    unions: tuple[tuple[str, str, frozenset[str]], ...] = ()

    @property
    def guard(self) -> bool:
        """Scan before fastavro: read as written, fastavro stops at the end of the bytes
        unless the schema recurses, nests too deep or repeats items that take no bytes;
        resolved to a reader, it may skip writer fields, and skips do not stop there
        (:mod:`.avro_scan`)."""
        return self.scan.guard if self.reader is not None else self.scan.guard_read


class AvroDeserializer:
    """``(bytes, ctx) -> dict`` decoding with the caller's reader schema (None: each
    message as its own writer schema says, for records whose schema is the user's; a
    batch of flat records is then decoded column-wise too, reader = writer per schema
    id)."""

    def __init__(
        self,
        schemas: WriterSchemaCache,
        reader_schema: dict[str, Any] | None,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        records_only: bool = True,
    ) -> None:
        """``reader_schema`` None: each message is read with its own writer schema (as
        it was written); ``records_only`` off: a value of any type is returned (a key)."""
        self._schemas = schemas
        self._reader_json = None if reader_schema is None else strip_logical_types(reader_schema)
        self._reader = None if reader_schema is None else parse(reader_schema)
        self._max_depth = max_depth
        self._records_only = records_only
        # schema id -> how its messages are read
        self._resolution: dict[int, _Plan] = {}
        # schema id -> column-wise decoding plan (None: left to the per-message path)
        self._flat: dict[int, Resolution | None] = {}

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
            stripped = strip_logical_types(writer_json)
            if self._reader_json is None or stripped == self._reader_json:
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
        if plan.guard:  # bounds checked before fastavro (see _Plan.guard)
            plan.scan.scan(body, 0, schema_id)
        buf = io.BytesIO(body)
        try:
            record: Any = fastavro.schemaless_reader(buf, plan.writer, plan.reader)
        except _FastavroResolutionError as exc:
            raise self._resolution_failure(plan, body, schema_id, exc) from exc
        except Exception as exc:  # fastavro raises ValueError, IndexError, UnicodeDecodeError...
            if isinstance(exc, (RecursionError, MemoryError)):
                raise unexpected_decode_error(exc, limit=self._max_depth) from exc
            if not plan.guard:
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
        if self._records_only and not isinstance(record, dict):
            raise AvroDecodeError(f"schema id {schema_id} is not a record schema")
        return record  # type: ignore[no-any-return]

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

    def _flat_plan(self, schema_id: int) -> Resolution | None:
        """How to decode messages written with ``schema_id`` column-wise, or None when
        the per-message path must read them (see :func:`.columnar_decode.resolution`).
        Raises what ``__call__`` raises for a bad writer. Without a reader schema each
        writer schema is its own reader: an identity plan, made once per schema id."""
        if schema_id not in self._flat:
            reader = self._plan(schema_id).reader
            if self._reader_json is None:  # read as written: the writer is the reader
                own = strip_logical_types(self._schemas.get(schema_id)[0])
                self._flat[schema_id] = resolution(None, own, None)
                return self._flat[schema_id]
            # None: written with the reader schema (nothing to resolve)
            writer = None if reader is None else self._schemas.get(schema_id)[0]
            self._flat[schema_id] = resolution(writer, self._reader_json, self._reader)
        return self._flat[schema_id]

    def _decode_columnar(
        self, values: Sequence[bytes | None], known: dict[int, StreamscoreError]
    ) -> tuple[list[int], EventColumns, list[tuple[int, StreamscoreError]]] | None:
        """The whole batch column-wise (:func:`.columnar_decode.decode_columnar`), or None
        to say "use the per-message path"; errors found on the way are put in ``known``."""
        return decode_columnar(values, known, self._flat_plan, self)

    def decode_many(
        self, values: Sequence[bytes | None]
    ) -> tuple[list[int], Sequence[Mapping[str, Any]], list[tuple[int, StreamscoreError]]]:
        """Decode a batch: (indices of the values decoded, their records, and
        ``(index, error)`` for each value that failed, in order).

        Same results as calling the deserializer on each value (the same records, the
        same typed errors; exceptions that are not :class:`StreamscoreError` propagate).
        When the writer schemas of the batch are flat records (primitive, enum,
        nullable fields, or unions of distinct primitive / enum branches such as
        ``["double", "string"]``) that resolve plainly to a flat reader record (the
        reader schema itself, or an older or newer version of it), the whole batch is
        decoded at once with NumPy, one group per schema id, and the records come back as
        :class:`EventColumns`; otherwise each message takes a lean per-message path.
        Anything unusual (an error, an edge case of the encoding or of schema
        resolution) is handed to ``__call__`` for its exact result. Without a reader
        schema (``None``: each message as written) the same holds, each writer schema
        being its own reader.

        The writer schemas of the batch are fetched first: a registry that cannot
        answer raises :class:`RegistryUnavailableError` before anything is decoded."""
        self.require(values)  # a registry away: raised here, nothing decoded
        if self._reader is None and not self._records_only:  # keys: one at a time
            return self._decode_each(values)
        known: dict[int, StreamscoreError] = {}  # errors already raised (_decode_columnar)
        if len(values) >= MIN_COLUMNAR:
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
                    guard = plan.scan if plan.guard else None
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

    def _decode_each(
        self, values: Sequence[bytes | None]
    ) -> tuple[list[int], list[Any], list[tuple[int, StreamscoreError]]]:
        good: list[int] = []
        out: list[Any] = []
        failed: list[tuple[int, StreamscoreError]] = []
        for i, data in enumerate(values):
            try:
                out.append(self(data))
                good.append(i)
            except StreamscoreError as exc:
                failed.append((i, exc))
        return good, out, failed


class _SlowPath(Exception):
    """A message the batch decoder leaves to the single-message path."""


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


def topic_serializer(
    registry: RegistryClient,
    settings: RegistrySettings,
    topic_key: str,
    topic: str,
    schema: dict[str, Any],
) -> AvroSerializer:
    """The serializer of an output topic: its subject named by the topic's strategy
    (``settings.strategy(topic_key)``), registration as ``settings.auto_register`` says."""
    subject = settings.strategy(topic_key).subject(topic, schema)
    return AvroSerializer(registry, subject, schema, auto_register=settings.auto_register)


def topic_serializers(
    registry: RegistryClient,
    settings: RegistrySettings,
    topic_key: str,
    topics: Sequence[str],
    schema: dict[str, Any],
) -> list[AvroSerializer]:
    """:func:`topic_serializer` of each of ``topics``, which carry the same records under
    the strategy of ``topic_key`` (the predictions and the shadow predictions): each
    topic's records carry the schema id of its own subject (registration off: the latest
    version of that subject, looked up). Topics whose subjects are the same (the record
    strategy) share one serializer."""
    by_subject: dict[str, AvroSerializer] = {}
    out = []
    for topic in topics:
        ser = topic_serializer(registry, settings, topic_key, topic, schema)
        out.append(by_subject.setdefault(ser.subject, ser))
    return out


def check_output_subjects(*serializers: AvroSerializer) -> None:
    """Each output's subject, registered or (registration off) looked up and checked now,
    so that a missing or incompatible subject stops the process at start with its typed
    error (:class:`~streamscore.core.errors.SubjectMissingError`). A registry that is away
    is only logged: the first batch waits for it, as it does later. A serializer given
    twice (topics sharing a subject) is checked once."""
    for ser in dict.fromkeys(serializers):
        try:
            writer = ser.prepare()
        except InfrastructureError as exc:
            log.warning("subject %s not checked at start: %s", ser.subject, exc)
            continue
        log.info(
            "output subject %s: schema id %d%s",
            ser.subject,
            writer.schema_id,
            "" if writer.version is None else f" (latest version {writer.version})",
        )


def _field_in(message: str) -> str | None:
    # fastavro: "No default value for field b in Event"
    marker = "for field "
    if marker in message:
        return message.split(marker, 1)[1].split()[0].strip("'\"")
    return None


class LayoutDeserializer:
    """Decodes each message with the reader schema of its writer's layout: ``current``
    when the writer schema has the top-level field ``marker``, else ``legacy``. For a
    field that moved into a nested record (prediction v3's ``detail``), which Avro schema
    resolution cannot follow: a v2 prediction read with the v3 reader would lose its
    arrays, so it is read with the v2 reader, and the caller reads both shapes."""

    def __init__(
        self,
        schemas: WriterSchemaCache,
        current: dict[str, Any],
        legacy: dict[str, Any],
        marker: str,
    ) -> None:
        self._schemas = schemas
        self._current = AvroDeserializer(schemas, current)
        self._legacy = AvroDeserializer(schemas, legacy)
        self._marker = marker
        self._by_id: dict[int, AvroDeserializer] = {}

    def require(self, values: Sequence[bytes | None]) -> None:
        self._schemas.require(values)

    def _for(self, schema_id: int) -> AvroDeserializer:
        dec = self._by_id.get(schema_id)
        if dec is None:
            writer, _parsed = self._schemas.get(schema_id)
            fields = writer.get("fields") if isinstance(writer, dict) else None
            names = {f.get("name") for f in fields or () if isinstance(f, dict)}
            dec = self._current if self._marker in names else self._legacy
            if len(self._by_id) >= 1024:  # ids are few; bounded all the same
                self._by_id.clear()
            self._by_id[schema_id] = dec
        return dec

    def __call__(self, data: bytes | None, ctx: Any = None) -> dict[str, Any]:
        schema_id, _body = split_header(data)
        return self._for(schema_id)(data)

    def decode_many(
        self, values: Sequence[bytes | None]
    ) -> tuple[list[int], list[Mapping[str, Any]], list[tuple[int, StreamscoreError]]]:
        """:meth:`AvroDeserializer.decode_many` of each layout's reader on its messages
        (the batch split by writer layout, once per schema id), merged in order. A value
        whose header is bad goes to the current reader, which says why."""
        self.require(values)  # a registry away: raised here, nothing decoded
        groups: dict[int, tuple[AvroDeserializer, list[int]]] = {}
        for i, data in enumerate(values):
            dec = self._current
            with contextlib.suppress(StreamscoreError):
                dec = self._for(split_header(data)[0])
            groups.setdefault(id(dec), (dec, []))[1].append(i)
        good: list[int] = []
        records: list[Mapping[str, Any]] = []
        failed: list[tuple[int, StreamscoreError]] = []
        if len(groups) == 1:
            ((dec, _idx),) = groups.values()
            g, r, f = dec.decode_many(values)
            return g, list(r), f
        merged: list[tuple[int, Mapping[str, Any]]] = []
        for dec, idx in groups.values():
            g, r, f = dec.decode_many([values[i] for i in idx])
            merged.extend((idx[j], rec) for j, rec in zip(g, r, strict=True))
            failed.extend((idx[j], exc) for j, exc in f)
        merged.sort(key=lambda t: t[0])
        failed.sort(key=lambda t: t[0])
        for i, rec in merged:
            good.append(i)
            records.append(rec)
        return good, records, failed


class AvroSerializer:
    """``(dict, ctx) -> bytes`` in the wire format under ``subject``. On first use the
    schema is registered, or, with ``auto_register`` off, the subject's latest version
    is looked up, checked to read records of ``schema``, and written with
    (:func:`~streamscore.serde.wire.writer_schema`); :meth:`prepare` does it at once.
    Records carry ``subject``'s schema id: another topic with the same records under
    another subject (the shadow predictions) has a serializer of its own
    (:func:`topic_serializers`)."""

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
        self._auto_register = auto_register
        self._writer: WriterSchema | None = None
        self._header: bytes | None = None
        self._parsed: Any = None
        self._columnar: ColumnarEncoder | None = None

    @property
    def subject(self) -> str:
        return self._subject

    @property
    def schema_id(self) -> int:
        return int(HEADER.unpack(self._ensure_header())[1])

    def prepare(self) -> WriterSchema:
        """Register or look up the schema now (a process checks its outputs at start):
        raises what the first encode would."""
        self._ensure_header()
        assert self._writer is not None
        return self._writer

    def _ensure_header(self) -> bytes:
        if self._header is None:
            reg, schema, auto = self._registry, self._schema_json, self._auto_register
            writer = writer_schema(reg, self._subject, schema, auto_register=auto)
            self._parsed = parse(writer.schema)
            self._columnar = ColumnarEncoder(writer.schema)
            self._writer = writer
            self._header = writer.header
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
        assert self._columnar is not None
        encoded = self._columnar.encode(header, cols)
        if encoded is not None:
            return encoded
        return self.encode_many(cols.rows())
