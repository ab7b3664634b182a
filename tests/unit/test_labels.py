"""Labels in the user's own schema: field names from [labels], typed errors per record."""

from __future__ import annotations

import pytest

from streamscore.core.config import TimeEncoding
from streamscore.core.errors import BadLabelError, MissingFieldError, WrongTypeError
from streamscore.feedback.labels import FEEDBACK_FIELDS, LabelFields, LabelReader, class_name

BINARY = LabelFields("sample", "outcome", "diagnosed_at", TimeEncoding.TIMESTAMP_MILLIS, "binary")
MULTI = LabelFields("band", "species", "called_at_ms", TimeEncoding.EPOCH_MILLIS, "multiclass")
REGRESSION = LabelFields("ref", "amount", "at", TimeEncoding.TIMESTAMP_MICROS, "regression")


def test_user_field_names_and_every_label_kind() -> None:
    lab = LabelReader(BINARY)({"sample": "b1", "outcome": "malignant", "diagnosed_at": 5}, None)
    assert (lab.event_id, lab.label, lab.observed_time_ms) == ("b1", "malignant", 5)
    # an integer id reads as its decimal string (the prediction's event_id)
    lab = LabelReader(MULTI)({"band": 42, "species": "Gentoo", "called_at_ms": 7})
    assert (lab.event_id, lab.label) == ("42", "Gentoo")
    # integer and boolean classes, as the model's classes are written
    assert LabelReader(MULTI)({"band": 1, "species": 3, "called_at_ms": 7}).label == "3"
    assert LabelReader(BINARY)({"sample": "x", "outcome": True, "diagnosed_at": 1}).label == "true"
    lab = LabelReader(REGRESSION)({"ref": "r", "amount": 12, "at": 3_000_000})
    assert lab.label == 12.0 and isinstance(lab.label, float) and lab.observed_time_ms == 3000
    assert [class_name(v) for v in (False, 2.0, 2.5, "x")] == ["false", "2", "2.5", "x"]


def test_feedback_schema_is_the_default() -> None:
    read = LabelReader()
    assert read.fields == FEEDBACK_FIELDS
    lab = read({"event_id": "e", "label": 2.5, "observed_time": 9})
    assert (lab.event_id, lab.label, lab.observed_time_ms) == ("e", 2.5, 9)
    assert read({"event_id": "e", "label": "yes", "observed_time": 9}).label == "yes"


def test_message_timestamp_when_no_time_field() -> None:
    fields = LabelFields("id", "y", None, TimeEncoding.TIMESTAMP_MILLIS, "binary")
    assert LabelReader(fields)({"id": "a", "y": "1"}, None, 1234).observed_time_ms == 1234
    with pytest.raises(MissingFieldError):
        LabelReader(fields)({"id": "a", "y": "1"}, None, None)


@pytest.mark.parametrize(
    ("fields", "record", "error", "field"),
    [
        (BINARY, {"outcome": "benign", "diagnosed_at": 1}, MissingFieldError, "sample"),
        (
            BINARY,
            {"sample": None, "outcome": "benign", "diagnosed_at": 1},
            MissingFieldError,
            "sample",
        ),
        (BINARY, {"sample": "s", "diagnosed_at": 1}, MissingFieldError, "outcome"),
        (BINARY, {"sample": "s", "outcome": None, "diagnosed_at": 1}, MissingFieldError, "outcome"),
        (BINARY, {"sample": "s", "outcome": "benign"}, MissingFieldError, "diagnosed_at"),
        (BINARY, {"sample": "s", "outcome": 0.5, "diagnosed_at": 1}, WrongTypeError, "outcome"),
        (
            BINARY,
            {"sample": "s", "outcome": "x" * 300, "diagnosed_at": 1},
            BadLabelError,
            "outcome",
        ),
        (BINARY, {"sample": "s", "outcome": "", "diagnosed_at": 1}, BadLabelError, "outcome"),
        (
            BINARY,
            {"sample": "s", "outcome": "b", "diagnosed_at": "t"},
            WrongTypeError,
            "diagnosed_at",
        ),
        (REGRESSION, {"ref": "r", "amount": "12", "at": 1}, WrongTypeError, "amount"),
        (REGRESSION, {"ref": "r", "amount": True, "at": 1}, WrongTypeError, "amount"),
        (REGRESSION, {"ref": "r", "amount": float("nan"), "at": 1}, BadLabelError, "amount"),
    ],
)
def test_a_record_that_does_not_fit_is_a_typed_error(
    fields: LabelFields, record: dict[str, object], error: type[Exception], field: str
) -> None:
    with pytest.raises(error) as ei:
        LabelReader(fields)(record)
    assert getattr(ei.value, "field", None) == field
