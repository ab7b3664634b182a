"""Column-wise checking of a batch of wire-format records, reading only a few top-level
fields (the *head*) of each: the feedback join's predictions.

Most predictions never meet a label, and the join needs four of their fields to hold
them (event id, event time, model version, role); the rest is read when a label
arrives. The message must still be checked whole as it is consumed: bad input goes to
the dead-letter topic then, not weeks later. :class:`HeadReader` does both at once, for
a batch, with NumPy: every field of every message is walked (lengths, counts, union
branches, enum indices, varints, UTF-8, the end of the bytes), one vectorised step per
field of the schema (per item of an array or map), and the head fields are kept.

A message is **accepted** only when its writer schema is the reader's own schema (read
as written: no resolution) and the walk finds nothing fastavro could object to:
``fastavro.schemaless_reader`` then decodes it, without error and to exactly these head
values (the tests check both on random and corrupted records). Everything else (another
writer schema, a bad header, an unknown id, anything odd or rare in the body: a varint
longer than 9 bytes, a negative or second array block, a string that is not ASCII, an
int out of range, more than :data:`MAX_ITEMS` items) is *not accepted*, and the caller
decodes it the usual way (the per-message decoder, whose typed error is that
message's). Bounds come first: every length and count is checked against the bytes left
in its message before anything moves past it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from .columnar_decode import varints
from .wire import HEADER_SIZE, MAGIC_BYTE, strip_logical_types

#: items of one array or map walked vectorised; a message with more is left to fastavro
MAX_ITEMS = 4096
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_ID_WEIGHTS = np.array([1 << 24, 1 << 16, 1 << 8, 1], dtype=np.uint32)
_PAD = bytes(16)
_WIDTH = {"null": 0, "boolean": 1, "float": 4, "double": 8}
_VARINT_KINDS = frozenset({"int", "long", "enum"})
_BYTES_KINDS = frozenset({"string", "bytes"})
#: an empty map read as columns: one read-only object for every row
_NO_ENTRIES: Any = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class _T:
    """One type of the schema, compiled: ``kind`` and what it holds."""

    kind: str  # null boolean int long float double string bytes enum union record array map
    symbols: tuple[str, ...] = ()  # enum
    branches: tuple[_T, ...] = ()  # union
    fields: tuple[tuple[str, _T], ...] = ()  # record
    items: _T | None = None  # array items, map values


def _compile(t: Any) -> _T | None:
    """The walkable form of a (logical-types-stripped) schema, or None when it holds what
    the walker does not take (named references, fixed, recursion). Counts of items are
    checked as if each took a byte at least: an array of nulls is left to fastavro."""
    if isinstance(t, str):
        if t in _WIDTH or t in _VARINT_KINDS - {"enum"} or t in _BYTES_KINDS:
            return _T(t)
        return None  # a reference to a named type
    if isinstance(t, list):
        branches = [_compile(b) for b in t]
        if not branches or any(b is None or b.kind == "union" for b in branches):
            return None
        return _T("union", branches=tuple(b for b in branches if b is not None))
    if not isinstance(t, dict) or "logicalType" in t:
        return None  # logical types other than timestamps: fastavro converts them
    kind = t.get("type")
    if kind == "enum":
        symbols = t.get("symbols")
        if not isinstance(symbols, list):
            return None
        return _T("enum", symbols=tuple(str(x) for x in symbols))
    if kind == "record":
        fields = []
        for f in t.get("fields") or ():
            ft = _compile(f.get("type")) if isinstance(f, dict) else None
            if ft is None:
                return None
            fields.append((str(f["name"]), ft))
        return _T("record", fields=tuple(fields))
    if kind in ("array", "map"):
        items = _compile(t.get("items" if kind == "array" else "values"))
        if items is None:
            return None
        return _T(kind, items=items)
    return _compile(kind) if isinstance(kind, str) else None


class _Walk:
    """One batch's walk: the buffer, each row's end, the rows found bad, the byte ranges
    of the strings (checked for ASCII at the end) and the head values kept."""

    def __init__(self, buf: np.ndarray, ends: np.ndarray) -> None:
        self.buf = buf
        self.ends = ends
        self.bad = np.zeros(ends.size, dtype=bool)
        self.text: list[tuple[np.ndarray, np.ndarray]] = []

    def varint(self, rows: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vals, pos, long = varints(self.buf, pos)
        if long.any():
            self.bad[rows[long]] = True
        return vals, pos

    def length(
        self, rows: np.ndarray, pos: np.ndarray, item_bytes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """A length or count at ``pos``, checked against the bytes left (each unit takes
        at least ``item_bytes``); a bad one is set to 0 so nothing moves past the end."""
        n, pos = self.varint(rows, pos)
        wrong = (n < 0) | (n * item_bytes > self.ends[rows] - pos)
        if wrong.any():
            self.bad[rows[wrong]] = True
            n = np.where(wrong, 0, n)
        return n, pos

    def walk(self, t: _T, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Positions after a value of ``t`` at ``pos`` (for ``rows``)."""
        k = t.kind
        if k in _WIDTH:
            if k == "boolean":
                b = self.buf[np.minimum(pos, self.buf.size - 1)]
                odd = b > 1
                if odd.any():
                    self.bad[rows[odd]] = True
            return pos + _WIDTH[k]
        if k in _VARINT_KINDS:
            v, pos = self.varint(rows, pos)
            if k == "int":
                wrong = (v < _INT32_MIN) | (v > _INT32_MAX)
            elif k == "enum":
                wrong = (v < 0) | (v >= len(t.symbols))
            else:
                return pos
            if wrong.any():
                self.bad[rows[wrong]] = True
            return pos
        if k in _BYTES_KINDS:
            n, pos = self.length(rows, pos, 1)
            stop: np.ndarray = pos + n
            if k == "string":
                self.text.append((pos, stop))
            return stop
        if k == "record":
            for _name, ft in t.fields:
                pos = self.walk(ft, rows, pos)
            return pos
        if k == "union":
            b, pos = self.varint(rows, pos)
            wrong = (b < 0) | (b >= len(t.branches))
            if wrong.any():
                self.bad[rows[wrong]] = True
            out = pos.copy()
            for i, bt in enumerate(t.branches):
                m = b == i
                if m.any():
                    out[m] = self.walk(bt, rows[m], pos[m])
            return out
        items = t.items  # array or map: one block, then the 0 that ends it
        assert items is not None
        fixed = _WIDTH[items.kind] if k == "array" and items.kind in ("double", "float") else 0
        n, pos = self.length(rows, pos, fixed or 1)
        many = n > MAX_ITEMS
        if many.any():
            self.bad[rows[many]] = True
            n = np.where(many, 0, n)
        if fixed:
            pos = pos + n * fixed
        else:
            for i in range(int(n.max()) if n.size else 0):
                m = n > i
                sub, p = rows[m], pos[m]
                if k == "map":
                    p = self.walk(_STRING, sub, p)
                pos[m] = self.walk(items, sub, p)
        more = n > 0  # a block of items is followed by the next count: must be 0
        if more.any():
            end, after = self.varint(rows[more], pos[more])
            if (end != 0).any():
                self.bad[rows[more][end != 0]] = True
            pos[more] = after
        return pos


_STRING = _T("string")


@dataclass(frozen=True, slots=True)
class Heads:
    """A batch's accepted messages (indices into the batch, in order) and their head
    fields, one list per field name, aligned with ``rows``."""

    rows: list[int]
    columns: dict[str, list[Any]]
    #: the batch as it was checked (its bytes joined, as an array, where the accepted
    #: bodies start), for :meth:`HeadReader.columns_of` to decode some of them whole
    checked: tuple[bytes, np.ndarray, np.ndarray] | None = None


class HeadReader:
    """``reader(values) -> Heads``: which messages of a batch are sound records of
    ``schema`` as written, and their ``head`` fields (top-level strings, ints, longs or
    enums: enums as their symbol) (module doc). ``writer_of(schema_id)`` is the writer
    schema (JSON) of an id, raising when it is unknown or the registry is away (the
    callers' schema cache): such messages are simply not accepted here, and the caller's
    decoder says why."""

    def __init__(
        self,
        schema: dict[str, Any],
        head: Sequence[str],
        writer_of: Callable[[int], Any],
    ) -> None:
        self._json = strip_logical_types(schema)
        compiled = _compile(self._json)
        if compiled is None or compiled.kind != "record":
            raise ValueError("the head reader takes records of primitive, enum, union, array, map")
        self._type = compiled
        kinds = dict(compiled.fields)
        for name in head:
            kind = kinds[name].kind if name in kinds else None
            if kind not in ("string", "int", "long", "enum"):
                raise ValueError(f"head field {name!r} must be a top-level string/int/long/enum")
        self.head = tuple(head)
        self._symbols = {n: kinds[n].symbols for n in head if kinds[n].kind == "enum"}
        self._writer_of = writer_of
        self._same: dict[int, bool] = {}

    def _reads(self, schema_id: int) -> bool:
        """Whether messages of ``schema_id`` are written with this reader's schema."""
        same = self._same.get(schema_id)
        if same is None:
            try:
                writer = self._writer_of(schema_id)
            except Exception:  # unknown, unreadable, registry away: the decoder's to say
                return False
            same = strip_logical_types(writer) == self._json
            if len(self._same) >= 1024:
                self._same.clear()
            self._same[schema_id] = same
        return same

    def __call__(self, values: Sequence[bytes | None]) -> Heads:
        checked = self._check(values)
        if checked is None:
            return Heads([], {name: [] for name in self.head})
        raw, buf, rows, starts, kept = checked
        columns: dict[str, list[Any]] = {}
        for name in self.head:
            kind, a_or_vals, stop = kept[name]
            if kind == "string":
                assert stop is not None
                columns[name] = [
                    raw[x:y].decode("ascii")
                    for x, y in zip(a_or_vals.tolist(), stop.tolist(), strict=True)
                ]
            elif kind == "enum":
                syms = self._symbols[name]
                columns[name] = [syms[v] for v in a_or_vals.tolist()]
            else:
                columns[name] = a_or_vals.tolist()
        return Heads(rows.tolist(), columns, (raw, buf, starts))

    def columns_of(self, heads: Heads, which: Sequence[int]) -> dict[str, Any]:
        """Whole records of messages ``heads`` accepted (``which``: positions in
        ``heads.rows``), decoded column-wise as :meth:`columns` does, without checking
        them again: each field's values in a list, aligned with ``which``."""
        if heads.checked is None or not which:
            return {}
        raw, buf, starts = heads.checked
        at = starts[np.asarray(which, dtype=np.int64)]
        return _Read(raw, buf, as_columns=True).record(self._type, at)[1]

    def records(self, values: Sequence[bytes | None]) -> tuple[list[int], list[dict[str, Any]]]:
        """The accepted messages of a batch decoded whole, column-wise: (their indices,
        their records, as ``fastavro.schemaless_reader`` gives them)."""
        checked = self._check(values)
        if checked is None:
            return [], []
        raw, buf, rows, starts, _kept = checked
        _pos, recs = _Read(raw, buf).read(self._type, starts)
        return rows.tolist(), recs

    def columns(self, values: Sequence[bytes | None]) -> tuple[list[int], dict[str, Any]]:
        """:meth:`records` as columns: (the indices, each field's values in a list, a
        nested record's as a dict of such lists), no record built; an empty array is
        ``()`` and an empty map one shared read-only mapping, not a container per row."""
        checked = self._check(values)
        if checked is None:
            return [], {}
        raw, buf, rows, starts, _kept = checked
        return rows.tolist(), _Read(raw, buf, as_columns=True).record(self._type, starts)[1]

    def _check(
        self, values: Sequence[bytes | None]
    ) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]] | None:
        """The batch walked (module doc): (its bytes joined, as an array, the indices of
        the accepted messages, where their bodies start, their head fields), or None
        when it accepts none."""
        n = len(values)
        if n == 0 or set(map(type, values)) != {bytes}:
            return None
        datas: Sequence[bytes] = values  # type: ignore[assignment]
        raw = b"".join(datas)
        lens = np.fromiter(map(len, datas), dtype=np.int64, count=n)
        buf = np.frombuffer(raw + _PAD, dtype=np.uint8)
        ends = np.cumsum(lens)
        starts = ends - lens
        head = buf[np.minimum(starts[:, None] + np.arange(HEADER_SIZE), buf.size - 1)]
        ok = (lens > HEADER_SIZE) & (head[:, 0] == MAGIC_BYTE)
        ids = head[:, 1:].astype(np.uint32) @ _ID_WEIGHTS
        for schema_id in np.unique(ids[ok]).tolist():
            if not self._reads(int(schema_id)):
                ok &= ids != schema_id
        rows = np.flatnonzero(ok)
        if rows.size == 0:
            return None
        w = _Walk(buf, ends[rows])
        idx = np.arange(rows.size)
        body = starts[rows] + HEADER_SIZE
        pos = body
        kept: dict[str, tuple[str, np.ndarray, np.ndarray | None]] = {}
        for name, ft in self._type.fields:
            if name in self.head:
                if ft.kind == "string":
                    n_bytes, p = w.length(idx, pos, 1)
                    kept[name] = ("string", p, p + n_bytes)
                    w.text.append((p, p + n_bytes))
                    pos = p + n_bytes
                    continue
                before = pos
                pos = w.walk(ft, idx, pos)
                vals, _after, _long = varints(buf, before)
                kept[name] = (ft.kind, vals, None)
                continue
            pos = w.walk(ft, idx, pos)
        bad = w.bad | (pos != w.ends)  # ran past its end, or bytes left over
        if w.text:  # every string byte ASCII (other UTF-8 is left to fastavro)
            a = np.concatenate([s for s, _e in w.text])
            b = np.concatenate([e for _s, e in w.text])
            size = buf.size + 1
            a, b = np.minimum(a, size - 1), np.minimum(np.maximum(a, b), size - 1)
            inside = np.cumsum(np.bincount(a, minlength=size) - np.bincount(b, minlength=size))
            wide = np.flatnonzero((inside[:-1] > 0) & (buf >= 0x80))
            if wide.size:
                owner = np.searchsorted(w.ends, wide, side="right")
                bad[np.minimum(owner, bad.size - 1)] = True
        good = np.flatnonzero(~bad)
        if good.size == 0:
            return None
        kept_good = {
            name: (kind, a[good], None if b is None else b[good])
            for name, (kind, a, b) in kept.items()
        }
        return raw, buf, rows[good], body[good], kept_good


class _Read:
    """Values of sound messages (already walked and accepted), column-wise: each
    ``read`` returns the positions after the values and the values (one per row), as
    fastavro gives them (arrays as lists, maps and records as dicts)."""

    def __init__(self, raw: bytes, buf: np.ndarray, *, as_columns: bool = False) -> None:
        self.raw = raw
        self.buf = buf
        #: records (top-level, nested) as a dict of columns instead of one dict per row,
        #: and an empty array or map as one shared object, ``()`` or a read-only mapping
        self.as_columns = as_columns

    def record(self, t: _T, pos: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        cols: dict[str, Any] = {}
        for name, ft in t.fields:
            pos, cols[name] = self.read(ft, pos)
        return pos, cols

    def read(self, t: _T, pos: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        k, n = t.kind, pos.size
        buf = self.buf
        if k == "null":
            return pos, [None] * n
        if k == "boolean":
            return pos + 1, (buf[pos] == 1).tolist()
        if k in ("float", "double"):
            width = _WIDTH[k]
            idx = pos[:, None] + np.arange(width)
            arr = np.ascontiguousarray(buf[idx]).view("<f4" if width == 4 else "<f8")
            return pos + width, arr.reshape(n).tolist()
        if k in _VARINT_KINDS:
            v, pos, _long = varints(buf, pos)
            if k == "enum":
                return pos, [t.symbols[i] for i in v.tolist()]
            return pos, v.tolist()
        if k in _BYTES_KINDS:
            size, pos = varints(buf, pos)[:2]
            stop = pos + size
            raw = self.raw
            spans = zip(pos.tolist(), stop.tolist(), strict=True)
            if k == "string":
                return stop, [raw[a:b].decode() for a, b in spans]
            return stop, [raw[a:b] for a, b in spans]
        if k == "union":
            b, pos = varints(buf, pos)[:2]
            out: list[Any] = [None] * n
            after = pos.copy()
            for i, bt in enumerate(t.branches):
                m = np.flatnonzero(b == i)
                if m.size:
                    after[m], vals = self.read(bt, pos[m])
                    for r, v in zip(m.tolist(), vals, strict=True):
                        out[r] = v
            return after, out
        if k == "record":
            pos, cols = self.record(t, pos)
            if self.as_columns:
                return pos, cols  # type: ignore[return-value]
            names = list(cols)
            tuples = zip(*cols.values(), strict=True)
            return pos, [dict(zip(names, row, strict=True)) for row in tuples]
        items = t.items  # array or map: one block (the walk checked), then its 0
        assert items is not None
        count, pos = varints(buf, pos)[:2]
        lists: list[Any]
        if self.as_columns:  # an empty one is one shared object (no container per row)
            lists = [() if k == "array" else _NO_ENTRIES] * n
            for r in np.flatnonzero(count).tolist():
                lists[r] = [] if k == "array" else {}
        else:
            lists = [[] for _ in range(n)] if k == "array" else [{} for _ in range(n)]
        if count.any():
            if k == "array" and items.kind in ("double", "float"):
                width = _WIDTH[items.kind]
                rows = np.repeat(np.arange(n), count)
                first = np.cumsum(count) - count
                at = pos[rows] + width * (np.arange(rows.size) - first[rows])
                flat = (
                    np.ascontiguousarray(buf[at[:, None] + np.arange(width)])
                    .view("<f4" if width == 4 else "<f8")
                    .reshape(rows.size)
                    .tolist()
                )
                for r, a, c in zip(range(n), first.tolist(), count.tolist(), strict=True):
                    if c:
                        lists[r] = flat[a : a + c]
                pos = pos + width * count
            else:
                for i in range(int(count.max())):
                    m = np.flatnonzero(count > i)
                    p = pos[m]
                    if k == "map":
                        p, keys = self.read(_STRING, p)
                        p, vals = self.read(items, p)
                        for r, key, v in zip(m.tolist(), keys, vals, strict=True):
                            lists[r][key] = v
                    else:
                        p, vals = self.read(items, p)
                        for r, v in zip(m.tolist(), vals, strict=True):
                            lists[r].append(v)
                    pos[m] = p
            more = np.flatnonzero(count > 0)  # the count after a block: 0 (walked)
            pos[more] = varints(buf, pos[more])[1]
        return pos, lists
