"""Poison messages of issue 10, shared by the unit tests and the integration tests: writer
schemas that extend the demo event (so that a worker reading events with its own reader
schema resolves them) and messages built byte by byte against them; plus the random flaws
(``corrupt``) and random values of an Avro type (``random_value``) the property tests and
the fuzz test draw from. It lives beside the tiers, not in one: both import it."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from streamscore.serde import schemas
from streamscore.serde.columnar_encode import _long


def varint(n: int) -> bytes:
    """Avro's zigzag varint of a long."""
    return _long(n)


def field(name: str, type_: Any) -> dict[str, Any]:
    return {"name": name, "type": type_}


def event_with(name: str, *extra_fields: dict[str, Any], **retyped: Any) -> dict[str, Any]:
    """The v1 demo event schema under record name ``name`` (a schema of its own in the
    registry), with ``extra_fields`` appended and fields retyped (``a=["null", "double"]``).
    The record name stays the reader's, so the writer resolves to the reader."""
    s = copy.deepcopy(schemas.load("event", 1))
    s["doc"] = f"issue 10 poison writer: {name}"
    for f in s["fields"]:
        if f["name"] in retyped:
            f["type"] = retyped[f["name"]]
    s["fields"].extend(extra_fields)
    return s


#: a recursive linked list after the event's fields (null: no list)
NESTED_WRITER = event_with(
    "nested",
    {
        "name": "tree",
        "type": [
            "null",
            {
                "type": "record",
                "name": "Node",
                "fields": [
                    {"name": "label", "type": "int"},
                    {"name": "next", "type": ["null", "Node"]},
                ],
            },
        ],
        "default": None,
    },
)

#: an extra ``array<null>`` after the event's fields
NULL_ARRAY_WRITER = event_with(
    "null-array", {"name": "pad", "type": {"type": "array", "items": "null"}, "default": []}
)

#: the feature ``a`` nullable
NULLABLE_A_WRITER = event_with("nullable-a", a=["null", "double"])


def chain(depth: int) -> Any:
    """A ``tree`` value ``depth`` nodes deep (None for 0), as :func:`deep_tree` writes."""
    node: Any = None
    for _ in range(depth):
        node = {"label": 0, "next": node}
    return node


def deep_tree(valid_event: bytes, depth: int) -> bytes:
    """``valid_event`` (a NESTED_WRITER message whose tree is null, so its last byte is
    the union's null branch) with a ``tree`` ``depth`` nodes deep instead: about two
    bytes a level (20,000 levels: about 40 KB)."""
    assert valid_event[-1:] == b"\x00"
    # per node: the union's Node branch (1), label 0; then the innermost next: null
    return valid_event[:-1] + b"\x02\x00" * depth + b"\x00"


def null_array_bomb(valid_event: bytes, count: int = 2**62) -> bytes:
    """``valid_event`` (a NULL_ARRAY_WRITER message whose pad is empty, so it ends with
    the terminating block count 0) with a block claiming ``count`` nulls instead."""
    assert valid_event[-1:] == b"\x00"
    return valid_event[:-1] + varint(count) + b"\x00"


PAIR = {"type": "record", "name": "Pair", "fields": [field("x", "float"), field("y", "double")]}
ITEM = {
    "type": "record",
    "name": "Item",
    "fields": [
        field("sku", "string"),
        field("qty", "int"),
        field("tags", {"type": "map", "values": ["null", "double"]}),
        field("blob", {"type": "fixed", "name": "Blob", "size": 3}),
        field("nothing", {"type": "array", "items": "null"}),
        field("pairs", {"type": "array", "items": PAIR}),  # fixed-width records
    ],
}
#: arrays of records holding maps, fixed, arrays of nulls and of fixed-width records, and
#: the recursive list
RICH = event_with(
    "rich",
    field("items", {"type": "array", "items": ITEM}),
    field("tree", NESTED_WRITER["fields"][-1]["type"]),
)


def rich_value(rng: np.random.Generator) -> dict[str, Any]:
    def item() -> dict[str, Any]:
        return {
            "sku": "s" * int(rng.integers(0, 100)),
            "qty": int(rng.integers(-1000, 1000)),
            "tags": {f"k{j}": None if j % 3 else float(j) for j in range(int(rng.integers(0, 5)))},
            "blob": bytes(rng.integers(0, 256, 3, dtype=np.uint8)),
            "nothing": [None] * int(rng.integers(0, 4)),
            "pairs": [{"x": 0.5, "y": float(j)} for j in range(int(rng.integers(0, 6)))],
        }

    n_items, depth = int(rng.integers(0, 5)), int(rng.integers(0, 60))
    return {"items": [item() for _ in range(n_items)], "tree": chain(depth)}


def corrupt(value: bytes, rng: np.random.Generator, kinds: int = 8) -> bytes:
    """``value`` with one random flaw after the header (byte changed, inserted or
    deleted, a length blown up, cut short), or intact: one of ``kinds`` equally likely
    outcomes, the flaws first."""
    v = bytearray(value)
    kind = int(rng.integers(kinds))
    at = int(rng.integers(5, len(v)))
    if kind == 0:
        v[at] = int(rng.integers(256))
    elif kind == 1:
        v.insert(at, int(rng.integers(256)))
    elif kind == 2:
        del v[at]
    elif kind == 3:
        v[at : at + 1] = b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f"  # a huge length
    elif kind == 4:
        del v[at:]
    return bytes(v)


def random_value(t: Any, rng: np.random.Generator) -> Any:
    if isinstance(t, list):
        if "null" in t and rng.random() < 0.3:
            return None
        return random_value(next(b for b in t if b != "null"), rng)
    if isinstance(t, dict):
        if t["type"] == "enum":
            return t["symbols"][int(rng.integers(len(t["symbols"])))]
        return random_value(t["type"], rng)
    if t == "string":
        return "".join(rng.choice(list("abcé€😀 "), int(rng.integers(0, 70))).tolist())
    if t == "bytes":
        return bytes(rng.integers(0, 256, int(rng.integers(0, 20)), dtype=np.uint8))
    if t == "int":
        return int(rng.integers(-(2**31), 2**31 - 1))
    if t == "long":  # includes values a double cannot hold exactly
        return int(rng.integers(-(2**62), 2**62))
    if t == "float":
        return float(np.float32(rng.normal() * 1e3))
    if t == "double":
        return float(rng.normal() * 1e6)
    if t == "boolean":
        return bool(rng.integers(2))
    raise AssertionError(t)
