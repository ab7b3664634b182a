"""``streamscore check``: does a project file fit its events' Avro schema? Every misfit,
each named precisely (which table, feature and path; what the schema has instead). Pure:
the CLI fetches the schema (the registry's latest, or an ``.avsc``) and prints.

What is checked: ``[events]`` id, time and key fields exist, with a type their use can
read (the time's logical type agrees with ``time_encoding``); every ``[[features]]`` path
leads through records to a field whose type the feature's kind reads (numeric: int,
long, float, double; boolean: boolean; categorical: string, enum, or int/long/boolean
looked up as text), and an enum's categories are among its symbols.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.config import EventFields, TimeEncoding
from ..core.records import FeatureField, FeatureKind, FeatureSpec
from .schema_fields import AvroField, flatten

#: Avro kinds each feature kind reads (see :mod:`streamscore.features.extract`)
READABLE: Mapping[FeatureKind, frozenset[str]] = {
    FeatureKind.NUMERIC: frozenset({"int", "long", "float", "double"}),
    FeatureKind.BOOLEAN: frozenset({"boolean"}),
    FeatureKind.CATEGORICAL: frozenset({"string", "enum", "int", "long", "boolean"}),
}
#: logical types whose values do not decode as the plain number or text underneath
_UNREADABLE_LOGICAL = frozenset({"decimal"})

_TIME_LOGICAL = {
    TimeEncoding.TIMESTAMP_MILLIS: ("long", ("timestamp-millis", None)),
    TimeEncoding.TIMESTAMP_MICROS: ("long", ("timestamp-micros", None)),
    TimeEncoding.EPOCH_MILLIS: ("long", (None, "timestamp-millis")),
    TimeEncoding.ISO_8601: ("string", (None,)),
}


@dataclass(frozen=True, slots=True)
class Misfit:
    """One thing of the project file that does not fit the schema: ``where`` in the file
    (``[events] time_field``, ``[[features]] #2 'os' path``), and what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def check(
    events: EventFields, features: FeatureSpec | None, schema: Mapping[str, Any]
) -> list[Misfit]:
    """Every misfit of the project file's ``[events]`` and ``[[features]]`` with the
    record ``schema`` (parsed JSON), in file order; empty when everything fits."""
    fields = flatten(schema)
    out: list[Misfit] = []
    out += _envelope(events, fields)
    for i, f in enumerate(features.fields if features else (), start=1):
        misfit = feature_misfit(f, fields)
        if misfit is not None:
            key = "path" if f.path else "name"
            if misfit.startswith("categories"):
                key = "categories"
            out.append(Misfit(f"[[features]] #{i} {f.name!r} {key}", misfit))
    return out


def _lookup(path: str, fields: Mapping[str, AvroField]) -> tuple[AvroField | None, str]:
    """The field at ``path``, or None and why not (missing, or under a non-record)."""
    parts = path.split(".")
    for k in range(1, len(parts)):
        head = ".".join(parts[:k])
        f = fields.get(head)
        if f is None:
            break
        if f.kind != "record":
            return None, f"{head!r} is {f.describe()}, not a record: {path!r} cannot go through it"
    f = fields.get(path)
    if f is not None:
        return f, ""
    parent = path.rpartition(".")[0]
    siblings = [p.rpartition(".")[2] for p in fields if p.rpartition(".")[0] == parent]
    if parent and parent not in fields:
        return None, f"the event has no field {path!r} (no record {parent!r})"
    last = path.rpartition(".")[2]
    close = difflib.get_close_matches(last, siblings, n=1)
    hint = f" (did you mean {(parent + '.' if parent else '') + close[0]!r}?)" if close else ""
    where = f"record {parent!r}" if parent else "the event"
    return None, f"{where} has no field {last!r}{hint}; it has: {', '.join(siblings) or 'none'}"


def feature_misfit(f: FeatureField, fields: Mapping[str, AvroField]) -> str | None:
    """Why feature ``f`` cannot be read from the flattened schema ``fields``, or None."""
    field, why = _lookup(f.source, fields)
    if field is None:
        return why
    readable = READABLE[f.kind]
    if field.kind not in readable or field.logical in _UNREADABLE_LOGICAL:
        kinds = ", ".join(sorted(readable))
        return f"{f.source!r} is {field.describe()}: a {f.kind.value} feature reads {kinds}"
    if f.kind is FeatureKind.CATEGORICAL and field.kind == "enum":
        extra = [c for c in f.categories if c not in field.symbols]
        if extra:
            return (
                f"categories {', '.join(map(repr, extra))} are not symbols of the enum "
                f"{f.source!r} ({', '.join(field.symbols)})"
            )
    return None


def _envelope(events: EventFields, fields: Mapping[str, AvroField]) -> list[Misfit]:
    out: list[Misfit] = []
    f, why = _lookup(events.id_field, fields)
    if f is None:
        out.append(Misfit("[events] id_field", why))
    elif f.kind not in ("string", "int", "long"):
        out.append(
            Misfit(
                "[events] id_field",
                f"{events.id_field!r} is {f.describe()}, not a string (or int, long)",
            )
        )
    f, why = _lookup(events.time_field, fields)
    if f is None:
        out.append(Misfit("[events] time_field", why))
    else:
        kind, logicals = _TIME_LOGICAL[events.time_encoding]
        if f.kind != kind or f.logical not in logicals:
            out.append(
                Misfit(
                    "[events] time_field",
                    f"{events.time_field!r} is {f.describe()}, which time_encoding = "
                    f"{events.time_encoding.value!r} cannot read{_encoding_hint(f)}",
                )
            )
    if events.key_field is not None:
        f, why = _lookup(events.key_field, fields)
        if f is None:
            out.append(Misfit("[events] key_field", why))
        elif f.kind not in ("string", "int", "long", "enum"):
            out.append(
                Misfit(
                    "[events] key_field",
                    f"{events.key_field!r} is {f.describe()}, not a string (or int, long, enum)",
                )
            )
    return out


def _encoding_hint(f: AvroField) -> str:
    """The encoding that would read ``f``, as advice."""
    for enc, (kind, logicals) in _TIME_LOGICAL.items():
        if f.kind == kind and f.logical == logicals[0]:
            return f" (time_encoding = {enc.value!r} would)"
    return ""


def spec_differences(project: FeatureSpec, model: FeatureSpec) -> list[str]:
    """What differs between the project file's ``[[features]]`` and a model bundle's
    feature spec, one line each (empty: they agree)."""
    out: list[str] = []
    mine, theirs = project.names, model.names
    only_p = [n for n in mine if n not in theirs]
    only_m = [n for n in theirs if n not in mine]
    if only_p:
        out.append(f"only in the project file: {', '.join(only_p)}")
    if only_m:
        out.append(f"only in the model: {', '.join(only_m)}")
    common = [n for n in mine if n in theirs]
    if common != [n for n in theirs if n in mine]:
        out.append(f"in another order: project {', '.join(mine)}; model {', '.join(theirs)}")
    by_name = {f.name: f for f in model.fields}
    for p in project.fields:
        m = by_name.get(p.name)
        if m is None:
            continue
        for what, a, b in (
            ("path", p.source, m.source),
            ("kind", p.kind.value, m.kind.value),
            ("missing", p.missing.value, m.missing.value),
            ("impute", p.impute_value, m.impute_value),
            ("min", p.minimum, m.minimum),
            ("max", p.maximum, m.maximum),
            ("categories", list(p.categories), list(m.categories)),
        ):
            same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
            if not same:
                out.append(
                    f"feature {p.name!r}: {what} {a!r} in the project file, {b!r} in the model"
                )
    return out
