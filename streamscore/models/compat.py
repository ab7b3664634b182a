"""Can a model be fed from the events? Its feature spec checked against the event reader
schema's fields (:func:`check_feature_compat`), with Avro field types in a short
normalized form (:func:`normalize_avro_type`, :func:`reader_fields_from_schema`).

A worker runs this before it swaps a model in; a model asking for a field the events do
not have, or of a type it cannot use, is rejected (``incompatible_features``) and the
current model keeps serving. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..core.errors import IncompatibleFeatureSpecError
from ..core.records import FeatureKind, FeatureSpec
from ..features.schema_fields import flatten

__all__ = ["check_feature_compat", "normalize_avro_type", "reader_fields_from_schema"]

_NUMERIC_AVRO = frozenset({"int", "long", "float", "double", "boolean"})
_CATEGORICAL_AVRO = frozenset({"string", "enum", "int", "long", "boolean"})
_ALLOWED = {
    FeatureKind.NUMERIC: _NUMERIC_AVRO,
    FeatureKind.CATEGORICAL: _CATEGORICAL_AVRO,
    FeatureKind.BOOLEAN: frozenset({"boolean"}),
}


def normalize_avro_type(t: Any) -> str:
    """An Avro field type as the short form used by :func:`check_feature_compat`.

    Primitives -> their name (``"double"``); named/complex types -> their ``type``
    (``"enum"``, ``"record"``, ``"array"``...); a logical type -> its underlying type;
    a union of ``"null"`` and one other type -> that type with ``"?"`` appended
    (``["null", "double"]`` -> ``"double?"``); any other union -> ``"union"``.
    """
    if isinstance(t, str):
        return t
    if isinstance(t, Mapping):
        inner = t.get("type")
        if isinstance(inner, str) and inner in ("record", "enum", "array", "map", "fixed"):
            return inner
        return normalize_avro_type(inner)
    if isinstance(t, Sequence):
        non_null = [x for x in t if x != "null"]
        if len(non_null) == 1:
            base = normalize_avro_type(non_null[0])
            return base + "?" if len(non_null) < len(t) else base
        return "union"
    return "unknown"


def reader_fields_from_schema(schema: Mapping[str, Any]) -> dict[str, str]:
    """``{field name: normalized type}`` for a record schema (parsed JSON); the fields of
    nested records by dotted path (``"device.os"``; nullable under a nullable record)."""
    out = {str(f["name"]): normalize_avro_type(f["type"]) for f in schema.get("fields", ())}
    for path, f in flatten(schema).items():
        if "." in path:
            out[path] = f.short
    return out


def check_feature_compat(spec: FeatureSpec, reader_fields: Mapping[str, str]) -> None:
    """Raise IncompatibleFeatureSpecError(field=...) if a spec field cannot be fed from
    the event reader schema. ``reader_fields`` maps field name -> normalized Avro type
    (see :func:`normalize_avro_type`; a trailing ``"?"`` marks a nullable field, accepted:
    missing values are the validation layer's concern). Numeric features accept
    int/long/float/double/boolean; boolean ones boolean; categorical ones
    string/enum/int/long/boolean. A feature is looked up at its source (its dotted path)."""
    for f in spec.fields:
        at = "" if f.source == f.name else f" (at {f.source!r})"
        if f.source not in reader_fields:
            raise IncompatibleFeatureSpecError(
                f"feature {f.name!r}{at} is not a field of the event reader schema", field=f.name
            )
        t = reader_fields[f.source].removesuffix("?")
        allowed = _ALLOWED[f.kind]
        if t not in allowed:
            raise IncompatibleFeatureSpecError(
                f"feature {f.name!r}{at} is {f.kind.value} but the event field has Avro type {t!r}",
                field=f.name,
            )
