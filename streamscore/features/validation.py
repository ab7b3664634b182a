"""Per-batch checks of decoded events against a feature spec.

Each invalid row gets one typed error naming the first field at fault and why (missing,
wrong type, non-finite, out of range, unknown category). All checks are vectorised over
the batch's columns; errors are only built for the rows that fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.errors import (
    MissingFieldError,
    NonFiniteError,
    OutOfRangeError,
    UnknownCategoryError,
    ValidationError,
    WrongTypeError,
)
from ..core.records import FeatureKind, FeatureSpec, MissingPolicy
from .extract import Columns


@dataclass(frozen=True, slots=True)
class ValidationResult:
    valid: np.ndarray  # (n,) bool
    errors: dict[int, ValidationError] = field(default_factory=dict)  # row -> first error

    @property
    def n_invalid(self) -> int:
        return len(self.errors)


def validate(cols: Columns, spec: FeatureSpec) -> ValidationResult:
    n = cols.n
    valid = np.ones(n, dtype=bool)
    errors: dict[int, ValidationError] = {}
    if n == 0:
        return ValidationResult(valid, errors)
    # one pass over the whole matrix finds the rows with any fault; the field-by-field
    # checks (which say which field is at fault, and why) run on those rows only
    bad_rows = np.flatnonzero(_faults(cols, _Rules.of(spec)).any(axis=1))
    if bad_rows.size == 0:
        return ValidationResult(valid, errors)
    sub = Columns(
        cols.values[bad_rows],
        cols.missing[bad_rows],
        cols.unknown_category[bad_rows],
        cols.wrong_type[bad_rows],
    )
    sub_valid = np.ones(bad_rows.size, dtype=bool)
    for i, err in first_errors(sub, spec, sub_valid).items():
        errors[int(bad_rows[i])] = err
    valid[bad_rows[~sub_valid]] = False
    return ValidationResult(valid, errors)


@dataclass(frozen=True, slots=True)
class _Rules:
    """A spec's checks as per-column vectors (one entry per feature)."""

    reject: np.ndarray  # bool: missing and unknown categories are faults
    numeric: np.ndarray  # bool: non-finite and out-of-range values are faults
    lo: np.ndarray  # float: the minimum (-inf when none)
    hi: np.ndarray  # float: the maximum (+inf when none)

    @staticmethod
    def of(spec: FeatureSpec) -> _Rules:
        fields = spec.fields
        return _Rules(
            np.array([f.missing is MissingPolicy.REJECT for f in fields], dtype=bool),
            np.array([f.kind is FeatureKind.NUMERIC for f in fields], dtype=bool),
            np.array([-np.inf if f.minimum is None else f.minimum for f in fields]),
            np.array([np.inf if f.maximum is None else f.maximum for f in fields]),
        )


def _faults(cols: Columns, rules: _Rules) -> np.ndarray:
    """(n, k) bool: where a value breaks its feature's rules (any of them)."""
    absent = cols.missing | cols.wrong_type
    faults: np.ndarray = cols.wrong_type | ((cols.missing | cols.unknown_category) & rules.reject)
    vals = cols.values
    with np.errstate(invalid="ignore"):
        in_range = np.isfinite(vals) & (vals >= rules.lo) & (vals <= rules.hi)
    faults |= ~absent & ~in_range & rules.numeric
    return faults


def first_errors(cols: Columns, spec: FeatureSpec, valid: np.ndarray) -> dict[int, ValidationError]:
    """Each invalid row's first fault, field by field in spec order (``valid`` is
    cleared where a row fails)."""
    errors: dict[int, ValidationError] = {}
    vals = cols.values
    finite = np.isfinite(vals)

    def flag(mask: np.ndarray, make: type[ValidationError], j: int, why: str) -> None:
        # only rows not already invalid: the first failing field is the one reported
        rows = np.flatnonzero(mask & valid)
        if rows.size == 0:
            return
        name = spec.fields[j].name
        for i in rows.tolist():
            errors[i] = make(_message(name, why, vals[i, j]), field=name)
        valid[rows] = False

    for j, f in enumerate(spec.fields):
        what = "a boolean" if f.kind is FeatureKind.BOOLEAN else "a number"
        flag(cols.wrong_type[:, j], WrongTypeError, j, f"is not {what}")
        if f.missing is MissingPolicy.REJECT:
            flag(cols.missing[:, j], MissingFieldError, j, "is missing and the spec requires it")
            flag(cols.unknown_category[:, j], UnknownCategoryError, j, "is not a known category")
        if f.kind is FeatureKind.NUMERIC:
            present = ~cols.missing[:, j] & ~cols.wrong_type[:, j]
            flag(present & ~finite[:, j], NonFiniteError, j, "is not finite")
            col = vals[:, j]
            with np.errstate(invalid="ignore"):
                if f.minimum is not None:
                    flag(present & (col < f.minimum), OutOfRangeError, j, f"is below {f.minimum}")
                if f.maximum is not None:
                    flag(present & (col > f.maximum), OutOfRangeError, j, f"is above {f.maximum}")
    return errors


def _message(name: str, why: str, value: float) -> str:
    if why.startswith("is missing") or np.isnan(value):
        return f"field {name!r} {why}"
    return f"field {name!r} = {float(value)!r} {why}"
