"""Feature and score drift: PSI of a sliding live window against the bundle's reference.

A :class:`DriftMonitor` is built from a bundle's
:class:`~streamscore.models.meta.ReferenceDistributions` (one quantile
:class:`~streamscore.models.meta.Histogram` per feature, one for the model score) and a window
size in events. Each scored batch is fed once with :meth:`DriftMonitor.update`, giving the
batch's feature matrix ``(n, k)`` (columns in feature-spec order) and score vector ``(n,)``.

Cost is per batch, never per event: the values of every variable are binned with one
``np.searchsorted`` per variable (k + 1 calls per batch, whatever n is) and counted with a
single ``np.bincount`` into one flat count vector. The window is a ring of those per-batch
count vectors plus their running sum: a new batch is added to the sum, and whole batches
fall out of the oldest end (their counts are subtracted) as soon as the newer batches alone
hold at least ``window`` events. Computing PSI reads only the running sum: O(total bins).

For every variable the monitor reports:

- **PSI** (population stability index) of the non-missing live values against the
  reference proportions, ``sum((p - q) * ln(p / q))`` with empty bins clamped to
  :data:`PSI_EPSILON` on both sides. The outer reference bins are open-ended, so values
  beyond the training range land in them (and are also counted as out of range).
- **missing share**: NaN values / all values in the window.
- **out-of-range share**: finite or infinite values below the reference's first edge
  (training minimum) or above its last edge (training maximum) / all values.

Rule of thumb used by the shipped alert (:data:`PSI_ALERT_THRESHOLD`): PSI < 0.1 is no
meaningful shift, 0.1-0.2 a moderate one worth watching, > 0.2 a significant shift.
With 10 bins, pure sampling noise gives PSI of about ``(bins - 1) / window``, i.e.
~0.002 for a 5 000-event window, so the threshold is far above noise once the window fills.

This module never imports ``confluent_kafka``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from ..metrics.collectors import Row
from ..models.meta import Histogram, ModelMeta, ReferenceDistributions

__all__ = [
    "DEFAULT_WINDOW",
    "PSI_ALERT_THRESHOLD",
    "PSI_EPSILON",
    "SCORE_LABEL",
    "DriftMonitor",
    "DriftReport",
    "VariableDrift",
    "psi",
]

#: Floor for empty-bin proportions (live and reference) so PSI stays finite.
PSI_EPSILON = 1e-4
#: PSI above this is a significant shift (industry rule of thumb; the shipped alert uses it).
PSI_ALERT_THRESHOLD = 0.2
#: Default sliding window, in events.
DEFAULT_WINDOW = 10_000
#: The ``feature`` label value under which the score's drift is exported.
SCORE_LABEL = "__score__"

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def psi(live_counts: npt.ArrayLike, reference: npt.ArrayLike, eps: float = PSI_EPSILON) -> float:
    """PSI of live bin counts against reference proportions (same bins); NaN if no counts."""
    counts = np.asarray(live_counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return math.nan
    p = np.maximum(counts / total, eps)
    q = np.maximum(np.asarray(reference, dtype=np.float64), eps)
    return float(np.sum((p - q) * np.log(p / q)))


@dataclass(frozen=True, slots=True)
class VariableDrift:
    """Drift of one variable (a feature or the score) over the current window."""

    psi: float
    missing_share: float
    out_of_range_share: float
    count: int  # values in the window (missing included)


@dataclass(frozen=True, slots=True)
class DriftReport:
    model_version: int
    window_events: int
    features: Mapping[str, VariableDrift]
    score: VariableDrift | None

    def max_feature_psi(self) -> float:
        vals = [v.psi for v in self.features.values() if not math.isnan(v.psi)]
        return max(vals) if vals else math.nan

    def gauge_rows(self) -> tuple[list[Row], list[Row], list[Row], list[Row]]:
        """This report as the rows of ``streamscore_feature_drift_psi``,
        ``..._missing_share``, ``..._out_of_range_share`` (labels ``feature``: the feature
        name, or :data:`SCORE_LABEL` for the score; ``model_version``) and
        ``streamscore_drift_window_events`` (``model_version``), in that order: what the
        metrics' drift collector exports at scrape time."""
        version = str(self.model_version)
        items = list(self.features.items())
        if self.score is not None:
            items.append((SCORE_LABEL, self.score))
        return (
            [((name, version), v.psi) for name, v in items],
            [((name, version), v.missing_share) for name, v in items],
            [((name, version), v.out_of_range_share) for name, v in items],
            [((version,), float(self.window_events))],
        )

    def drifted(self, threshold: float = PSI_ALERT_THRESHOLD) -> list[str]:
        """Names of the variables (``SCORE_LABEL`` for the score) with PSI above threshold."""
        out = [n for n, v in self.features.items() if v.psi > threshold]
        if self.score is not None and self.score.psi > threshold:
            out.append(SCORE_LABEL)
        return out


@dataclass(frozen=True, slots=True)
class _Batch:
    n: int
    counts: IntArray


class DriftMonitor:
    """Sliding-window PSI, missing and out-of-range shares per feature and for the score.

    ``feature_names`` are the matrix columns in order (the feature spec's order); columns
    without a reference histogram are ignored. Not thread-safe: one monitor per scoring
    loop, fed between batches (the loop's tracker locks it against the scrape thread).
    """

    def __init__(
        self,
        reference: ReferenceDistributions,
        feature_names: Sequence[str],
        *,
        window: int = DEFAULT_WINDOW,
        model_version: int = 0,
    ) -> None:
        if window < 1:
            raise ValueError(f"drift window must be >= 1 event, got {window}")
        self.window = window
        self.model_version = model_version
        self._n_columns = len(feature_names)
        # (name, matrix column or -1 for the score, histogram)
        variables: list[tuple[str, int, Histogram]] = [
            (name, i, reference.features[name])
            for i, name in enumerate(feature_names)
            if name in reference.features
        ]
        self._has_score = reference.score is not None
        if reference.score is not None:
            variables.append((SCORE_LABEL, -1, reference.score))
        self._names = tuple(v[0] for v in variables)
        self._columns = np.array([v[1] for v in variables if v[1] >= 0], dtype=np.intp)
        self._interior = [np.asarray(h.edges[1:-1], dtype=np.float64) for _, _, h in variables]
        self._expected = [np.asarray(h.proportions, dtype=np.float64) for _, _, h in variables]
        self._lo = np.array([h.edges[0] for _, _, h in variables], dtype=np.float64)
        self._hi = np.array([h.edges[-1] for _, _, h in variables], dtype=np.float64)
        # Flat layout of one batch's counts: every variable's bins, then per-variable
        # missing counts, then per-variable out-of-range counts.
        nbins = np.array([len(h.proportions) for _, _, h in variables], dtype=np.int64)
        self._bin_offsets = np.concatenate(([0], np.cumsum(nbins)[:-1])).astype(np.int64)
        self._nbins = nbins
        n_bins_total = int(nbins.sum())
        nv = len(variables)
        self._missing_at = n_bins_total
        self._oor_at = n_bins_total + nv
        self._size = n_bins_total + 2 * nv
        # a batch's bins come from its values sorted per variable: how many fall below
        # each interior edge, then differences. Layout of those cumulative counts: per
        # variable 0, its values below each interior edge, its present values (the bins
        # are the differences within a variable; _bin_take skips the ones across two)
        starts = self._bin_offsets + np.arange(nv)
        self._cum_ends = starts + nbins
        self._cum = np.zeros(n_bins_total + nv, dtype=np.int64)
        #: per variable: its interior edges, and where its values below each edge go
        self._searches = [
            (edges, slice(a + 1, a + 1 + edges.size))
            for edges, a in zip(self._interior, starts.tolist(), strict=True)
        ]
        self._bin_take = np.concatenate(
            [np.arange(a, b) for a, b in zip(starts.tolist(), self._cum_ends.tolist(), strict=True)]
            or [np.empty(0, dtype=np.int64)]
        )
        self._ring: deque[_Batch] = deque()
        self._totals: IntArray = np.zeros(self._size, dtype=np.int64)
        self._events = 0

    @classmethod
    def from_meta(cls, meta: ModelMeta, *, window: int = DEFAULT_WINDOW) -> DriftMonitor:
        """A monitor for a bundle's reference distributions, columns in spec order."""
        return cls(
            meta.reference_distributions,
            [f.name for f in meta.feature_spec.fields],
            window=window,
            model_version=meta.version,
        )

    @property
    def variables(self) -> tuple[str, ...]:
        return self._names

    @property
    def window_events(self) -> int:
        return self._events

    @property
    def batches_in_window(self) -> int:
        return len(self._ring)

    # ---------------------------------------------------------------- ingestion

    def _batch_counts(self, x: FloatArray, score: FloatArray | None) -> IntArray:
        """One flat count vector for the batch: one sort, then per variable one binary
        search of its edges among its sorted values (never per event)."""
        cols = x[:, self._columns] if self._columns.size else np.empty((x.shape[0], 0))
        if self._has_score:
            assert score is not None
            values = np.column_stack((cols, score))
        else:
            values = cols
        n, nv = values.shape
        if nv == 0 or n == 0:
            return np.zeros(self._size, dtype=np.int64)
        missing = np.isnan(values).sum(axis=0)
        # NaN compares false: a missing value is never out of range
        oor = ((values < self._lo) | (values > self._hi)).sum(axis=0)
        ordered = np.sort(values.T, axis=1)  # per variable ascending, NaN (missing) last
        cum = self._cum
        for row, (edges, below) in zip(ordered, self._searches, strict=True):
            cum[below] = np.searchsorted(row, edges, side="left")
        cum[self._cum_ends] = n - missing
        counts = np.empty(self._size, dtype=np.int64)
        counts[: self._missing_at] = np.diff(cum)[self._bin_take]
        counts[self._missing_at : self._oor_at] = missing
        counts[self._oor_at :] = oor
        return counts

    def update(self, features: npt.ArrayLike, score: npt.ArrayLike | None = None) -> None:
        """Add one batch: ``features`` is ``(n, k)`` in the monitor's column order and
        ``score`` is ``(n,)`` (required when the reference has a score histogram)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self._n_columns:
            raise ValueError(
                f"drift: expected a feature matrix (n, {self._n_columns}), got {x.shape}"
            )
        s: FloatArray | None = None
        if self._has_score:
            if score is None:
                raise ValueError("drift: the reference has a score histogram; pass the scores")
            s = np.asarray(score, dtype=np.float64).ravel()
            if s.shape[0] != x.shape[0]:
                raise ValueError(f"drift: {x.shape[0]} feature rows but {s.shape[0]} scores")
        n = int(x.shape[0])
        if n == 0:
            return
        counts = self._batch_counts(x, s)
        self._ring.append(_Batch(n, counts))
        self._totals += counts
        self._events += n
        # Whole batches fall out once the newer ones alone fill the window.
        while len(self._ring) > 1 and self._events - self._ring[0].n >= self.window:
            old = self._ring.popleft()
            self._totals -= old.counts
            self._events -= old.n

    def reset(self) -> None:
        self._ring.clear()
        self._totals[:] = 0
        self._events = 0

    # ------------------------------------------------------------------ reading

    def _variable(self, j: int) -> VariableDrift:
        off = int(self._bin_offsets[j])
        bins = self._totals[off : off + int(self._nbins[j])]
        missing = int(self._totals[self._missing_at + j])
        oor = int(self._totals[self._oor_at + j])
        total = int(bins.sum()) + missing
        return VariableDrift(
            psi=psi(bins, self._expected[j]),
            missing_share=missing / total if total else math.nan,
            out_of_range_share=oor / total if total else math.nan,
            count=total,
        )

    def report(self) -> DriftReport:
        """PSI and shares over the current window (NaN where the window is empty)."""
        feats: dict[str, VariableDrift] = {}
        score: VariableDrift | None = None
        for j, name in enumerate(self._names):
            if self._has_score and j == len(self._names) - 1:
                score = self._variable(j)
            else:
                feats[name] = self._variable(j)
        return DriftReport(self.model_version, self._events, MappingProxyType(feats), score)
