"""Event batch -> feature matrix. The one code path shared by serving and training.

Column ``j`` of every matrix is ``spec.fields[j]``. Numeric fields (Avro int, long,
float, double) become float64; boolean fields 0.0/1.0; categorical fields (Avro string or
enum symbol) the index of the value in ``FeatureField.categories`` (as a float). Missing
values (absent or null) and unknown categories are NaN in :attr:`Columns.values` and
flagged in their masks; :func:`impute` then applies each field's missing-value policy.

A field is read at its :attr:`~streamscore.core.records.FeatureField.source`: a top-level
field, or a dotted path into nested records (``"device.os"``; a null record on the way is
a missing value, a value that is not a record a wrong type). A row that holds the dotted
name itself as a key (a flattened row, as the ground truth keeps nested inputs) is read
there. Work is per column, never per event and field in Python beyond the one list
comprehension that pulls a column out of the decoded dicts (one walk per event for a
dotted path); events decoded column-wise (:class:`~streamscore.core.columns.EventColumns`,
what the worker's batch decoder gives for flat records) hand their numeric and boolean
columns over as arrays, with no per-event work at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.columns import EventColumns
from ..core.records import FeatureField, FeatureKind, FeatureSpec, MissingPolicy


@dataclass(frozen=True, slots=True)
class Columns:
    """Raw feature columns of a batch, before any policy is applied."""

    values: np.ndarray  # (n, k) float64, NaN where missing / unknown / wrong type
    missing: np.ndarray  # (n, k) bool: absent or null
    unknown_category: np.ndarray  # (n, k) bool
    wrong_type: np.ndarray  # (n, k) bool: present but not a number (numeric fields)

    @property
    def n(self) -> int:
        return int(self.values.shape[0])


#: stands for a value on a dotted path under something that is not a record
_NOT_A_RECORD = object()


def _number(v: Any) -> float | None:
    t = type(v)
    return float(v) if t is float or t is int else None


def _boolean(v: Any) -> float | None:
    t = type(v)
    if t is bool or ((t is int or t is float) and (v == 0 or v == 1)):
        return float(v)
    return None


def _scalar_column(
    col: list[Any], fast: set[type], read: Callable[[Any], float | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, missing, wrong type) of a numeric or boolean column: when every value's
    type is in ``fast``, one conversion in C; else ``read`` takes each value (None: not of
    the kind)."""
    n = len(col)
    missing = np.zeros(n, dtype=bool)
    wrong = np.zeros(n, dtype=bool)
    if set(map(type, col)) <= fast:
        return np.array(col, dtype=np.float64), missing, wrong
    arr = np.full(n, np.nan)
    for i, v in enumerate(col):
        if v is None:
            missing[i] = True
            continue
        x = read(v)
        if x is None:
            wrong[i] = True
        else:
            arr[i] = x
    return arr, missing, wrong


#: numbers: bools and numeric strings must not be taken for numbers (which
#: ``np.array(..., float)`` would do). Booleans: the numbers 0 and 1 are read too (a
#: boolean kept as a number, as in the scored vector).
_NUMERIC: tuple[set[type], Callable[[Any], float | None]] = ({float, int}, _number)
_BOOLEAN: tuple[set[type], Callable[[Any], float | None]] = ({bool}, _boolean)


def _category_text(v: Any) -> Any:
    """How a non-string value is looked up among the categories (``true``, ``3``)."""
    if type(v) is bool:
        return "true" if v else "false"
    if type(v) is int:
        return str(v)
    return v


def _categorical_column(
    col: list[Any], categories: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    index = {c: float(i) for i, c in enumerate(categories)}
    nan = float("nan")
    arr = np.array([index.get(v, nan) for v in col], dtype=np.float64)
    missing = np.fromiter((v is None for v in col), dtype=bool, count=len(col))
    unknown = np.isnan(arr) & ~missing
    if unknown.any():  # an int or boolean categorical: looked up as its text
        for i in np.flatnonzero(unknown).tolist():
            v = col[i]
            if type(v) is not str and v is not _NOT_A_RECORD:
                arr[i] = index.get(_category_text(v), nan)
        unknown = np.isnan(arr) & ~missing
    return arr, missing, unknown


def _walk(v: Any, parts: Sequence[str]) -> Any:
    """The value at ``parts`` under ``v`` (None where a record on the way is null)."""
    for p in parts:
        if v is None:
            return None
        if type(v) is not dict:
            return _NOT_A_RECORD
        v = v.get(p)
    return v


def _path_column(events: Sequence[Mapping[str, Any]], source: str) -> list[Any]:
    """The values at the dotted path ``source`` of every event."""
    first, *rest = source.split(".")
    if isinstance(events, EventColumns):
        if events.has_field(source):
            return events.values_of(source)
        if not events.has_field(first):
            return [None] * len(events)
        return [_walk(v, rest) for v in events.values_of(first)]
    return [
        _walk(e[first], rest) if first in e else e.get(source)  # a flattened row
        for e in events
    ]


def _column(events: Sequence[Mapping[str, Any]], f: FeatureField) -> np.ndarray | list[Any]:
    """The raw column of ``f``: a NumPy array (numbers or booleans, no nulls) or a list."""
    source = f.source
    if "." in source:
        return _path_column(events, source)
    if isinstance(events, EventColumns):
        return events.column(source) if events.has_field(source) else [None] * len(events)
    return [e.get(source) for e in events]


def extract(events: Sequence[Mapping[str, Any]], spec: FeatureSpec) -> Columns:
    """Pull the spec's columns out of decoded events."""
    n, k = len(events), len(spec.fields)
    values = np.empty((n, k), dtype=np.float64)
    missing = np.zeros((n, k), dtype=bool)
    unknown = np.zeros((n, k), dtype=bool)
    wrong = np.zeros((n, k), dtype=bool)
    for j, f in enumerate(spec.fields):
        arr = _column(events, f)
        if isinstance(arr, np.ndarray):
            # a column-wise decoded column: numbers or booleans, no nulls
            if f.kind is FeatureKind.NUMERIC and arr.dtype.kind in "fiu":
                values[:, j] = arr
                continue
            if f.kind is FeatureKind.BOOLEAN and arr.dtype.kind == "b":
                values[:, j] = arr
                continue
            col: list[Any] = arr.tolist()
        else:
            col = arr
        if f.kind is FeatureKind.CATEGORICAL:
            values[:, j], missing[:, j], unknown[:, j] = _categorical_column(col, f.categories)
        elif f.kind is FeatureKind.BOOLEAN:
            values[:, j], missing[:, j], wrong[:, j] = _scalar_column(col, *_BOOLEAN)
        else:
            values[:, j], missing[:, j], wrong[:, j] = _scalar_column(col, *_NUMERIC)
    return Columns(values, missing, unknown, wrong)


def impute(cols: Columns, spec: FeatureSpec) -> np.ndarray:
    """The model matrix: missing values of ``impute`` fields replaced by their value
    (which may itself be NaN for models that handle missing values natively)."""
    x = cols.values.copy()
    for j, f in enumerate(spec.fields):
        if f.missing is MissingPolicy.IMPUTE:
            fill = cols.missing[:, j] | cols.unknown_category[:, j]
            if fill.any():
                x[fill, j] = f.impute_value
    return x
