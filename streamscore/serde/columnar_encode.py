"""Column-wise encoding of records (:class:`RecordColumns`) into the wire format.

:class:`ColumnarEncoder` writes exactly the bytes fastavro writes for ``cols.rows()``
(:meth:`~streamscore.serde.message.AvroSerializer.encode_many`), without building the
dicts: Avro binary is a plain concatenation of the fields, so constant fields are encoded
once per batch; columns are encoded a field at a time (float arrays and arrays of arrays
vectorised with NumPy, and so are columns whose values all take one width: same-length
ASCII text, varints of one size); adjacent constants and one-width columns become one
matrix, and each record is one ``b"".join`` of the few pieces left. A schema or a value it does
not handle is left to fastavro (:meth:`ColumnarEncoder.encode` returns None).
:meth:`~streamscore.serde.message.AvroSerializer.encode_columns` is the entry point.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

from ..core.columns import RecordColumns
from .wire import strip_logical_types, type_name


class ColumnarEncoder:
    """The column-wise encoder of one record schema (compiled on first use)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._schema = schema
        self._plan: Any = None

    def encode(self, header: bytes, cols: RecordColumns) -> list[bytes] | None:
        """``cols`` encoded, each record after ``header``; None when fastavro must do it
        (a schema or a value this encoder does not handle, or a value that does not fit,
        for which fastavro raises the error)."""
        plan = self._plan
        if plan is None:
            plan = self._plan = _compile_record(self._schema)
        if plan is not _UNSUPPORTED and cols.n > 0:
            try:
                return _encode_columns(plan, header, cols)
            except Exception:  # _Unsupported, or a value only fastavro may judge
                pass
        return None


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
    kind: str  # "scalar" | "array" | "nullable" | "record" | "other"
    array_dtype: str | None = None
    union_prefix: bytes = b""  # nullable numbers: the index of the non-null branch
    has_default: bool = False
    default: Any = None
    #: a whole list column at once, for the common types (else ``one`` per value): bytes
    #: per row, or an ``(n, w)`` uint8 matrix when every row takes ``w`` bytes
    column: Callable[[list[Any]], list[bytes] | np.ndarray] | None = None
    #: a nested record's own field codecs (its column is a :class:`RecordColumns`)
    fields: tuple[_FieldCodec, ...] = ()


def _union_codec(branches: list[Any]) -> Callable[[Any], bytes]:
    """A union of primitives, branch chosen by the value's exact Python type (None, bool,
    int, float, str); ambiguous or unknown cases are left to fastavro."""
    names = [type_name(b) for b in branches]
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
    name = type_name(t)
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
    if name == "record":
        fields = [
            (str(f["name"]), _one_codec(f["type"]), "default" in f, f.get("default"))
            for f in t["fields"]
        ]

        def record(v: Any) -> bytes:
            if type(v) is not dict:
                raise _Unsupported
            out = []
            for fname, codec, has_default, default in fields:
                if fname in v:
                    out.append(codec(v[fname]))
                elif has_default:
                    out.append(codec(default))
                else:
                    raise _Unsupported
            return b"".join(out)

        return record
    raise _Unsupported


def _strings(col: list[Any]) -> list[bytes] | np.ndarray:
    if not set(map(type, col)) <= {str}:
        raise _Unsupported
    same = _same_width_ascii(col, b"")
    if same is not None:
        return same
    small, long_ = _SMALL_VARINT, _long
    return [(small[n] if (n := len(b)) < 64 else long_(n)) + b for b in [v.encode() for v in col]]


def _same_width_ascii(col: list[str], prefix: bytes) -> np.ndarray | None:
    """A column of text values that are all ASCII of one length under 64 (ids, codes,
    labels: the common case) as an ``(n, w)`` matrix: ``prefix``, the length, the
    characters; None otherwise."""
    widths = set(map(len, col))
    if len(widths) != 1:
        return None
    (w,) = widths
    joined = "".join(col)
    if w >= 64 or not joined.isascii():
        return None
    body = np.frombuffer(joined.encode("ascii"), dtype=np.uint8).reshape(len(col), w)
    return _side_by_side([prefix + _SMALL_VARINT[w], body], len(col))


def _nullable_strings(
    null: bytes, prefix: bytes
) -> Callable[[list[Any]], list[bytes] | np.ndarray]:
    heads = tuple(prefix + b for b in _SMALL_VARINT[:64])  # branch + short length

    def one(v: str | None) -> bytes:
        if v is None:
            return null
        b = v.encode()
        return heads[n] + b if (n := len(b)) < 64 else prefix + _long(n) + b

    def column(col: list[Any]) -> list[bytes] | np.ndarray:
        types = set(map(type, col))
        if not types <= {str, type(None)}:
            raise _Unsupported
        if types == {str}:
            same = _same_width_ascii(col, prefix)
            if same is not None:
                return same
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


def _longs(col: list[Any]) -> list[bytes] | np.ndarray:
    if set(map(type, col)) == {int}:
        try:
            same = _same_width_varints(np.array(col, dtype=np.int64))
        except OverflowError:  # beyond 64 bits: the value-by-value path refuses it
            same = None
        if same is not None:
            return same
    memo: dict[Any, bytes] = {}  # times and versions repeat within a batch
    out = []
    for v in col:
        b = memo.get(v)
        if b is None:
            b = memo[v] = _long(v)
        out.append(b)
    return out


_SEVEN = np.uint64(7)
_LOW7, _MORE = np.uint64(0x7F), np.uint64(0x80)
#: the smallest zigzag value needing k + 2 varint bytes, k = 0 .. 8
_VARINT_STEPS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def _same_width_varints(vals: np.ndarray) -> np.ndarray | None:
    """Zigzag varints of an int64 column as an ``(n, w)`` matrix when every value takes
    the same number of bytes ``w`` (times of one era do); None otherwise."""
    z = (vals.astype(np.uint64) << np.uint64(1)) ^ (vals >> 63).astype(np.uint64)
    lo, hi = z.min(), z.max()
    w = 1 + int(np.searchsorted(_VARINT_STEPS, lo, side="right"))
    if w != 1 + int(np.searchsorted(_VARINT_STEPS, hi, side="right")):
        return None
    mat = np.empty((vals.size, w), dtype=np.uint8)
    for k in range(w):
        byte = (z >> (_SEVEN * np.uint64(k))) & _LOW7
        mat[:, k] = byte | _MORE if k < w - 1 else byte
    return mat


def _booleans(col: list[Any]) -> list[bytes]:
    if not set(map(type, col)) <= {bool}:
        raise _Unsupported
    return [_BOOL[v] for v in col]


_COLUMNS: dict[str, Callable[[list[Any]], list[bytes] | np.ndarray]] = {
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
            other = type_name(non_null[0]) or ""
            prefix, null = _long(t.index(non_null[0])), _long(t.index("null"))
            if other in _NUMERIC_ITEMS:
                return _FieldCodec(name, one, "nullable", _NUMERIC_ITEMS[other], prefix, **default)
            if other == "string":
                column = _nullable_strings(null, prefix)
                return _FieldCodec(name, one, "other", column=column, **default)
        return _FieldCodec(name, one, "other", **default)
    tname = type_name(t) or ""
    if tname == "record":
        sub = tuple(_field_codec(g) for g in t["fields"])
        return _FieldCodec(name, one, "record", fields=sub, **default)
    if tname == "array":
        items = _NUMERIC_ITEMS.get(type_name(t["items"]) or "")
        return _FieldCodec(name, one, "array", items, **default)
    return _FieldCodec(
        name, one, "scalar", _NUMERIC_ITEMS.get(tname), column=_COLUMNS.get(tname), **default
    )


def _compile_record(schema: Any) -> Any:
    """Field codecs for a record schema, or ``_UNSUPPORTED``."""
    stripped = strip_logical_types(schema)
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


def _numeric_column(codec: _FieldCodec, col: np.ndarray, n: int) -> np.ndarray:
    """A column of doubles/floats (or of arrays of them, 2-d) as an ``(n, w)`` matrix."""
    assert codec.array_dtype is not None
    if col.dtype.kind != "f":
        raise _Unsupported
    vals = np.ascontiguousarray(col, dtype=codec.array_dtype)
    if codec.kind == "array":
        if vals.ndim != 2 or vals.shape[0] != n:
            raise _Unsupported
        k = vals.shape[1]
        if k == 0:
            return np.zeros((n, 1), dtype=np.uint8)
        return _side_by_side([_long(k), vals.view(np.uint8).reshape(n, -1), b"\x00"], n)
    if vals.ndim != 1 or vals.shape[0] != n:
        raise _Unsupported
    body = vals.view(np.uint8).reshape(n, -1)
    if codec.kind == "nullable":
        return _side_by_side([codec.union_prefix, body], n)
    return body


def _column(codec: _FieldCodec, col: Any, n: int) -> list[bytes] | np.ndarray:
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
    parts: list[bytes | list[bytes] | np.ndarray] = [header]
    _collect(plan, cols, parts)
    # runs of constants and same-width columns become one matrix, turned into bytes
    # once: each record is then one join of a few pieces (one piece when every field
    # has one width)
    pieces: list[Any] = []
    run: list[bytes | np.ndarray] = []
    for part in [*parts, []]:
        if not isinstance(part, list):
            run.append(part)
            continue
        if run:
            if all(isinstance(r, bytes) for r in run):
                pieces.append(repeat(b"".join(run), n))  # type: ignore[arg-type]
            else:
                pieces.append(_rows_bytes(_side_by_side(run, n)))
            run = []
        if part:
            pieces.append(part)
    if len(pieces) == 1:
        only = pieces[0]
        return only if isinstance(only, list) else [next(only)] * n
    return list(map(b"".join, zip(*pieces, strict=False)))  # repeat() is endless


def _side_by_side(run: list[bytes | np.ndarray], n: int) -> np.ndarray:
    """Constants and ``(n, w)`` matrices side by side in one ``(n, sum w)`` matrix."""
    widths = [len(r) if isinstance(r, bytes) else r.shape[1] for r in run]
    mat = np.empty((n, sum(widths)), dtype=np.uint8)
    at = 0
    for r, w in zip(run, widths, strict=True):
        mat[:, at : at + w] = np.frombuffer(r, dtype=np.uint8) if isinstance(r, bytes) else r
        at += w
    return mat


def _collect(
    plan: tuple[_FieldCodec, ...],
    cols: RecordColumns,
    parts: list[bytes | list[bytes] | np.ndarray],
) -> None:
    """Append the pieces of ``cols`` to ``parts``: constant bytes, a column as bytes per
    record, or a column as an ``(n, w)`` matrix. A nested record given column-wise adds
    its own pieces in place: its fields are in line in the record's bytes."""
    n = cols.n
    given = 0
    for codec in plan:
        if codec.name in cols.constants:
            parts.append(codec.one(cols.constants[codec.name]))
            given += 1
            continue
        if codec.name not in cols.columns:
            if not codec.has_default:
                raise _Unsupported  # fastavro says what is missing
            parts.append(codec.one(codec.default))  # as fastavro: absent -> default
            continue
        given += 1
        col = cols.columns[codec.name]
        if codec.kind == "record":  # a nested record: its fields in line
            if not isinstance(col, RecordColumns) or col.n != n:
                raise _Unsupported
            _collect(codec.fields, col, parts)
            continue
        parts.append(_column(codec, col, n))
    if given != len(cols.constants) + len(cols.columns):
        raise _Unsupported  # a name that is not a field of the schema
