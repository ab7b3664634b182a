"""Live model quality from joined labels, and the automatic shadow-promotion policy.

Pure: no Kafka imports. The feedback worker feeds every
:class:`~streamscore.feedback.join.JoinedPair`
to :class:`LiveQuality` (rolling per model version and role, exported as Prometheus
gauges) and to :class:`PromotionPolicy`; it acts on the decisions the policy returns
(:mod:`streamscore.feedback.loop` publishes / retires through the model topic).

The policy compares a shadow with the primary on the **same labelled events** (paired:
an event counts once both the primary's and the shadow's predictions met its label):

* regression: MAE; the shadow must be better by ``margin`` *relative*
  (``(mae_primary - mae_shadow) / mae_primary >= margin``);
* classification: accuracy; better by ``margin`` *absolute* (``acc_s - acc_p >= margin``).

It decides once ``min_labels`` paired events have been seen for a (primary version,
shadow version) pair, and then not again before another ``min_labels`` new ones
(a declined shadow is re-examined as evidence accumulates; a promoted one is final).
Off by default (:class:`PromotionSettings.enabled`).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..core.records import Prediction, Role, Task
from ..metrics.series import Metrics
from .groundtruth import label_as_class
from .join import JoinedPair

#: Metrics where a lower value is better; all others (accuracy) are higher-is-better.
LOWER_IS_BETTER = frozenset({"mae", "rmse", "log_loss"})
N_RELIABILITY_BUCKETS = 10


def better_by(metric: str, current: float, candidate: float) -> float:
    """How much better ``candidate`` is than ``current`` (positive = better).

    Error metrics (mae, rmse, log_loss): relative reduction ``(current - candidate) /
    current`` (``inf`` when current is 0 and candidate is 0 too is not better: 0).
    Accuracy-like metrics: absolute gain ``candidate - current``.
    """
    if metric in LOWER_IS_BETTER:
        if current <= 0.0:
            return 0.0 if candidate >= current else math.inf
        return (current - candidate) / current
    return candidate - current


def decision_metric(task: Task) -> str:
    return "mae" if task is Task.REGRESSION else "accuracy"


def task_of(p: Prediction) -> Task:
    return Task.REGRESSION if p.value is not None else Task.CLASSIFICATION


@dataclass(frozen=True, slots=True)
class PairScore:
    """One label scored against one prediction."""

    task: Task
    error: float = math.nan  # regression: label - prediction
    correct: bool = False  # classification
    p_true: float = math.nan  # classification: probability given to the true class
    confidence: float = math.nan  # p(positive class) (binary) or max prob (multiclass)
    positive: bool = False  # binary: label is the positive class; multi: correct


def score_pair(pair: JoinedPair) -> PairScore | None:
    """None when the label cannot be compared with the prediction (wrong type)."""
    p = pair.prediction
    if p.value is not None:
        try:
            y = float(pair.label.label)
        except (TypeError, ValueError):
            return None
        if not (math.isfinite(y) and math.isfinite(p.value)):
            return None
        return PairScore(Task.REGRESSION, error=y - p.value)
    if p.label is None:
        return None
    truth = label_as_class(pair.label.label)
    probs = p.probabilities
    classes = p.classes
    p_true = probs[classes.index(truth)] if truth in classes and probs else 0.0
    if len(classes) == 2 and len(probs) == 2:
        confidence, positive = probs[1], truth == classes[1]
    else:
        confidence = max(probs) if probs else math.nan
        positive = truth == p.label
    return PairScore(
        Task.CLASSIFICATION,
        correct=truth == p.label,
        p_true=p_true,
        confidence=confidence,
        positive=positive,
    )


# ---------------------------------------------------------------- live quality


@dataclass
class _Rolling:
    """Running sums over the last ``size`` scores of one (model version, role)."""

    size: int
    task: Task | None = None
    items: deque[PairScore] = field(default_factory=deque)
    sum_abs: float = 0.0
    sum_sq: float = 0.0
    n_correct: int = 0
    sum_logloss: float = 0.0
    buckets: list[list[float]] = field(
        default_factory=lambda: [[0.0, 0.0, 0.0] for _ in range(N_RELIABILITY_BUCKETS)]
    )  # per bucket: count, sum predicted, sum observed

    def _apply(self, s: PairScore, sign: int) -> None:
        if s.task is Task.REGRESSION:
            self.sum_abs += sign * abs(s.error)
            self.sum_sq += sign * s.error * s.error
            return
        self.n_correct += sign * int(s.correct)
        self.sum_logloss += sign * -math.log(min(1.0, max(s.p_true, 1e-15)))
        if math.isfinite(s.confidence):
            b = min(int(s.confidence * N_RELIABILITY_BUCKETS), N_RELIABILITY_BUCKETS - 1)
            bucket = self.buckets[max(b, 0)]
            bucket[0] += sign
            bucket[1] += sign * s.confidence
            bucket[2] += sign * float(s.positive)

    def add(self, s: PairScore) -> None:
        self.task = s.task
        self.items.append(s)
        self._apply(s, +1)
        if len(self.items) > self.size:
            self._apply(self.items.popleft(), -1)

    @property
    def n(self) -> int:
        return len(self.items)

    def figures(self) -> dict[str, float]:
        n = self.n
        if n == 0:
            return {}
        if self.task is Task.REGRESSION:
            return {"mae": self.sum_abs / n, "rmse": math.sqrt(max(self.sum_sq, 0.0) / n)}
        return {"accuracy": self.n_correct / n, "log_loss": self.sum_logloss / n}


class LiveQuality:
    """Rolling quality per (model version, role); gauges refreshed by :meth:`publish`."""

    def __init__(self, metrics: Metrics | None = None, *, window: int = 1000) -> None:
        self._metrics = metrics
        self._window = window
        self._rolling: dict[tuple[int, str], _Rolling] = {}
        self._dirty: set[tuple[int, str]] = set()

    def observe(self, pairs: Iterable[JoinedPair]) -> None:
        m = self._metrics
        for pair in pairs:
            p = pair.prediction
            k = (p.model_version, p.role.value)
            if m is not None:
                m.feedback_joined.labels(str(p.model_version), p.role.value).inc()
                if pair.first_for_label:
                    m.label_delay.observe(max(0.0, pair.delay_ms / 1000.0))
            s = score_pair(pair)
            if s is None:
                continue
            r = self._rolling.get(k)
            if r is None:
                r = self._rolling[k] = _Rolling(self._window)
            r.add(s)
            self._dirty.add(k)
            if m is not None and s.task is Task.REGRESSION:
                m.residuals.labels(str(p.model_version), p.role.value).observe(s.error)

    def figures(self, version: int, role: Role | str) -> dict[str, float]:
        r = self._rolling.get((version, Role(role).value))
        return {} if r is None else {"n": float(r.n), **r.figures()}

    def publish(self) -> None:
        m = self._metrics
        if m is None:
            self._dirty.clear()
            return
        for k in self._dirty:
            r = self._rolling[k]
            v, role = str(k[0]), k[1]
            f = r.figures()
            m.live_labelled.labels(v, role).set(r.n)
            if r.task is Task.REGRESSION:
                m.live_mae.labels(v, role).set(f["mae"])
                m.live_rmse.labels(v, role).set(f["rmse"])
                continue
            m.live_accuracy.labels(v, role).set(f["accuracy"])
            m.live_log_loss.labels(v, role).set(f["log_loss"])
            for i, (cnt, sp, so) in enumerate(r.buckets):
                b = f"{i / N_RELIABILITY_BUCKETS:.1f}"
                m.live_reliability.labels(v, role, b, "count").set(cnt)
                if cnt > 0:
                    m.live_reliability.labels(v, role, b, "predicted").set(sp / cnt)
                    m.live_reliability.labels(v, role, b, "observed").set(so / cnt)
        self._dirty.clear()


# -------------------------------------------------------------------- promotion


@dataclass(frozen=True)
class PromotionSettings:
    enabled: bool = False
    min_labels: int = 500
    margin: float = 0.05

    def __post_init__(self) -> None:
        if self.min_labels < 1:
            raise ValueError(f"min_labels must be >= 1, got {self.min_labels}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")


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
        rel = "relative" if self.metric in LOWER_IS_BETTER else "absolute"
        return (
            f"{self.model_name}: shadow v{self.shadow_version} vs primary "
            f"v{self.primary_version} on {self.n_labels} paired labels: {self.metric} "
            f"{self.shadow_value:.6g} vs {self.primary_value:.6g}, improvement "
            f"{self.improvement:.4g} ({rel}) vs margin {self.margin:.4g}: {verdict}"
        )


@dataclass
class _Pairing:
    task: Task
    n: int = 0
    sum_primary: float = 0.0  # abs errors (regression) or correct counts
    sum_shadow: float = 0.0
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
            s = score_pair(pair)
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
            acc = self._pairings[key] = _Pairing(ps.task)
        self._current = key
        acc.n += 1
        if ps.task is Task.REGRESSION:
            acc.sum_primary += abs(ps.error)
            acc.sum_shadow += abs(ss.error)
        else:
            acc.sum_primary += float(ps.correct)
            acc.sum_shadow += float(ss.correct)

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
        metric = decision_metric(acc.task)
        pv, sv = acc.sum_primary / acc.n, acc.sum_shadow / acc.n
        gain = better_by(metric, pv, sv)
        promote = gain >= self.settings.margin and gain > 0
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
