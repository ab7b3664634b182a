from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from streamscore.core import errors
from streamscore.core.records import FeatureField, FeatureKind, FeatureSpec, MissingPolicy
from streamscore.features import extract as features
from streamscore.features import prepare, validation


@pytest.fixture
def spec() -> FeatureSpec:
    return FeatureSpec(
        (
            FeatureField("a", minimum=-100.0, maximum=100.0),
            FeatureField("b"),
            FeatureField("c", missing=MissingPolicy.IMPUTE),
            FeatureField(
                "segment",
                kind=FeatureKind.CATEGORICAL,
                categories=("retail", "pro"),
                missing=MissingPolicy.IMPUTE,
                impute_value=-1.0,
            ),
        )
    )


def ev(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"a": 1.0, "b": 2.0, "c": 3.0, "segment": "pro"}
    base.update(kw)
    return base


def run(events: list[dict[str, Any]], spec: FeatureSpec) -> validation.ValidationResult:
    return validation.validate(features.extract(events, spec), spec)


def test_valid_batch_builds_matrix_in_spec_order(spec: FeatureSpec) -> None:
    cols = features.extract([ev(), ev(a=-5, segment="retail")], spec)
    assert validation.validate(cols, spec).valid.all()
    x = features.impute(cols, spec)
    np.testing.assert_array_equal(x, [[1.0, 2.0, 3.0, 1.0], [-5.0, 2.0, 3.0, 0.0]])


@pytest.mark.parametrize(
    ("event", "kind", "field"),
    [
        (ev(a=None), errors.MissingFieldError, "a"),
        ({"b": 2.0}, errors.MissingFieldError, "a"),
        (ev(b="2.0"), errors.WrongTypeError, "b"),
        (ev(b=True), errors.WrongTypeError, "b"),
        (ev(a=math.nan), errors.NonFiniteError, "a"),
        (ev(b=math.inf), errors.NonFiniteError, "b"),
        (ev(b=-math.inf), errors.NonFiniteError, "b"),
        (ev(a=100.5), errors.OutOfRangeError, "a"),
        (ev(a=-1e9), errors.OutOfRangeError, "a"),
    ],
)
def test_each_bad_value_gets_its_typed_error(
    spec: FeatureSpec, event: dict[str, Any], kind: type[errors.ValidationError], field: str
) -> None:
    result = run([ev(), event, ev()], spec)
    assert result.valid.tolist() == [True, False, True]
    assert set(result.errors) == {1}
    err = result.errors[1]
    assert type(err) is kind
    assert err.field == field
    assert field in str(err)


def test_first_failing_field_is_reported(spec: FeatureSpec) -> None:
    result = run([ev(a=None, b=math.nan)], spec)
    assert type(result.errors[0]) is errors.MissingFieldError
    assert result.errors[0].field == "a"


def test_imputed_fields_fill_missing_and_unknown(spec: FeatureSpec) -> None:
    cols = features.extract([ev(c=None, segment=None), ev(segment="internal")], spec)
    assert validation.validate(cols, spec).valid.all()
    x = features.impute(cols, spec)
    assert math.isnan(x[0, 2])  # impute_value NaN (for models that handle missing values)
    assert x[0, 3] == -1.0
    assert x[1, 3] == -1.0


def test_unknown_category_rejected_when_policy_rejects() -> None:
    spec = FeatureSpec((FeatureField("s", kind=FeatureKind.CATEGORICAL, categories=("x",)),))
    result = run([{"s": "x"}, {"s": "y"}], spec)
    assert result.valid.tolist() == [True, False]
    assert type(result.errors[1]) is errors.UnknownCategoryError


def test_from_rows_uses_the_serving_checks(spec: FeatureSpec) -> None:
    x, valid = prepare.from_rows([ev(), ev(a=500.0), ev(b=None)], spec)
    assert valid.tolist() == [True, False, False]
    assert x.shape == (1, 4)


def test_empty_batch(spec: FeatureSpec) -> None:
    cols = features.extract([], spec)
    assert validation.validate(cols, spec).valid.shape == (0,)
    assert features.impute(cols, spec).shape == (0, 4)


def test_ints_are_numbers(spec: FeatureSpec) -> None:
    cols = features.extract([ev(a=3, b=4)], spec)
    assert validation.validate(cols, spec).valid.all()
    assert features.impute(cols, spec)[0, :2].tolist() == [3.0, 4.0]


def test_spec_round_trips_and_refuses_duplicates(spec: FeatureSpec) -> None:
    assert FeatureSpec.from_dict(spec.to_dict()) == FeatureSpec.from_dict(
        FeatureSpec.from_dict(spec.to_dict()).to_dict()
    )
    assert FeatureSpec.from_dict(spec.to_dict()).names == ("a", "b", "c", "segment")
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSpec((FeatureField("a"), FeatureField("a")))


def test_the_batch_screen_finds_exactly_the_rows_the_field_checks_reject() -> None:
    """validate() screens the whole matrix at once and explains only the rows it flags:
    on random batches mixing every fault, its errors are the field-by-field checks' own
    (same rows, same first field, same type)."""
    spec = FeatureSpec(
        (
            FeatureField("lo", minimum=-1.0),
            FeatureField("hi", maximum=1.0, missing=MissingPolicy.IMPUTE),
            FeatureField("free"),
            FeatureField("flag", kind=FeatureKind.BOOLEAN),
            FeatureField(
                "cat",
                kind=FeatureKind.CATEGORICAL,
                categories=("x", "y"),
                missing=MissingPolicy.REJECT,
            ),
            FeatureField(
                "soft",
                kind=FeatureKind.CATEGORICAL,
                categories=("x",),
                missing=MissingPolicy.IMPUTE,
            ),
        )
    )
    rng = np.random.default_rng(7)
    numbers = [0.5, -0.5, -3.0, 3.0, math.inf, -math.inf, math.nan, None, "text"]
    flags = [True, False, None, "yes", 2]
    cats = ["x", "y", "z", None]
    for _ in range(30):
        n = int(rng.integers(1, 60))
        events = [
            {
                "lo": numbers[rng.integers(len(numbers))],
                "hi": numbers[rng.integers(len(numbers))],
                "free": numbers[rng.integers(len(numbers))],
                "flag": flags[rng.integers(len(flags))],
                "cat": cats[rng.integers(len(cats))],
                "soft": cats[rng.integers(len(cats))],
            }
            for _ in range(n)
        ]
        cols = features.extract(events, spec)
        got = validation.validate(cols, spec)
        every_row = np.ones(n, dtype=bool)
        want = validation.first_errors(cols, spec, every_row)
        assert sorted(got.errors) == sorted(want)
        assert (got.valid == every_row).all()
        for i, err in want.items():
            assert type(got.errors[i]) is type(err) and got.errors[i].field == err.field
            assert str(got.errors[i]) == str(err)
        assert got.n_invalid > 0 or n < 5  # the draw does make faults
