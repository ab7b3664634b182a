"""Records held column-wise: the shapes that cross between decoding, features and scoring.

- :class:`EventColumns`: decoded events, as the batch decoder
  (:mod:`streamscore.serde.columnar_decode`) gives them and as
  :func:`streamscore.features.extract.extract` reads them;
- :class:`RecordColumns`: records to encode, as the scorer builds its predictions and as
  :mod:`streamscore.serde.columnar_encode` writes them;
- :func:`field_values`, :func:`take_events`: a column, or a subset of rows, of a batch of
  events that may be either plain dicts or :class:`EventColumns`.

Neutral ground: ``serde`` and ``features`` both import this module and neither imports the
other. NumPy only; no Kafka, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, overload

import numpy as np


class EventColumns(Sequence[Mapping[str, Any]]):
    """Decoded events held column-wise, as a batch decoder produces them.

    Behaves as a sequence of event dicts (``events[i]`` builds one, with the same Python
    types a per-message decode gives), and lets the hot path read whole columns without
    building any: :func:`~streamscore.features.extract.extract` takes numeric columns as
    they are. A column is a NumPy array (numbers or booleans, no nulls) or a list of Python
    values (anything else; ``None`` for null). Every column has one entry per event;
    ``names`` is the field order of the event schema."""

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


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """``n`` records of one record schema, given column-wise.

    Every field of the schema is either in ``constants`` (the same value in every record)
    or in ``columns`` (one value per record: a list, or a NumPy array, 1-d for scalar
    fields and 2-d ``(n, k)`` for arrays of numbers, or a :class:`RecordColumns` of ``n``
    records for a nested record field)."""

    n: int
    constants: Mapping[str, Any]
    columns: Mapping[str, Any]

    def rows(self) -> list[dict[str, Any]]:
        """The records as plain dicts (NumPy values converted with ``tolist()``)."""
        names = list(self.constants) + list(self.columns)
        if not names:
            return [{} for _ in range(self.n)]
        consts = [repeat(v, self.n) for v in self.constants.values()]
        cols = [
            c.tolist()
            if isinstance(c, np.ndarray)
            else c.rows()
            if isinstance(c, RecordColumns)
            else c
            for c in self.columns.values()
        ]
        return [dict(zip(names, vals, strict=True)) for vals in zip(*consts, *cols, strict=False)]
