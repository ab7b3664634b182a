"""Live model quality from joined labels, and the automatic shadow-promotion policy.

Pure: no Kafka imports. The feedback worker feeds every
:class:`~streamscore.feedback.join.JoinedPair`
to :class:`LiveQuality` (rolling per model version and role, exported as Prometheus
gauges) and to :class:`PromotionPolicy`; it acts on the decisions the policy returns
(:mod:`streamscore.feedback.loop` publishes / retires through the model topic).

The policy compares a shadow with the primary on the **same labelled events** (paired:
an event counts once both the primary's and the shadow's predictions met its label):

* the metric is the recipe's (``[train] metric``: accuracy, log_loss, roc_auc, macro_f1,
  mae, rmse), by default MAE (regression) or accuracy (classification);
* an error metric (mae, rmse, log_loss) must improve by ``margin`` *relative*
  (``(primary - shadow) / primary >= margin``), a score metric by ``margin`` *absolute*
  (``shadow - primary >= margin``): :func:`streamscore.core.quality.better_by`, the
  one place that knows which way each metric goes.

It decides once ``min_labels`` paired events have been seen for a (primary version,
shadow version) pair, and then not again before another ``min_labels`` new ones
(a declined shadow is re-examined as evidence accumulates; a promoted one is final).
Off by default (:class:`PromotionSettings.enabled`).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.quality import (
    LOWER_IS_BETTER,
    beats,
    better_by,
    classification_metrics,
    default_metric,
    improvement_kind,
    regression_metrics,
)
from ..core.records import Prediction, Role, Task, positional_maker
from ..metrics.series import LIVE_FAMILIES, Metrics
from .groundtruth import label_as_class
from .join import JoinedPair

__all__ = [
    "LOWER_IS_BETTER",
    "LiveQuality",
    "PairScore",
    "PromotionDecision",
    "PromotionPolicy",
    "PromotionSettings",
    "better_by",
    "decision_metric",
    "pair_metrics",
    "score_pair",
]

N_RELIABILITY_BUCKETS = 10


def decision_metric(task: Task, metric: str | None = None) -> str:
    """The metric that decides: the recipe's, else mae (regression) / accuracy."""
    return metric or default_metric(task)


def task_of(p: Prediction) -> Task:
    return Task.REGRESSION if p.value is not None else Task.CLASSIFICATION


@dataclass(frozen=True, slots=True)
class PairScore:
    """One label scored against one prediction."""

    task: Task
    error: float = math.nan  # regression: label - prediction
    truth: str = ""  # classification: the label, as a class
    predicted: str = ""  # classification: the predicted class
    p_true: float = math.nan  # classification: probability given to the true class
    #: binary: p(positive class); multi-class: the top probability (reliability diagram)
    confidence: float = math.nan
    #: binary: the label is the positive class; multi-class: the prediction is correct
    positive: bool = False
    binary: bool = False

    @property
    def correct(self) -> bool:
        return self.task is Task.CLASSIFICATION and self.truth == self.predicted


_make_score = positional_maker(PairScore)
_NAN = math.nan


def score_pair(pair: JoinedPair, positive: str | None = None) -> PairScore | None:
    """``pair``'s label scored against its prediction; ``positive`` is the positive class
    of a binary model (default: the model's second class). None when the label cannot be
    compared with the prediction (wrong type)."""
    p = pair.prediction
    if p.value is not None:
        try:
            y = float(pair.label.label)
        except (TypeError, ValueError):
            return None
        if not (math.isfinite(y) and math.isfinite(p.value)):
            return None
        return _regression_score(y - p.value)
    if p.label is None:
        return None
    truth = label_as_class(pair.label.label)
    probs = p.probabilities
    classes = p.classes
    p_true = probs[classes.index(truth)] if truth in classes and probs else 0.0
    binary = len(classes) == 2 and len(probs) == 2
    if binary:
        pos = classes.index(positive) if positive in classes else 1
        confidence, is_pos = probs[pos], truth == classes[pos]
    else:
        confidence = max(probs) if probs else math.nan
        is_pos = truth == p.label
    return _make_score(
        Task.CLASSIFICATION, _NAN, truth, p.label, p_true, confidence, is_pos, binary
    )


def _regression_errors(pairs: Sequence[JoinedPair]) -> list[float] | None:
    """Label minus prediction of each pair :func:`score_pair` scores, when every
    prediction is a regressor's and every label a float (the usual case, one tight loop);
    None otherwise (then each pair is scored on its own)."""
    errors: list[float] = []
    isfinite = math.isfinite
    for pair in pairs:
        v = pair.prediction.value
        y = pair.label.label
        if v is None or type(y) is not float:
            return None
        if isfinite(y) and isfinite(v):
            errors.append(y - v)
    return errors


def _regression_score(error: float) -> PairScore:
    return _make_score(Task.REGRESSION, error, "", "", _NAN, _NAN, False, False)


def pair_metrics(scores: Sequence[PairScore]) -> dict[str, float]:
    """Every metric (:mod:`streamscore.core.quality`) of one model's scored pairs:
    mae/rmse, or accuracy, log_loss, macro_f1 and (binary) roc_auc."""
    if not scores:
        return {}
    if scores[0].task is Task.REGRESSION:
        return regression_metrics([s.error for s in scores])
    binary = scores[0].binary
    return classification_metrics(
        [s.truth for s in scores],
        [s.predicted for s in scores],
        [s.p_true for s in scores],
        binary=binary,
        positive=[s.positive for s in scores] if binary else None,
        p_positive=[s.confidence for s in scores] if binary else None,
    )


# ---------------------------------------------------------------- live quality


def _reliability(scores: Sequence[PairScore]) -> list[tuple[int, float, float]]:
    """Per confidence bucket: count, mean predicted probability, observed frequency."""
    conf = np.array([s.confidence for s in scores], dtype=np.float64)
    pos = np.array([s.positive for s in scores], dtype=np.float64)
    ok = np.isfinite(conf)
    conf, pos = conf[ok], pos[ok]
    b = np.clip((conf * N_RELIABILITY_BUCKETS).astype(np.int64), 0, N_RELIABILITY_BUCKETS - 1)
    count = np.bincount(b, minlength=N_RELIABILITY_BUCKETS)
    sum_p = np.bincount(b, weights=conf, minlength=N_RELIABILITY_BUCKETS)
    sum_o = np.bincount(b, weights=pos, minlength=N_RELIABILITY_BUCKETS)
    return [
        (int(n), float(sp / n) if n else math.nan, float(so / n) if n else math.nan)
        for n, sp, so in zip(count.tolist(), sum_p.tolist(), sum_o.tolist(), strict=True)
    ]


class LiveQuality:
    """Rolling quality per (model version, role), over the last ``window`` scored labels.
    :meth:`publish` (the feedback loop, after each batch) computes the figures of the
    windows that changed; the ``streamscore_live_*`` families export them at scrape time
    (:class:`~streamscore.metrics.collectors.ScrapedGauges` bound to :meth:`rows`)."""

    def __init__(
        self, metrics: Metrics | None = None, *, window: int = 1000, positive: str | None = None
    ) -> None:
        self._metrics = metrics
        self._window = window
        self._positive = positive
        self._rolling: dict[tuple[int, str], deque[PairScore]] = {}
        self._dirty: set[tuple[int, str]] = set()
        self._figures: dict[tuple[int, str], dict[str, float]] = {}
        self._buckets: dict[tuple[int, str], list[tuple[int, float, float]]] = {}
        self._lock = threading.Lock()
        if metrics is not None:
            metrics.live.bind(self.rows)

    def observe(self, pairs: Iterable[JoinedPair]) -> None:
        """Score a batch of pairs: per (model version, role), one counter increment and
        one lookup of each labelled series, not one per pair."""
        m = self._metrics
        groups: dict[tuple[int, str], list[JoinedPair]] = {}
        for pair in pairs:
            p = pair.prediction
            k = (p.model_version, p.role.value)
            g = groups.get(k)
            if g is None:
                g = groups[k] = []
            g.append(pair)
        positive = self._positive
        for k, group in groups.items():
            residual = None
            if m is not None:
                labels = (str(k[0]), k[1])
                m.feedback_joined.labels(*labels).inc(len(group))
                m.label_delay.observe_many(
                    [max(0.0, p.delay_ms / 1000.0) for p in group if p.first_for_label]
                )
                residual = m.residuals.labels(*labels)
            errors = _regression_errors(group)
            if errors is not None:  # a regressor's pairs, as score_pair scores them
                if not errors:
                    continue
                # the window keeps the last ``window`` scores: only those are made
                scores = [_regression_score(e) for e in errors[-self._window :]]
            else:
                scores = [s for s in (score_pair(pair, positive) for pair in group) if s]
                if not scores:
                    continue
                errors = [s.error for s in scores if s.task is Task.REGRESSION]
            r = self._rolling.get(k)
            if r is None:
                r = self._rolling[k] = deque(maxlen=self._window)
            r.extend(scores)
            self._dirty.add(k)
            if residual is not None:
                residual.observe_many(errors)

    def figures(self, version: int, role: Role | str) -> dict[str, float]:
        """The window's figures as of the last :meth:`publish` (and ``n``)."""
        with self._lock:
            return dict(self._figures.get((version, Role(role).value), {}))

    def publish(self) -> None:
        """Compute the figures of the windows that changed since the last call."""
        for k in self._dirty:
            scores = list(self._rolling[k])
            f = {"n": float(len(scores)), **pair_metrics(scores)}
            if scores and scores[0].task is Task.CLASSIFICATION:
                # one of roc_auc (binary) or macro_f1 (multi-class) is the live figure
                f.pop("macro_f1" if scores[0].binary else "roc_auc", None)
            buckets = _reliability(scores) if "accuracy" in f else []
            with self._lock:
                self._figures[k] = f
                self._buckets[k] = buckets
        self._dirty.clear()

    def rows(self) -> list[list[tuple[tuple[str, ...], float]]]:
        """The ``live`` families' samples (scrape time; ``LIVE_FAMILIES`` order, then
        the reliability diagram)."""
        with self._lock:
            figures = list(self._figures.items())
            buckets = dict(self._buckets)
        out: list[list[tuple[tuple[str, ...], float]]] = [[] for _ in LIVE_FAMILIES]
        reliability: list[tuple[tuple[str, ...], float]] = []
        for (version, role), f in sorted(figures):
            labels = (str(version), role)
            for i, (name, _doc) in enumerate(LIVE_FAMILIES):
                value = f.get("n" if name == "labelled" else name)
                if value is not None and not math.isnan(value):
                    out[i].append((labels, value))
            for i, (cnt, sp, so) in enumerate(buckets.get((version, role), [])):
                b = f"{i / N_RELIABILITY_BUCKETS:.1f}"
                reliability.append(((*labels, b, "count"), float(cnt)))
                if cnt > 0:
                    reliability.append(((*labels, b, "predicted"), sp))
                    reliability.append(((*labels, b, "observed"), so))
        return [*out, reliability]


# -------------------------------------------------------------------- promotion


@dataclass(frozen=True)
class PromotionSettings:
    enabled: bool = False
    min_labels: int = 500
    margin: float = 0.05
    #: the recipe's metric (``[train] metric``); None: mae (regression) / accuracy
    metric: str | None = None
    #: the positive class of a binary task (``[labels] positive``), for roc_auc
    positive: str | None = None
    #: paired events kept per (primary, shadow) pairing to compute the metric on
    max_pairs: int = 100_000

    def __post_init__(self) -> None:
        if self.min_labels < 1:
            raise ValueError(f"min_labels must be >= 1, got {self.min_labels}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.max_pairs < self.min_labels:
            raise ValueError(f"max_pairs must be >= min_labels, got {self.max_pairs}")


@dataclass(frozen=True, slots=True)
class PromotionDecision:
    promote: bool
    model_name: str
    primary_version: int
    shadow_version: int
    metric: str
    primary_value: float
    shadow_value: float
    improvement: float
    margin: float
    n_labels: int

    @property
    def kind(self) -> str:
        """Telemetry kind: ``promotion`` or ``promotion_declined``."""
        return "promotion" if self.promote else "promotion_declined"

    @property
    def detail(self) -> str:
        verdict = "promote" if self.promote else "decline"
        return (
            f"{self.model_name}: shadow v{self.shadow_version} vs primary "
            f"v{self.primary_version} on {self.n_labels} paired labels: {self.metric} "
            f"{self.shadow_value:.6g} vs {self.primary_value:.6g}, improvement "
            f"{self.improvement:.4g} ({improvement_kind(self.metric)}) vs margin "
            f"{self.margin:.4g}: {verdict}"
        )


@dataclass
class _Pairing:
    task: Task
    pairs: deque[tuple[PairScore, PairScore]]
    n: int = 0
    decided_at: int = 0  # n at the last decision
    final: bool = False


class PromotionPolicy:
    """Accumulates paired primary/shadow scores and says when to promote (module doc)."""

    def __init__(self, settings: PromotionSettings, *, max_open_events: int = 100_000) -> None:
        self.settings = settings
        self._open: OrderedDict[str, dict[str, tuple[str, int, PairScore]]] = OrderedDict()
        self._max_open = max_open_events
        self._pairings: dict[tuple[str, int, int], _Pairing] = {}
        self._current: tuple[str, int, int] | None = None

    def observe(self, pairs: Iterable[JoinedPair]) -> None:
        for pair in pairs:
            p = pair.prediction
            if p.role is Role.CANARY:
                continue
            s = score_pair(pair, self.settings.positive)
            if s is None:
                continue
            slot = self._open.setdefault(pair.label.event_id, {})
            slot[p.role.value] = (p.model_name, p.model_version, s)
            if "primary" in slot and "shadow" in slot:
                del self._open[pair.label.event_id]
                self._pair(slot["primary"], slot["shadow"])
            while len(self._open) > self._max_open:
                self._open.popitem(last=False)

    def _pair(self, prim: tuple[str, int, PairScore], shad: tuple[str, int, PairScore]) -> None:
        (name, pv, ps), (sname, sv, ss) = prim, shad
        if name != sname or ps.task is not ss.task:
            return
        key = (name, pv, sv)
        acc = self._pairings.get(key)
        if acc is None:
            acc = self._pairings[key] = _Pairing(ps.task, deque(maxlen=self.settings.max_pairs))
        self._current = key
        acc.n += 1
        acc.pairs.append((ps, ss))

    def paired(self, name: str, primary_version: int, shadow_version: int) -> int:
        acc = self._pairings.get((name, primary_version, shadow_version))
        return 0 if acc is None else acc.n

    def decide(self) -> PromotionDecision | None:
        """A decision when the current pairing has enough new evidence, else None."""
        if not self.settings.enabled or self._current is None:
            return None
        key = self._current
        acc = self._pairings[key]
        n_min = self.settings.min_labels
        if acc.final or acc.n < n_min or acc.n - acc.decided_at < n_min:
            return None
        acc.decided_at = acc.n
        metric = decision_metric(acc.task, self.settings.metric)
        pv = pair_metrics([p for p, _ in acc.pairs]).get(metric, math.nan)
        sv = pair_metrics([s for _, s in acc.pairs]).get(metric, math.nan)
        promote, gain = beats(metric, pv, sv, self.settings.margin)
        if promote:
            acc.final = True
        return PromotionDecision(
            promote=promote,
            model_name=key[0],
            primary_version=key[1],
            shadow_version=key[2],
            metric=metric,
            primary_value=pv,
            shadow_value=sv,
            improvement=gain,
            margin=self.settings.margin,
            n_labels=acc.n,
        )

    def failed(self, decision: PromotionDecision) -> None:
        """Acting on a promotion failed: re-decide after ``min_labels`` more labels."""
        acc = self._pairings.get(
            (decision.model_name, decision.primary_version, decision.shadow_version)
        )
        if acc is not None:
            acc.final = False
