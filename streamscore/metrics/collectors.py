"""Two kinds of series prometheus_client's own classes do not give cheaply, as custom
collectors (public API only: ``collect()`` / ``describe()`` yielding metric families).

- :class:`ScrapedGauges`: gauge families whose samples are computed when ``/metrics`` is
  scraped, from a source the process binds (the score loop's lag and drift). Nothing is
  pushed on a timer and no series is deleted by hand: a scrape exports what the source
  holds at that moment, so a partition lost or a model replaced leaves no stale series.
- :class:`BulkHistogram`: a histogram fed a NumPy array per call (one ``searchsorted``
  and one ``bincount``), for the per-event histograms; exported exactly as
  ``prometheus_client.Histogram`` exports (``_bucket`` with ``le``, ``_count``, ``_sum``
  unless a bucket bound is negative, ``_created``).

Both are thread-safe: the process's loop feeds them, the HTTP server thread collects.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

#: One sample of a gauge family: its label values (in the family's label order), its value.
Row = tuple[tuple[str, ...], float]
#: What a bound source returns: for each family of a :class:`ScrapedGauges`, in order,
#: its rows.
Rows = Sequence[Iterable[Row]]


@dataclass(frozen=True, slots=True)
class GaugeSpec:
    name: str
    documentation: str
    labelnames: tuple[str, ...] = ()


class ScrapedGauges:
    """Gauge families read at scrape time from one source.

    ``bind(source)``: ``source()`` runs on the HTTP server's thread at each scrape and
    returns one row list per family (``specs`` order); it must be cheap, thread-safe and
    never block on the network (read values the owning loop recorded). Unbound, or bound
    to ``None``, the families export no sample (their ``# TYPE`` lines stay)."""

    def __init__(self, *specs: GaugeSpec, registry: CollectorRegistry | None) -> None:
        self.specs = specs
        self._source: Callable[[], Rows] | None = None
        if registry is not None:
            registry.register(self)

    def bind(self, source: Callable[[], Rows] | None) -> None:
        self._source = source

    def describe(self) -> Iterator[Metric]:
        for spec in self.specs:
            yield GaugeMetricFamily(spec.name, spec.documentation, labels=spec.labelnames)

    def collect(self) -> Iterator[Metric]:
        source = self._source
        rows: Rows = source() if source is not None else ()
        if len(rows) not in (0, len(self.specs)):
            raise ValueError(f"{len(rows)} row lists for {len(self.specs)} gauge families")
        for i, spec in enumerate(self.specs):
            fam = GaugeMetricFamily(spec.name, spec.documentation, labels=spec.labelnames)
            for labels, value in rows[i] if rows else ():
                fam.add_metric(labels, value)
            yield fam


class HistogramSeries:
    """One label set of a :class:`BulkHistogram`: per-bucket counts and the sum. NumPy is
    imported at the first observation: a process that never observes one (the feedback
    router's) does without it."""

    __slots__ = ("_bounds", "_counts", "_created", "_lock", "_sum")

    def __init__(self, bounds: Sequence[float], lock: threading.Lock) -> None:
        self._bounds: Any = bounds  # a float64 array from the first observation on
        self._lock = lock
        self._counts: npt.NDArray[np.int64] | None = None
        self._sum = 0.0
        self._created = time.time()

    def observe_many(self, values: npt.ArrayLike) -> None:
        """What ``observe(v)`` for every ``v`` does, in a few NumPy calls: each value
        counts in the first bucket whose bound is >= it (a NaN in none) and in the sum."""
        import numpy as np

        vals = np.asarray(values, dtype=np.float64).ravel()
        if vals.size == 0:
            return
        if self._counts is None:
            with self._lock:
                if self._counts is None:
                    self._bounds = np.asarray(self._bounds, dtype=np.float64)
                    self._counts = np.zeros(self._bounds.size, dtype=np.int64)
        idx = np.searchsorted(self._bounds, vals, side="left")  # NaN: past the last
        counts = np.bincount(idx, minlength=self._bounds.size + 1)[: self._bounds.size]
        total = float(vals.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def read(self) -> tuple[list[float], float, float]:
        """Cumulative bucket counts, the sum, the creation time."""
        with self._lock:
            if self._counts is None:
                return [0.0] * len(self._bounds), self._sum, self._created
            cumulative: list[float] = self._counts.cumsum().astype("float64").tolist()
            return cumulative, self._sum, self._created


class BulkHistogram:
    """A histogram (optionally labelled) that takes whole arrays of observations.

    ``labels(*values)`` gives the series of a label set (created on first use);
    an unlabelled histogram exports its zero series from the start, as
    ``prometheus_client.Histogram`` does."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError(f"{name}: buckets not in sorted order")
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        if len(bounds) < 2:
            raise ValueError(f"{name}: a histogram needs at least two buckets")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = tuple(bounds)
        # the label values prometheus_client gives its own buckets ("+Inf", "0.005")
        self._le: list[str] = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], HistogramSeries] = {}
        if not self.labelnames:
            self._series[()] = HistogramSeries(self._bounds, self._lock)
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> HistogramSeries:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        series = self._series.get(key)
        if series is None:
            with self._lock:
                series = self._series.setdefault(key, HistogramSeries(self._bounds, self._lock))
        return series

    def observe_many(self, values: npt.ArrayLike) -> None:
        self._unlabelled().observe_many(values)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def _unlabelled(self) -> HistogramSeries:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self._series[()]

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            items = list(self._series.items())
        with_sum = self._bounds[0] >= 0  # as prometheus_client: no _sum below zero
        for key, series in items:
            cumulative, total, created = series.read()
            labels = dict(zip(self.labelnames, key, strict=True))
            for le, count in zip(self._le, cumulative, strict=True):
                fam.samples.append(Sample(f"{self.name}_bucket", {**labels, "le": le}, count))
            fam.samples.append(Sample(f"{self.name}_count", labels, cumulative[-1]))
            if with_sum:
                fam.samples.append(Sample(f"{self.name}_sum", labels, total))
            fam.samples.append(Sample(f"{self.name}_created", labels, created))
        yield fam
