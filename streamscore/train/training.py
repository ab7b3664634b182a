"""Training: fit on data, build a bundle. One feature code path with serving.

Retraining from the ground-truth store (``streamscore train``)::

    rows  = groundtruth.read_rows_at(uri, since, until)         # partitions of the range
                                                                # only; the version read
                                                                # goes into the bundle
    split = the most recent ``holdout_fraction`` of rows (by event time) is held out
    X, y  = groundtruth.training_data(rows, spec)               # prepare.from_rows
    fit the candidate on the older part, evaluate candidate and current primary on the
    held-out part (each with its own feature spec, on the rows valid for both), and
    publish only when :func:`should_publish` says the candidate is better by the margin.

:func:`retrain` does all of that without Kafka (the current model is passed in), so the
decision is unit-tested; :mod:`streamscore.cli_feedback` adds the model-topic I/O.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..core.errors import StreamscoreError
from ..core.quality import beats, improvement_kind, probabilities_metrics, regression_metrics
from ..core.records import FeatureSpec, Task
from ..feedback.groundtruth import RowFields, training_data
from ..feedback.promotion import decision_metric
from ..models.container import Bundle
from ..models.convert import build_bundle
from ..models.meta import TrainingSource
from ..models.runtime import LoadedModel, load_bundle
from .recipe import ModelRecipe, fit_recipe


class TooFewRowsError(StreamscoreError):
    """The store holds fewer usable rows than the configured minimum for training."""

    reason = "too_few_rows"

    def __init__(self, message: str, *, rows: int, minimum: int) -> None:
        super().__init__(message)
        self.rows = rows
        self.minimum = minimum


# ------------------------------------------------------------------- evaluation


def evaluate(
    task: Task,
    y: np.ndarray,
    *,
    values: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    classes: Sequence[str] = (),
    positive: str | None = None,
) -> dict[str, float]:
    """mae/rmse for regressors; accuracy, log_loss, macro_f1 and (binary, ``positive``
    the positive class, default the second) roc_auc for classifiers
    (:mod:`streamscore.core.quality`, the same definitions as the live metrics)."""
    if task is Task.REGRESSION:
        assert values is not None
        err = np.asarray(y, dtype=np.float64) - np.asarray(values, dtype=np.float64)
        return regression_metrics(err)
    assert probabilities is not None
    ys = np.asarray(y, dtype=np.str_).tolist()
    return probabilities_metrics(ys, probabilities, classes, positive)


def evaluate_loaded(
    model: LoadedModel, X: np.ndarray, y: np.ndarray, positive: str | None = None
) -> dict[str, float]:
    out = model.predict(X)
    return evaluate(
        model.meta.task,
        y,
        values=out.values,
        probabilities=out.probabilities,
        classes=model.meta.classes,
        positive=positive,
    )


@dataclass(frozen=True)
class Comparison:
    task: Task
    current: Mapping[str, float]  # empty when there is no current model
    candidate: Mapping[str, float]
    n_holdout: int
    current_version: int | None = None
    #: the deciding metric (the recipe's); None: mae (regression) / accuracy
    decision: str | None = None

    @property
    def metric(self) -> str:
        return decision_metric(self.task, self.decision)

    def table(self) -> str:
        lines = [f"{'metric':<10} {'current':>12} {'candidate':>12} {'delta':>12}"]
        for name, cand in self.candidate.items():
            cur = self.current.get(name)
            cur_s = f"{cur:12.6g}" if cur is not None else f"{'-':>12}"
            delta = f"{cand - cur:+12.6g}" if cur is not None else f"{'-':>12}"
            lines.append(f"{name:<10} {cur_s} {cand:12.6g} {delta}")
        lines.append(f"(held-out rows: {self.n_holdout}; decision metric: {self.metric})")
        return "\n".join(lines)


@dataclass(frozen=True)
class PublishDecision:
    publish: bool
    reason: str
    improvement: float


def should_publish(comparison: Comparison, margin: float) -> PublishDecision:
    """Publish only when the candidate beats the current model by ``margin`` on the
    decision metric (relative for errors, absolute for accuracy; see
    :func:`streamscore.feedback.promotion.better_by`). With no current model, publish."""
    metric = comparison.metric
    cand = comparison.candidate.get(metric, math.nan)
    if not comparison.current:
        return PublishDecision(True, f"no current model; candidate {metric} {cand:.6g}", math.inf)
    cur = comparison.current.get(metric, math.nan)
    verdict, gain = beats(metric, cur, cand, margin)
    kind = improvement_kind(metric)
    return PublishDecision(
        verdict,
        f"{metric}: candidate {cand:.6g} vs current {cur:.6g}, improvement {gain:.4g} "
        f"({kind}) {'>=' if verdict else '<'} margin {margin:.4g}",
        gain,
    )


@dataclass(frozen=True)
class RetrainResult:
    bundle: Bundle
    comparison: Comparison
    decision: PublishDecision
    n_train: int
    n_holdout: int
    train_window: tuple[int, int]


def retrain(
    rows: Sequence[dict[str, Any]],
    spec: FeatureSpec,
    *,
    current: LoadedModel | None,
    name: str,
    version: int,
    recipe: ModelRecipe,
    task: Task = Task.REGRESSION,
    holdout_fraction: float = 0.2,
    min_rows: int = 200,
    margin: float = 0.05,
    metric: str | None = None,
    positive: str | None = None,
    now_ms: int | None = None,
    fields: RowFields | None = None,
    source: TrainingSource | None = None,
) -> RetrainResult:
    """Fit a candidate (the ``recipe`` run) on the older rows, compare it with
    ``current`` on the most recent ``holdout_fraction`` (by event time) and say whether
    to publish (module doc).

    Raises :class:`TooFewRowsError` when fewer than ``min_rows`` rows are usable for
    ``spec`` or either split would be empty.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    f = fields or RowFields()
    ordered = sorted(rows, key=lambda r: (int(r[f.time_field]), str(r[f.id_field])))
    data = training_data(ordered, spec, task, f)
    n = data.X.shape[0]
    n_hold = round(n * holdout_fraction)
    if n < min_rows or n_hold < 1 or n - n_hold < 1:
        raise TooFewRowsError(
            f"{n} usable rows for features {','.join(spec.names)} "
            f"({data.n_read} read, {data.n_invalid} refused by the serving checks or "
            f"without a usable label); at least {min_rows} are needed",
            rows=n,
            minimum=min_rows,
        )
    n_train = n - n_hold
    X_tr, y_tr = data.X[:n_train], data.y[:n_train]
    X_ho, y_ho = data.X[n_train:], data.y[n_train:]
    hold_rows = data.rows[n_train:]

    fitted = fit_recipe(recipe, X_tr, y_tr, spec, task)
    keep = np.ones(n_hold, dtype=bool)
    cur_metrics: dict[str, float] = {}
    X_cur = None
    if current is not None:
        cur_data = training_data(hold_rows, current.meta.feature_spec, task, f)
        valid_ids = {r[f.id_field] for r in cur_data.rows}
        keep = np.array([r[f.id_field] in valid_ids for r in hold_rows], dtype=bool)
        X_cur = cur_data.X  # rows valid for both, in the same order
        if not keep.any():
            raise TooFewRowsError(
                "no held-out row can be scored by the current model's feature spec",
                rows=0,
                minimum=1,
            )
    y_eval = y_ho[keep]
    window = (int(data.event_time_ms[0]), int(data.event_time_ms[n_train - 1]))
    bundle = build_bundle(
        fitted.estimator,
        classes=fitted.classes,
        name=name,
        version=version,
        feature_spec=spec,
        X_train=X_tr,
        X_reference=X_ho,
        created_at_ms=now_ms if now_ms is not None else int(time.time() * 1000),
        train_window=window,
    )
    # the candidate is judged as it would serve: through its ONNX graph, like the current
    candidate = load_bundle(bundle)
    cand_metrics = evaluate_loaded(candidate, X_ho[keep], y_eval, positive)
    bundle = replace(
        bundle,
        meta=replace(bundle.meta, holdout_metrics=cand_metrics, training_source=source),
    )
    if current is not None:
        assert X_cur is not None
        cur_metrics = evaluate_loaded(current, X_cur, y_eval, positive)
    comparison = Comparison(
        task,
        cur_metrics,
        cand_metrics,
        int(keep.sum()),
        None if current is None else current.meta.version,
        metric,
    )
    decision = should_publish(comparison, margin)
    return RetrainResult(bundle, comparison, decision, n_train, n_hold, window)
