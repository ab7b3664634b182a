"""Event batch -> feature matrix. The one code path shared by serving and training.

Column ``j`` of every matrix is ``spec.fields[j]``. Numeric fields become float64;
categorical fields become the index of the value in ``FeatureField.categories`` (as a
float). Missing values (absent or null) and unknown categories are NaN in
:attr:`Columns.values` and flagged in their masks; :func:`impute` then applies each
field's missing-value policy. Work is per column, never per event and field in Python
beyond the one list comprehension that pulls a column out of the decoded dicts; events
decoded column-wise (:class:`EventColumns`, what the worker's batch decoder gives) hand
their numeric columns over as arrays, with no per-event work at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from ..core.records import FeatureKind, FeatureSpec, MissingPolicy


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


class EventColumns(Sequence[Mapping[str, Any]]):
    """Decoded events held column-wise, as a batch decoder produces them.

    Behaves as a sequence of event dicts (``events[i]`` builds one, with the same Python
    types a per-message decode gives), and lets the hot path read whole columns without
    building any: :func:`extract` takes numeric columns as they are. A column is a NumPy
    array (numbers or booleans, no nulls) or a list of Python values (anything else;
    ``None`` for null). Every column has one entry per event; ``names`` is the field
    order of the event schema."""

    __slots__ = ("_cols", "_n", "names")

    def __init__(self, n: int, columns: Mapping[str, np.ndarray | list[Any]]) -> None:
        for name, col in columns.items():
            if len(col) != n:
                raise ValueError(f"column {name!r} has {len(col)} entries, expected {n}")
        self._n = n
        self._cols = dict(columns)
        self.names = tuple(columns)

    def __len__(self) -> int:
        return self._n

    def has_field(self, name: str) -> bool:
        return name in self._cols

    def column(self, name: str) -> np.ndarray | list[Any]:
        return self._cols[name]

    def values_of(self, name: str) -> list[Any]:
        """The column as Python values (as the event dicts hold them)."""
        col = self._cols[name]
        return col.tolist() if isinstance(col, np.ndarray) else col

    def take(self, rows: Sequence[int] | np.ndarray) -> EventColumns:
        """The events at ``rows``, in that order."""
        idx = np.asarray(rows, dtype=np.intp)
        take = idx.tolist()
        return EventColumns(
            len(take),
            {
                name: col[idx] if isinstance(col, np.ndarray) else [col[i] for i in take]
                for name, col in self._cols.items()
            },
        )

    def rows(self) -> list[dict[str, Any]]:
        """Every event as a dict."""
        cols = [self.values_of(name) for name in self.names]
        return [dict(zip(self.names, vals, strict=True)) for vals in zip(*cols, strict=True)]

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("event index out of range")
        return {
            name: col[i].item() if isinstance(col, np.ndarray) else col[i]
            for name, col in self._cols.items()
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows())


def field_values(events: Sequence[Mapping[str, Any]], name: str) -> list[Any]:
    """``[e[name] for e in events]`` (a column read, for :class:`EventColumns`)."""
    if isinstance(events, EventColumns):
        return events.values_of(name)
    return [e[name] for e in events]


def take_events(
    events: Sequence[Mapping[str, Any]], rows: Sequence[int]
) -> Sequence[Mapping[str, Any]]:
    """``[events[i] for i in rows]``, column-wise for :class:`EventColumns`."""
    if isinstance(events, EventColumns):
        return events.take(rows)
    return [events[i] for i in rows]


_NUMBER_TYPES = {float, int}


def _numeric_column(col: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(col)
    missing = np.zeros(n, dtype=bool)
    wrong = np.zeros(n, dtype=bool)
    # Fast path: every value is a float or int (bools and numeric strings must not be
    # taken for numbers, which np.array(..., float) would do).
    if set(map(type, col)) <= _NUMBER_TYPES:
        return np.array(col, dtype=np.float64), missing, wrong
    arr = np.full(n, np.nan)
    for i, v in enumerate(col):
        t = type(v)
        if v is None:
            missing[i] = True
        elif t is float or t is int:
            arr[i] = v
        else:
            wrong[i] = True
    return arr, missing, wrong


def _categorical_column(
    col: list[Any], categories: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    index = {c: float(i) for i, c in enumerate(categories)}
    nan = float("nan")
    arr = np.array([index.get(v, nan) for v in col], dtype=np.float64)
    missing = np.fromiter((v is None for v in col), dtype=bool, count=len(col))
    unknown = np.isnan(arr) & ~missing
    return arr, missing, unknown


def extract(events: Sequence[Mapping[str, Any]], spec: FeatureSpec) -> Columns:
    """Pull the spec's columns out of decoded events."""
    n, k = len(events), len(spec.fields)
    values = np.empty((n, k), dtype=np.float64)
    missing = np.zeros((n, k), dtype=bool)
    unknown = np.zeros((n, k), dtype=bool)
    wrong = np.zeros((n, k), dtype=bool)
    columnar = isinstance(events, EventColumns)
    for j, f in enumerate(spec.fields):
        name = f.name
        if columnar:
            assert isinstance(events, EventColumns)
            if not events.has_field(name):
                col: list[Any] = [None] * n
            else:
                arr = events.column(name)
                if (
                    f.kind is FeatureKind.NUMERIC
                    and isinstance(arr, np.ndarray)
                    and arr.dtype.kind in "fiu"
                ):
                    values[:, j] = arr  # numbers, no nulls: nothing missing or mistyped
                    continue
                col = arr.tolist() if isinstance(arr, np.ndarray) else arr
        else:
            col = [e.get(name) for e in events]
        if f.kind is FeatureKind.CATEGORICAL:
            values[:, j], missing[:, j], unknown[:, j] = _categorical_column(col, f.categories)
        else:
            values[:, j], missing[:, j], wrong[:, j] = _numeric_column(col)
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
