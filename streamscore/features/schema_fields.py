"""An Avro record schema's fields, flattened: nested records by dotted path
(``device.os``), each with what a feature needs to know about it. Shared by ``init``
(:mod:`.infer`), ``check`` (:mod:`.check`) and the worker's model compatibility check
(:mod:`streamscore.models.compat`). Pure: parsed schema JSON in, plain records out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: deeper nesting is not followed (a recursive schema would never end)
MAX_DEPTH = 8

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


@dataclass(frozen=True, slots=True)
class AvroField:
    """One field of a record schema, at its dotted ``path``.

    ``kind`` the Avro type's name (``double``, ``enum``, ``record``, ``array``, ``map``,
    ``fixed``, ``union`` for a union of several non-null types); ``logical`` its logical
    type (``timestamp-micros``...), if any; ``nullable`` true for a union with null, or
    anywhere under a nullable record; ``symbols`` an enum's."""

    path: str
    kind: str
    nullable: bool = False
    logical: str | None = None
    symbols: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        """As :func:`streamscore.models.compat.normalize_avro_type` writes it."""
        return self.kind + ("?" if self.nullable else "")

    def describe(self) -> str:
        """``long (timestamp-micros), nullable``."""
        text = self.kind + (f" ({self.logical})" if self.logical else "")
        return text + (", nullable" if self.nullable else "")


def flatten(schema: Mapping[str, Any]) -> dict[str, AvroField]:
    """Every field of the record ``schema`` by dotted path, in schema order; a nested
    record is listed itself (kind ``record``) and then its fields."""
    names: dict[str, Any] = {}
    out: dict[str, AvroField] = {}
    _register(schema, names, schema.get("namespace"))
    _record(schema, "", False, names, out, 0)
    return out


def _register(t: Any, names: dict[str, Any], namespace: Any) -> None:
    """Named types (records, enums, fixed) by full and short name, for references."""
    if isinstance(t, list):
        for b in t:
            _register(b, names, namespace)
        return
    if not isinstance(t, Mapping):
        return
    kind = t.get("type")
    if kind in ("record", "error", "enum", "fixed") and isinstance(t.get("name"), str):
        name = str(t["name"])
        ns = t.get("namespace", namespace)
        names[name.rsplit(".", 1)[-1]] = t
        names[name if "." in name or not ns else f"{ns}.{name}"] = t
        if kind in ("record", "error"):
            for f in t.get("fields") or ():
                if isinstance(f, Mapping):
                    _register(f.get("type"), names, ns)
        return
    if kind == "array":
        _register(t.get("items"), names, namespace)
    elif kind == "map":
        _register(t.get("values"), names, namespace)
    elif isinstance(kind, (Mapping, list)):
        _register(kind, names, namespace)


def _record(
    schema: Mapping[str, Any],
    prefix: str,
    nullable: bool,
    names: dict[str, Any],
    out: dict[str, AvroField],
    depth: int,
) -> None:
    for f in schema.get("fields") or ():
        if not isinstance(f, Mapping) or not isinstance(f.get("name"), str):
            continue
        path = prefix + str(f["name"])
        t, null = _non_null(f.get("type"), names)
        field = _field(path, t, nullable or null, names)
        out[path] = field
        if field.kind == "record" and depth + 1 < MAX_DEPTH:
            assert isinstance(t, Mapping)
            _record(t, path + ".", field.nullable, names, out, depth + 1)


def _non_null(t: Any, names: dict[str, Any]) -> tuple[Any, bool]:
    """The type without null, and whether null was a branch (a union with null)."""
    if isinstance(t, list):
        rest = [b for b in t if b != "null"]
        null = len(rest) < len(t)
        if len(rest) == 1:
            return _resolve(rest[0], names), null
        return rest, null
    return _resolve(t, names), False


def _resolve(t: Any, names: dict[str, Any]) -> Any:
    if isinstance(t, str) and t not in _PRIMITIVES:
        return names.get(t, names.get(t.rsplit(".", 1)[-1], t))
    if isinstance(t, Mapping) and isinstance(t.get("type"), (str, list, Mapping)):
        inner = t["type"]
        if isinstance(inner, str) and inner not in _PRIMITIVES:
            if inner in ("record", "error", "enum", "fixed", "array", "map"):
                return t
            return _resolve(inner, names)
    return t


def _field(path: str, t: Any, nullable: bool, names: dict[str, Any]) -> AvroField:
    if isinstance(t, list):
        return AvroField(path, "union", nullable)
    if isinstance(t, str):
        return AvroField(path, t, nullable)
    if isinstance(t, Mapping):
        kind = t.get("type")
        logical = t.get("logicalType")
        logical = str(logical) if isinstance(logical, str) else None
        if kind == "error":
            kind = "record"
        if kind == "enum":
            symbols = tuple(str(s) for s in t.get("symbols") or ())
            return AvroField(path, "enum", nullable, logical, symbols)
        if isinstance(kind, str):
            return AvroField(path, kind, nullable, logical)
        if isinstance(kind, (Mapping, list)):  # {"type": {"type": "long", ...}}
            inner, null = _non_null(kind, names)
            f = _field(path, inner, nullable or null, names)
            return f if logical is None else AvroField(path, f.kind, f.nullable, logical)
    return AvroField(path, "unknown", nullable)
