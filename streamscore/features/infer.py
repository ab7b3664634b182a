"""``streamscore init``: a starter project file from an events schema (and a sample).

Every field of the Avro record (nested records by dotted path) becomes a feature whose
kind its type gives: int/long/float/double -> numeric; boolean -> boolean; enum ->
categorical with its symbols; string -> categorical when the sample gives its categories,
else written commented out with a note; a union with null -> ``missing = "impute"``.
Timestamps (``timestamp-millis``/``-micros``), dates, times, decimals, arrays, maps, bytes
and fixed are not features: each is listed as a comment saying why. The id field (a string
named like an id) and the time field (a timestamp) are guessed, and the guesses say so.
A sample (rows as dicts) gives numeric ranges and string categories. Pure: the CLI reads
the schema and the sample.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .schema_fields import AvroField, flatten

#: a string field with more distinct values in the sample than this is not categorical
MAX_CATEGORIES = 100

_NUMERIC = frozenset({"int", "long", "float", "double"})
_TIMESTAMPS = ("timestamp-millis", "timestamp-micros")
_ID_NAME = re.compile(r"(?i)(^|_)id$|Id$|^uuid$|_uuid$")


@dataclass(frozen=True, slots=True)
class Inferred:
    """What ``init`` wrote: the text, and the guesses it made (for the CLI to say)."""

    text: str
    id_field: str | None
    time_field: str | None
    features: tuple[str, ...]
    skipped: tuple[str, ...]


def _toml(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


def _sample_column(rows: Sequence[Mapping[str, Any]], path: str) -> list[Any]:
    """The values at dotted ``path`` of every sample row (a flattened key, a CSV's
    ``device.os`` column, is read too); None where absent."""
    first, *rest = path.split(".")
    out: list[Any] = []
    for r in rows:
        if first in r and rest:
            v: Any = r[first]
            for p in rest:
                v = v.get(p) if isinstance(v, Mapping) else None
            out.append(v)
        else:
            out.append(r.get(path))
    return out


def _guess_id(fields: Mapping[str, AvroField]) -> str | None:
    top = [f for p, f in fields.items() if "." not in p]
    for f in top:
        if f.kind == "string" and f.logical == "uuid":
            return f.path
    named = [f for f in top if f.kind == "string" and _ID_NAME.search(f.path)]
    exact = [f for f in named if f.path.lower() in ("id", "event_id")]
    best = exact or named
    return best[0].path if best else None


def _guess_time(fields: Mapping[str, AvroField]) -> AvroField | None:
    for p, f in fields.items():
        if "." not in p and f.kind == "long" and f.logical in _TIMESTAMPS:
            return f
    return None


def _feature_name(path: str, taken: set[str]) -> str:
    name = path.replace(".", "_")
    base, k = name, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def infer_project(
    schema: Mapping[str, Any],
    *,
    topic: str,
    origin: str,
    sample: Sequence[Mapping[str, Any]] | None = None,
) -> Inferred:
    """A starter project file for events of record ``schema`` on ``topic``; ``origin``
    (``subject payments-value, version 3``) is named in its header; ``sample`` rows give
    ranges and categories."""
    fields = flatten(schema)
    id_field = _guess_id(fields)
    time = _guess_time(fields)
    lines = [
        f"# streamscore project file, written by `streamscore init` from {origin}.",
        "# Read it through: lines marked 'guessed' are guesses; commented-out fields are",
        "# not features yet (each says why). Then: streamscore check --config <this file>",
        "",
        "[events]",
        f"topic = {_toml(topic)}",
    ]
    if id_field is not None:
        lines.append(f"id_field = {_toml(id_field)}  # guessed: a string field named like an id")
    else:
        lines.append('# id_field = "..."  # no string field named like an id: name the event id')
    if time is not None:
        lines.append(f"time_field = {_toml(time.path)}  # guessed: the first timestamp field")
        lines.append(f"time_encoding = {_toml(time.logical)}")
    else:
        lines += [
            '# time_field = "..."  # no timestamp-millis/-micros field: name the event time',
            '# time_encoding = "epoch-millis"  # a plain long of ms; "iso-8601" for a string',
        ]
    lines.append(
        '# key_field = "..."  # optional: the field that gives the key (else the message key)'
    )

    envelope = {id_field, None if time is None else time.path}
    taken: set[str] = set(fields)
    features: list[str] = []
    skipped: list[str] = []
    for path, f in fields.items():
        if path in envelope:
            continue
        block, why = _feature_block(f, taken, sample)
        if f.kind == "record":
            continue  # its fields follow, by dotted path
        lines.append("")
        if why is None:
            features.append(path)
            lines += block
        else:
            skipped.append(path)
            lines.append(f"# {path}: {why}")
            lines += ["# " + b for b in block]
    return Inferred(
        "\n".join(lines) + "\n",
        id_field,
        None if time is None else time.path,
        tuple(features),
        tuple(skipped),
    )


def _feature_block(
    f: AvroField, taken: set[str], sample: Sequence[Mapping[str, Any]] | None
) -> tuple[list[str], str | None]:
    """The ``[[features]]`` lines of field ``f`` and, when it is not a feature as it
    stands, why (the lines are then written commented out)."""
    if f.kind == "record":
        return [], None
    values = None if sample is None else _sample_column(sample, f.path)
    name = f.path if "." not in f.path else _feature_name(f.path, taken)
    head = ["[[features]]", f"name = {_toml(name)}"]
    if name != f.path:
        head.append(f"path = {_toml(f.path)}")
    missing = (
        ['missing = "impute"  # nullable in the schema; no impute value: NaN reaches the model']
        if f.nullable
        else []
    )
    if f.logical in _TIMESTAMPS:
        return [*head, 'kind = "numeric"'], f"a timestamp ({f.logical}): not a feature as it is"
    if f.logical in ("date", "time-millis", "time-micros"):
        return [*head, 'kind = "numeric"'], (
            f"a {f.logical} (decoded as a date/time, not a number): not a feature as it is"
        )
    if f.logical == "decimal":
        return [], "a decimal (bytes): not readable as a number; skipped"
    if f.kind in _NUMERIC:
        extra = []
        nums = [v for v in values or () if type(v) in (int, float) and math.isfinite(v)]
        if nums:
            extra = [
                f"min = {_toml(float(min(nums)))}  # from the sample",
                f"max = {_toml(float(max(nums)))}",
            ]
        return [*head, 'kind = "numeric"', *missing, *extra], None
    if f.kind == "boolean":
        return [*head, 'kind = "boolean"', *missing], None
    if f.kind == "enum":
        return [*head, 'kind = "categorical"', *missing, f"categories = {_toml(f.symbols)}"], None
    if f.kind == "string":
        cats = sorted({v for v in values or () if isinstance(v, str) and v})
        body = [*head, 'kind = "categorical"', *missing]
        if values is None:
            return [*body, "categories = []"], (
                "a string: categorical once its categories are listed (give --sample)"
            )
        if not cats:
            return [*body, "categories = []"], "a string with no value in the sample"
        if len(cats) > MAX_CATEGORIES:
            return body, (
                f"a string with {len(cats)} distinct values in the sample (more than "
                f"{MAX_CATEGORIES}): not a categorical feature"
            )
        return [*body, f"categories = {_toml(cats)}  # from the sample"], None
    if f.kind in ("array", "map", "bytes", "fixed"):
        return [], f"{f.kind}: not a feature (only scalar fields are); skipped"
    return [], f"{f.describe()}: not a feature (a union of several types); skipped"
