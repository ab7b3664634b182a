"""A bounded pre-scan of Avro binary, guided by the writer schema, before fastavro reads it.

fastavro's reader recurses (in C) once per nested record, array, map or union, and trusts
every block count it reads: a recursive writer schema with a message nested 20,000 levels
deep overflows the C stack (the process dies with SIGSEGV), and an ``array<null>`` block
that claims 2**62 items keeps it busy for ever. :class:`BoundedScan` walks the same bytes
iteratively (an explicit stack, no recursion) and checks, before anything is allocated or
descended into:

* nesting: records, arrays and maps nested deeper than ``max_depth`` (the top-level
  record is level 1) -> :class:`~streamscore.core.errors.NestingTooDeepError`;
* counts: an array or map block cannot claim more items than the bytes left can hold
  (``count * smallest item size <= bytes left``); items that take no bytes at all
  (``null``, records of nulls) may number, over the whole message, at most the body's
  length or :data:`ZERO_WIDTH_ALLOWANCE`, whichever is larger (so a short valid array
  of nulls still reads, and a 57-byte message cannot claim 2**62 of them) ->
  :class:`~streamscore.core.errors.ClaimedCountTooLargeError`;
* lengths: a string, bytes or block length cannot exceed the bytes left ->
  :class:`~streamscore.core.errors.ClaimedLengthTooLargeError`;
* varints longer than 10 bytes, negative lengths and union indexes out of range ->
  :class:`~streamscore.core.errors.AvroDecodeError`; the body ending inside a value ->
  :class:`~streamscore.core.errors.TruncatedMessageError`.

A message that passes is read by fastavro exactly as it was scanned (the scan accepts
only varints whose value fastavro reads the same), so fastavro's work on it is bounded by
the message's length. The scan's work is too: every step consumes bytes, except the
fields of records (bounded by the schema per record entered) and items that take no
bytes (skipped in one step, never one by one).

Reading as written (no reader schema to resolve to, the common case of a topic's own
schema) needs less: fastavro reading every value of an array or a map stops with an
``EOFError`` at the end of the bytes whatever count a block claims, as long as each item
takes at least one byte, and nesting is then bounded by the schema; so only recursion,
records nested deeper than the limit and arrays of items that may take no bytes need the
scan first (``guard_read``). Resolving to another reader schema is different: fastavro
*skips* the writer's fields the reader does not have, and a skip seeks past the end
without noticing, so an array claiming 2**62 items of 8 bytes would keep it busy for ever:
there every schema that nests or repeats is scanned first (``guard``).

Only writer schemas that can nest or repeat (arrays, maps, recursive named types, or
records nested deeper than the limit) need the scan before fastavro (``guard``); flat
schemas are safe in fastavro (a string length past the end is an ``EOFError`` there,
nothing is allocated) and take the column-wise path. For them the scan is run only after
fastavro has failed, to name the flaw as precisely as for the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.errors import (
    AvroDecodeError,
    ClaimedCountTooLargeError,
    ClaimedLengthTooLargeError,
    NestingTooDeepError,
    TruncatedMessageError,
)

#: default nesting limit of records, arrays and maps in one message
DEFAULT_MAX_DEPTH = 64
#: items that take no bytes a message may hold however short it is (see the bounds)
ZERO_WIDTH_ALLOWANCE = 1024

# node kinds
_FIXED = 0  # ``width`` bytes: null, boolean, float, double, fixed, records of those
_VARINT = 1  # int, long, enum
_BYTES = 2  # string, bytes: a length, then that many bytes
_RECORD = 3
_ARRAY = 4
_MAP = 5
_UNION = 6

# stack tasks
_VISIT = 0
_CLOSE = 1  # leave a record, array or map (one nesting level)
_BLOCK = 2  # the rest of an array or map: ``n`` items left in the current block

_WIDTHS = {"null": 0, "boolean": 1, "float": 4, "double": 8}
_VARINTS = frozenset({"int", "long", "enum"})


class _Node:
    """One writer type. ``width`` >= 0: always that many bytes (else -1); ``least``: a
    lower bound of its encoded size; ``height``: the levels of records, arrays and maps
    it nests (itself included; a lower bound for recursive types); ``steps``: a record's
    fields (runs of fixed-width primitives merged into one), an array's item, a map's
    value, a union's branches."""

    __slots__ = ("close", "height", "kind", "least", "steps", "visits", "width")

    def __init__(self, kind: int, width: int = -1, least: int = 0) -> None:
        self.kind = kind
        self.width = width
        self.least = max(width, least)
        self.height = 0
        self.steps: list[_Node] = []
        #: a record's stack tasks, ready to push: its fields (last first), its closing
        self.visits: tuple[tuple[int, _Node, int], ...] = ()
        self.close = (_CLOSE, self, 0)


class SchemaTooComplexError(Exception):
    """The writer schema is not one the scan can compile (caller turns it into a typed
    error for the schema id)."""


class _Compiler:
    def __init__(self, named: Mapping[str, Any]) -> None:
        self._named = named
        self._records: dict[str, _Node] = {}
        self.guard = False  # arrays, maps or recursion: the data says how much
        #: recursion, or arrays of items that may take no bytes: the data says how much
        #: even to a reader that reads every value (see ``BoundedScan.guard_read``)
        self.guard_read = False

    def node(self, schema: Any, path: frozenset[str]) -> _Node:
        if isinstance(schema, list):
            union = _Node(_UNION)
            union.steps = [self.node(b, path) for b in schema]
            union.least = 1 + min((b.least for b in union.steps), default=0)
            union.height = max((b.height for b in union.steps), default=0)
            return union
        if isinstance(schema, str):
            if schema in _WIDTHS:
                return _Node(_FIXED, _WIDTHS[schema])
            if schema in _VARINTS:
                return _Node(_VARINT, least=1)
            if schema in ("string", "bytes"):
                return _Node(_BYTES, least=1)  # the length
            if schema in path:
                self.guard = self.guard_read = True  # recursion: as deep as the data says
                return self._records[schema]
            if schema in self._named:
                return self.node(self._named[schema], path)
            raise SchemaTooComplexError(f"unknown type {schema!r}")
        if not isinstance(schema, dict):
            raise SchemaTooComplexError(f"unexpected schema element {type(schema).__name__}")
        t = schema.get("type")
        if t == "record" or t == "error":
            return self._record(schema, path)
        if t == "enum":
            return _Node(_VARINT, least=1)
        if t == "fixed":
            return _Node(_FIXED, int(schema["size"]))
        if t == "array" or t == "map":
            self.guard = True  # repeats: as many items as the data says
            container = _Node(_ARRAY if t == "array" else _MAP)
            item = self.node(schema["items" if t == "array" else "values"], path)
            container.steps = [item]
            if t == "array" and item.least == 0:  # (a map's entry takes its key's length)
                self.guard_read = True
            container.least = 1  # the block count ending it
            container.height = 1 + item.height
            return container
        return self.node(t, path)  # {"type": "long", ...}, a named reference...

    def _record(self, schema: Mapping[str, Any], path: frozenset[str]) -> _Node:
        name = str(schema["name"])
        done = self._records.get(name)
        if done is not None:
            return done  # the same named record met again, not inside itself
        record = _Node(_RECORD)
        self._records[name] = record  # references inside it find it (recursion)
        fields = [self.node(f["type"], path | {name}) for f in schema["fields"]]
        steps: list[_Node] = []
        for f in fields:
            if f.kind == _FIXED and steps and steps[-1].kind == _FIXED:
                steps[-1] = _Node(_FIXED, steps[-1].width + f.width)
            elif f.kind == _FIXED:
                steps.append(_Node(_FIXED, f.width))
            else:
                steps.append(f)
        record.steps = steps
        record.visits = tuple((_VISIT, f, 0) for f in reversed(steps))
        record.least = sum(f.least for f in fields)  # a record still open counted 0
        record.height = 1 + max((f.height for f in fields), default=0)
        if all(f.width >= 0 for f in fields):
            record.width = sum(f.width for f in fields)
        return record


class BoundedScan:
    """The compiled scan of one writer schema (a schema parsed by fastavro).

    ``guard`` says whether fastavro needs it before reading a message of this schema
    (the schema can nest or repeat); ``guard_read`` whether it does even when it reads
    the message with this schema itself, every value read and none skipped; ``scan``
    checks one message."""

    __slots__ = ("_root", "guard", "guard_read", "max_depth")

    def __init__(self, parsed_writer: Any, *, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        named = parsed_writer.get("__named_schemas", {}) if isinstance(parsed_writer, dict) else {}
        compiler = _Compiler(named)
        try:
            self._root = compiler.node(parsed_writer, frozenset())
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaTooComplexError(f"{type(exc).__name__}: {exc}") from exc
        # deeper than the limit even without recursion: the scan says so before fastavro
        too_deep = self._root.height > max_depth
        self.guard = compiler.guard or too_deep
        self.guard_read = compiler.guard_read or too_deep
        self.max_depth = max_depth

    def scan(self, data: Any, start: int, schema_id: int) -> int:
        """Check the Avro body ``data[start:]``; return where its value ends. Raises the
        typed error of the first bound broken or the first malformed element."""
        end = len(data)
        pos = start
        zero_budget = max(end - start, ZERO_WIDTH_ALLOWANCE)  # items taking no bytes
        depth = 0
        limit = self.max_depth
        stack: list[tuple[int, _Node, int]] = [(_VISIT, self._root, 0)]
        pop, push = stack.pop, stack.append
        while stack:
            task, node, n = pop()
            if task == _CLOSE:
                depth -= 1
                continue
            if task == _BLOCK:
                if n > 0:  # the next item of the block
                    push((_BLOCK, node, n - 1))
                    if node.kind == _MAP:
                        pos = _skip_bytes(data, pos, end, schema_id)  # the key
                    push((_VISIT, node.steps[0], 0))
                    continue
                count, pos = _varint(data, pos, end, schema_id)
                if count == 0:
                    continue  # end of the array or map
                if count < 0:  # a block given with its size in bytes
                    count = -count
                    size, pos = _varint(data, pos, end, schema_id)
                    _check_length(size, end - pos, "block size", pos, schema_id)
                item = node.steps[0]
                left = end - pos
                # a map's key takes at least its length byte
                least = item.least + 1 if node.kind == _MAP else item.least
                if least > 0:
                    if count > left // least:
                        raise ClaimedCountTooLargeError(
                            f"a block claims {count} items of at least {least} bytes, "
                            f"with {left} bytes left (at byte {pos - start}, "
                            f"schema id {schema_id})",
                            count=count,
                            bytes_left=left,
                        )
                elif count > zero_budget:
                    raise ClaimedCountTooLargeError(
                        f"a block claims {count} items that take no bytes, more than the "
                        f"{zero_budget} this {end - start}-byte message may still hold "
                        f"(at byte {pos - start}, schema id {schema_id})",
                        count=count,
                        bytes_left=left,
                    )
                else:
                    zero_budget -= count
                if node.kind == _ARRAY and item.width >= 0:
                    # fixed-width items (they fit: checked above) in one step
                    if depth + item.height > limit:
                        raise _too_deep(limit, pos - start, schema_id)
                    pos += count * item.width
                    push((_BLOCK, node, 0))
                else:
                    push((_BLOCK, node, count))
                continue
            kind = node.kind
            if kind == _FIXED:
                pos += node.width
                if pos > end:
                    raise _ended(start, end, schema_id)
            elif kind == _VARINT:
                if pos < end and data[pos] < 0x80:  # one byte: most values
                    pos += 1
                else:
                    _value, pos = _varint(data, pos, end, schema_id)
            elif kind == _BYTES:
                pos = _skip_bytes(data, pos, end, schema_id)
            elif kind == _UNION:
                if pos < end and (b := data[pos]) < 0x80:
                    index = (b >> 1) ^ -(b & 1)
                    pos += 1
                else:
                    index, pos = _varint(data, pos, end, schema_id)
                if not 0 <= index < len(node.steps):
                    raise AvroDecodeError(
                        f"union branch {index} out of range ({len(node.steps)} branches) "
                        f"at byte {pos - start} (schema id {schema_id})"
                    )
                push((_VISIT, node.steps[index], 0))
            else:  # record, array, map: one level deeper
                depth += 1
                if depth > limit:
                    raise _too_deep(limit, pos - start, schema_id)
                push(node.close)
                if kind == _RECORD:
                    stack.extend(node.visits)
                else:
                    push((_BLOCK, node, 0))
        return pos


def _too_deep(limit: int, at: int, schema_id: int) -> NestingTooDeepError:
    return NestingTooDeepError(
        f"the Avro body nests records, arrays and maps deeper than {limit} levels "
        f"(at byte {at}, schema id {schema_id})",
        limit=limit,
    )


def _ended(start: int, end: int, schema_id: int) -> TruncatedMessageError:
    return TruncatedMessageError(
        f"Avro body ended early (schema id {schema_id}, {end - start} bytes)"
    )


def _varint(data: Any, pos: int, end: int, schema_id: int) -> tuple[int, int]:
    """A zigzag varint at ``pos``: (value, position after it). At most 10 bytes, the
    10th no more than 1: the values fastavro reads the same way (a 64-bit long)."""
    acc = shift = 0
    for k in range(10):
        if pos >= end:
            raise TruncatedMessageError(f"Avro body ended early (schema id {schema_id})")
        b = data[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            if k == 9 and b > 1:
                break
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7
    raise AvroDecodeError(
        f"a varint longer than a 64-bit long ends at byte {pos} (schema id {schema_id})"
    )


def _check_length(length: int, left: int, what: str, pos: int, schema_id: int) -> None:
    if length < 0:
        raise AvroDecodeError(f"negative {what} {length} (schema id {schema_id})")
    if length > left:
        raise ClaimedLengthTooLargeError(
            f"a {what} of {length} bytes, with {left} bytes left in the message "
            f"(schema id {schema_id})",
            length=length,
            bytes_left=left,
        )


def _skip_bytes(data: Any, pos: int, end: int, schema_id: int) -> int:
    length, pos = _varint(data, pos, end, schema_id)
    _check_length(length, end - pos, "string or bytes length", pos, schema_id)
    return pos + length
