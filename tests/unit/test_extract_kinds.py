"""Feature extraction of every kind: numeric, boolean (0.0/1.0), categorical from a string
or an Avro enum, and dotted paths into nested records; the same from decoded dicts and
from column-wise decoded events, flat numeric and boolean columns taken as arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamscore.core.columns import EventColumns
from streamscore.core.errors import IncompatibleFeatureSpecError
from streamscore.core.records import FeatureField, FeatureKind, FeatureSpec, MissingPolicy
from streamscore.features import extract as extract_mod
from streamscore.features.extract import extract, impute
from streamscore.features.validation import validate
from streamscore.models.compat import check_feature_compat, reader_fields_from_schema

NAN = math.nan
SPEC = FeatureSpec(
    (
        FeatureField("amount"),
        FeatureField("is_new", FeatureKind.BOOLEAN, missing=MissingPolicy.IMPUTE, impute_value=0.0),
        FeatureField("country", FeatureKind.CATEGORICAL, categories=("FR", "DE")),
        FeatureField(
            "os", FeatureKind.CATEGORICAL, categories=("ios", "android"), path="device.os"
        ),
        FeatureField(
            "width", path="device.screen.width", missing=MissingPolicy.IMPUTE, impute_value=-1.0
        ),
    )
)


def _matrix(events: list[dict[str, object]]) -> np.ndarray:
    return extract(events, SPEC).values


def test_each_kind_from_decoded_events() -> None:
    events = [
        {
            "amount": 3,
            "is_new": True,
            "country": "DE",
            "device": {"os": "android", "screen": {"width": 320}},
        },
        {"amount": 2.5, "is_new": False, "country": "FR", "device": {"os": "ios", "screen": None}},
        {"amount": 1.0, "is_new": None, "country": "IT", "device": None},
    ]
    cols = extract(events, SPEC)
    np.testing.assert_array_equal(
        cols.values,
        [[3.0, 1.0, 1.0, 1.0, 320.0], [2.5, 0.0, 0.0, 0.0, NAN], [1.0, NAN, NAN, NAN, NAN]],
    )
    np.testing.assert_array_equal(cols.missing[:, 1], [False, False, True])
    np.testing.assert_array_equal(cols.missing[:, 3], [False, False, True])  # null record
    np.testing.assert_array_equal(cols.missing[:, 4], [False, True, True])
    np.testing.assert_array_equal(cols.unknown_category[:, 2], [False, False, True])
    x = impute(cols, SPEC)
    assert x[2, 1] == 0.0 and x[1, 4] == -1.0 and x[2, 4] == -1.0
    res = validate(cols, SPEC)
    assert res.valid.tolist() == [True, True, False]
    assert type(res.errors[2]).__name__ == "UnknownCategoryError"  # 'IT'


def test_wrong_types_are_flagged_per_kind() -> None:
    events = [
        {"amount": True, "is_new": "yes", "country": "FR", "device": {"os": "ios"}},
        {"amount": 1.0, "is_new": 2, "country": "FR", "device": "not a record"},
    ]
    cols = extract(events, SPEC)
    assert cols.wrong_type[:, 0].tolist() == [True, False]  # a bool is not a number
    assert cols.wrong_type[:, 1].tolist() == [True, True]  # only 0/1 read as booleans
    assert cols.wrong_type[:, 4].tolist() == [False, True]  # a path through a string
    res = validate(cols, SPEC)
    assert str(res.errors[0]) == "field 'amount' is not a number"
    assert str(res.errors[1]) == "field 'is_new' is not a boolean"


def test_booleans_kept_as_numbers_and_flattened_rows_read_back() -> None:
    rows = [
        {
            "amount": 1.0,
            "is_new": 1.0,
            "country": "FR",
            "device.os": "ios",
            "device.screen.width": 10,
        }
    ]
    np.testing.assert_array_equal(_matrix(rows), [[1.0, 1.0, 0.0, 0.0, 10.0]])


def test_int_and_boolean_categoricals_are_looked_up_as_text() -> None:
    spec = FeatureSpec(
        (
            FeatureField("level", FeatureKind.CATEGORICAL, categories=("1", "2", "3")),
            FeatureField("flag", FeatureKind.CATEGORICAL, categories=("false", "true")),
        )
    )
    cols = extract([{"level": 3, "flag": True}, {"level": 9, "flag": False}], spec)
    np.testing.assert_array_equal(cols.values, [[2.0, 1.0], [NAN, 0.0]])
    assert cols.unknown_category[:, 0].tolist() == [False, True]


def test_column_wise_events_give_the_same_matrix_and_take_arrays_as_they_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = FeatureSpec(SPEC.fields[:3])
    rows = [
        {"amount": float(i), "is_new": i % 2 == 0, "country": ("FR", "DE")[i % 2]}
        for i in range(20)
    ]
    columns = EventColumns(
        20,
        {
            "amount": np.arange(20, dtype=np.float64),
            "is_new": np.array([i % 2 == 0 for i in range(20)]),
            "country": [r["country"] for r in rows],  # an enum column: symbols
        },
    )
    expected = extract(rows, spec).values

    def no_per_value_work(*args: object) -> None:
        raise AssertionError("an array column went through the per-value path")

    monkeypatch.setattr(extract_mod, "_scalar_column", no_per_value_work)
    np.testing.assert_array_equal(extract(columns, spec).values, expected)
    assert expected[:2].tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]


def test_a_dotted_path_on_column_wise_events() -> None:
    spec = FeatureSpec((SPEC.fields[3],))
    events = EventColumns(2, {"device": [{"os": "ios"}, None]})
    cols = extract(events, spec)
    np.testing.assert_array_equal(cols.values[:, 0], [0.0, NAN])
    assert cols.missing[:, 0].tolist() == [False, True]


SCHEMA = {
    "type": "record",
    "name": "E",
    "fields": [
        {"name": "amount", "type": "double"},
        {"name": "is_new", "type": "boolean"},
        {"name": "country", "type": {"type": "enum", "name": "C", "symbols": ["FR", "DE"]}},
        {
            "name": "device",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "D",
                    "fields": [
                        {"name": "os", "type": "string"},
                        {
                            "name": "screen",
                            "type": {
                                "type": "record",
                                "name": "S",
                                "fields": [{"name": "width", "type": "int"}],
                            },
                        },
                    ],
                },
            ],
        },
    ],
}


def test_a_worker_accepts_a_model_reading_nested_and_boolean_fields() -> None:
    fields = reader_fields_from_schema(SCHEMA)
    assert fields["device.os"] == "string?" and fields["device.screen.width"] == "int?"
    check_feature_compat(SPEC, fields)  # raises when it cannot be fed
    bad = FeatureSpec((FeatureField("x", FeatureKind.BOOLEAN, path="device.os"),))
    with pytest.raises(
        IncompatibleFeatureSpecError,
        match=r"feature 'x' \(at 'device.os'\) is "
        r"boolean but the event field has Avro type 'string'",
    ):
        check_feature_compat(bad, fields)
    gone = FeatureSpec((FeatureField("y", path="device.gpu"),))
    with pytest.raises(IncompatibleFeatureSpecError, match="not a field of the event reader"):
        check_feature_compat(gone, fields)


def test_prediction_inputs_keep_nested_fields_by_dotted_name_and_booleans_as_numbers() -> None:
    from streamscore.score.batch import _inputs

    spec = FeatureSpec((SPEC.fields[0], SPEC.fields[1], SPEC.fields[3]))
    events = [
        {
            "id": "e1",
            "amount": 1.0,
            "is_new": True,
            "flag": False,
            "country": "FR",
            "device": {"os": "ios", "screen": {"width": 3}},
        }
    ]
    missing = np.zeros((1, 3), dtype=bool)
    rows = _inputs(events, spec, missing, frozenset({"id"}))
    # the vector holds amount and is_new; the rest as it was, nested by dotted name
    assert rows == [{"flag": 0.0, "country": "FR", "device.os": "ios", "device.screen.width": 3.0}]
    # read back through the same extraction: the row as ground truth would keep it
    back = {"amount": 1.0, "is_new": 1.0, **rows[0]}
    np.testing.assert_array_equal(extract([back], spec).values, [[1.0, 1.0, 0.0]])
