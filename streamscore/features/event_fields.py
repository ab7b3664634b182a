"""The event's own id, time and key, read by the names the project file gives them
(:class:`~streamscore.core.config.EventFields`), once per batch. Pure: NumPy only.

:func:`event_times_ms` converts the time column to epoch milliseconds vectorised (an
integer column as it is, or one integer division for ``timestamp-micros``); only the
``iso-8601`` encoding parses per event. :func:`event_ids` reads the id column as strings
(the prediction's ``event_id``). A value that cannot be read is that event's typed error,
by row, for the dead-letter topic; the others are untouched.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..core.columns import EventColumns
from ..core.config import TimeEncoding
from ..core.errors import BadEventTimeError, MissingFieldError, StreamscoreError, WrongTypeError

#: The bounds of a representable time: years 1..9999 (what ``datetime`` reads), in ms.
_MIN_MS = -62_135_596_800_000
_MAX_MS = 253_402_300_799_999

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _column(events: Sequence[Mapping[str, Any]], name: str) -> np.ndarray | list[Any] | None:
    """The ``name`` column of ``events`` (None: no event has the field at all)."""
    if isinstance(events, EventColumns):
        return events.column(name) if events.has_field(name) else None
    return [e.get(name) for e in events]


def _missing(name: str, what: str) -> MissingFieldError:
    return MissingFieldError(f"the event has no {what} (field {name!r})", field=name)


def event_times_ms(
    events: Sequence[Mapping[str, Any]], name: str, encoding: TimeEncoding
) -> tuple[np.ndarray, dict[int, StreamscoreError]]:
    """Every event's time in epoch milliseconds (int64; 0 at a bad row) and the typed
    error of each row whose ``name`` field cannot be read with ``encoding``."""
    n = len(events)
    col = _column(events, name)
    if col is None:
        err = _missing(name, "time")
        return np.zeros(n, dtype=np.int64), dict.fromkeys(range(n), err)
    if encoding is TimeEncoding.ISO_8601:
        return _iso_times(col, name)
    if isinstance(col, np.ndarray) and col.dtype.kind in "iu":
        raw = col.astype(np.int64, copy=False)
        bad: dict[int, StreamscoreError] = {}
    else:
        raw, bad = _integers(col, name, encoding)
    if encoding is TimeEncoding.TIMESTAMP_MICROS:
        return raw // 1000, bad
    return raw, bad


def _integers(
    col: np.ndarray | list[Any], name: str, encoding: TimeEncoding
) -> tuple[np.ndarray, dict[int, StreamscoreError]]:
    values = col.tolist() if isinstance(col, np.ndarray) else col
    try:  # the common case: every value an int (a nullable column, no null in it)
        if not any(type(v) is not int for v in values):
            return np.array(values, dtype=np.int64).reshape(len(values)), {}
    except OverflowError:
        pass
    out = np.zeros(len(values), dtype=np.int64)
    bad: dict[int, StreamscoreError] = {}
    for i, v in enumerate(values):
        if v is None:
            bad[i] = _missing(name, "time")
        elif type(v) is not int:
            bad[i] = WrongTypeError(
                f"event time {name!r} is {type(v).__name__}, not an integer ({encoding.value})",
                field=name,
            )
        elif not -(2**63) <= v < 2**63:
            bad[i] = BadEventTimeError(f"event time {name!r} is out of range: {v}", field=name)
        else:
            out[i] = v
    return out, bad


def _iso_times(
    col: np.ndarray | list[Any], name: str
) -> tuple[np.ndarray, dict[int, StreamscoreError]]:
    values = col.tolist() if isinstance(col, np.ndarray) else col
    out = np.zeros(len(values), dtype=np.int64)
    bad: dict[int, StreamscoreError] = {}
    for i, v in enumerate(values):
        if v is None:
            bad[i] = _missing(name, "time")
            continue
        if not isinstance(v, str):
            bad[i] = WrongTypeError(
                f"event time {name!r} is {type(v).__name__}, not an ISO-8601 string",
                field=name,
            )
            continue
        shown = v if len(v) <= 64 else v[:64] + "..."
        try:
            t = dt.datetime.fromisoformat(v)
        except ValueError:
            bad[i] = BadEventTimeError(
                f"event time {name!r} is not an ISO-8601 time: {shown!r}", field=name
            )
            continue
        if t.tzinfo is None or t.utcoffset() is None:
            bad[i] = BadEventTimeError(
                f"event time {name!r} has no UTC offset (add Z or +00:00): {shown!r}",
                field=name,
            )
            continue
        out[i] = (t - _EPOCH) // dt.timedelta(milliseconds=1)
    return out, bad


def event_ids(
    events: Sequence[Mapping[str, Any]], name: str
) -> tuple[list[str], dict[int, StreamscoreError]]:
    """Every event's id as a string ('' at a bad row) and the typed error of each row
    without one (null)."""
    n = len(events)
    col = _column(events, name)
    if col is None:
        err = _missing(name, "id")
        return [""] * n, dict.fromkeys(range(n), err)
    values: list[Any] = col.tolist() if isinstance(col, np.ndarray) else col
    types = set(map(type, values))
    if types == {str}:  # the common case, one pass in C
        return values, {}
    if types - {str, type(None)}:
        values = [v if v is None or isinstance(v, str) else str(v) for v in values]
    if type(None) not in types:
        return values, {}
    bad: dict[int, StreamscoreError] = {}
    out = list(values)
    for i, v in enumerate(values):
        if v is None:
            bad[i] = _missing(name, "id")
            out[i] = ""
    return out, bad


def event_keys(events: Sequence[Mapping[str, Any]], name: str) -> list[str | None]:
    """Every event's key: the ``name`` field as a string (None where it is null)."""
    col = _column(events, name)
    if col is None:
        return [None] * len(events)
    values: list[Any] = col.tolist() if isinstance(col, np.ndarray) else col
    return [v if v is None or isinstance(v, str) else str(v) for v in values]
