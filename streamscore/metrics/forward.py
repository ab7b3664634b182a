"""Counters set in a child process, exported by its parent.

A worker that runs one of its stages in a child process (the feedback router,
:mod:`streamscore.feedback.router_process`) still exports one ``/metrics``: the child
counts on its own registry, :class:`CounterDeltas` reads what it counted since the last
reading, and the parent adds those increments to its own counters of the same names
(:func:`apply_deltas`). Counters only: they add up across processes, gauges and
histograms of a child would not.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter

#: one increment: (family name, sorted label pairs, amount)
Delta = tuple[str, tuple[tuple[str, str], ...], float]


class CounterDeltas:
    """What ``counters`` (a child's, by family name: ``Metrics.counters()``) gained
    since the previous call."""

    def __init__(self, counters: Mapping[str, Counter]) -> None:
        self._counters = list(counters.values())
        self._seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def __call__(self) -> list[Delta]:
        out: list[Delta] = []
        for family in (f for c in self._counters for f in c.collect()):
            total = family.name + "_total"
            for s in family.samples:
                if s.name != total:
                    continue  # the ``_created`` sample
                key = (family.name, tuple(sorted(s.labels.items())))
                gained = s.value - self._seen.get(key, 0.0)
                if gained > 0:
                    self._seen[key] = s.value
                    out.append((key[0], key[1], gained))
        return out


def apply_deltas(counters: Mapping[str, Counter], deltas: list[Delta]) -> int:
    """Add ``deltas`` to the counters of the same family names; returns how many were
    not found (a child counting a series its parent does not export)."""
    missing = 0
    for name, labels, amount in deltas:
        c = counters.get(name)
        if c is None:
            missing += 1
        elif labels:
            c.labels(**dict(labels)).inc(amount)
        else:
            c.inc(amount)
    return missing
