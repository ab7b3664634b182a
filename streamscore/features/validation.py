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
    return ValidationResult(valid, errors)


def _message(name: str, why: str, value: float) -> str:
    if why.startswith("is missing") or np.isnan(value):
        return f"field {name!r} {why}"
    return f"field {name!r} = {float(value)!r} {why}"
