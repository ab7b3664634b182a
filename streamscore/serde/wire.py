"""The Confluent wire format (magic 0, 4-byte big-endian schema id, Avro body), the writer
schemas it names, and the registry that holds them.

- :func:`split_header`: the schema id and Avro body of a message, or a typed error;
- :class:`WriterSchemaCache`: parsed writer schemas by id, fetched from the registry once;
  a registry that is away raises :class:`~streamscore.core.errors.RegistryUnavailableError`
  (retry, never a dead letter), an id it does not hold
  :class:`~streamscore.core.errors.UnknownSchemaError` (bad input);
- :func:`parse`: schemas parsed for fastavro, ``timestamp-*`` logical types read and
  written as plain epoch-millisecond integers (no datetime objects on the hot path);
- :func:`writer_schema`: the header of the messages a writer writes and the schema it
  writes them with: its own schema registered, or (registration off) the subject's latest
  version, checked to read what the writer writes (:func:`unreadable_by`);
- schema references (a writer schema naming types registered under other subjects) are
  fetched, bounded, and inlined, so that every parsed writer schema stands alone;
- :func:`registry_client`: the registry client (``mock://`` URLs for tests).

The codecs built on these: :mod:`.message` (one message at a time, and whole batches),
:mod:`.columnar_decode` and :mod:`.columnar_encode` (a batch column-wise).

One concern, hence its length: the wire format and the writer schemas behind it
(header, schema cache, registry errors, references).
"""

from __future__ import annotations

import copy
import json
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

import fastavro

from ..core.errors import (
    EmptyMessageError,
    MagicByteError,
    RegistryUnavailableError,
    SchemaReferenceError,
    SchemaRegistrationError,
    SchemaResolutionError,
    StreamscoreError,
    SubjectIncompatibleError,
    SubjectMissingError,
    TruncatedMessageError,
    UnknownSchemaError,
    UnreadableWriterSchemaError,
)

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size  # 5
#: a value's wire header (the first HEADER_SIZE bytes), as a C-level callable
_HEAD: Callable[[Any], bytes] = itemgetter(slice(0, HEADER_SIZE))


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
                entry = _parse_writer(
                    registered.schema_str,
                    schema_id,
                    self._referenced(registered, schema_id),
                )
            except UnreadableWriterSchemaError as exc:
                self._unreadable[schema_id] = exc  # an id's schema never changes
                raise
            self._parsed[schema_id] = entry
            return entry

    def _referenced(self, registered: Any, schema_id: int) -> dict[str, Any]:
        """The named types that ``registered`` references, by full name (fetched
        breadth-first, each subject version once; at most ``MAX_REFERENCES`` of them,
        ``MAX_REFERENCE_DEPTH`` levels deep). A registry away raises
        :class:`RegistryUnavailableError`; a reference it does not hold, or too many,
        :class:`SchemaReferenceError` (the writer schema is unreadable)."""
        named: dict[str, Any] = {}
        todo = [(ref, 1) for ref in getattr(registered, "references", None) or []]
        seen: set[tuple[str, int]] = set()
        while todo:
            ref, depth = todo.pop(0)
            where = (str(ref.subject), int(ref.version))
            if where in seen:
                continue
            seen.add(where)
            if depth > MAX_REFERENCE_DEPTH or len(seen) > MAX_REFERENCES:
                raise SchemaReferenceError(
                    f"writer schema id {schema_id} references more than {MAX_REFERENCES} "
                    f"schemas or nests references deeper than {MAX_REFERENCE_DEPTH}",
                    schema_id=schema_id,
                )
            try:
                found = self._registry.get_version(*where)  # type: ignore[attr-defined]
            except Exception as exc:
                status = getattr(exc, "http_status_code", None)
                if status == 404:
                    raise SchemaReferenceError(
                        f"writer schema id {schema_id} references {ref.name!r} "
                        f"(subject {where[0]!r} version {where[1]}), which the registry "
                        "does not hold",
                        schema_id=schema_id,
                    ) from exc
                self._away_at = self._clock()
                raise RegistryUnavailableError(
                    f"schema registry failed while fetching subject {where[0]!r} version "
                    f"{where[1]} (referenced by schema id {schema_id}): "
                    f"{type(exc).__name__} (status {status})"
                ) from exc
            schema = found.schema
            try:
                as_json = json.loads(schema.schema_str)
            except ValueError as exc:
                raise SchemaReferenceError(
                    f"referenced schema {ref.name!r} of writer schema id {schema_id} is not JSON",
                    schema_id=schema_id,
                ) from exc
            for full, definition in _named_types(as_json).items():
                named.setdefault(full, definition)
            named.setdefault(str(ref.name), as_json)
            todo.extend((r, depth + 1) for r in getattr(schema, "references", None) or [])
        return named

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
            heads = set(map(_HEAD, values))  # one C-level pass
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


#: bounds on a writer schema's references (counted over the whole tree) and their nesting
MAX_REFERENCES = 64
MAX_REFERENCE_DEPTH = 8

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _named_types(schema: Any, namespace: str | None = None) -> dict[str, Any]:
    """Every named type (record, enum, fixed) ``schema`` defines, by full name, each with
    its full name written in (so that it can be inlined anywhere)."""
    out: dict[str, Any] = {}
    todo = [(schema, namespace)]
    while todo:
        t, ns = todo.pop()
        if isinstance(t, list):
            todo.extend((x, ns) for x in t)
        elif isinstance(t, dict):
            kind = t.get("type")
            if kind in ("record", "error", "enum", "fixed") and isinstance(t.get("name"), str):
                full = _full_name(t["name"], t.get("namespace") or ns)
                out.setdefault(full, _qualified(t, full))
                inner_ns = full.rpartition(".")[0] or None
                for f in t.get("fields") or []:
                    if isinstance(f, dict):
                        todo.append((f.get("type"), inner_ns))
            elif kind == "array":
                todo.append((t.get("items"), ns))
            elif kind == "map":
                todo.append((t.get("values"), ns))
            elif isinstance(kind, (dict, list)):
                todo.append((kind, ns))
    return out


def _qualified(definition: dict[str, Any], full: str) -> dict[str, Any]:
    out = {k: v for k, v in definition.items() if k != "namespace"}
    out["name"] = full
    return out


def inline_references(schema: Any, named: dict[str, Any]) -> Any:
    """``schema`` with the first use of each type it names from ``named`` (full name ->
    definition: its references) replaced by that type's definition, recursively: one
    schema that stands alone, read like any other."""
    if not named:
        return schema
    defined = set(_named_types(schema))

    def walk(t: Any, ns: str | None) -> Any:
        if isinstance(t, str):
            if t in _PRIMITIVES:
                return t
            full = _full_name(t, ns)
            if full in defined or full not in named:
                return t  # defined already (or unknown: the parser says so)
            defined.add(full)
            definition = _qualified(copy.deepcopy(named[full]), full)
            defined.update(_named_types(definition))
            return walk(definition, ns)
        if isinstance(t, list):
            return [walk(x, ns) for x in t]
        if isinstance(t, dict):
            kind = t.get("type")
            out = dict(t)
            if kind in ("record", "error") and isinstance(t.get("name"), str):
                inner = _full_name(t["name"], t.get("namespace") or ns).rpartition(".")[0]
                out["fields"] = [
                    {**f, "type": walk(f.get("type"), inner or None)} if isinstance(f, dict) else f
                    for f in t.get("fields") or []
                ]
            elif kind == "array":
                out["items"] = walk(t.get("items"), ns)
            elif kind == "map":
                out["values"] = walk(t.get("values"), ns)
            elif (
                isinstance(kind, (str, list, dict))
                and kind not in _PRIMITIVES
                and kind
                not in (
                    "enum",
                    "fixed",
                )
            ):
                out["type"] = walk(kind, ns)
            return out
        return t

    return walk(schema, None)


def _parse_writer(
    schema_str: str, schema_id: int, named: dict[str, Any] | None = None
) -> tuple[dict[str, Any], Any]:
    """(schema as JSON, parsed schema), or :class:`UnreadableWriterSchemaError`;
    ``named``: the types its references define (inlined first)."""
    try:
        as_json = inline_references(json.loads(schema_str), named or {})
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


def _refusal_hint(status: int) -> str:
    """What to check when the registry refuses an output schema (HTTP ``status``)."""
    if status in (401, 403):
        return (
            "this client may not register schemas there: register the subject beforehand, "
            "or check the registry credentials (STREAMSCORE_REGISTRY_USER / _PASSWORD)"
        )
    if status == 409:
        return "the schema is incompatible with the subject's history: check its compatibility"
    return "check the subject and the schema"


@dataclass(frozen=True)
class WriterSchema:
    """What a writer writes: the wire header (its schema id) and the schema (JSON) the
    records are encoded with, its own or the subject's latest version."""

    header: bytes
    schema: dict[str, Any]
    #: the subject's version, when the latest was used (registration off)
    version: int | None = None

    @property
    def schema_id(self) -> int:
        return int(HEADER.unpack(self.header)[1])


#: the setting that turns registration on or off, named in errors
AUTO_REGISTER_SETTING = "[registry] auto_register (STREAMSCORE_REGISTRY_AUTO_REGISTER)"


def _refusal(exc: Exception, subject: str, doing: str) -> StreamscoreError:
    status = getattr(exc, "http_status_code", None)
    if status is not None and status < 500:
        return SchemaRegistrationError(
            f"registry refused {doing} subject {subject!r} "
            f"(status {status}): {getattr(exc, 'error_message', exc)}; {_refusal_hint(status)}"
        )
    return RegistryUnavailableError(
        f"schema registry failed while {doing} subject {subject!r}: "
        f"{type(exc).__name__} (status {status})"
    )


def writer_schema(
    registry: RegistryClient, subject: str, schema: dict[str, Any], *, auto_register: bool
) -> WriterSchema:
    """How records of ``schema`` are written under ``subject``.

    ``auto_register``: ``schema`` is registered (or found registered) and written as it
    is. Off (``use.latest.version``, as production registries want): the subject's
    latest version is fetched, and used only if it can read every record written with
    ``schema`` by Avro's resolution rules (:func:`unreadable_by`, the BACKWARD check a
    registry makes: same or promotable types, each field it has and ``schema`` lacks with
    a default, enum symbols kept); records are then encoded with that version (fields it
    lacks are not written, fields only it has take their defaults).

    A missing subject raises :class:`SubjectMissingError`, a latest version that cannot
    read the records :class:`SubjectIncompatibleError` (both name the subject and the
    setting); a registry that refuses a registration :class:`SchemaRegistrationError`;
    one that is away :class:`RegistryUnavailableError`."""
    from confluent_kafka.schema_registry import Schema

    if auto_register:
        try:
            schema_id = registry.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
        except Exception as exc:
            raise _refusal(exc, subject, "registering a schema for") from exc
        return WriterSchema(HEADER.pack(MAGIC_BYTE, schema_id), schema)
    try:
        latest = registry.get_latest_version(subject)  # type: ignore[attr-defined]
    except Exception as exc:
        if getattr(exc, "http_status_code", None) == 404:
            raise SubjectMissingError(
                f"subject {subject!r} does not exist in the schema registry, and schema "
                f"registration is off ({AUTO_REGISTER_SETTING} = false): register the "
                "schema under that subject, or turn registration on",
                subject=subject,
            ) from exc
        raise _refusal(exc, subject, "looking up the latest version of") from exc
    registered = latest.schema
    if (getattr(registered, "schema_type", "AVRO") or "AVRO") != "AVRO":
        raise SubjectIncompatibleError(
            f"the latest version of subject {subject!r} is {registered.schema_type}, not AVRO",
            subject=subject,
        )
    schema_id = int(latest.schema_id)
    if getattr(registered, "references", None):
        cache = WriterSchemaCache(registry)
        as_json = cache.get(schema_id)[0]
    else:
        as_json = json.loads(registered.schema_str)
    problem = unreadable_by(schema, as_json)
    if problem is not None:
        where, why = problem
        raise SubjectIncompatibleError(
            f"the latest version ({latest.version}, schema id {schema_id}) of subject "
            f"{subject!r} cannot read the records streamscore writes: {where}: {why} "
            f"(registration is off, {AUTO_REGISTER_SETTING}: register a compatible version)",
            subject=subject,
            field=where,
        )
    return WriterSchema(HEADER.pack(MAGIC_BYTE, schema_id), as_json, int(latest.version))


_PROMOTABLE = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}


def unreadable_by(writer: Any, reader: Any) -> tuple[str, str] | None:
    """Why ``reader`` cannot read data written with ``writer`` under Avro's schema
    resolution rules, as (where, why), or None when it can (``reader`` is then a
    BACKWARD-compatible version of ``writer``). Logical types are ignored (the encoding
    is the same); named types are followed by name."""
    w_named = _named_types(writer)
    r_named = _named_types(reader)
    done: set[tuple[str, str]] = set()  # named pairs already checked (recursive types)

    def deref(t: Any, named: dict[str, Any], ns: str | None) -> tuple[Any, str | None]:
        if isinstance(t, str) and t not in _PRIMITIVES:
            full = _full_name(t, ns)
            if full in named:
                return named[full], full.rpartition(".")[0] or None
        return t, ns

    def kind(t: Any) -> str:
        if isinstance(t, list):
            return "union"
        if isinstance(t, dict):
            k = t.get("type")
            return kind(k) if isinstance(k, (dict, list)) else str(k)
        return str(t)

    def check(w: Any, r: Any, wns: str | None, rns: str | None, at: str) -> tuple[str, str] | None:
        w, wns = deref(w, w_named, wns)
        r, rns = deref(r, r_named, rns)
        if isinstance(w, dict) and not isinstance(w.get("type"), str):
            w = w["type"]
        if isinstance(r, dict) and not isinstance(r.get("type"), str):
            r = r["type"]
        wk, rk = kind(w), kind(r)
        if wk == "union":
            for branch in w:
                bad = check(branch, r, wns, rns, at)
                if bad is not None:
                    return bad
            return None
        if rk == "union":
            for branch in r:
                if check(w, branch, wns, rns, at) is None:
                    return None
            return at, f"{wk} cannot be read as any of the union's branches"
        if wk in _PRIMITIVES or rk in _PRIMITIVES:
            if rk in _PROMOTABLE.get(wk, {wk}):
                return None
            return at, f"{wk} cannot be read as {rk}"
        if wk != rk:
            return at, f"{wk} cannot be read as {rk}"
        if wk == "array":
            return check(w.get("items"), r.get("items"), wns, rns, f"{at}[]")
        if wk == "map":
            return check(w.get("values"), r.get("values"), wns, rns, f"{at}{{}}")
        w_name = _full_name(str(w.get("name")), w.get("namespace") or wns)
        r_name = _full_name(str(r.get("name")), r.get("namespace") or rns)
        if w_name.rpartition(".")[2] != r_name.rpartition(".")[2] and w_name.rpartition(".")[
            2
        ] not in (r.get("aliases") or []):
            return at, f"{wk} {w_name} cannot be read as {r_name}"
        if (w_name, r_name) in done:
            return None
        done.add((w_name, r_name))
        if wk == "enum":
            missing = set(w.get("symbols") or []) - set(r.get("symbols") or [])
            if missing and "default" not in r:
                return at, f"enum symbols {sorted(missing)} are unknown to the reader"
            return None
        if wk == "fixed":
            if w.get("size") != r.get("size"):
                return at, f"fixed size {w.get('size')} cannot be read as {r.get('size')}"
            return None
        w_inner = w_name.rpartition(".")[0] or None
        r_inner = r_name.rpartition(".")[0] or None
        w_fields = {f["name"]: f for f in w.get("fields") or []}
        for rf in r.get("fields") or []:
            name = rf["name"]
            wf = w_fields.get(name) or next(
                (w_fields[a] for a in rf.get("aliases") or [] if a in w_fields), None
            )
            where = name if not at else f"{at}.{name}"
            if wf is None:
                if "default" not in rf:
                    return where, "a field the writer does not have, without a default"
                continue
            bad = check(wf["type"], rf["type"], w_inner, r_inner, where)
            if bad is not None:
                return bad
        return None

    return check(strip_logical_types(writer), strip_logical_types(reader), None, None, "")
