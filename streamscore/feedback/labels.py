"""Labels in the user's own schema: a decoded label record read as a
:class:`~streamscore.core.records.Feedback`, by the field names the project file's
``[labels]`` gives. Pure: no Kafka imports.

Without a ``[labels]`` table, labels follow the project's own feedback schema
(``schemas/feedback.v1.avsc``: ``event_id``, ``label``, ``observed_time``), read by the
same code with those names (:data:`FEEDBACK_FIELDS`).

What a label may be, by task:

* ``binary`` / ``multiclass``: a string (or an Avro enum symbol), an int/long, or a
  boolean; it becomes its class name as the model's classes are written (``"1"``,
  ``"Adelie"``, ``"true"``/``"false"`` for booleans);
* ``regression``: an int/long, float or double that is finite.

A record that lacks a field, holds another type, or a value that cannot be a label
raises the typed error that says which field and why
(:class:`~streamscore.core.errors.MissingFieldError`,
:class:`~streamscore.core.errors.WrongTypeError`,
:class:`~streamscore.core.errors.BadLabelError`); the feedback loop dead-letters that
message. The field names are looked up once, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.columns import EventColumns
from ..core.config import TimeEncoding
from ..core.errors import BadLabelError, MissingFieldError, StreamscoreError, WrongTypeError
from ..core.records import Feedback, Position, make_feedback
from ..features.event_fields import event_ids, event_times_ms

#: the longest class name a label may carry (characters)
MAX_CLASS_CHARS = 256

CLASS_TASKS = frozenset({"binary", "multiclass"})
TASKS = frozenset({*CLASS_TASKS, "regression"})


def class_name(v: Any) -> str:
    """A label value as the class name the model's classes use: booleans as
    ``true``/``false``, integers (and integral floats) in decimal, strings as they are.
    Training (the ground-truth labels) and the live metrics both go through this."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


@dataclass(frozen=True, slots=True)
class LabelFields:
    """Which fields of a label record are the event id, the label and the time it was
    observed (None: the message's timestamp), and what the label is (``binary``,
    ``multiclass`` or ``regression``)."""

    id_field: str = "event_id"
    label_field: str = "label"
    time_field: str | None = "observed_time"
    time_encoding: TimeEncoding = TimeEncoding.TIMESTAMP_MILLIS
    task: str = "any"  # the feedback schema: a number or a class, as written

    def __post_init__(self) -> None:
        if self.task not in TASKS | {"any"}:
            raise ValueError(f"unknown label task {self.task!r}")

    @classmethod
    def of(cls, settings: Any) -> LabelFields:
        """From the project file's ``[labels]`` settings (``LabelSettings``)."""
        return cls(
            id_field=settings.id_field,
            label_field=settings.label_field,
            time_field=settings.time_field,
            time_encoding=TimeEncoding(settings.time_encoding),
            task=str(getattr(settings.task, "value", settings.task)),
        )


#: the project's own feedback schema
FEEDBACK_FIELDS = LabelFields()


class LabelReader:
    """``reader(record, position, timestamp_ms) -> Feedback`` (module doc)."""

    def __init__(self, fields: LabelFields = FEEDBACK_FIELDS) -> None:
        self.fields = fields

    def __call__(
        self,
        record: Mapping[str, Any],
        position: Position | None = None,
        timestamp_ms: int | None = None,
    ) -> Feedback:
        (lab,) = self.read_many([record], [position], [timestamp_ms])
        if isinstance(lab, StreamscoreError):
            raise lab
        return lab

    def read_many(
        self,
        records: Sequence[Mapping[str, Any]],
        positions: Sequence[Position | None],
        timestamps_ms: Sequence[int | None],
    ) -> list[Feedback | StreamscoreError]:
        """A batch of label records read at once (the id and time columns in one pass
        each): each one's :class:`Feedback`, or the typed error that says why it is not
        a label (the id checked first, then the time, then the label)."""
        f = self.fields
        ids, bad_ids = event_ids(records, f.id_field)
        times: list[int] = []
        bad_times: dict[int, StreamscoreError] = {}
        if f.time_field is None:
            for i, ts in enumerate(timestamps_ms):
                if ts is None or ts < 0:
                    bad_times[i] = MissingFieldError(
                        "the label message has no timestamp (and [labels] names no time_field)",
                        field="timestamp",
                    )
                    times.append(0)
                else:
                    times.append(int(ts))
        else:
            col, bad_times = event_times_ms(records, f.time_field, f.time_encoding)
            times = col.tolist()
        out: list[Feedback | StreamscoreError] = []
        label = self._label
        numbers = self.fields.task in ("regression", "any")
        isfinite = math.isfinite
        for i, v in enumerate(self._label_column(records)):
            err = bad_ids.get(i) if bad_ids else None
            if err is None and bad_times:
                err = bad_times.get(i)
            if err is not None:
                out.append(err)
                continue
            try:  # a finite float is a number label as it is (the usual case)
                y = v if numbers and type(v) is float and isfinite(v) else label(v)
                out.append(make_feedback(ids[i], y, times[i], positions[i]))
            except StreamscoreError as exc:
                out.append(exc)
        return out

    def _label_column(self, records: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Each record's label value (None where it has none), one column."""
        name = self.fields.label_field
        if isinstance(records, EventColumns):
            return records.values_of(name) if records.has_field(name) else [None] * len(records)
        return [r.get(name) for r in records]

    def _label(self, v: Any) -> float | str:
        name, task = self.fields.label_field, self.fields.task
        if v is None:
            raise MissingFieldError(f"the label record has no {name!r}", field=name)
        if task == "regression" or (task == "any" and not isinstance(v, str)):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise WrongTypeError(
                    f"label {name!r} is {type(v).__name__}, not a number (regression)",
                    field=name,
                )
            y = float(v)
            if not math.isfinite(y):
                raise BadLabelError(f"label {name!r} is not a finite number: {y}", field=name)
            return y
        if not isinstance(v, str | int):  # bool is an int
            raise WrongTypeError(
                f"label {name!r} is {type(v).__name__}, not a class "
                f"(a string, an enum, an integer or a boolean; task {task})",
                field=name,
            )
        c = class_name(v)
        if not c or len(c) > MAX_CLASS_CHARS:
            raise BadLabelError(
                f"label {name!r} is {len(c)} characters long; a class name has 1 to "
                f"{MAX_CLASS_CHARS}",
                field=name,
            )
        return c
