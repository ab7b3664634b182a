"""Event batch -> feature matrix. The one code path shared by serving and training.

Column ``j`` of every matrix is ``spec.fields[j]``. Numeric fields become float64;
categorical fields become the index of the value in ``FeatureField.categories`` (as a
float). Missing values (absent or null) and unknown categories are NaN in
:attr:`Columns.values` and flagged in their masks; :func:`impute` then applies each
field's missing-value policy. Work is per column, never per event and field in Python
beyond the one list comprehension that pulls a column out of the decoded dicts; events
decoded column-wise (:class:`~streamscore.core.columns.EventColumns`, what the worker's
batch decoder gives) hand their numeric columns over as arrays, with no per-event work at
all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.columns import EventColumns
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
