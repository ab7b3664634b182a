"""The headers of a batch's predictions, kept without one list per record. Pure.

Every prediction carries its model's name, version and role and its event's id
(:data:`~streamscore.core.records.MODEL_NAME_HEADER` and the others), and the event headers
the project file names (``[events] copy_headers``). The model headers are the same for
every prediction of one model in one batch: they are built once and shared, and the
producer builds each record's list as it produces it (:func:`streamscore.kafka.delivery`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..core.records import EVENT_ID_HEADER, HeaderList
from .output_limits import headers_size


@dataclass(slots=True)
class RowHeaders:
    """The headers of many records (one model's predictions, then the next model's) kept
    without one list per record: ``runs`` of consecutive records that share their leading
    headers (``(count, shared)``), then each record's own ``name`` header (value
    ``values[i]``), then, when event headers are copied, each record's ``copied[i]``.
    The producer builds each record's list as it produces it (:meth:`at`)."""

    name: str = EVENT_ID_HEADER
    #: each record's own header value: ``bytes``, or ``str`` written as UTF-8 (event ids
    #: are given as they are, not encoded one by one)
    values: list[bytes | str] = field(default_factory=list)
    runs: list[tuple[int, HeaderList]] = field(default_factory=list)
    #: the event headers copied to each record (None: none copied)
    copied: list[HeaderList] | None = None

    @classmethod
    def of(cls, lists: Sequence[HeaderList]) -> RowHeaders:
        """Records given one full list each (the last header is the record's own)."""
        out = cls(lists[0][-1][0] if lists else EVENT_ID_HEADER)
        for h in lists:
            out.add(h[:-1], [h[-1][1]])
        return out

    def __len__(self) -> int:
        return len(self.values)

    def add(
        self,
        shared: HeaderList,
        values: Sequence[bytes | str],
        copied: list[HeaderList] | None = None,
    ) -> None:
        """Append ``len(values)`` records sharing ``shared``; ``copied``: their copied
        event headers (given for every run or for none)."""
        if self.runs and self.runs[-1][1] is shared:
            self.runs[-1] = (self.runs[-1][0] + len(values), shared)
        else:
            self.runs.append((len(values), shared))
        self.values += values
        if copied is not None:
            self.copied = (self.copied or []) + copied

    def __iter__(self) -> Iterator[HeaderList]:
        """Each record's headers, in order (a new list each)."""
        start = 0
        for n, shared in self.runs:
            for i in range(start, start + n):
                own = [*shared, (self.name, _bytes(self.values[i]))]
                yield own + self.copied[i] if self.copied is not None else own
            start += n

    def at(self, i: int) -> HeaderList:
        """Record ``i``'s headers (a new list)."""
        start = 0
        for n, shared in self.runs:
            if i < start + n:
                own = [*shared, (self.name, _bytes(self.values[i]))]
                return own + self.copied[i] if self.copied is not None else own
            start += n
        raise IndexError(f"no record {i}")

    def select(self, keep: Sequence[int]) -> RowHeaders:
        """The records ``keep`` (increasing indices), in order."""
        out = RowHeaders(self.name)
        bounds: list[tuple[int, HeaderList]] = []
        start = 0
        for n, shared in self.runs:
            start += n
            bounds.append((start, shared))
        b = 0
        for i in keep:
            while i >= bounds[b][0]:
                b += 1
            out.add(bounds[b][1], [self.values[i]])
        if self.copied is not None:
            out.copied = [self.copied[i] for i in keep]
        return out

    def split(self, k: int) -> tuple[RowHeaders, RowHeaders]:
        """The first ``k`` records and the rest."""
        head, tail = RowHeaders(self.name), RowHeaders(self.name)
        start = 0
        for n, shared in self.runs:
            if start + n <= k:
                head.runs.append((n, shared))
            elif start >= k:
                tail.runs.append((n, shared))
            else:
                head.runs.append((k - start, shared))
                tail.runs.append((start + n - k, shared))
            start += n
        head.values, tail.values = self.values[:k], self.values[k:]
        if self.copied is not None:
            head.copied, tail.copied = self.copied[:k], self.copied[k:]
        return head, tail

    def largest(self) -> int:
        """An upper bound of any record's headers (``headers_size`` counts), except the
        length of its own ``name`` header's value."""
        from_runs = max((headers_size(s) for _n, s in self.runs), default=0)
        copied = max(map(headers_size, self.copied), default=0) if self.copied else 0
        return from_runs + headers_size([(self.name, b"")]) + copied


def _bytes(v: bytes | str) -> bytes:
    return v.encode() if isinstance(v, str) else v
