"""Poison messages of issue 10, shared by the unit tests and the integration tests: writer
schemas that extend the demo event (so that a worker reading events with its own reader
schema resolves them) and messages built byte by byte against them."""

from __future__ import annotations

import copy
from typing import Any

from streamscore import schemas, serde


def varint(n: int) -> bytes:
    """Avro's zigzag varint of a long."""
    return serde._long(n)


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
