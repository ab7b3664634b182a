"""Column-wise encoding of records (:class:`RecordColumns`) into the wire format.

:class:`ColumnarEncoder` writes exactly the bytes fastavro writes for ``cols.rows()``
(:meth:`~streamscore.serde.message.AvroSerializer.encode_many`), without building the
dicts: Avro binary is a plain concatenation of the fields, so constant fields are encoded
once per batch; columns are encoded a field at a time (float arrays and arrays of arrays
vectorised with NumPy); each record is then one ``b"".join``. A schema or a value it does
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
    #: a whole list column at once, for the common types (else ``one`` per value)
    column: Callable[[list[Any]], list[bytes]] | None = None
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
    parts: list[Any] = []
    pending = [header]  # adjacent constants are merged into one piece
    _collect(plan, cols, parts, pending)
    if not parts:  # constants only: every record the same
        return [b"".join(pending)] * n
    if pending:
        parts.append(repeat(b"".join(pending), n))
    return list(map(b"".join, zip(*parts, strict=False)))  # repeat() is endless


def _collect(
    plan: tuple[_FieldCodec, ...], cols: RecordColumns, parts: list[Any], pending: list[bytes]
) -> None:
    """Append the pieces of ``cols`` to ``parts`` (columns, one bytes per record) and
    ``pending`` (constant bytes not yet in ``parts``). A nested record given column-wise
    adds its own pieces in place: one ``b"".join`` per record for the whole record."""
    n = cols.n
    given = 0
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
        col = cols.columns[codec.name]
        if codec.kind == "record":  # a nested record: its fields in line
            if not isinstance(col, RecordColumns) or col.n != n:
                raise _Unsupported
            _collect(codec.fields, col, parts, pending)
            continue
        if pending:
            parts.append(repeat(b"".join(pending), n))
            pending.clear()
        parts.append(_column(codec, col, n))
    if given != len(cols.constants) + len(cols.columns):
        raise _Unsupported  # a name that is not a field of the schema
