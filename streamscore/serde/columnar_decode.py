"""Column-wise decoding of a batch of wire-format messages into :class:`EventColumns`.

One concern, in one module because its parts only make sense together (so it is longer
than most): a vectorised reader of flat Avro records (primitive, enum, ``[null, T]`` and
other unions of distinct primitive / enum branches, such as ``["double", "string"]``) with
NumPy, and a re-implementation of fastavro's schema resolution for those
records (the rules are written out below, before :func:`resolution`), so that a batch written
with an older or newer version of the reader's schema reads column-wise too.

The results are those of decoding each message with
:class:`~streamscore.serde.message.AvroDeserializer` (the same records, the same typed
errors): every message the vectorised reader does not take cleanly is handed to the
per-message decoder, and a batch it cannot read at all makes :func:`decode_columnar`
return None. :meth:`~streamscore.serde.message.AvroDeserializer.decode_many` is the entry
point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..core.columns import EventColumns
from ..core.errors import StreamscoreError
from .wire import HEADER_SIZE, MAGIC_BYTE, strip_logical_types, type_name

MIN_COLUMNAR = 16  # below this, per-message decoding is as fast
_PAD = bytes(16)  # reads a little past the last message stay inside the buffer
_HEADER_RANGE = np.arange(HEADER_SIZE)
_FLAT_KINDS = frozenset({"boolean", "int", "long", "float", "double", "string", "bytes", "enum"})
_MAX_VARINT = 9  # longer varints (|value| >= 2**62) are left to fastavro
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ID_WEIGHTS = np.array([1 << 24, 1 << 16, 1 << 8, 1], dtype=np.uint32)


def decode_columnar(
    values: Sequence[bytes | None],
    known: dict[int, StreamscoreError],
    plan_of: Callable[[int], Resolution | None],
    decode_one: Callable[[bytes | None], Mapping[str, Any]],
) -> tuple[list[int], EventColumns, list[tuple[int, StreamscoreError]]] | None:
    """The whole batch at once, or None to say "use the per-message path".

    Messages are grouped by schema id; each group is decoded column-wise with its
    writer's layout and resolved to the reader's fields, and the groups are merged
    back in the batch's order. Every message the vectorised reader does not take
    cleanly (bad header, unknown id, corrupt body...) is handed to ``decode_one`` (the
    per-message decoder, whose error is that message's). ``plan_of(schema_id)`` is the
    :class:`Resolution` of a writer schema id (see :func:`resolution`), None when the
    per-message path must read its messages, or raises what ``decode_one`` raises for the
    first message with that id.

    Errors found on the way are put in ``known`` (index -> error), for the
    per-message path to reuse when this one gives up: decoding a message again would
    not always give the same error (the registry's negative cache words the second
    "unknown schema id" differently). A writer schema that fails to plan (unknown
    id, does not resolve) has raised, here, what ``decode_one`` raises for the first
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
    groups: list[tuple[Resolution, np.ndarray]] = []
    for schema_id in present:
        # one id (the usual batch): every row, the bad ones flagged already
        rows = np.arange(n) if len(present) == 1 else np.flatnonzero(ok & (ids == schema_id))
        try:
            plan = plan_of(schema_id)
        except StreamscoreError as exc:
            # the first message for which decode_one gets as far as looking this id up
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
            decode_one(values[i])
        except StreamscoreError as exc:
            known[i] = exc
            continue
        return None  # a message only the per-message path reads: let it read them all
    failed = [(i, known[i]) for i in bad_rows]
    good = np.flatnonzero(~bad)
    events = EventColumns(n, merged)
    return good.tolist(), (events if not failed else events.take(good)), failed


@dataclass(frozen=True, slots=True)
class _FlatField:
    name: str
    kind: str  # one of _FLAT_KINDS, or "union" (then see ``branches``)
    null_index: int = -1  # position of "null" in a two-branch union; -1: not nullable
    symbols: tuple[str, ...] = ()  # enum (or a union's enum branch): its symbols
    enum_name: str = ""  # enum: its name, unqualified (what fastavro matches on)
    #: a writer field the reader does not have: parsed (to move on), never kept, and
    #: checked only as fastavro's skip functions check it (no UTF-8, enum or int range)
    skip: bool = False
    #: kind "union" (any union but ``[null, T]``): each branch's kind, "null" or one of
    #: _FLAT_KINDS, each at most once (so the branch of a value is never ambiguous)
    branches: tuple[str, ...] = ()


def _flat_fields(schema: Any) -> tuple[_FlatField, ...] | None:
    """A plan for a record of primitive / enum / union fields (``[null, T]``, or a union
    of distinct primitive / enum branches), else None."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    out = []
    for f in schema.get("fields", ()):
        t, null_index = f.get("type"), -1
        if isinstance(t, list):
            if len(t) != 2 or t.count("null") != 1:
                union = _flat_union(str(f["name"]), t)
                if union is None:
                    return None
                out.append(union)
                continue
            null_index = t.index("null")
            t = t[1 - null_index]
        kind = type_name(t)
        if kind not in _FLAT_KINDS:
            return None
        symbols, enum_name = (), ""
        if kind == "enum":
            symbols, enum_name = tuple(t["symbols"]), _unqualified(t["name"])
        out.append(_FlatField(str(f["name"]), str(kind), null_index, symbols, enum_name))
    return tuple(out)


def _flat_union(name: str, union: list[Any]) -> _FlatField | None:
    """A field of 2 or more distinct flat branches (null, primitives, at most one enum;
    no named reference, logical type or nested type), else None."""
    kinds: list[str] = []
    symbols: tuple[str, ...] = ()
    enum_name = ""
    for b in union:
        kind = type_name(b)
        if kind is None or (kind not in _FLAT_KINDS and kind != "null") or kind in kinds:
            return None
        if kind == "enum":
            if not isinstance(b, dict):
                return None
            symbols, enum_name = tuple(b["symbols"]), _unqualified(b["name"])
        kinds.append(kind)
    if len(kinds) < 2:
        return None
    return _FlatField(name, "union", symbols=symbols, enum_name=enum_name, branches=tuple(kinds))


def _unqualified(name: Any) -> str:
    return str(name).rsplit(".", 1)[-1]


# --- schema resolution, column-wise
#
# fastavro's ``read_record`` with a reader schema (the per-message decoder's) works so:
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
# A writer union of other branches (``["double", "string"]``...) is mirrored only when
# the reader's type is the very same union and each written branch reads as itself (no
# earlier reader branch takes it by promotion: an int in ``["double", "int"]`` reads as
# a float); any other reader type for it is left to the per-message path.
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
class Resolution:
    """Column-wise decoding of one writer schema for one reader schema: the writer's
    layout (``fields``, unread ones marked ``skip``), then the record keys in order."""

    fields: tuple[_FlatField, ...]
    outputs: tuple[_Output, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)


def _resolve_flat(writer: Any, reader: Any) -> Resolution | None:
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
            layout.append(replace(wf, skip=True))
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
            return None  # "No default value": per message (the per-message plan usually said so)
        outputs.append(_Output(str(rf["name"]), default=rf["default"]))
    return Resolution(tuple(layout), tuple(outputs))


def resolution(writer: Any | None, reader_json: Any, reader: Any) -> Resolution | None:
    """How to decode messages written with the writer schema ``writer`` (JSON; None when
    it is the reader schema itself) column-wise for the reader schema (``reader_json``, its
    JSON without logical types, and ``reader``, parsed), or None when the per-message path
    must read them (not a flat record, or a resolution this module does not mirror)."""
    if writer is None:  # written with the reader schema: nothing to resolve
        fields = _flat_fields(reader_json)
        if fields is None:
            return None
        return Resolution(fields, tuple(_Output(f.name, source=f.name) for f in fields))
    return _resolve_flat(strip_logical_types(writer), reader)


def _matches(wf: _FlatField, branch: Any) -> bool | None:
    """fastavro's ``match_types`` of the writer field's (non-null) type against one
    reader type; None when this module does not mirror the case."""
    kind = type_name(branch)
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
    if wf.branches:  # a union: read as written when the reader has the same one, else left
        return _Output(name, wf.name) if _same_union(wf, reader_type) else None
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
    null_ok = wf.null_index < 0 or any(type_name(b) == "null" for b in branches)
    kind = type_name(target)
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


def _same_union(wf: _FlatField, reader_type: Any) -> bool:
    """Whether the writer's union field reads exactly as written as ``reader_type``: the
    same branches in the same order, and each written branch read as that same branch
    (fastavro takes the first reader branch that matches, promotions included)."""
    if not isinstance(reader_type, list) or len(reader_type) != len(wf.branches):
        return False
    for kind, b in zip(wf.branches, reader_type, strict=True):
        if type_name(b) != kind:
            return False
        if kind == "enum" and (
            not isinstance(b, dict)
            or _unqualified(b.get("name")) != wf.enum_name
            or tuple(b.get("symbols", ())) != wf.symbols
        ):
            return False
    for i, kind in enumerate(wf.branches):
        written = _FlatField(wf.name, kind, symbols=wf.symbols, enum_name=wf.enum_name)
        if any(_matches(written, b) is not False for b in reader_type[:i]):
            return False  # an earlier branch takes it (or might): not mirrored
    return True


def _resolve_columns(
    plan: Resolution, decoded: Mapping[str, np.ndarray | list[Any]], bad: np.ndarray
) -> dict[str, np.ndarray | list[Any]]:
    """The reader's columns from the writer's (``decoded``); rows whose value the reader
    cannot take (a null it does not accept, a symbol it lacks, bytes that are not UTF-8)
    are flagged in ``bad``, for the per-message decoder to raise fastavro's own error."""
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


def varints(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zigzag varints at ``pos``: (values, positions after them, rows whose varint is
    longer than ``_MAX_VARINT`` bytes)."""
    last = buf.size - 1
    first = buf[np.minimum(pos, last)]
    if not (first & 0x80).any():  # one byte each (lengths, counts, branches): the usual
        one = first.astype(np.int64)
        return (one >> 1) ^ -(one & 1), pos + 1, np.zeros(pos.size, dtype=bool)
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
    signed = (acc >> np.uint64(1)).astype(np.int64) ^ -(acc & np.uint64(1)).astype(np.int64)
    return signed, cur, active


def _varints(buf: np.ndarray, pos: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`varints`, the rows whose varint is too long flagged in ``bad``."""
    vals, cur, long = varints(buf, pos)
    bad |= long
    return vals, cur


def _fixed(buf: np.ndarray, pos: np.ndarray, width: int, dtype: str) -> np.ndarray:
    """``width``-byte little-endian values at ``pos`` (one per row; none is fine: a
    ``[null, double]`` null in every row). ``dtype``: ``"<f8"`` or ``"<f4"``."""
    idx = np.minimum(pos[:, None] + np.arange(width), buf.size - 1)
    return np.ascontiguousarray(buf[idx]).view(dtype).reshape(pos.size, width // int(dtype[2:]))


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
        if f.branches:  # a union other than [null, T]: one part per branch written
            parts, pos = _read_union(f, buf, pos, ends, bad)
            pending.append((f, np.empty(0, dtype=np.intp), parts, None))
            i += 1
            continue
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
        vals, p = _read_kind(f.kind, f, buf, p, rows, ends, bad)
        # string, bytes: ``vals`` are where their bytes start, ``p`` where they stop
        pending.append((f, rows, vals, p if f.kind in ("string", "bytes") else None))
        pos[rows] = p
        i += 1
    bad |= pos != ends  # ran past its end (truncated), or bytes left over (trailing)

    ok = ~bad
    columns: dict[str, np.ndarray | list[Any]] = {}
    for f, rows, vals, stop in pending:
        if f.skip:  # parsed and checked as fastavro skips it: nothing to keep
            continue
        if f.branches:
            columns[f.name] = _union_column(f, vals, raw, ok, bad)
            continue
        if stop is not None:  # string / bytes: slice the good rows only
            keep = ok[rows]
            objs = _texts(f.kind, raw, rows, keep, vals, stop, bad)
            if len(objs) == n:  # every row: nothing to scatter
                columns[f.name] = objs
                continue
            full: list[Any] = [None] * n
            for r, o in zip(rows[keep].tolist(), objs, strict=True):
                full[r] = o
            columns[f.name] = full
            continue
        if f.kind == "enum":
            vals = _symbols(f.symbols, vals)
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


def _read_kind(
    kind: str,
    f: _FlatField,
    buf: np.ndarray,
    p: np.ndarray,
    rows: np.ndarray,
    ends: np.ndarray,
    bad: np.ndarray,
) -> tuple[Any, np.ndarray]:
    """One value of the flat ``kind`` (of field ``f``) at positions ``p``, for the batch's
    rows ``rows`` (``p[k]`` is row ``rows[k]``'s): (values, positions after them). For
    string / bytes the values are the positions of their first bytes (sliced at the end,
    :func:`_texts`). Rows whose value is invalid are flagged in ``bad`` (a skipped field
    only as fastavro's skip functions check it)."""
    if kind in ("double", "float"):
        width = 8 if kind == "double" else 4
        return _fixed(buf, p, width, "<f8" if width == 8 else "<f4")[:, 0], p + width
    if kind == "boolean":
        vals = buf[np.minimum(p, buf.size - 1)]
        if not f.skip:  # fastavro's reading of other bytes: its business
            bad[rows[vals > 1]] = True
        return vals == 1, p + 1
    sub_bad = np.zeros(rows.size, dtype=bool)
    if kind in ("int", "long", "enum"):
        vals, p = _varints(buf, p, sub_bad)
        if f.skip:
            pass  # fastavro skips any varint here
        elif kind == "int":
            sub_bad |= (vals < _INT32_MIN) | (vals > _INT32_MAX)
        elif kind == "enum":
            sub_bad |= (vals < 0) | (vals >= len(f.symbols))
        bad[rows[sub_bad]] = True
        return vals, p
    # string, bytes: a length, then the bytes
    length, p = _varints(buf, p, sub_bad)
    # a length past the message's end is truncation (and must not carry the position
    # anywhere: it is clamped, the row is already bad)
    sub_bad |= (length < 0) | (length > ends[rows] - p)
    bad[rows[sub_bad]] = True
    length[sub_bad] = 0
    return p, p + length


def _read_union(
    f: _FlatField, buf: np.ndarray, pos: np.ndarray, ends: np.ndarray, bad: np.ndarray
) -> tuple[list[tuple[str, np.ndarray, Any, Any]], np.ndarray]:
    """The union field ``f`` at ``pos`` (every row of the batch): its branch index, then
    each branch's rows read with that branch's kind (:func:`_read_kind`). Returns one part
    ``(kind, rows, values, stops)`` per branch written (stops: string / bytes only) and
    the positions after the field. An index out of range flags the row in ``bad`` (the
    per-message decoder then says what fastavro makes of it)."""
    branch, pos = _varints(buf, pos, bad)
    bad |= (branch < 0) | (branch >= len(f.branches))
    parts: list[tuple[str, np.ndarray, Any, Any]] = []
    for b, kind in enumerate(f.branches):
        if kind == "null":
            continue  # no bytes, and None in the column
        rows = np.flatnonzero(branch == b)
        if not rows.size:
            continue
        vals, p = _read_kind(kind, f, buf, pos[rows], rows, ends, bad)
        parts.append((kind, rows, vals, p if kind in ("string", "bytes") else None))
        pos[rows] = p
    return parts, pos


def _texts(
    kind: str,
    raw: bytes,
    rows: np.ndarray,
    keep: np.ndarray,
    starts: np.ndarray,
    stops: np.ndarray,
    bad: np.ndarray,
) -> list[Any]:
    """The strings (``kind`` "string", decoded) or bytes between ``starts`` and
    ``stops`` of the rows ``rows`` kept (``keep``); a string that is not UTF-8 flags its
    row in ``bad`` (its entry is None)."""
    a_list, b_list = starts[keep].tolist(), stops[keep].tolist()
    if kind != "string":
        return [raw[a:b] for a, b in zip(a_list, b_list, strict=True)]
    try:
        return [raw[a:b].decode() for a, b in zip(a_list, b_list, strict=True)]
    except UnicodeDecodeError:
        objs: list[Any] = []
        for r, a, b in zip(rows[keep].tolist(), a_list, b_list, strict=True):
            try:
                objs.append(raw[a:b].decode())
            except UnicodeDecodeError:
                bad[r] = True
                objs.append(None)
        return objs


def _symbols(symbols: tuple[str, ...], vals: np.ndarray) -> list[Any]:
    """Enum indexes as their symbols (None for an index out of range: a bad row)."""
    return [symbols[v] if 0 <= v < len(symbols) else None for v in vals.tolist()]


def _union_column(
    f: _FlatField,
    parts: list[tuple[str, np.ndarray, Any, Any]],
    raw: bytes,
    ok: np.ndarray,
    bad: np.ndarray,
) -> list[Any]:
    """A union field's column from its parts (:func:`_read_union`): each row's value as
    fastavro gives it (float, str, int, bool, bytes, the enum's symbol; None for null)."""
    full: list[Any] = [None] * ok.size
    for kind, rows, vals, stop in parts:
        if stop is not None:  # string / bytes: the good rows only
            keep = ok[rows]
            objs = _texts(kind, raw, rows, keep, vals, stop, bad)
            rows = rows[keep]
        elif kind == "enum":
            objs = _symbols(f.symbols, vals)
        else:
            objs = vals.tolist()
        if len(objs) == ok.size:  # every row in this branch (so in no other)
            return objs
        for r, o in zip(rows.tolist(), objs, strict=True):
            full[r] = o
    return full
